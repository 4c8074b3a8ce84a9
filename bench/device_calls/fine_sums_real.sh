# The fine pass's M-step sums in a real run, then the two M-step kernels swept at its
# costliest group shape. Iteration ITER (27) from the committed state (final_iteration_ab.py,
# the data simulated first where missing): once to compile, once with each fine group's sums
# recorded (tutorial_bench.py --record_fine_sums: sizes and device time per call); the
# recorded table printed; then fine_kernel_configs.py at the costliest shape (--quick unless
# FULL=1). The recorded run's JSON comes back as $OUT/recorded.json.
set -o pipefail
. bench/device_calls/setup.sh
ITER=${ITER:-27}
STATE=${STATE:-bench/results/tutorial_9437_reader_h100_it025-026_state.tgz}
timeout ${TLIM:-380} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state $STATE \
  --iter $ITER --gpu --settings warm rec=--record_fine_sums --out $OUT/ab.json 2>&1 \
  | grep -v "Warning\|particles=" | tail -6
cp /tmp/work/ab_1_rec.json $OUT/recorded.json || exit 1
python3 bench/fine_sum_calls.py $OUT/recorded.json | tee $OUT/fine_sums_table.txt
SHAPE=$(python3 bench/fine_sum_calls.py $OUT/recorded.json --shape_args)
QUICK=--quick; [ "$FULL" = 1 ] && QUICK=
echo "sweep: $SHAPE $QUICK"
timeout ${SLIM:-200} python3 bench/fine_kernel_configs.py $SHAPE $QUICK \
  --out $OUT/fine_kernel_configs.json 2>&1 | grep -v Warning
