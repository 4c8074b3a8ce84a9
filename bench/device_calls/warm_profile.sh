# The final iteration from the committed iteration-25/26 state under torch.profiler on a warm
# machine, with the device's idle time charged to the host (bench/gpu_idle.py), free of
# Triton's compilation. Two calls in a row on one machine (/tmp/work persists while it is
# warm): the first simulates the data and runs the iteration once, timed (the kernels are
# compiled and cached there; about 260 s); the second runs it under the profiler (about
# 60 s, then minutes while the profiler builds the events; the idle table comes first).
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work
if [ ! -e $W/warm.done ]; then
  rm -rf $W/Refine3D; mkdir -p $W/Refine3D
  tar xzf bench/results/tutorial_9437_reader_h100_it025-026_state.tgz -C $W/Refine3D
  timeout -s TERM ${TLIM:-560} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu --work $W --continue_run --iter 27 --no_floor --out $OUT/warm.json > $OUT/warm.log 2>&1
  echo warm rc=$?; touch $W/warm.done
  grep "half_set=. phase_seconds\|^iteration_seconds_total" $OUT/warm.log
else
  TLIM=${TLIM:-560} bash bench/device_calls/profile_final.sh > /dev/null
  grep -A40 "^span " $OUT/profile.log; grep "half_set=. phase_seconds\|^iteration_seconds_total" $OUT/profile.log
fi
