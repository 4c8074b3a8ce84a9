"""``window.window_phases`` on a GPU in one pass over its output.

A phase of the window is the product of one factor per axis,
``prod_d F[row, d, k_d]``, each factor read from a small table per shift (``2 h + 1``
values per axis). Formed with torch, each axis's factors are first gathered into
an array the size of the output and then multiplied in: for ``ndim = 3`` five
writes and four reads of the output's size, the fine pass's largest arrays (a
fine group of the tutorial's final iteration: about 5 GB each). The kernel here
reads the tables and writes each phase once, multiplying in the same order as
the torch route (axis 0 times axis 1, times axis 2), in complex64.
"""

import os
from typing import no_type_check

import torch
from jaxtyping import Complex, Int
from torch import Tensor

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["kernel_applies", "phase_products"]

_BLOCK = 512  # coefficients per program
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's interpreter: CPU tensors

if triton is not None:

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _products(f_ptr, at_ptr, out_ptr, k, f_sr, f_sd, at_sk, out_sr,
                  NDIM: tl.constexpr, BK: tl.constexpr):  # fmt: skip
        """One row of shifts, ``BK`` coefficients: the product of the axes' factors."""
        row = tl.program_id(0)
        ks = tl.program_id(1) * BK + tl.arange(0, BK)
        in_k = ks < k
        base = f_ptr + row.to(tl.int64) * f_sr
        at = tl.load(at_ptr + ks * at_sk, mask=in_k, other=0)
        re = tl.load(base + 2 * at, mask=in_k, other=0.0)
        im = tl.load(base + 2 * at + 1, mask=in_k, other=0.0)
        for d in tl.static_range(1, NDIM):
            at = tl.load(at_ptr + ks * at_sk + d, mask=in_k, other=0)
            f_re = tl.load(base + d * f_sd + 2 * at, mask=in_k, other=0.0)
            f_im = tl.load(base + d * f_sd + 2 * at + 1, mask=in_k, other=0.0)
            re, im = re * f_re - im * f_im, re * f_im + im * f_re
        out = out_ptr + row.to(tl.int64) * out_sr + 2 * ks
        tl.store(out, re, mask=in_k)
        tl.store(out + 1, im, mask=in_k)


def kernel_applies(factors: Tensor) -> bool:
    """Whether ``phase_products`` takes the kernel: Triton there, complex64 factors on a GPU
    (or on the CPU under Triton's interpreter)."""
    return (
        triton is not None
        and (factors.is_cuda or _INTERPRETED)
        and factors.dtype == torch.complex64
    )


def phase_products(
    factors: Complex[Tensor, "rows ndim n"], at: Int[Tensor, "k ndim"]
) -> Complex[Tensor, "rows k"]:
    """``out[row, j] = prod_d factors[row, d, at[j, d]]``, axis 0 first.

    The kernel where ``kernel_applies``; else the torch route (one gather per axis,
    multiplied in place). ``at`` indexes each axis's ``n`` factors.
    """
    if not kernel_applies(factors):
        out = factors[:, 0, at[:, 0]]
        for d in range(1, factors.shape[1]):
            out.mul_(factors[:, d, at[:, d]])
        return out
    rows, ndim, _ = factors.shape
    k = at.shape[0]
    table = torch.view_as_real(factors.contiguous())  # (rows, ndim, n, 2)
    at = at.contiguous()
    out = torch.empty((rows, k, 2), dtype=torch.float32, device=factors.device)
    if rows and k:
        _products[(rows, triton.cdiv(k, _BLOCK))](
            table, at, out, k, table.stride(0), table.stride(1), at.stride(0), out.stride(0),
            NDIM=ndim, BK=_BLOCK,
        )  # fmt: skip
    return torch.view_as_complex(out)
