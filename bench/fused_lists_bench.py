"""Local-search coarse lists: the fused kernel against projecting, holding and gathering them.

    python3 bench/fused_lists_bench.py [--particles 32] [--slots 183] [--translations 19]
        [--box 96] [--variants R:K:W:P[:tex] ...] [--out bench_fused_lists.json]

The tutorial's order-6 shape: each of ``--particles`` particles has its own list
of ``--slots`` candidate orientations (no two particles share one), ``--translations``
trial shifts, the window of every frequency within ``box / 2`` of a ``--box`` 3D
reference padded twice. Times, on one CUDA device, (1) the held-lists path of
``search._list_scores``: the union projected (``sample_rotated``), then
``passes.score_held_lists``, with exact sampling and with the texture units'
(``fourier.texture``); (2) ``fused_lists.fused_list_scores`` for each variant
``R:K:W:P[:tex]`` (slots and frequencies per program step, warps, precision,
sampled by the texture units).
Prints seconds, trilinear samples per second (particles x slots x frequencies
over the seconds), the ratio to the held path and the largest difference of
the scores relative to their magnitude; writes the same as JSON.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from cryorefine.fourier import sample_rotated
from cryorefine.fourier.texture import ReferenceTexture, reference_texture
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood import fused_lists
from cryorefine.likelihood.passes import ParticleWindowData, score_held_lists


def _timed(run) -> tuple[float, torch.Tensor]:
    run()  # compile and warm up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = run()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    """Run the benchmark (module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--slots", type=int, default=183)
    parser.add_argument("--translations", type=int, default=19)
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument(
        "--variants", nargs="+", default=["16:64:4:float32", "16:64:4:float32:tex",
        "16:32:4:float32:tex", "16:128:4:float32:tex", "32:64:4:float32:tex",
        "16:64:8:float32:tex", "16:64:4:tf32:tex"],
        help="block_r:block_k:warps:precision[:tex] of each fused run",
    )  # fmt: skip
    parser.add_argument("--out", default="bench_fused_lists.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(1)
    n, s, r, t = args.box, args.particles, args.slots, args.translations
    p = 2 * n
    reference = torch.randn((p, p, p // 2 + 1), dtype=torch.complex64, device=device, generator=gen)
    half = n // 2
    axes = (torch.arange(0, half + 1), torch.arange(-half, half), torch.arange(-half, half))
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    frequencies = grid[grid.square().sum(-1) <= half**2].to(device)
    k = frequencies.shape[0]
    angles = torch.rand((s * r, 3), dtype=torch.float64, device=device, generator=gen) * 360
    rotations = euler_to_matrix(angles).to(torch.float32)
    rows = torch.arange(s * r, device=device).reshape(s, r)
    valid = torch.ones((s, r), dtype=torch.bool, device=device)
    data = torch.randn((s, k), dtype=torch.complex64, device=device, generator=gen)
    ctf = torch.rand((s, k), device=device, generator=gen)
    weight = torch.rand((s, k), device=device, generator=gen)
    phase = torch.rand((t, k), device=device, generator=gen) * 6.283
    phases = torch.polar(torch.ones_like(phase), phase).expand(s, -1, -1)
    particles = ParticleWindowData(data, ctf, weight, phases)
    budget = 16 * 2**30
    options = {"padding_factor": 2, "max_radius": float(half), "scale": 1.0}

    def held() -> torch.Tensor:
        values = sample_rotated(reference, rotations, frequencies, **options)
        return score_held_lists(
            particles, values, rows, valid, cross_correlation=False, precision="float32",
            max_bytes=budget,
        )  # fmt: skip

    held_seconds, held_scores = _timed(held)
    samples = s * r * k
    table = [{"path": "held lists", "variant": None, "seconds": held_seconds,
              "gsamples_per_second": samples / held_seconds / 1e9, "ratio_to_held": 1.0,
              "max_relative_difference": 0.0}]  # fmt: skip
    magnitude = held_scores.abs().amax().item()
    texture = ReferenceTexture(reference)
    with reference_texture(reference):
        seconds, scores = _timed(held)
    table.append({"path": "held lists", "variant": "tex", "seconds": seconds,
                  "gsamples_per_second": samples / seconds / 1e9,
                  "ratio_to_held": seconds / held_seconds,
                  "max_relative_difference": (scores - held_scores).abs().amax().item()
                  / magnitude})  # fmt: skip
    for variant in args.variants:
        block_r, block_k, warps, precision, *by = variant.split(":")
        fused_lists._BLOCK_R, fused_lists._BLOCK_K = int(block_r), int(block_k)
        fused_lists._NUM_WARPS = int(warps)

        sampler = texture if by == ["tex"] else None

        def fused(precision: str = precision, sampler=sampler) -> torch.Tensor:
            return fused_lists.fused_list_scores(
                particles, reference, rotations, rows, valid, frequencies, precision=precision,
                max_bytes=budget, texture=sampler, **options,
            )  # fmt: skip

        seconds, scores = _timed(fused)
        table.append({"path": "fused kernel", "variant": variant, "seconds": seconds,
                      "gsamples_per_second": samples / seconds / 1e9,
                      "ratio_to_held": seconds / held_seconds,
                      "max_relative_difference": (scores - held_scores).abs().amax().item()
                      / magnitude})  # fmt: skip
    shape = f"{s} particles x {r} slots x {k} frequencies, {t} translations"
    print(f"{torch.cuda.get_device_name()}: {shape}")  # noqa: T201
    print(f"{'path':<14}{'variant':>18}{'seconds':>10}{'GS/s':>8}{'x held':>8}{'max diff':>10}")  # noqa: T201
    for row in table:
        block = "" if row["variant"] is None else str(row["variant"])
        print(f"{row['path']:<14}{block:>18}{row['seconds']:>10.3f}"  # noqa: T201
              f"{row['gsamples_per_second']:>8.1f}{row['ratio_to_held']:>8.2f}"
              f"{row['max_relative_difference']:>10.1e}")  # fmt: skip
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
