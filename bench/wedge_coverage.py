"""How much of Fourier space each pseudo-subtomogram's CTF^2 volume covers, and batches.

    python3 bench/wedge_coverage.py SIM_DIR [--out FILE]

``SIM_DIR`` is a ``cryorefine simulate`` folder of pseudo-subtomograms (or any
particles.star with ``rlnCtfImage`` volumes, CTF^2 in the first ``n`` slices). Within
the sphere of radius ``n / 2``, it prints the share of coefficients where each
particle's CTF^2 is above zero, and where any particle of a tomogram's (a batch
drawn from one tomogram) is. Coefficients where every particle of a batch has zero
weight add nothing to any score or sum, so this is what a batch-wide window without
them could save: little unless particles share their missing wedge (subtomogram
angles 0).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cryorefine.fourier.conventions import frequency_indices
from cryorefine.io import read_mrc, read_star


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path)
    parser.add_argument("--out", type=Path, default=Path("wedge_coverage.json"))
    args = parser.parse_args()
    particles = read_star(args.sim / "particles.star")["particles"]
    per_particle: list[float] = []
    unions: dict[str, np.ndarray] = {}
    inside = None
    for name, tomogram in zip(particles["rlnCtfImage"], particles["rlnTomoName"], strict=True):
        volume = np.asarray(read_mrc(args.sim / name)[0], dtype=np.float32)
        n = volume.shape[1]
        if inside is None:
            k = frequency_indices(n, 3).to(torch.float64)
            inside = ((k * k).sum(dim=-1) <= (n // 2) ** 2).numpy()
        covered = (volume[:n] > 0) & inside
        per_particle.append(float(covered.sum() / inside.sum()))
        unions[tomogram] = covered | unions.get(tomogram, np.zeros_like(covered))
    shares = np.array(per_particle)
    result = {
        "particles": len(per_particle),
        "per_particle_share": {"mean": shares.mean(), "min": shares.min(), "max": shares.max()},
        "tomogram_union_share": {t: float(u.sum() / inside.sum()) for t, u in unions.items()},
    }
    sys.stdout.write(json.dumps(result, indent=1, default=float) + "\n")
    args.out.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
