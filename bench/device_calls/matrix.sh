# Issue 5's matrix (bench/refine_bench.py) on the GPU, and what judges it, in one call.
# env: CASES (FORMAT:SYM[:MAP] ...), SEED, NAME (the outputs' stem), EXTRA (more options),
# TLIM (seconds for the bench). Outputs: $NAME.json, $NAME.log and runs.tgz (each case's
# run.log, run_data.star, truth_particles.star, simulation.json), for simulate.evaluate.
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/matrix; rm -rf $W; mkdir -p $W
timeout -s TERM ${TLIM:-560} python3 bench/refine_bench.py --cases $CASES --seed ${SEED:-2811} \
    --gpu --work $W --out $OUT/${NAME:-matrix}.json $EXTRA > $OUT/${NAME:-matrix}.log 2>&1
echo rc=$?
grep -A40 "^device |" $OUT/${NAME:-matrix}.log | tail -20
(cd $W && tar czf $OUT/runs.tgz */Refine/run.log */Refine/run_data.star */sim/truth_particles.star */sim/simulation.json 2>/dev/null)
nvidia-smi --query-gpu=name --format=csv,noheader
