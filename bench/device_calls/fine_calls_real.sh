# The fine pass's scores and M-step sums in a real run, then the two M-step kernels swept at its
# costliest group shape. Iteration ITER (27) from the committed state (final_iteration_ab.py,
# the data simulated first where missing) under SETTINGS (default: once to compile, once with
# each fine group's sums recorded, tutorial_bench.py --record_fine_calls: sizes and device time
# per call); each recorded run's table printed and its JSON returned as $OUT/NAME.json; then
# fine_kernel_configs.py at the costliest shape of the first recorded run (--quick unless
# FULL=1; SWEEP=0 skips it). Settings whose name starts with "rec" are the recorded ones, e.g.
# SETTINGS="warm rec=--record_fine_calls warm_old=PYTHONPATH=/tmp/site:/tmp/old/src
#   rec_old=PYTHONPATH=/tmp/site:/tmp/old/src,--record_fine_calls" with .carry/old_src.tar.
set -o pipefail
. bench/device_calls/setup.sh
mkdir -p /tmp/old && tar xf .carry/old_src.tar -C /tmp/old 2>/dev/null
rm -f /tmp/work/ab_*.json  # a warm machine's earlier runs
ITER=${ITER:-27}
STATE=${STATE:-bench/results/tutorial_9437_reader_h100_it025-026_state.tgz}
SETTINGS=${SETTINGS:-warm rec=--record_fine_calls}
timeout ${TLIM:-380} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state $STATE \
  --iter $ITER --gpu --settings $SETTINGS --out $OUT/ab.json 2>&1 \
  | grep -v "Warning\|particles=" | tail -8
FIRST=
for run in /tmp/work/ab_*_rec*.json; do
  [ -e "$run" ] || continue
  name=$(basename $run .json); cp $run $OUT/$name.json; FIRST=${FIRST:-$OUT/$name.json}
  echo "== $name"; python3 bench/fine_calls.py $run
done
[ -n "$FIRST" ] || exit 1
[ "$SWEEP" = 0 ] && exit 0
SHAPE=$(python3 bench/fine_calls.py $FIRST --shape_args)
QUICK=--quick; [ "$FULL" = 1 ] && QUICK=
echo "sweep: $SHAPE $QUICK"
timeout ${SLIM:-200} python3 bench/fine_kernel_configs.py $SHAPE $QUICK \
  --out $OUT/fine_kernel_configs.json 2>&1 | grep -v Warning
