# sum_pairs at a fine group of the tutorial's final iteration (bench/pair_sums_bench.py), this
# build against the one in .carry/old_src.tar (git archive OLD src): old, new, old, new, each a
# process of its own (the first compiles Triton's kernels); the last two compared. No data.
set -o pipefail
. bench/device_calls/setup.sh
mkdir -p /tmp/old && tar xf .carry/old_src.tar -C /tmp/old
for run in old1 new1 old2 new2; do
  src=$PWD/src; case $run in old*) src=/tmp/old/src;; esac
  PYTHONPATH=/tmp/site:$src:$PWD/bench timeout ${LIM:-120} python3 bench/pair_sums_bench.py \
    --label $run --out $OUT/pair_sums_$run.json $ARGS 2>&1 | grep -v Warning
done
python3 bench/pair_sums_bench.py --compare $OUT/pair_sums_old2.json $OUT/pair_sums_new2.json
