# Our CPU path against the GPU on the same data and the same state, on the device machine
# (its 16 cores for the CPU): N (300) tutorial-shaped particles refined on the GPU to convergence;
# then, from the state after iteration 1 (order 2, global) and the state before the final
# iteration, KEEP of those particles one iteration on the GPU and one on the CPU; then the
# best poses of reduced precision against float64 from the state before the final iteration
# (PRECISION=1).
# env: N (300), KEEP (60), TG (seconds for the GPU job), TC (seconds per single iteration)
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/cg; N=${N:-300}; KEEP=${KEEP:-60}; rm -rf $W
timeout -s TERM ${TG:-200} python3 bench/tutorial_bench.py --tutorial .carry/tutorial --gpu \
  --n_particles $N --work $W --no_floor --precision tf32 --out $OUT/gpu_job.json > $OUT/gpu_job.log 2>&1
echo gpu_job rc=$?
cp $W/Refine3D/run.log $OUT/gpu_job_run.log
last=$(ls $W/Refine3D/run_it*_optimiser.star | tail -1 | sed 's/.*run_it\([0-9]*\)_optimiser.star/\1/')
before=$(printf %03d $((10#$last - 1)))
echo "last iteration $last; single iterations from 001 and $before"
mv $W/Refine3D $W/job  # the continued runs sit where the job was: its star files name that path
for K in 001 $before; do
  for D in gpu cpu; do
    rm -rf $W/Refine3D; mkdir -p $W/Refine3D; cp $W/job/run_it${K}_* $W/Refine3D/
    python3 bench/state_subset.py $W/Refine3D/run_it${K}_data.star --keep $KEEP
    if [ $D = gpu ]; then flags="--gpu --precision tf32"; else flags=""; fi
    timeout -s TERM ${TC:-150} python3 bench/tutorial_bench.py --tutorial .carry/tutorial $flags \
      --work $W --continue_run --iter $((10#$K + 1)) --no_floor --out $OUT/it${K}_$D.json \
      > $OUT/it${K}_$D.log 2>&1
    echo "from $K on $D rc=$?"
    cp $W/Refine3D/run.log $OUT/it${K}_${D}_run.log
    grep "e_step_seconds=\|seconds=\|phase=e_step" $W/Refine3D/run.log | tail -3
  done
done
[ "$PRECISION" = 1 ] && { timeout ${TP:-120} python3 bench/precision_poses.py --continue $W/job/run_it${before}_optimiser.star \
  --gpu --particles 150 --precisions tf32_texture texture tf32 --out $OUT/precision.json \
  > $OUT/precision.log 2>&1
echo precision rc=$?; tail -12 $OUT/precision.log; }
nproc; python3 -c "import torch; print('torch threads', torch.get_num_threads())"
cd $OUT && tar czf cpu_gpu.tgz *.json *.log && rm -f *.json *.log
