"""Trilinear sampling rate against the order of the frequency list.

    python3 bench/sampling_order_bench.py [--box 96] [--rotations 2048] [--out FILE]

``fourier.trilinear_kernels.sample_kernel`` on one CUDA device: a ``--box`` 3D
reference padded twice, every frequency within ``box / 2``, ``--rotations``
rotations either uniformly random or within 3 degrees of a random rotation (a
local search's list, a fine pass's children). The same frequencies are given in
five orders: the window's (``likelihood.fourier_window``: x fastest), z fastest,
Morton (bit-interleaved x, y, z), and tiles of 8 x 4 x 1 and 4 x 4 x 2 (x fastest
inside a tile). A warp's
32 lanes sample 32 consecutive entries; in raster order they walk a line of the
rotated grid and touch a cache line each, in tiles a compact patch whose
corners share lines. Prints the median seconds of 3 calls and G samples per
second per order, and writes the same as JSON. The window and Morton orders are
also sampled by the texture units (``fourier.texture``). The outputs come in the
order given (no permutation back): this measures the sampling alone.
"""

import argparse
import json
from functools import partial
from pathlib import Path

import torch
from floor_rates import median_seconds  # bench/ is on sys.path

from cryorefine.fourier import trilinear_kernels
from cryorefine.fourier.texture import ReferenceTexture, sample_texture
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood.window import fourier_window, window_frequencies_xyz
from cryorefine.simulate.poses import random_rotations


def morton_key(frequencies: torch.Tensor) -> torch.Tensor:
    """Bit-interleaved ``(x, y, z)`` of frequencies shifted to be non-negative."""
    v = (frequencies - frequencies.amin(dim=0)).to(torch.int64)
    key = torch.zeros(v.shape[0], dtype=torch.int64, device=v.device)
    for bit in range(int(v.max()).bit_length()):
        for axis in range(3):
            key |= ((v[:, axis] >> bit) & 1) << (3 * bit + axis)
    return key


def tile_key(frequencies: torch.Tensor, tile: tuple[int, int, int]) -> torch.Tensor:
    """Tile by tile (z, then y, then x tiles), raster inside each tile."""
    v = (frequencies - frequencies.amin(dim=0)).to(torch.int64)
    size = torch.tensor(tile, device=v.device)
    outer, inner = v // size, v % size
    extent = outer.amax(dim=0) + 1
    key = (outer[:, 2] * extent[1] + outer[:, 1]) * extent[0] + outer[:, 0]
    within = (inner[:, 2] * tile[1] + inner[:, 1]) * tile[0] + inner[:, 0]
    return key * (tile[0] * tile[1] * tile[2]) + within


def _cases(orders: dict[str, torch.Tensor]):
    """(sampler, order) and frequencies: every order exactly, window and Morton by texture."""
    for order_name, frequencies in orders.items():
        yield ("exact", order_name), frequencies
    for order_name in ("window", "morton"):
        yield ("texture", order_name), orders[order_name]


def main() -> None:
    """Run the benchmark (module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--rotations", type=int, default=2048)
    parser.add_argument("--out", default="bench_sampling_order.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(1)
    p, half = 2 * args.box, args.box // 2
    reference = torch.randn((p, p, p // 2 + 1), dtype=torch.complex64, device=device, generator=gen)
    raster = window_frequencies_xyz(fourier_window(args.box, 3, device=device))
    z_fastest = raster[torch.argsort((raster[:, 0] * p + raster[:, 1]) * p + raster[:, 2])]
    orders = {
        "window": raster,
        "z fastest": z_fastest,
        "morton": raster[torch.argsort(morton_key(raster))],
        "tiles 8x4x1": raster[torch.argsort(tile_key(raster, (8, 4, 1)))],
        "tiles 4x4x2": raster[torch.argsort(tile_key(raster, (4, 4, 2)))],
    }
    texture = ReferenceTexture(reference)
    rows = []
    rotation_gen = torch.Generator().manual_seed(2)  # simulate's uniform draws, on the CPU
    base = random_rotations(1, generator=rotation_gen)[0].to(device)
    for spread_name in ("random", "within 3 degrees"):
        if spread_name == "random":
            rotations = random_rotations(args.rotations, generator=rotation_gen)
            rotations = rotations.to(device, torch.float32)
        else:  # small turns about a random rotation, as a local search's list
            angles = torch.rand((args.rotations, 3), dtype=torch.float64, device=device,
                                generator=gen)  # fmt: skip
            rotations = (base.to(torch.float64) @ euler_to_matrix(angles * 3.0)).to(torch.float32)
        for (sampler, order_name), frequencies in _cases(orders):
            if sampler == "texture":
                sample = partial(sample_texture, texture, rotations, frequencies)
            else:
                sample = partial(trilinear_kernels.sample_kernel, reference, rotations, frequencies)
            seconds = median_seconds(partial(sample, padding_factor=2, max_radius=float(half),
                                              scale=1.0))  # fmt: skip
            samples = args.rotations * raster.shape[0]
            rate = samples / seconds / 1e9
            rows.append({"rotations": spread_name, "sampler": sampler, "order": order_name,
                         "seconds": seconds, "gsamples_per_second": rate})  # fmt: skip
    texture.close()
    print(f"{torch.cuda.get_device_name()}: box {args.box}, {raster.shape[0]} frequencies")  # noqa: T201
    print(f"{'rotations':<18}{'sampler':<9}{'order':<14}{'seconds':>9}{'GS/s':>8}")  # noqa: T201
    for row in rows:
        print(f"{row['rotations']:<18}{row['sampler']:<9}{row['order']:<14}"  # noqa: T201
              f"{row['seconds']:>9.4f}{row['gsamples_per_second']:>8.1f}")  # fmt: skip
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
