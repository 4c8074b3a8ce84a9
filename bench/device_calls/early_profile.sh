# Iteration 4 of the tutorial job (HEALPix order 2, global searches) from the committed
# iteration-3 state: once timed (Triton's kernels compiled and cached), then under
# torch.profiler (tutorial_bench.py --torch_profile) with KEEP (default 3000) of the
# particles: the device's idle time charged to what the host was doing (gpu_idle.py), and
# the operators by device and by host time. The data are simulated first (about 125 s).
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work; STATE=${STATE:-bench/results/tutorial_9437_h100_it003_state.tgz}; N=${ITER:-4}
fresh() { rm -rf $W/Refine3D; mkdir -p $W/Refine3D; tar xzf $STATE -C $W/Refine3D; }
fresh
timeout -s TERM ${TLIM:-330} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter $N --no_floor --precision tf32 $EXTRA --out $OUT/warm.json > $OUT/warm.log 2>&1
echo warm rc=$?; grep "half_set=. phase_seconds\|half_set=. work\|^iteration_seconds_total" $OUT/warm.log
fresh
python3 bench/state_subset.py $W/Refine3D/run_it$(printf %03d $((N - 1)))_data.star --keep ${KEEP:-3000}
timeout -s TERM ${PLIM:-240} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter $N --no_floor --precision tf32 --torch_profile $EXTRA --out $OUT/profile.json > $OUT/profile.log 2>&1
echo profile rc=$?
grep -v "particles=" $OUT/profile.log | tail -c 6000
