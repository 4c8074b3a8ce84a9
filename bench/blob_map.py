"""A test object for the symmetry cases: a few Gaussian blobs at generic positions.

    python3 bench/blob_map.py --box 32 --angpix 5.4 --o blobs.mrc [--seed 3]

``cryorefine simulate --map blobs.mrc --sym O`` imposes the point group on it:
24 copies of each blob for O. The embedded hexamer under O is close to a
spherical shell at box 32 and 5.4 A/px (poses poorly determined); two blobs of
1.5 px at radii 8 and 11 px give 48 copies about 7 px apart, well beyond the
10.8 A Nyquist resolution, so the poses are defined.

The blobs' width sets how far the signal reaches. With ``--sigma 1.5`` (the default,
sessions 5 and 16) the O-symmetrised map's shell power falls by 10^-8 at shell 14
of 16: the data reach about 14 A, not Nyquist, whatever the poses. With
``--sigma 0.8`` its power at Nyquist is that of the embedded hexamer (10^-3.5 and
10^-3.8 of the total), so the O cases are judged at the same resolution as C1 and C6
(issue 5's matrix from session 27: ``refine_bench.py --cases relion4:O:blobs.mrc``).
"""

import argparse
from pathlib import Path

import numpy as np

from cryorefine.io import write_mrc


def blob_map(box: int, *, radii_px: tuple[float, ...], sigma_px: float, seed: int) -> np.ndarray:
    """``(box, box, box)`` float32: one Gaussian blob per radius, in random directions."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(box) - box // 2] * 3, indexing="ij"), axis=-1)
    volume = np.zeros((box, box, box))
    for radius in radii_px:
        direction = rng.normal(size=3)
        centre = radius * direction / np.linalg.norm(direction)
        distance2 = ((grid - centre) ** 2).sum(axis=-1)
        volume += np.exp(-distance2 / (2 * sigma_px**2))
    return volume.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--angpix", type=float, default=5.4)
    parser.add_argument("--radii", type=float, nargs="+", default=[8.0, 11.0])
    parser.add_argument("--sigma", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--o", type=Path, required=True)
    args = parser.parse_args()
    volume = blob_map(args.box, radii_px=tuple(args.radii), sigma_px=args.sigma, seed=args.seed)
    write_mrc(args.o, volume, voxel_size_angst=args.angpix)


if __name__ == "__main__":
    main()
