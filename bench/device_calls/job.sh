# Whole tutorial job on one warm machine, in calls cut by timeout; W persists while warm.
# env: TLIM (seconds for tutorial_bench), FLOOR=1 to measure the floor, SAVE=NNN to tar state of iteration NNN
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work; mkdir -p $W
F=--no_floor; [ "$FLOOR" = 1 ] && F=
date +%s > $OUT/start
timeout -s TERM ${TLIM:-540} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter ${ITER:-0} $F --out $OUT/job.json $EXTRA > $OUT/stdout.log 2>&1
echo rc=$?
tail -c 6000 $OUT/stdout.log
cp $W/Refine3D/run.log $OUT/run.log 2>/dev/null
ls $W/Refine3D | tail -3
if [ -n "$SAVE" ]; then (cd $W/Refine3D && tar cf $OUT/state.tar run_it${SAVE}_* ) && ls -la $OUT/state.tar; fi
nvidia-smi --query-gpu=name --format=csv,noheader
