# The tutorial job's final iteration (27) from the committed iteration-25/26 state, under
# torch.profiler (tutorial_bench.py --torch_profile): operators by device and by host time.
# The data are simulated first when /tmp/work/sim is missing (about 150 s on an H100).
# KEEP=N profiles about N of the 9,437 particles.
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work; rm -rf $W/Refine3D; mkdir -p $W/Refine3D
tar xzf bench/results/tutorial_9437_reader_h100_it025-026_state.tgz -C $W/Refine3D
# KEEP=N: about N of the particles (bench/state_subset.py), for tables built in seconds
[ -n "$KEEP" ] && python3 bench/state_subset.py $W/Refine3D/run_it026_data.star --keep $KEEP
timeout -s TERM ${TLIM:-540} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter 27 --no_floor --torch_profile $EXTRA --out $OUT/profile.json > $OUT/profile.log 2>&1
echo rc=$?
grep -v "particles=" $OUT/profile.log | tail -c 9000
