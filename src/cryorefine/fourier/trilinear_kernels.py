"""Fused Triton kernels: trilinear sampling of, and splatting into, a padded half-grid.

The same operations as ``fourier.interpolation``'s ``_interpolate`` and
``_splat`` (layout, Friedel fold, wrap-around, corners beyond ``kx = p // 2``
counted as zero), for a list of integer frequencies ``k`` rotated by each
matrix ``A``: ``q = A.T @ k * padding_factor``. One kernel computes ``q``, the
8 corners and their weights for each (rotation, frequency) in registers, so no
``q``, corner index or weight tensor is written to memory, and the result lands
directly on the caller's list of coefficients (no zero grid, no scatter, no
gather). Splatting adds with atomics (its order of additions, hence its
rounding, varies between runs, as ``index_add_`` on a GPU does).

Used on CUDA tensors when Triton is importable (``available``); the torch path
in ``fourier.interpolation`` is the reference they are tested against and the
path on the CPU. Float32 coordinates: ``q`` differs from the torch path's by
float32 rounding of the matrix product (~1e-5 padded pixels).
"""

from typing import no_type_check

import torch
from torch import Tensor

try:  # Triton comes with CUDA builds of torch; CPU builds run the torch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["available", "sample_kernel", "splat_kernel"]

_BLOCK = 256
_MAX_GRID_ROWS = 65_535  # rows per launch: the grid's second dimension
# The insert's vector reduction is inline assembly, run by each thread that holds an
# element; a block smaller than the program's threads, where threads hold copies, gave
# wrong sums (bench/fourier_kernel_configs.py on an H200: 128 coefficients with 8 warps,
# largest difference as large as the largest sum). So the launch keeps at least one
# coefficient per thread.
_SPLAT_WARPS = 4
if _BLOCK < 32 * _SPLAT_WARPS:  # pragma: no cover - a guard on the constants above
    raise ImportError("trilinear_kernels: _BLOCK must be at least 32 threads x _SPLAT_WARPS")


def available(tensor: Tensor) -> bool:
    """Whether the fused kernels can run on ``tensor``'s device."""
    return triton is not None and tensor.is_cuda


if triton is not None:

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _turned(fx, fy, fz, rot_ptr, row, pad):
        """``q = A.T k pad`` of row ``row``'s matrix, folded to ``q_x >= 0``, and the flip."""
        base = rot_ptr + row * 9
        qx = (fx * tl.load(base) + fy * tl.load(base + 3) + fz * tl.load(base + 6)) * pad
        qy = (fx * tl.load(base + 1) + fy * tl.load(base + 4) + fz * tl.load(base + 7)) * pad
        qz = (fx * tl.load(base + 2) + fy * tl.load(base + 5) + fz * tl.load(base + 8)) * pad
        flip = qx < 0
        qx = tl.where(flip, -qx, qx)
        qy = tl.where(flip, -qy, qy)
        qz = tl.where(flip, -qz, qz)
        return qx, qy, qz, flip

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _frequencies(freq_ptr, offs, mask):
        """The integer frequencies ``(x, y, z)`` at ``offs``, as float32."""
        fx = tl.load(freq_ptr + offs * 3, mask=mask, other=0).to(tl.float32)
        fy = tl.load(freq_ptr + offs * 3 + 1, mask=mask, other=0).to(tl.float32)
        fz = tl.load(freq_ptr + offs * 3 + 2, mask=mask, other=0).to(tl.float32)
        return fx, fy, fz

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _rotated(freq_ptr, rot_ptr, row, offs, mask, pad):
        """Integer frequency (as float), ``q = A.T k pad`` folded to ``q_x >= 0``, and the flip."""
        fx, fy, fz = _frequencies(freq_ptr, offs, mask)
        qx, qy, qz, flip = _turned(fx, fy, fz, rot_ptr, row, pad)
        return fx, fy, fz, qx, qy, qz, flip

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _axis(q, p, half):
        """Lower corner (wrapped into ``0 .. p - 1`` about the centre), upper corner, fraction."""
        floor = tl.floor(q)
        frac = q - floor
        base = floor.to(tl.int32) + half
        lower = ((base % p) + p) % p
        upper = (((base + 1) % p) + p) % p
        return lower, upper, frac

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _sample(
        table_ptr, rot_ptr, freq_ptr, out_ptr, k, p, ph, pad, radius2, scale,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < k
        fx, fy, fz, qx, qy, qz, flip = _rotated(freq_ptr, rot_ptr, row, offs, mask, pad)
        x0f = tl.floor(qx)
        tx = qx - x0f
        x0 = x0f.to(tl.int32)
        y0, y1, ty = _axis(qy, p, p // 2)
        z0, z1, tz = _axis(qz, p, p // 2)
        re = tl.zeros((BLOCK,), dtype=tl.float32)
        im = tl.zeros((BLOCK,), dtype=tl.float32)
        for corner in tl.static_range(8):
            dx = corner % 2
            dy = (corner // 2) % 2
            dz = corner // 4
            ix = x0 + dx
            iy = y0 + dy * (y1 - y0)
            iz = z0 + dz * (z1 - z0)
            w = (dx * tx + (1 - dx) * (1 - tx)) * (dy * ty + (1 - dy) * (1 - ty))
            w = w * (dz * tz + (1 - dz) * (1 - tz))
            inside = mask & (ix < ph)
            index = ((iz * p + iy) * ph + ix).to(tl.int64) * 2
            re += w * tl.load(table_ptr + index, mask=inside, other=0.0)
            im += w * tl.load(table_ptr + index + 1, mask=inside, other=0.0)
        im = tl.where(flip, -im, im)
        keep = (fx * fx + fy * fy + fz * fz) <= radius2
        re = tl.where(keep, re * scale, 0.0)
        im = tl.where(keep, im * scale, 0.0)
        out = (row.to(tl.int64) * k + offs) * 2
        tl.store(out_ptr + out, re, mask=mask)
        tl.store(out_ptr + out + 1, im, mask=mask)

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _splat(
        data_acc_ptr, weight_acc_ptr, rot_ptr, freq_ptr, data_ptr, weight_ptr,
        k, p, ph, pad, radius2, skip_redundant: tl.constexpr, ndim: tl.constexpr,
        PACKED: tl.constexpr, VECTOR: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < k
        fx, fy, fz, qx, qy, qz, flip = _rotated(freq_ptr, rot_ptr, row, offs, mask, pad)
        mask &= (fx * fx + fy * fy + fz * fz) <= radius2
        if skip_redundant:
            if ndim == 3:
                redundant = (fx == 0) & ((fz < 0) | ((fz == 0) & (fy < 0)))
            else:
                redundant = (fx == 0) & (fy < 0)
            mask &= ~redundant
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
            inside = mask & (ix < ph)
            index = ((iz * p + iy) * ph + ix).to(tl.int64)
            if PACKED and VECTOR:  # (re, im, weight, 0): one vector reduction per corner
                # Hopper's reduction of four float32 at a 16-byte aligned address where the
                # predicate operand $6 is non-zero (PTX ISA 8.1, sm_90); $0 is a dummy
                tl.inline_asm_elementwise(
                    "{ .reg .pred live; setp.ne.b32 live, $6, 0; "
                    "@live red.global.add.v4.f32 [$1], {$2, $3, $4, $5}; mov.b32 $0, 0; }",
                    "=r,l,f,f,f,f,r",
                    [(data_acc_ptr + index * 4).to(tl.int64), w * re, w * im, w * weight,
                     tl.zeros_like(w), inside.to(tl.int32)],
                    dtype=tl.int32, is_pure=False, pack=1,
                )  # fmt: skip
            elif PACKED:
                target = data_acc_ptr + index * 4
                tl.atomic_add(target, w * re, mask=inside, sem="relaxed")
                tl.atomic_add(target + 1, w * im, mask=inside, sem="relaxed")
                tl.atomic_add(target + 2, w * weight, mask=inside, sem="relaxed")
            else:
                target = data_acc_ptr + index * 2
                dtype = data_acc_ptr.dtype.element_ty
                tl.atomic_add(target, (w * re).to(dtype), mask=inside, sem="relaxed")
                tl.atomic_add(target + 1, (w * im).to(dtype), mask=inside, sem="relaxed")
                tl.atomic_add(
                    weight_acc_ptr + index,
                    (w * weight).to(weight_acc_ptr.dtype.element_ty),
                    mask=inside,
                    sem="relaxed",
                )


def _rotation_rows(rotations: Tensor) -> Tensor:
    return rotations.to(torch.float32).reshape(-1, 9).contiguous()


def output_pairs(out: Tensor | None, r: int, k: int, device: torch.device) -> Tensor:
    """``(r, k, 2)`` float32 for a sampling kernel to write: ``out`` (complex64 ``(r, k)``,
    contiguous, on ``device``) viewed as real pairs, or a new array where it is None."""
    if out is None:
        return torch.empty((r, k, 2), dtype=torch.float32, device=device)
    if out.dtype != torch.complex64 or tuple(out.shape) != (r, k) or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous complex64 ({r}, {k}) array, got "
                         f"{out.dtype} {tuple(out.shape)}")  # fmt: skip
    if out.device != device:
        raise ValueError(f"out must be on {device}, got {out.device}")
    return torch.view_as_real(out)


def sample_kernel(
    reference_ft: Tensor,
    rotations: Tensor,
    frequencies: Tensor,
    *,
    padding_factor: int,
    max_radius: float,
    scale: float,
    out: Tensor | None = None,
) -> Tensor:
    """``(r, k)`` complex64 values at ``A.T k padding_factor`` (0 beyond ``max_radius``).

    ``reference_ft`` complex64 ``(p, p, ph)``; ``frequencies`` integer ``(k, 3)``
    in ``(x, y, z)`` order (z = 0 for 2D slices). Written into ``out`` (``output_pairs``)
    where given.
    """
    p, ph = reference_ft.shape[0], reference_ft.shape[2]
    r, k = rotations.shape[0], frequencies.shape[0]
    table = torch.view_as_real(reference_ft.contiguous())
    out = output_pairs(out, r, k, reference_ft.device)
    freq = frequencies.to(torch.int32).contiguous()
    rows = _rotation_rows(rotations)
    for lo in range(0, r if k else 0, _MAX_GRID_ROWS):  # CUDA's grid y-dimension limit
        hi = min(lo + _MAX_GRID_ROWS, r)
        _sample[(triton.cdiv(k, _BLOCK), hi - lo)](
            table, rows[lo:hi], freq, out[lo:hi], k, p, ph, float(padding_factor),
            float(max_radius) ** 2, float(scale), BLOCK=_BLOCK,
        )  # fmt: skip
    return torch.view_as_complex(out)


def _vector_reductions(tensor: Tensor) -> bool:
    """Whether ``tensor``'s GPU has the vector float32 reductions (compute capability 9+)."""
    return torch.cuda.get_device_capability(tensor.device)[0] >= 9


def splat_kernel(
    accumulator_data: Tensor,
    accumulator_weight: Tensor | None,
    rotations: Tensor,
    frequencies: Tensor,
    data: Tensor,
    weights: Tensor,
    *,
    padding_factor: int,
    max_radius: float,
    skip_redundant: bool,
    ndim: int,
) -> None:
    """Add ``data (r, k)`` and ``weights (r, k)`` at ``A.T k padding_factor``, in place.

    With ``accumulator_weight`` None, ``accumulator_data`` is one float32
    ``(p, p, ph, 4)`` accumulator of (re, im, weight, unused), updated with one
    vector reduction per corner on GPUs that have them.

    Frequencies beyond ``max_radius``, and the Friedel-redundant ones with
    ``skip_redundant`` (``kx = 0`` and ``ky < 0`` in 2D; ``kx = 0`` and ``kz < 0``
    or ``kz = 0, ky < 0`` in 3D), are left out.
    """
    p, ph = accumulator_data.shape[0], accumulator_data.shape[2]
    r, k = rotations.shape[0], frequencies.shape[0]
    if not (r and k):
        return
    packed = accumulator_weight is None
    if packed:
        targets = (accumulator_data, accumulator_data)  # the weight pointer is not read
    else:
        targets = (torch.view_as_real(accumulator_data), accumulator_weight)
    values = torch.view_as_real(data.to(torch.complex64).contiguous())
    weights = weights.to(torch.float32).contiguous()
    freq, rows = frequencies.to(torch.int32).contiguous(), _rotation_rows(rotations)
    for lo in range(0, r, _MAX_GRID_ROWS):  # CUDA's grid y-dimension limit
        hi = min(lo + _MAX_GRID_ROWS, r)
        _splat[(triton.cdiv(k, _BLOCK), hi - lo)](
            *targets, rows[lo:hi], freq, values[lo:hi], weights[lo:hi], k, p, ph,
            float(padding_factor), float(max_radius) ** 2, int(skip_redundant), ndim,
            PACKED=packed, VECTOR=packed and _vector_reductions(accumulator_data), BLOCK=_BLOCK,
            num_warps=_SPLAT_WARPS,
        )  # fmt: skip
