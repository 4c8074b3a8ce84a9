"""Particles' weights against the squared magnitudes of held projections, in one read.

    power[b, j] = sum_k A[b, k] |P[j, k]|^2

The local searches' ``sum w K^2 |P|^2`` of every particle at every row of a
chunk's held union (``passes.score_held_lists``). The torch route squares the
rows first (``scores.squared_magnitude``: 8 bytes read and 4 written per value,
then 4 and 4 again) and multiplies the squares (4 more read): 24 bytes per value.
The Triton kernel here squares each tile of the rows as it loads it (8 bytes read
per value) and multiplies it with the particles' tile on the tensor cores (tf32),
all particles of a chunk in one tile so that each row is read once. ``k`` is cut
into ranges whose partial sums are added in a fixed order (no atomics).
"""

from typing import no_type_check

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.likelihood import held_cross
from cryorefine.likelihood.scores import matmul_precision, squared_magnitude

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["kernel_applies", "kernel_power_products", "power_products"]

_BLOCK_ROWS = 64  # rows j of the table per program
_BLOCK_K = 32
_MAX_BLOCK_PARTICLES = 128  # particles per program: all of a chunk's, up to this many
_PROGRAMS = 1056  # about 8 programs per multiprocessor of an H100 (132)

if triton is not None:

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _power(a_ptr, v_ptr, out_ptr, b, n, k, span, a_sb, v_sn, out_ss, out_sb,
               BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               IEEE: tl.constexpr):  # fmt: skip
        """``BB`` particles, ``BN`` rows, one range of ``k``: sum of ``A |P|^2``."""
        bs = tl.program_id(0) * BB + tl.arange(0, BB)
        ns = tl.program_id(1) * BN + tl.arange(0, BN)
        part = tl.program_id(2)
        ks = tl.arange(0, BK)
        in_b = bs < b
        in_n = ns < n
        a_base = a_ptr + bs[:, None].to(tl.int64) * a_sb
        v_base = v_ptr + ns[:, None].to(tl.int64) * v_sn
        acc = tl.zeros((BB, BN), dtype=tl.float32)
        start = part * span
        for k0 in range(start, tl.minimum(start + span, k), BK):
            kk = k0 + ks
            in_k = kk < k
            a = tl.load(a_base + kk[None, :], mask=in_b[:, None] & in_k[None, :], other=0.0)
            in_v = in_n[:, None] & in_k[None, :]
            re = tl.load(v_base + 2 * kk[None, :], mask=in_v, other=0.0)
            im = tl.load(v_base + 2 * kk[None, :] + 1, mask=in_v, other=0.0)
            squares = re * re + im * im
            if IEEE:
                acc += tl.dot(a, tl.trans(squares), input_precision="ieee")
            else:
                acc += tl.dot(a, tl.trans(squares), input_precision="tf32")
        out = (
            out_ptr + part.to(tl.int64) * out_ss + bs[:, None].to(tl.int64) * out_sb
            + ns[None, :]
        )  # fmt: skip
        tl.store(out, acc, mask=in_b[:, None] & in_n[None, :])


def kernel_applies(weights: Tensor, values: Tensor, precision: str) -> bool:
    """Whether ``power_products`` takes the kernel: ``held_cross.kernels_on`` (tf32 by
    default, ``CRYOREFINE_HELD_CROSS``), float32 weights and complex64 rows."""
    return (
        held_cross.kernels_on(weights, precision)
        and weights.dtype == torch.float32
        and values.dtype == torch.complex64
    )


def kernel_power_products(
    weights: Tensor, values: Tensor, *, tf32: bool = False, split: int | None = None
) -> Tensor:
    """``power_products`` by the Triton kernel, ``(b, n)`` float32 (``split`` ranges of ``k``).

    Runs wherever Triton does, the interpreter (``TRITON_INTERPRET=1``) included.
    """
    b, k = weights.shape
    n = values.shape[0]
    weights = weights.contiguous()
    rows = torch.view_as_real(values.contiguous())  # (n, k, 2)
    block_b = min(_MAX_BLOCK_PARTICLES, max(16, triton.next_power_of_2(b)))
    grid_b, grid_n = triton.cdiv(max(b, 1), block_b), triton.cdiv(max(n, 1), _BLOCK_ROWS)
    if split is None:
        split = max(1, min(-(-_PROGRAMS // (grid_b * grid_n)), k // (8 * _BLOCK_K)))
    span = triton.cdiv(triton.cdiv(max(k, 1), split), _BLOCK_K) * _BLOCK_K
    split = triton.cdiv(max(k, 1), span)
    partial = weights.new_zeros((split, b, n))
    if b and n and k:
        _power[(grid_b, grid_n, split)](
            weights, rows, partial, b, n, k, span, weights.stride(0), rows.stride(0),
            partial.stride(0), partial.stride(1),
            BB=block_b, BN=_BLOCK_ROWS, BK=_BLOCK_K, IEEE=not tf32,
            num_warps=8 if block_b > 64 else 4,
        )  # fmt: skip
    return partial.sum(dim=0) if split > 1 else partial[0]


def power_products(
    weights: Float[Tensor, "b k"],
    values: Complex[Tensor, "n k"],
    *,
    precision: str,
    block_rows: int,
) -> Float[Tensor, "b n"]:
    """``sum_k A[b, k] |P[j, k]|^2`` for every particle and row (module docstring).

    The kernel where ``kernel_applies``; else ``block_rows`` rows at a time squared
    (``scores.squared_magnitude``) and multiplied, in ``weights``' dtype.
    """
    if kernel_applies(weights, values, precision):
        return kernel_power_products(weights, values, tf32=precision == "tf32")
    n = values.shape[0]
    cplx = torch.complex128 if weights.dtype == torch.float64 else torch.complex64
    out = weights.new_empty((weights.shape[0], n))
    with matmul_precision(precision):
        for lo in range(0, n, max(1, block_rows)):
            power = squared_magnitude(values[lo : lo + block_rows].to(cplx))
            out[:, lo : lo + block_rows] = weights @ power.T
    return out
