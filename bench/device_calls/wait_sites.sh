# Where the host waits for the device in iteration 4 of the tutorial job (HEALPix order 2,
# where the host sets the pace): iteration 4 from the committed iteration-3 state once as
# ab_builds.sh runs it (the data simulated, the Triton kernels compiled), then again under
# bench/sync_sites.py, which times every call that waits for the device, by call site.
set -o pipefail
. bench/device_calls/setup.sh
STATE=bench/results/tutorial_9437_h100_it003_state.tgz
timeout ${TLIM:-330} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state $STATE --iter 4 --gpu --settings new --out $OUT/ab.json 2>&1 | grep -v "Warning\|particles=" | tail -3
rm -rf /tmp/ss
timeout ${SLIM:-150} python3 bench/sync_sites.py --continue /tmp/work/Refine3D/run_it003_optimiser.star --o /tmp/ss/run --iter 4 --top ${TOP:-80} --gpu 0 --precision tf32 > $OUT/wait_sites.log 2>&1
echo sites rc=$?
grep "phase_seconds\|e_step_seconds\|seconds=" /tmp/ss/run.log 2>/dev/null | tail -5 > $OUT/wait_phases.txt
grep -A12 "seconds in those calls" $OUT/wait_sites.log
