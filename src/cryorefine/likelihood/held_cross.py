"""Products of each particle with its own rows of a held table, without gathering them.

    cross[b, t, j] = sum_k Z[b, t, k] P[rows[b, j], k]

with ``Z`` and ``P`` as real pairs (``scores.as_real_pairs``: ``2k`` numbers per
coefficient). The coarse pass's local searches (``passes.score_held_lists``) and
the fine pass (``pairs.score_pairs``) need this for a few hundred rows per
particle out of a table of many thousands (the fine pass's sums read the same
rows by ``unshifted``'s kernel); the torch route gathers each
particle's rows into a copy first (written and read again: 3 times the rows'
bytes, at the memory's speed, ``bench/fine_ops_bench.py``). The Triton kernel
reads the rows through their indices straight from the table, once.
``held_cross`` chooses between kernel and torch route for a caller with no route
of its own; the passes above decide with
``kernel_applies``, as their torch routes differ.

The kernel runs on CUDA tensors when Triton is importable, in tf32 by default
and in float32 too where ``CRYOREFINE_HELD_CROSS=1`` (``KERNEL``); otherwise the
torch route (the reference it is tested against). Measured on the tutorial job's
final iteration (H100): with tf32 the kernels take the E-step from 41 s (tf32,
torch route) to 32 s; in float32 they gain in the fine pass what they lose in the
coarse pass (45.7 s against 45.0 s), as Triton's float32 products do not use the
tensor cores. Its ``k`` is cut into ``split`` ranges whose partial sums are added
in a fixed order (no atomics), so results do not vary between runs.
"""

import os
from typing import no_type_check

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.likelihood.scores import matmul_precision

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = [
    "KERNEL",
    "MAX_TILE_ROWS",
    "held_cross",
    "kernel_applies",
    "kernel_cross",
    "kernels_on",
]

KERNEL: bool | None = {"1": True, "0": False}.get(os.environ.get("CRYOREFINE_HELD_CROSS", ""))
"""Where the kernel is used: None (the default) in tf32 only, True (``CRYOREFINE_HELD_CROSS=1``)
in float32 as well, False (``=0``) never."""
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's interpreter: CPU tensors

MAX_TILE_ROWS = 128
"""The kernels (this one and ``unshifted``'s) hold all ``t`` rows of ``Z`` or ``W`` of a
particle in one tile: beyond this many (a 3D global search's hundreds of translations)
registers and shared memory run out, and the torch route is taken."""

_BLOCK_ROWS = 64
_BLOCK_K = 32
_PROGRAMS = 1056  # about 8 programs per multiprocessor of an H100 (132)

if triton is not None:
    # the sizes that change from one group of particles to the next (t, r and the strides
    # that follow them) are not specialised on: one compiled variant per tile shape, not one
    # per pattern of which sizes divide by 16 (tens of seconds of compiling in a job)
    @triton.jit(do_not_specialize=["t", "r", "rows_sb", "out_ss", "out_sb", "out_st"])
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _cross(z_ptr, table_ptr, rows_ptr, out_ptr, t, r, k2, span, z_sb, z_st, rows_sb,
               table_sr, out_ss, out_sb, out_st,
               BT: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
               IEEE: tl.constexpr):  # fmt: skip
        """One particle, ``BR`` of its rows, all its ``t`` rows of Z, one range of ``k``."""
        b = tl.program_id(0)
        block = tl.program_id(1)
        part = tl.program_id(2)
        ts = tl.arange(0, BT)
        rs = block * BR + tl.arange(0, BR)
        ks = tl.arange(0, BK)
        in_t = ts < t
        in_r = rs < r
        rows = tl.load(rows_ptr + b * rows_sb + rs, mask=in_r, other=0).to(tl.int64)
        z_base = z_ptr + b.to(tl.int64) * z_sb + ts[:, None].to(tl.int64) * z_st
        p_base = table_ptr + rows[:, None] * table_sr
        acc = tl.zeros((BT, BR), dtype=tl.float32)
        start = part * span
        for k0 in range(start, tl.minimum(start + span, k2), BK):
            kk = k0 + ks
            in_k = kk < k2
            z = tl.load(z_base + kk[None, :], mask=in_t[:, None] & in_k[None, :], other=0.0)
            p = tl.load(p_base + kk[None, :], mask=in_r[:, None] & in_k[None, :], other=0.0)
            if IEEE:
                acc += tl.dot(z, tl.trans(p), input_precision="ieee")
            else:
                acc += tl.dot(z, tl.trans(p), input_precision="tf32")
        out = (
            out_ptr
            + part.to(tl.int64) * out_ss
            + b.to(tl.int64) * out_sb
            + ts[:, None].to(tl.int64) * out_st
            + rs[None, :]
        )
        tl.store(out, acc, mask=in_t[:, None] & in_r[None, :])


def _splits(b: int, row_blocks: int, k2: int) -> int:
    """Ranges of ``k`` per (particle, row block): enough programs to fill the GPU."""
    wanted = -(-_PROGRAMS // max(1, b * row_blocks))
    return max(1, min(wanted, k2 // (8 * _BLOCK_K)))


def kernel_cross(
    shifted: Tensor,
    table: Tensor,
    rows: Tensor,
    *,
    tf32: bool = False,
    split: int | None = None,
    block_rows: int = _BLOCK_ROWS,
) -> Tensor:
    """The Triton kernel's ``cross`` (``held_cross``'s arguments; ``split`` ranges of ``k``).

    Each program takes ``block_rows`` (a power of 2 from 16) of a particle's rows and
    reads its ``Z`` once: fewer, larger blocks read ``Z`` fewer times
    (``bench/fine_ops_bench.py`` times them). Runs wherever Triton does, the
    interpreter (``TRITON_INTERPRET=1``) included.
    """
    b, t, k2 = shifted.shape
    r = rows.shape[1]
    if shifted.stride(2) != 1 or table.stride(1) != 1:
        raise ValueError("held_cross needs unit stride along 2k in Z and in the table")
    rows = rows.contiguous()
    block_t = max(16, triton.next_power_of_2(t))
    if block_rows < 16 or block_rows & (block_rows - 1):
        raise ValueError(f"block_rows must be a power of 2 from 16, got {block_rows}")
    row_blocks = triton.cdiv(max(r, 1), block_rows)
    split = _splits(b, row_blocks, k2) if split is None else split
    span = triton.cdiv(triton.cdiv(k2, split), _BLOCK_K) * _BLOCK_K
    split = triton.cdiv(k2, span)
    partial = shifted.new_empty((split, b, t, r), dtype=torch.float32)
    if b and r and t:
        _cross[(b, row_blocks, split)](
            shifted, table, rows, partial, t, r, k2, span,
            shifted.stride(0), shifted.stride(1), rows.stride(0), table.stride(0),
            partial.stride(0), partial.stride(1), partial.stride(2),
            BT=block_t, BR=block_rows, BK=_BLOCK_K, IEEE=not tf32,
            num_warps=4 if block_rows <= _BLOCK_ROWS else 8,  # 4: Triton's default
        )  # fmt: skip
    return partial.sum(dim=0) if split > 1 else partial[0]


def kernels_on(tensor: Tensor, precision: str) -> bool:
    """Whether the held-row kernels (this module's and ``unshifted``'s) run
    for ``tensor`` at ``precision``: tf32 (or float32 with ``KERNEL`` on; neither with it
    off), Triton there, ``tensor`` on a GPU (or on the CPU under Triton's interpreter)."""
    return (
        (KERNEL is True or (KERNEL is None and precision == "tf32"))
        and triton is not None
        and (tensor.is_cuda or _INTERPRETED)
        and precision in ("float32", "tf32")
    )


def kernel_applies(shifted: Tensor, table: Tensor, precision: str) -> bool:
    """Whether ``held_cross`` takes the kernel: ``kernels_on``, float32 tensors, at most
    ``MAX_TILE_ROWS`` rows of ``Z`` (or ``W``) per particle, unit strides along ``2k``
    (``r`` for ``W``)."""
    return (
        kernels_on(shifted, precision)
        and shifted.dtype == table.dtype == torch.float32
        and shifted.shape[-2] <= MAX_TILE_ROWS
        and shifted.stride(-1) == 1
        and table.stride(-1) == 1
    )


def held_cross(
    shifted: Float[Tensor, "b t k2"],
    table: Float[Tensor, "n k2"],
    rows: Int[Tensor, "b r"],
    *,
    precision: str = "float32",
) -> Float[Tensor, "b t r"]:
    """``sum_k Z[b, t, k] P[rows[b, j], k]`` for every particle, translation and own row.

    ``rows`` index ``table`` (in range); ``precision`` as ``scores``'s. The Triton
    kernel where ``kernel_applies``; else each particle's rows gathered and one
    batched product.
    """
    if kernel_applies(shifted, table, precision):
        return kernel_cross(shifted, table, rows, tf32=precision == "tf32")
    with matmul_precision(precision):
        return shifted @ table[rows].transpose(1, 2)
