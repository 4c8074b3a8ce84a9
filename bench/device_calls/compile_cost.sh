# What Triton's compiling costs the first iterations: the job's first ITER iterations (3)
# run with an empty Triton cache, then again with the cache that run filled (nothing left
# to compile), then once per build in BUILDS (tars of `git archive REV src` in .carry) with
# an empty cache of its own. Prints each run's iteration seconds and the compiled variants
# per kernel (one cubin per variant in the cache), and runs each build's CUDA tests (TESTS). The data are simulated once per machine.
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work; mkdir -p $W
ITER=${ITER:-3}
variants() { find $1 -name "*.cubin" 2>/dev/null | xargs -r -n1 basename | sort | uniq -c | tr '\n' ';'; echo; }
one_run() {  # name cache_dir pythonpath
  rm -rf $W/Refine3D
  TRITON_CACHE_DIR=$2 PYTHONPATH=$3 timeout -s TERM ${TLIM:-300} python3 bench/tutorial_bench.py \
    --tutorial .carry/tutorial --gpu --work $W --continue_run --iter $ITER --no_floor \
    --out $OUT/$1.json $EXTRA > $OUT/$1_stdout.log 2>&1
  echo "$1 rc=$? $(grep -o 'iter=00[0-9].*seconds=[0-9.]*' $W/Refine3D/run.log | sed 's/ resolution.*seconds=/ s=/' | tr '\n' ' ')"
  echo "$1 variants: $(variants $2)"
  cp $W/Refine3D/run.log $OUT/$1_run.log 2>/dev/null
}
one_run main_cold /tmp/tc_main $PYTHONPATH
one_run main_warm /tmp/tc_main $PYTHONPATH
for b in $BUILDS; do
  mkdir -p /tmp/$b && tar xf .carry/${b}_src.tar -C /tmp/$b
  one_run ${b}_cold /tmp/tc_$b /tmp/site:/tmp/$b/src:$PWD/bench
done
for b in $BUILDS; do  # the build's CUDA tests (TESTS), its source before the checkout's
  [ -n "$TESTS" ] && PYTHONPATH=/tmp/site:/tmp/$b/src:$PWD/bench timeout ${TEST_LIM:-120} \
    python3 -m pytest -q -p no:cacheprovider $TESTS -k gpu > $OUT/${b}_pytest_gpu.txt 2>&1
  echo "$b tests: $(tail -1 $OUT/${b}_pytest_gpu.txt)"
done
nvidia-smi --query-gpu=name --format=csv,noheader
