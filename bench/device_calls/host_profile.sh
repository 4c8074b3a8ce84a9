# The final iteration from the committed iteration-25/26 state under cProfile on the GPU
# (tutorial_bench.py --profile, without CUDA_LAUNCH_BLOCKING): where the host's time goes,
# by function, with the waits on the device charged to the calls that wait. A first run
# of the iteration (final_iteration_ab.py, which simulates the data where missing)
# compiles Triton's kernels so that the profiled run is free of compilation.
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work
timeout ${WLIM:-300} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state bench/results/tutorial_9437_reader_h100_it025-026_state.tgz --gpu --settings warm --out $OUT/warm.json 2>&1 | tail -2
rm -rf $W/Refine3D; mkdir -p $W/Refine3D
tar xzf bench/results/tutorial_9437_reader_h100_it025-026_state.tgz -C $W/Refine3D
timeout -s TERM ${TLIM:-240} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter 27 --no_floor --profile --out $OUT/host_profile.json > $OUT/host_profile.log 2>&1
echo rc=$?
grep "e_step_seconds\|^iteration_seconds_total" $OUT/host_profile.log
