"""The projection and insertion kernels over launch shapes, at the tutorial job's order 6.

    python3 bench/fourier_kernel_configs.py [--box 96] [--lists 64] [--per_list 32]
        [--quick] [--out FILE]

``texture._sample`` (the E-step's projections: texture sampling of the padded 3D
reference, float16 texels, at each rotation's window of ``k`` coefficients, ``ROWS``
rotations per program) and ``trilinear_kernels._splat`` (the insert: trilinear addition
into the packed float32 accumulator of (re, im, weight, 0), one vector reduction per
corner), each launched with every combination of its block size, rows per program (the
sampler) and ``num_warps`` listed below, the committed launch first. The rotations are
a fine pass's: ``--lists`` lists of ``--per_list`` rotations within 3 degrees of a
random rotation each, list after list. Each launch's values (sampling) or sums (insert)
are compared with the first launch's: sampling is bitwise equal with up to two
coefficients per thread (with more, the compiler vectorises the coordinates' arithmetic
and the texture's 8-bit fractions round some the other way: 2.5-4.9e-3 of the values'
size on an H200), the insert's sums differ only by the order of the atomic additions
(a launch with more threads than coefficients gave wrong sums). Times are of the launch alone
(``launch_sweep.sweep``; the accumulator zeroed before, untimed); the rates are samples
per second, and for the sampler the output written at the device's copy rate is its
floor. Needs a GPU.
"""

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import triton
from floor_rates import copy_rates  # bench/ is on sys.path
from launch_sweep import sweep
from texture_layout_bench import map_like_reference

from cryorefine.fourier import packed_accumulator, texture, trilinear_kernels
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood.window import fourier_window, window_frequencies_xyz
from cryorefine.simulate.poses import random_rotations

# the committed launch first
SAMPLE = {"BLOCK": (texture._BLOCK, 64, 128, 512), "ROWS": (texture._ROWS, 4, 16),
          "num_warps": (texture._WARPS, 1, 2, 4)}  # fmt: skip
SPLAT = {"BLOCK": (trilinear_kernels._BLOCK, 128, 512, 1024),
         "num_warps": (trilinear_kernels._SPLAT_WARPS, 2, 8)}  # fmt: skip
QUICK = {"ROWS": (texture._ROWS,), "num_warps": (texture._WARPS, 4)}  # sampling; the insert whole


def local_rotations(lists: int, per_list: int, device: torch.device) -> torch.Tensor:
    """``lists x per_list`` rotations, each list within 3 degrees of a random rotation."""
    gen = torch.Generator().manual_seed(2)
    n = lists * per_list
    centres = random_rotations(lists, generator=gen).to(torch.float64)
    turns = euler_to_matrix(3.0 * torch.rand((n, 3), dtype=torch.float64, generator=gen))
    return (centres.repeat_interleave(per_list, 0) @ turns).to(device, torch.float32)


def launch_sample(case: dict, block: int, rows: int, num_warps: int) -> None:
    """``texture.sample_texture``'s launch with these constants (one launch: all rows)."""
    tex, rot, freq, out = case["texture"], case["rotations"], case["freq"], case["out"]
    p, _, ph = tex.shape
    r, k = rot.shape[0], freq.shape[0]
    texture._sample[(triton.cdiv(k, block), triton.cdiv(r, rows))](
        tex.handle, rot, freq, out, out, r, k, p, ph, 2.0, float(case["half"]) ** 2,
        tex.scale, ROWS=rows, BLOCK=block, POWER=False, num_warps=num_warps,
    )  # fmt: skip


def launch_splat(case: dict, block: int, num_warps: int) -> None:
    """``trilinear_kernels.splat_kernel``'s packed launch with these constants."""
    acc, rot, freq = case["accumulator"], case["rotations"], case["freq"]
    p, ph = acc.shape[0], acc.shape[2]
    r, k = rot.shape[0], freq.shape[0]
    trilinear_kernels._splat[(triton.cdiv(k, block), r)](
        acc, acc, rot, freq, case["values"], case["weights"], k, p, ph, 2.0,
        float(case["half"]) ** 2, 1, 3, PACKED=True, VECTOR=case.get("vector", True), BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip


def table(name: str, case: dict, rows: list[dict], exact: bool) -> str:
    """The launches by time: milliseconds, G samples per second, ratio to the floor where
    there is one, and agreement with the first launch."""
    floor = case.get("floor_ms")
    lines = [f"{name}: {case['samples'] / 1e9:.2f} G samples"
             + (f", floor {floor:.2f} ms (output at the copy rate)" if floor else "")]  # fmt: skip
    for row in sorted(rows, key=lambda r: r.get("ms", float("inf"))):
        shape = " ".join(f"{key}={value}" for key, value in row.items() if key.isupper()
                         or key.startswith("num_"))  # fmt: skip
        if "error" in row:
            lines.append(f"  {shape:36s} {row['error']}")
            continue
        rate = case["samples"] / row["ms"] / 1e6
        ratio = f" {row['ms'] / floor:5.1f}x floor" if floor else ""
        same = "bitwise same" if row["bitwise_same"] else f"rel diff {row['rel_diff']:.1e}"
        lines.append(f"  {shape:36s} {row['ms']:8.2f} ms {rate:6.1f} GS/s{ratio}, {same}")
        if exact and not row["bitwise_same"]:
            lines[-1] += "  <- NOT the first launch's values"
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--lists", type=int, default=64)
    parser.add_argument("--per_list", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer launch shapes")
    parser.add_argument("--out", type=Path, default=Path("bench_fourier_kernel_configs.json"))
    args = parser.parse_args()
    device = torch.device("cuda")
    copy = max(copy_rates(device, 3).values())
    rotations = local_rotations(args.lists, args.per_list, device).reshape(-1, 9).contiguous()
    r, half = rotations.shape[0], args.box // 2
    # the fine window for sampling, the back-projection window (every coefficient of the
    # half-cube) for the insert, as the E-step has them at order 6
    fine = window_frequencies_xyz(fourier_window(args.box, 3, device=device))
    full = fourier_window(args.box, 3, device=device, include_dc=True, include_redundant=True)
    bp = window_frequencies_xyz(full)
    grids = (SAMPLE, SPLAT) if not args.quick else (
        {key: QUICK.get(key, values[:2]) for key, values in SAMPLE.items()},
        SPLAT,
    )  # fmt: skip
    sys.stdout.write(f"{torch.cuda.get_device_name()}: copy {copy / 1e9:.0f} GB/s; box "
                     f"{args.box}, {r} rotations in lists of {args.per_list}\n")  # fmt: skip
    with texture.reference_texture(map_like_reference(args.box, device)) as tex:
        out = torch.empty((r, fine.shape[0], 2), device=device)
        case = {"texture": tex, "rotations": rotations, "out": out, "half": half,
                "freq": fine.to(torch.int32).contiguous(),
                "samples": r * fine.shape[0], "floor_ms": out.numel() * 4 / copy * 1e3}  # fmt: skip
        sample = functools.partial(launch_sample, case)
        sampled = sweep(grids[0], sample, lambda o=out: o, args.repeats)
        sys.stdout.write(table("texture _sample", case, sampled, exact=True))
    del out, case
    gen = torch.Generator(device=device).manual_seed(3)
    accumulator = packed_accumulator(args.box, padding_factor=2, device=device)
    case = {
        "accumulator": accumulator, "rotations": rotations, "half": half,
        "freq": bp.to(torch.int32).contiguous(),
        "values": torch.randn((r, bp.shape[0], 2), device=device, generator=gen),
        "weights": torch.rand((r, bp.shape[0]), device=device, generator=gen),
        "samples": r * bp.shape[0],
    }  # fmt: skip
    splatted = sweep(grids[1], functools.partial(launch_splat, case), lambda: accumulator,
                     args.repeats, accumulator.zero_)  # fmt: skip
    sys.stdout.write(table("_splat (packed)", case, splatted, exact=False))
    summary = {"device": torch.cuda.get_device_name(), "copy": copy, "rotations": r,
               "sample": sampled, "splat": splatted}  # fmt: skip
    args.out.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
