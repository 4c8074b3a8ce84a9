"""Texture sampling rate against the texels' precision and how the kernel walks rows.

    python3 bench/texture_layout_bench.py [--box 96] [--lists 128] [--per_list 56] [--out FILE]

Variants of ``fourier.texture``'s kernel, each giving the values in the same
output positions:

- ``float32, rows 1``: the texture's array in float32 (8 bytes per texel), one
  program per row and block of 128 coefficients in the window's x-fastest
  order: the module before session 23, the baseline;
- ``rows 8``: each program samples 8 consecutive rows at one block of
  coefficients (the frequencies loaded once, neighbouring orientations' texels
  still in the SM's cache);
- ``morton``: each program's lanes take the coefficients in Morton order (a
  permutation read per lane), so a warp samples a compact patch of the rotated
  grid, and writes them back to their own positions;
- ``float16``: the array in float16 over the module's power-of-two scale
  (``texture.storage_scale``), 4 bytes per texel (``ReferenceTexture``'s default;
  ``texels=torch.float32`` gives the baseline's);
- ``the module's``: ``texture.sample_texture`` as it is.

The reference is random with a map's fall-off (down to ``exp(-8)`` at the padded
grid's Nyquist radius). Rotations as a local search's union: ``--lists`` lists of
``--per_list`` rotations within 3 degrees of a random rotation each, list after
list; and uniformly random. Launched as the coarse pass projects a held union
(chunks of ``--chunk`` rows) and in one launch. Prints the median seconds of 3
calls, G samples per second, the ratio to the baseline, whether the values are
bitwise the baseline's and their RMS difference over its RMS; writes the same as
JSON.
"""

import argparse
import json
from functools import partial
from pathlib import Path
from typing import no_type_check

import torch
import triton
import triton.language as tl
from floor_rates import median_seconds  # bench/ is on sys.path
from sampling_order_bench import morton_key

from cryorefine.fourier import texture as texture_module
from cryorefine.fourier import trilinear_kernels
from cryorefine.fourier.texture import ReferenceTexture, sample_texture
from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood.window import fourier_window, window_frequencies_xyz
from cryorefine.simulate.poses import random_rotations

_BLOCK = 128


@triton.jit
@no_type_check
def _sample_variant(texture, rot_ptr, freq_ptr, perm_ptr, out_ptr, n_rows, k, p, ph, pad,
                    radius2, scale, ROWS: tl.constexpr, PERM: tl.constexpr,
                    BLOCK: tl.constexpr):  # fmt: skip
    """The module's kernel, with the lanes' coefficients taken through ``perm`` if ``PERM``."""
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = lanes < k
    offs = tl.load(perm_ptr + lanes, mask=mask, other=0) if PERM else lanes
    fx, fy, fz = trilinear_kernels._frequencies(freq_ptr, offs, mask)
    keep = (fx * fx + fy * fy + fz * fz) <= radius2
    centre, side, width = (p // 2).to(tl.float32) + 0.5, p.to(tl.float32), ph.to(tl.float32)
    handle = tl.full([BLOCK], 0, tl.int64) + texture
    for step in tl.static_range(ROWS):
        row = tl.program_id(1) * ROWS + step
        if row < n_rows:
            qx, qy, qz, flip = trilinear_kernels._turned(fx, fy, fz, rot_ptr, row, pad)
            re, im = texture_module._fetch(handle, qx, qy, qz, flip, centre, side, width)
            out = (row.to(tl.int64) * k + offs) * 2
            tl.store(out_ptr + out, tl.where(keep, re * scale, 0.0), mask=mask)
            tl.store(out_ptr + out + 1, tl.where(keep, im * scale, 0.0), mask=mask)


def sample_variant(texture: ReferenceTexture, rotations: torch.Tensor, freq: torch.Tensor,
                   perm: torch.Tensor | None, rows_per_program: int, *, padding_factor: int,
                   max_radius: float, scale: float) -> torch.Tensor:  # fmt: skip
    """The variant kernel over all rows: ``(r, k)`` complex64 in the frequencies' order."""
    p, _, ph = texture.shape
    r, k = rotations.shape[0], freq.shape[0]
    out = torch.empty((r, k, 2), dtype=torch.float32, device=freq.device)
    table = rotations.to(torch.float32).reshape(-1, 9).contiguous()
    grid = (triton.cdiv(k, _BLOCK), triton.cdiv(r, rows_per_program))
    _sample_variant[grid](
        texture.handle, table, freq, perm if perm is not None else freq, out, r, k, p, ph,
        float(padding_factor), float(max_radius) ** 2, float(scale) * texture.scale,
        ROWS=rows_per_program, PERM=perm is not None, BLOCK=_BLOCK,
    )  # fmt: skip
    return torch.view_as_complex(out)


def map_like_reference(box: int, device: torch.device) -> torch.Tensor:
    """A random padded reference ``(2 box, 2 box, box + 1)`` (seeded) with a map's fall-off:
    the modulus down to ``exp(-8)`` at the padded grid's Nyquist radius."""
    p = 2 * box
    gen = torch.Generator(device=device).manual_seed(1)
    reference = torch.randn((p, p, p // 2 + 1), dtype=torch.complex64, device=device, generator=gen)
    centred = torch.arange(p, device=device) - p // 2  # z and y: zero at p // 2; x from 0
    x = torch.arange(p // 2 + 1, device=device)
    radius2 = centred[:, None, None] ** 2 + centred[None, :, None] ** 2 + x[None, None, :] ** 2
    return reference * torch.exp(-radius2 / (2.0 * (p / 8) ** 2))


def in_chunks(sample, rotations: torch.Tensor, chunk: int) -> torch.Tensor:
    """``sample`` over ``rotations`` ``chunk`` rows per launch, joined."""
    return torch.cat([sample(rotations[lo : lo + chunk]) for lo in range(0, len(rotations), chunk)])


def main() -> None:
    """Run the benchmark (module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--lists", type=int, default=128)
    parser.add_argument("--per_list", type=int, default=56)
    parser.add_argument("--chunk", type=int, default=28)
    parser.add_argument("--out", default="bench_texture_layout.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    half_box = args.box // 2
    reference = map_like_reference(args.box, device)
    freq = window_frequencies_xyz(fourier_window(args.box, 3, device=device)).to(torch.int32)
    freq = freq.contiguous()
    perm = torch.argsort(morton_key(freq)).to(torch.int32).contiguous()
    k = freq.shape[0]
    half = ReferenceTexture(reference)  # the module's float16 texels
    single = ReferenceTexture(reference, texels=torch.float32)
    rotation_gen = torch.Generator().manual_seed(2)
    n = args.lists * args.per_list
    centres = random_rotations(args.lists, generator=rotation_gen).to(device, torch.float64)
    turns = euler_to_matrix(3.0 * torch.rand((n, 3), dtype=torch.float64, generator=rotation_gen))
    spreads = {
        "local lists": (centres.repeat_interleave(args.per_list, 0) @ turns.to(device)).float(),
        "random": random_rotations(n, generator=rotation_gen).to(device, torch.float32),
    }
    kwargs = {"padding_factor": 2, "max_radius": float(half_box), "scale": 1.0}
    variants = {
        "float32, rows 1": lambda rot: sample_variant(single, rot, freq, None, 1, **kwargs),
        "float32, rows 8": lambda rot: sample_variant(single, rot, freq, None, 8, **kwargs),
        "float32, morton": lambda rot: sample_variant(single, rot, freq, perm, 1, **kwargs),
        "float16, rows 1": lambda rot: sample_variant(half, rot, freq, None, 1, **kwargs),
        "float16, rows 8": lambda rot: sample_variant(half, rot, freq, None, 8, **kwargs),
        "the module's": lambda rot: sample_texture(half, rot, freq, **kwargs),
    }
    rows = []
    for spread, rotations in spreads.items():
        for launch, chunk in (("chunks", args.chunk), ("one launch", n)):
            reference_values = in_chunks(variants["float32, rows 1"], rotations, chunk)
            base_seconds = None
            for name, sample in variants.items():
                run = partial(in_chunks, sample, rotations, chunk)
                seconds = median_seconds(run)
                values = run()
                same = bool(torch.equal(values, reference_values))
                error = float((values - reference_values).abs().pow(2).mean().sqrt()
                              / reference_values.abs().pow(2).mean().sqrt())  # fmt: skip
                base_seconds = base_seconds or seconds
                rows.append({"rotations": spread, "launch": launch, "variant": name,
                             "seconds": seconds, "gsamples_per_second": n * k / seconds / 1e9,
                             "speedup": base_seconds / seconds, "bitwise_same": same,
                             "rms_difference_over_rms": error})  # fmt: skip
    half.close()
    single.close()
    print(f"{torch.cuda.get_device_name()}: box {args.box}, {k} frequencies, {n} rotations, "  # noqa: T201
          f"chunks of {args.chunk}")  # fmt: skip
    print(f"{'rotations':<13}{'launch':<12}{'variant':<16}{'seconds':>9}{'GS/s':>7}"  # noqa: T201
          f"{'x before':>9}  same  rms diff / rms")  # fmt: skip
    for row in rows:
        print(f"{row['rotations']:<13}{row['launch']:<12}{row['variant']:<16}"  # noqa: T201
              f"{row['seconds']:>9.4f}{row['gsamples_per_second']:>7.1f}{row['speedup']:>9.2f}"
              f"  {row['bitwise_same']!s:<5} {row['rms_difference_over_rms']:.2e}")  # fmt: skip
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    trilinear_kernels.available(torch.empty(0))  # Triton imported
    main()
