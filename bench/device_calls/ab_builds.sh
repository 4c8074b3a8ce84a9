# The final iteration under several settings on one machine (bench/final_iteration_ab.py):
# by default this build against the build in .carry/old_src.tar (git archive OLD src).
# SETTINGS replaces the settings, TESTS the CUDA tests run first, TLIM the iterations' limit.
# ITER=4 runs iteration 4 from the committed iteration-3 state instead (global searches at
# HEALPix order 2, where the host sets the pace), ITER=16 iteration 16 from the committed
# iteration-15 state (the first at order 5, local searches); STATE names another state.
# The data are simulated once per machine (/tmp/work persists while it is warm).
set -o pipefail
. bench/device_calls/setup.sh
mkdir -p /tmp/old && tar xf .carry/old_src.tar -C /tmp/old
TESTS=${TESTS-tests/likelihood/test_likelihood_held_cross.py}
if [ -n "$TESTS" ]; then
  timeout ${TEST_LIM:-150} python3 -m pytest -q -p no:cacheprovider $TESTS -k "${TEST_K:-gpu}" > $OUT/pytest_gpu.txt 2>&1; tail -3 $OUT/pytest_gpu.txt
fi
SETTINGS=${SETTINGS:-new old=PYTHONPATH=/tmp/site:/tmp/old/src new}
ITER=${ITER:-27}
STATE_27=bench/results/tutorial_9437_reader_h100_it025-026_state.tgz
STATE_4=bench/results/tutorial_9437_h100_it003_state.tgz
STATE_16=bench/results/tutorial_9437_h100_it015_state.tgz
STATE_NAME=STATE_$ITER
STATE=${STATE:-${!STATE_NAME}}
: "${STATE:?no committed state for ITER=$ITER: set STATE}"
timeout ${TLIM:-480} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state $STATE --iter $ITER --gpu --settings $SETTINGS --out $OUT/ab.json 2>&1 | grep -v "Warning\|particles=" | tail -14
grep -h "phase_seconds\|work fine\|e_step_seconds" /tmp/work/Refine3D/run.log | tail -6 > $OUT/last_phases.txt
