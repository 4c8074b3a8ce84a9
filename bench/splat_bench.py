"""Trilinear insertion (back-projection) rate against the accumulators.

    python3 bench/splat_bench.py [--box 96] [--rotations 2048] [--out FILE]

On one CUDA device, ``--rotations`` rotations (uniformly random, or within 3
degrees of a random rotation, as a fine pass's children) of every frequency
within ``box / 2`` are added into the padded half-grid accumulators of a
``--box`` map with ``fourier.splat_rotated``, as the E-step's insertion does:

- ``float64``: complex128 / float64 accumulators (the half sets' sums): three
  double atomics per corner;
- ``float32``: complex64 / float32 accumulators;
- ``packed``: one float32 ``(p, p, ph, 4)`` accumulator of (re, im, weight, 0)
  (``fourier.packed_accumulator``, what a single-precision E-step batch inserts
  into on a GPU): one vector reduction per corner where the GPU has them.

Prints the median seconds of 3 calls, G samples per second and the largest
difference from the float64 sums relative to their largest value; writes the
same as JSON. (Session 10's measurement, ``bench/results/splat_h100.json``,
also timed a two-wide vector reduction of (re, im) and three spellings of the
instruction, with kernels written in this file at commit 90e0ffa.)
"""

import argparse
import json
from functools import partial
from pathlib import Path

import torch
from floor_rates import median_seconds  # bench/ is on sys.path

from cryorefine.fourier import packed_accumulator, splat_rotated, zero_accumulators
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood.window import fourier_window, window_frequencies_xyz
from cryorefine.simulate.poses import random_rotations


def _accumulators(variant: str, n: int, device: torch.device) -> tuple:
    if variant == "packed":
        return packed_accumulator(n, padding_factor=2, device=device), None
    dtype = torch.float64 if variant == "float64" else torch.float32
    return zero_accumulators(n, padding_factor=2, device=device, dtype=dtype)


def _sums(accumulators: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(data, weight) of either kind of accumulator, in float64."""
    data, weight = accumulators
    if weight is None:  # packed
        values = torch.complex(data[..., 0], data[..., 1]).to(torch.complex128)
        return values, data[..., 2].double()
    return data.to(torch.complex128), weight.double()


def main() -> None:
    """Run the benchmark (module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--rotations", type=int, default=2048)
    parser.add_argument("--out", default="bench_splat.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(3)
    n, half = args.box, args.box // 2
    window = fourier_window(n, 3, device=device, include_dc=True, include_redundant=True)
    frequencies = window_frequencies_xyz(window)
    k = frequencies.shape[0]
    data = torch.randn((args.rotations, k), dtype=torch.complex64, device=device, generator=gen)
    weights = torch.rand((args.rotations, k), device=device, generator=gen)
    rotation_gen = torch.Generator().manual_seed(4)
    base = random_rotations(1, generator=rotation_gen)[0]
    options = {"padding_factor": 2, "max_radius": float(half), "skip_redundant": True, "ndim": 3}
    rows = []
    for spread in ("random", "within 3 degrees"):
        if spread == "random":
            rotations = random_rotations(args.rotations, generator=rotation_gen)
        else:
            angles = torch.rand((args.rotations, 3), dtype=torch.float64, generator=rotation_gen)
            rotations = base @ euler_to_matrix(angles * 3.0)
        rotations = rotations.to(device, torch.float32)
        reference = None
        for variant in ("float64", "float32", "packed"):
            accumulators = _accumulators(variant, n, device)
            splat = partial(
                splat_rotated, data, weights, rotations, frequencies,
                accumulator_data=accumulators[0], accumulator_weight=accumulators[1], **options,
            )  # fmt: skip
            seconds = median_seconds(splat)
            for accumulator in accumulators:
                if accumulator is not None:
                    accumulator.zero_()
            splat()
            sums = _sums(accumulators)
            if reference is None:
                reference = sums
            scale = max(reference[0].abs().max().item(), reference[1].abs().max().item())
            difference = max((sums[0] - reference[0]).abs().max().item(),
                             (sums[1] - reference[1]).abs().max().item()) / scale  # fmt: skip
            rows.append({"rotations": spread, "variant": variant, "seconds": seconds,
                         "gsamples_per_second": args.rotations * k / seconds / 1e9,
                         "max_relative_difference": difference})  # fmt: skip
    print(f"{torch.cuda.get_device_name()}: box {n}, {args.rotations} x {k} samples")  # noqa: T201
    for row in rows:
        rate, difference = row["gsamples_per_second"], row["max_relative_difference"]
        print(f"{row['rotations']:<18}{row['variant']:<10}{row['seconds']:>9.4f}"  # noqa: T201
              f"{rate:>8.2f}{difference:>10.1e}")  # fmt: skip
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
