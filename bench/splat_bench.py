"""Trilinear insertion (back-projection) rate against the accumulators' dtype and atomics.

    python3 bench/splat_bench.py [--box 96] [--rotations 2048] [--out FILE]

On one CUDA device, ``--rotations`` rotations (uniformly random, or within 3
degrees of a random rotation, as a fine pass's children) of every frequency
within ``box / 2`` are added into the padded half-grid accumulators of a
``--box`` map, as the E-step's insertion does (``fourier.splat_rotated``):

- ``float64``: the library's kernel into complex128 / float64 accumulators
  (what the E-step's sums use): 3 double atomics per corner;
- ``float32``: the same kernel into complex64 / float32 accumulators;
- ``v2 <syntax>``: an experimental kernel that adds (re, im) with one
  vector atomic (PTX ``red`` ``.v2.f32``, Hopper) and the weight with one
  scalar atomic;
- ``v4 <syntax>``: (re, im, weight, 0) into one interleaved float32
  accumulator with one ``.v4.f32`` atomic per corner.

Three spellings of the vector ``red`` instruction are tried; one that does not
compile is reported as such. Prints the median seconds of 3 calls, G samples
per second and the largest difference from the float64 sums relative to their
largest value; writes the same as JSON.
"""

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import no_type_check

import torch
import triton
import triton.language as tl

from cryorefine.fourier import splat_rotated, zero_accumulators
from cryorefine.fourier.trilinear_kernels import _axis, _rotated
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood.window import fourier_window, window_frequencies_xyz
from cryorefine.simulate.poses import random_rotations

_BLOCK = 256
_PREDICATED = "{ .reg .pred pr; setp.ne.b32 pr, $%d, 0; @pr %s; mov.b32 $0, 0; }"
_SPELLINGS = {
    "red.global.add.vN.f32": "red.global.add.v{n}.f32",
    "red.add.global.vN.f32": "red.add.global.v{n}.f32",
    "red.global.vN.f32.add": "red.global.v{n}.f32.add",
}


def _asm(spelling: str, n: int) -> str:
    operands = ", ".join(f"${i}" for i in range(2, 2 + n))
    instruction = _SPELLINGS[spelling].format(n=n) + f" [$1], {{{operands}}}"
    return _PREDICATED % (2 + n, instruction)


@triton.jit
@no_type_check
def _splat_vector(acc_address, wacc_ptr, rot_ptr, freq_ptr, data_ptr, weight_ptr, k, p, ph, pad,
                  radius2, ASM: tl.constexpr, BLOCK: tl.constexpr, N: tl.constexpr):  # fmt: skip
    """Splat whose corner update is the vector atomic ``ASM`` of ``N`` floats at an address."""
    row = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < k
    fx, fy, fz, qx, qy, qz, flip = _rotated(freq_ptr, rot_ptr, row, offs, mask, pad)
    mask &= (fx * fx + fy * fy + fz * fz) <= radius2
    mask &= ~((fx == 0) & ((fz < 0) | ((fz == 0) & (fy < 0))))
    source = row.to(tl.int64) * k + offs
    re = tl.load(data_ptr + source * 2, mask=mask, other=0.0)
    im = tl.load(data_ptr + source * 2 + 1, mask=mask, other=0.0)
    weight = tl.load(weight_ptr + source, mask=mask, other=0.0)
    im = tl.where(flip, -im, im)
    x0f = tl.floor(qx)
    tx = qx - x0f
    x0 = x0f.to(tl.int32)
    y0, y1, ty = _axis(qy, p, p // 2)
    z0, z1, tz = _axis(qz, p, p // 2)
    for corner in tl.static_range(8):
        dx = corner % 2
        dy = (corner // 2) % 2
        dz = corner // 4
        ix = x0 + dx
        iy = y0 + dy * (y1 - y0)
        iz = z0 + dz * (z1 - z0)
        w = (dx * tx + (1 - dx) * (1 - tx)) * (dy * ty + (1 - dy) * (1 - ty))
        w = w * (dz * tz + (1 - dz) * (1 - tz))
        inside = (mask & (ix < ph)).to(tl.int32)
        index = ((iz * p + iy) * ph + ix).to(tl.int64)
        if N == 4:
            address = acc_address + index * 16  # bytes
            tl.inline_asm_elementwise(
                ASM, "=r,l,f,f,f,f,r",
                [address, w * re, w * im, w * weight, tl.zeros_like(w), inside],
                dtype=tl.int32, is_pure=False, pack=1,
            )  # fmt: skip
        else:
            address = acc_address + index * 8
            tl.inline_asm_elementwise(
                ASM, "=r,l,f,f,r", [address, w * re, w * im, inside],
                dtype=tl.int32, is_pure=False, pack=1,
            )  # fmt: skip
            tl.atomic_add(wacc_ptr + index, w * weight, mask=inside != 0, sem="relaxed")


def _median_seconds(run) -> float:
    run()
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


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
    rows = []
    for spread in ("random", "within 3 degrees"):
        if spread == "random":
            rotations = random_rotations(args.rotations, generator=rotation_gen)
        else:
            angles = torch.rand((args.rotations, 3), dtype=torch.float64, generator=rotation_gen)
            rotations = base @ euler_to_matrix(angles * 3.0)
        rotations = rotations.to(device, torch.float32)
        options = {"padding_factor": 2, "max_radius": float(half), "skip_redundant": True,
                   "ndim": 3}  # fmt: skip
        sums = {}
        for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            acc = zero_accumulators(n, padding_factor=2, device=device, dtype=dtype)

            library = partial(
                splat_rotated, data, weights, rotations, frequencies,
                accumulator_data=acc[0], accumulator_weight=acc[1], **options,
            )  # fmt: skip

            rows.append({"rotations": spread, "variant": name,
                         "seconds": _median_seconds(library)})  # fmt: skip
            acc[0].zero_()
            acc[1].zero_()
            library()
            sums[name] = acc
        reference = sums["float64"]
        scale = max(reference[0].abs().max().item(), reference[1].abs().max().item())
        rows[-1]["max_relative_difference"] = _difference(sums["float32"], reference, scale)
        rows[-2]["max_relative_difference"] = 0.0
        p = 2 * n
        freq = frequencies.to(torch.int32).contiguous()
        rot = rotations.reshape(-1, 9).contiguous()
        values = torch.view_as_real(data)
        for spelling in _SPELLINGS:
            for width in (2, 4):
                name = f"v{width} {spelling}"
                packed = torch.zeros((p, p, p // 2 + 1, width), device=device)
                weight_acc = torch.zeros((p, p, p // 2 + 1), device=device)
                asm = _asm(spelling, width)

                run = partial(
                    _splat_vector[(triton.cdiv(k, _BLOCK), rotations.shape[0])],
                    packed.data_ptr(), weight_acc, rot, freq, values, weights, k, p,
                    p // 2 + 1, 2.0, float(half) ** 2, ASM=asm, BLOCK=_BLOCK, N=width,
                )  # fmt: skip

                try:
                    seconds = _median_seconds(run)
                except Exception as error:  # a spelling ptxas refuses
                    rows.append({"rotations": spread, "variant": name,
                                 "error": str(error).splitlines()[0][:200]})  # fmt: skip
                    continue
                packed.zero_()
                weight_acc.zero_()
                run()
                got_weight = packed[..., 2] if width == 4 else weight_acc
                got = (torch.view_as_complex(packed[..., :2].contiguous()), got_weight)
                difference = _difference(got, reference, scale)
                rows.append({"rotations": spread, "variant": name, "seconds": seconds,
                             "max_relative_difference": difference})  # fmt: skip
    samples = args.rotations * k
    print(f"{torch.cuda.get_device_name()}: box {n}, {args.rotations} x {k} samples")  # noqa: T201
    for row in rows:
        if "error" in row:
            print(f"{row['rotations']:<18}{row['variant']:<28} error: {row['error']}")  # noqa: T201
            continue
        row["gsamples_per_second"] = samples / row["seconds"] / 1e9
        rate, difference = row["gsamples_per_second"], row["max_relative_difference"]
        print(f"{row['rotations']:<18}{row['variant']:<28}{row['seconds']:>9.4f}"  # noqa: T201
              f"{rate:>8.2f}{difference:>10.1e}")  # fmt: skip
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


def _difference(got, reference, scale: float) -> float:
    data = (got[0].to(torch.complex128) - reference[0]).abs().max().item()
    weight = (got[1].to(torch.float64) - reference[1]).abs().max().item()
    return max(data, weight) / scale


if __name__ == "__main__":
    main()
