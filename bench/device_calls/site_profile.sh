# The final iteration from the committed iteration-25/26 state under torch.profiler with each
# operator's Python stack (tutorial_bench.py --torch_profile --torch_profile_stacks 4): device
# time by operator and the lines that called it. A first run of the iteration
# (final_iteration_ab.py, which simulates the data where missing) compiles Triton's kernels.
# Over all 9,437 particles the table by call site did not come within a call's 600 s (the
# profiler groups ~400,000 operators by stack): KEEP=900 profiles about 900 of them.
set -o pipefail
. bench/device_calls/setup.sh
timeout ${WLIM:-260} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state bench/results/tutorial_9437_reader_h100_it025-026_state.tgz --gpu --settings warm --out $OUT/warm.json 2>&1 | tail -1
KEEP=${KEEP-900} TLIM=${TLIM:-320} EXTRA="--torch_profile_stacks ${STACKS:-4}" bash bench/device_calls/profile_final.sh > /dev/null
grep -A200 "Source Location" $OUT/profile.log | cut -c1-60,150-400 | head -150
