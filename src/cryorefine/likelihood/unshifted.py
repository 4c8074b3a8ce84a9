"""Sums over a particle's translations brought back to the unshifted particle.

The fine pass's M-step needs two sums over each particle's fine translations
``t``, with phases ``S[b, t, k]`` (``window.window_phases``) and the pairs' weights
``W[b, t, j]`` of its own rows ``j`` of a held table of projections ``P``:

    noise:            G[b, k]    = sum_t conj(S[b, t, k]) sum_j W[b, t, j] P[rows[b, j], k]
    back-projection:  D[b, j, k] = Y[b, k] sum_t W[b, t, j] S[b, t, k]

Formed the obvious way, each goes through an array of every translation's
coefficients, ``(b, t, k)``: ``Q = W P`` for the noise (written, copied, multiplied
by the phases and summed: about seven passes over 5 GB per fine group of the
tutorial's final iteration) and the shifted data ``Y S`` for the back-projection.
Here ``G`` comes from a Triton kernel that keeps each ``(t, k)`` tile of ``Q`` in
registers, multiplies it by the phases and sums over ``t`` before writing
(``unshifted_combination``; the torch route otherwise), and ``D`` from the
weights' product with the phases, multiplied by ``Y`` after (``weighted_shifts``):
the phases are read once and nothing of size ``(b, t, k)`` is written.
"""

from typing import no_type_check

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood.held_cross import MAX_TILE_ROWS, kernel_applies
from cryorefine.likelihood.scores import as_real_pairs, matmul_precision

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["kernel_unshifted_combination", "unshifted_combination", "weighted_shifts"]

# launch shape: the fastest of 54 at pair_sums_bench.py's synthetic group of the final
# iteration (bench/fine_kernel_configs.py: 9.5 ms against 13.9 for 32 / 32 / 3 stages,
# H200); the fastest of 54 at the real final iteration's median group too (1.92 ms, session 34)
_BLOCK_ROWS = 16  # rows j of the table per step of the kernel's loop
_BLOCK_COEFFICIENTS = 64  # complex coefficients per program
_STAGES = 1  # software pipelining of the loop over rows: none

if triton is not None:
    # the group's sizes and the strides of W that follow them are not specialised on (as in
    # held_cross): one compiled variant per tile shape
    @triton.jit(do_not_specialize=["t", "r", "w_sb", "w_st", "rows_sb"])
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _unshifted(w_ptr, table_ptr, rows_ptr, phase_ptr, out_ptr, t, r, kc, w_sb, w_st,
                   rows_sb, table_sr, phase_sb, phase_st, out_sb,
                   BT: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
                   IEEE: tl.constexpr):  # fmt: skip
        """One particle, all its ``t`` translations, ``BC`` complex coefficients: ``Q``
        summed over its rows with real and imaginary parts interleaved (``W`` is real: one
        product), then ``sum_t conj(S) Q``."""
        reals = tl.program_id(0) * 2 * BC + tl.arange(0, 2 * BC)  # axis 0: CUDA's longest
        b = tl.program_id(1)
        ts = tl.arange(0, BT)
        in_t = ts < t
        in_r = reals < 2 * kc
        w_base = w_ptr + b.to(tl.int64) * w_sb + ts[:, None].to(tl.int64) * w_st
        q = tl.zeros((BT, 2 * BC), dtype=tl.float32)
        for j0 in range(0, r, BJ):
            js = j0 + tl.arange(0, BJ)
            in_j = js < r
            rows = tl.load(rows_ptr + b * rows_sb + js, mask=in_j, other=0).to(tl.int64)
            w = tl.load(w_base + js[None, :], mask=in_t[:, None] & in_j[None, :], other=0.0)
            p_at = table_ptr + rows[:, None] * table_sr + reals[None, :]
            p = tl.load(p_at, mask=in_j[:, None] & in_r[None, :], other=0.0)  # (BJ, 2 BC)
            if IEEE:
                q += tl.dot(w, p, input_precision="ieee")
            else:
                q += tl.dot(w, p, input_precision="tf32")
        s_at = (
            phase_ptr + b.to(tl.int64) * phase_sb + ts[:, None].to(tl.int64) * phase_st
            + reals[None, :]
        )  # fmt: skip
        s = tl.load(s_at, mask=in_t[:, None] & in_r[None, :], other=0.0)  # (BT, 2 BC)
        q_re, q_im = tl.split(tl.reshape(q, (BT, BC, 2)))
        s_re, s_im = tl.split(tl.reshape(s, (BT, BC, 2)))
        g_re = tl.sum(s_re * q_re + s_im * q_im, axis=0)
        g_im = tl.sum(s_re * q_im - s_im * q_re, axis=0)
        g = tl.reshape(tl.join(g_re, g_im), (2 * BC,))
        tl.store(out_ptr + b.to(tl.int64) * out_sb + reals, g, mask=in_r)


def kernel_unshifted_combination(
    weights: Tensor, table: Tensor, rows: Tensor, phases: Tensor, *, tf32: bool = False
) -> Tensor:
    """``G`` by the Triton kernel (``unshifted_combination``'s arguments), ``(b, k)`` complex64.

    Runs wherever Triton does, the interpreter (``TRITON_INTERPRET=1``) included.
    """
    b, t, r = weights.shape
    kc = table.shape[1] // 2
    if weights.stride(2) != 1 or table.stride(1) != 1:
        raise ValueError("unshifted_combination needs unit stride along rows in W and 2k in P")
    if t > MAX_TILE_ROWS:
        raise ValueError(f"the kernel holds at most {MAX_TILE_ROWS} translations, got {t}")
    if phases.dtype != torch.complex64 or phases.shape[-2:] != (t, kc):
        raise ValueError(f"need complex64 phases (..., {t}, {kc}), got {phases.dtype} "
                         f"{tuple(phases.shape)}")  # fmt: skip
    phases = phases.resolve_conj()
    s = torch.view_as_real(phases.expand(b, t, kc))  # (b, t, k, 2), a view
    if s.stride(2) != 2 or s.stride(3) != 1:
        s = torch.view_as_real(phases.expand(b, t, kc).contiguous())
    rows = rows.contiguous()
    out = weights.new_zeros((b, kc, 2), dtype=torch.float32)
    if b and t and r and kc:
        _unshifted[(triton.cdiv(kc, _BLOCK_COEFFICIENTS), b)](
            weights, table, rows, s, out, t, r, kc, weights.stride(0), weights.stride(1),
            rows.stride(0), table.stride(0), s.stride(0), s.stride(1), out.stride(0),
            BT=max(16, triton.next_power_of_2(t)), BJ=_BLOCK_ROWS, BC=_BLOCK_COEFFICIENTS,
            IEEE=not tf32, num_stages=_STAGES,
        )  # fmt: skip
    return torch.view_as_complex(out)


def unshifted_combination(
    weights: Float[Tensor, "b t r"],
    table: Float[Tensor, "n k2"],
    rows: Int[Tensor, "b r"],
    phases: Complex[Tensor, "b t k"] | Complex[Tensor, "t k"],
    *,
    precision: str = "float32",
) -> Complex[Tensor, "b k"]:
    """``G[b] = sum_t conj(S[b, t]) sum_j W[b, t, j] P[rows[b, j]]`` (module docstring).

    ``table`` holds the projections as real pairs (``scores.as_real_pairs``), ``rows``
    index it. The kernel where ``held_cross.kernel_applies`` (no ``(b, t, k)`` array);
    else ``Q`` formed by one batched product of the gathered rows, then summed.
    """
    if kernel_applies(weights, table, precision) and phases.dtype == torch.complex64:
        return kernel_unshifted_combination(weights, table, rows, phases, tf32=precision == "tf32")
    with matmul_precision(precision):
        q = weights @ table[rows]  # (b, t, 2k)
    q = torch.view_as_complex(q.unflatten(-1, (-1, 2)))
    return (phases.to(q.dtype).conj() * q).sum(dim=1)


def weighted_shifts(
    weights: Float[Tensor, "b t m"],
    data: Complex[Tensor, "b k"],
    phases: Complex[Tensor, "b t k"] | Complex[Tensor, "t k"],
    *,
    precision: str = "float32",
) -> Float[Tensor, "b m k2"]:
    """``D[b, j] = Y[b] sum_t W[b, t, j] S[b, t]`` as real pairs (module docstring).

    One batched product of the weights with the phases (``m`` rows per particle
    rather than ``t`` shifted copies of ``Y``), then ``Y`` multiplied in place.
    """
    with matmul_precision(precision):
        summed = weights.transpose(-1, -2) @ as_real_pairs(phases.to(data.dtype).resolve_conj())
    torch.view_as_complex(summed.unflatten(-1, (-1, 2))).mul_(data[:, None, :])
    return summed
