# An early iteration of the tutorial job (global searches at HEALPix order 2, where the
# E-step is 11-30 times its floor): the job run to iteration ${ITER:-3} (its files saved
# to $OUT/state.tgz), then iteration ITER+1 with host waits and operators counted by call
# site (bench/sync_sites.py --ops), then the same iteration under torch.profiler.
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work; rm -rf $W/Refine3D; mkdir -p $W; N=${ITER:-3}; NNN=$(printf %03d $N)  # the job from the start
timeout -s TERM ${JLIM:-300} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter $N --no_floor --precision tf32 --out $OUT/job.json > $OUT/job.log 2>&1
echo job rc=$?; grep "simulated\|^iter=" $OUT/job.log | tail -5
(cd $W/Refine3D && tar czf $OUT/state.tgz run_it${NNN}_*) && ls -la $OUT/state.tgz
timeout -s TERM ${SLIM:-150} python3 bench/sync_sites.py --continue $W/Refine3D/run_it${NNN}_optimiser.star --o /tmp/ss/run --iter $((N + 1)) --ops --top ${TOP:-300} --gpu 0 --precision tf32 > $OUT/op_sites.log 2>&1
echo sites rc=$?
grep "phase_seconds\|e_step_seconds" /tmp/ss/run.log 2>/dev/null | tail -4 > $OUT/sites_phases.txt
rm -rf $W/Refine3D/run_it$(printf %03d $((N + 1)))_* $W/Refine3D/run_[a-hj-z]* 2>/dev/null
timeout -s TERM ${PLIM:-150} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter $((N + 1)) --no_floor --precision tf32 --torch_profile --out $OUT/profile.json > $OUT/profile.log 2>&1
echo profile rc=$?
