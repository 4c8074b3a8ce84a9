# What reading the tutorial's particles costs per batch (bench/read_batches_bench.py): the
# files alone with 1, 4 and 8 reading threads, particle_batches whole, and a pinned host
# cache gathered or sliced. The data are simulated first where missing (seed 11).
set -o pipefail
. bench/device_calls/setup.sh
if [ ! -e /tmp/work/sim/optimisation_set.star ]; then
  python3 -c "
import argparse; from pathlib import Path; from tutorial_bench import simulate
print('simulated in', simulate(argparse.Namespace(tutorial=Path('.carry/tutorial'), box=96, bin=6, seed=11, n_particles=None, snr=None, gpu=True), Path('/tmp/work/sim')))" 2>&1 | grep -v Warning | tail -2
fi
ls /tmp/work/sim | head
STAR=$(ls /tmp/work/sim/*particles*.star | head -1)
timeout ${RLIM:-200} python3 bench/read_batches_bench.py --particles $STAR --gpu --batches ${BATCHES:-30} --threads 1 4 8 --out $OUT/read_batches.json
