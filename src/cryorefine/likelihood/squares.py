"""``|z|^2`` of a complex array in one pass over memory.

The scores and the M-step's sums need the squared magnitude of every held
projection (``scores.squared_magnitude``). In torch that is two passes: the
modulus (a ``hypot``, 8 bytes read and 4 written per value), then its square in
place (4 and 4). On a GPU, ``kernel_squared_magnitude`` reads each value's real
and imaginary parts once and writes ``re^2 + im^2``: 8 bytes read and 4 written.
On the tutorial's final iteration (H100) the two torch passes took 11 % of the
device time (``docs/performance.md``).

Rounding: each square and the sum (or the fused multiply-add that takes their
place) are rounded once to float32, so the result is within ``(2 u + u^2)`` of
``re^2 + im^2``, relative, with ``u = 2^-24`` (both terms are positive: no
cancellation). The kernel runs on contiguous complex64 CUDA tensors when Triton
is importable (on CPU tensors under Triton's interpreter, ``TRITON_INTERPRET=1``).
"""

import os
from typing import no_type_check

import torch
from jaxtyping import Complex, Float
from torch import Tensor

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["kernel_applies", "kernel_squared_magnitude"]

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's interpreter: CPU tensors
_BLOCK = 1024  # values per program: 8 KiB read, 4 KiB written

if triton is not None:

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _squares(pairs_ptr, out_ptr, n, BLOCK: tl.constexpr):
        """``BLOCK`` values: their ``(re, im)`` pairs in one contiguous load."""
        values = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        parts = values[:, None] * 2 + tl.arange(0, 2)[None, :]
        pair = tl.load(pairs_ptr + parts, mask=parts < 2 * n, other=0.0)
        tl.store(out_ptr + values, tl.sum(pair * pair, axis=1), mask=values < n)


def kernel_applies(z: Tensor) -> bool:
    """Whether ``kernel_squared_magnitude`` takes ``z``: Triton there, ``z`` complex64,
    contiguous, not empty, on a GPU (or on the CPU under Triton's interpreter)."""
    return (
        triton is not None
        and (z.is_cuda or _INTERPRETED)
        and z.dtype == torch.complex64
        and z.is_contiguous()
        and z.numel() > 0
    )


def kernel_squared_magnitude(z: Complex[Tensor, "..."]) -> Float[Tensor, "..."]:
    """``|z|^2`` (float32, ``z``'s shape) in one pass; ``z`` as ``kernel_applies`` asks."""
    if not kernel_applies(z):
        raise ValueError("kernel_squared_magnitude needs a contiguous complex64 CUDA tensor")
    out = torch.empty(z.shape, dtype=torch.float32, device=z.device)
    n = z.numel()
    _squares[(triton.cdiv(n, _BLOCK),)](torch.view_as_real(z), out, n, BLOCK=_BLOCK)
    return out
