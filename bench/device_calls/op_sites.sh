# The final iteration (27) from the committed iteration-25/26 state with every host-waiting
# call and every dispatched operator counted by call site (bench/sync_sites.py --ops).
# The data are simulated first (about 150 s on an H100).
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/work; rm -rf $W/Refine3D; mkdir -p $W/Refine3D
tar xzf bench/results/tutorial_9437_reader_h100_it025-026_state.tgz -C $W/Refine3D
python3 -c "
import sys; from pathlib import Path
sys.argv = ['tutorial_bench.py', '--tutorial', '.carry/tutorial', '--gpu', '--work', '$W']
import tutorial_bench
tutorial_bench.simulate(tutorial_bench.parse_arguments(), Path('$W/sim'))
" > $OUT/simulate.log 2>&1 || { tail -20 $OUT/simulate.log; exit 1; }
timeout -s TERM ${TLIM:-420} python3 bench/sync_sites.py --continue $W/Refine3D/run_it026_optimiser.star --o /tmp/ss/run --iter 27 --ops --top ${TOP:-80} --gpu 0 --precision ${PRECISION:-tf32} > $OUT/op_sites.log 2>&1
echo rc=$?
grep -v "particles=" $OUT/op_sites.log | tail -c 9000
