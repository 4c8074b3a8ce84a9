# sum_pairs at the final iteration's real fine groups, without data: bench/pair_sums_bench.py at
# the median group's sizes (GROUP, from fine_calls.py on a --record_fine_calls run) with its
# kernels by device time (--profile), then fine_kernel_configs.py's launch sweep at that shape
# (SHAPE, in full) and at the costliest shape (COSTLY, --quick). 79 s in session 34. POWERS
# (default --held_powers: the rows' squares held, as the fine pass holds them since session 34;
# POWERS= is session 34's first call, whose groups took the torch route).
set -o pipefail
. bench/device_calls/setup.sh
GROUP=${GROUP:-21 13 3 245}
CARRIED=${CARRIED:-0.63}
POWERS=${POWERS---held_powers}
SHAPE=${SHAPE:-21 24 104 1960 238870 242499}
COSTLY=${COSTLY:-69 16 48 1993 238870 242499}
timeout ${PLIM:-120} python3 bench/pair_sums_bench.py --group $GROUP --kb 242499 \
  --fractions $CARRIED --particle_phases $POWERS --profile ${TOP:-25} --label median \
  --out $OUT/pair_sums_median_group.json 2>&1 | grep -v Warning
timeout ${SLIM:-240} python3 bench/fine_kernel_configs.py --shape $SHAPE --carried $CARRIED \
  --out $OUT/fine_kernel_configs_median.json 2>&1 | grep -v Warning
[ "$COSTLY" = none ] && exit 0
timeout ${QLIM:-150} python3 bench/fine_kernel_configs.py --shape $COSTLY --carried 0.442 --quick \
  --out $OUT/fine_kernel_configs_costliest.json 2>&1 | grep -v Warning
