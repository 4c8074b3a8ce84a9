"""Cut a carried refinement state to every ``step``-th particle, to profile a smaller iteration.

    python3 bench/state_subset.py /tmp/work/Refine3D/run_it026_data.star --keep 900

Rewrites the data STAR file in place (``io.write_star``: whole or not at all) with
about ``keep`` of its particles, evenly spread over the table (both half sets), and at
least one of every scale group. The continued iteration then scores only those: its
phases, operators and kernels are those of the full job at the same sizes, in
proportion, and a profiler's tables over them are built in seconds instead of minutes.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from cryorefine.io import read_star, write_star

GROUP_LABELS = ("rlnGroupName", "rlnTomoName", "rlnMicrographName")
"""The first of these in the table names the particles' scale groups: every group keeps at
least its first particle, as a continued run expects the model's groups in the data."""


def keep_every(path: Path, keep: int) -> int:
    """Keep about ``keep`` particles of the data STAR file ``path`` (every ``step``-th, and
    each group's first); the number kept."""
    blocks = read_star(path)
    particles = blocks["particles"]
    step = max(1, math.ceil(len(particles) / keep))
    kept = np.arange(len(particles)) % step == 0
    label = next((name for name in GROUP_LABELS if name in particles.columns), None)
    if label is not None:
        kept |= ~particles[label].duplicated().to_numpy()
    blocks["particles"] = particles[kept].reset_index(drop=True)
    write_star(blocks, path)
    return int(kept.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_star", type=Path)
    parser.add_argument("--keep", type=int, required=True)
    args = parser.parse_args()
    kept = keep_every(args.data_star, args.keep)
    sys.stdout.write(f"kept {kept} particles of {args.data_star}\n")


if __name__ == "__main__":
    main()
