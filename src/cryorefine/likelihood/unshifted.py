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
the phases are read once and nothing of size ``(b, t, k)`` is written. Given the
phases as their per-axis factors (``window.ShiftFactors``), a second kernel forms
each tile of phases in registers and needs no phases of every translation at all.
"""

from typing import no_type_check

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood.held_cross import MAX_TILE_ROWS, kernel_applies, kernels_on
from cryorefine.likelihood.phase_kernel import factor_table, phase_tile
from cryorefine.likelihood.scores import as_real_pairs, matmul_precision
from cryorefine.likelihood.window import ShiftFactors

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = [
    "kernel_unshifted_combination",
    "kernel_weighted_shifts",
    "shifts_kernel_applies",
    "unshifted_combination",
    "weighted_shifts",
]

_BLOCK_ROWS = 32  # rows j of the table per step of the kernel's loop
_BLOCK_COEFFICIENTS = 32  # complex coefficients per program

if triton is not None:

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _unshifted(w_ptr, table_ptr, rows_ptr, phase_ptr, out_ptr, t, r, kc, w_sb, w_st,
                   rows_sb, table_sr, phase_sb, phase_st, out_sb, f_sd, at_ptr, at_sk,
                   BT: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
                   IEEE: tl.constexpr, FACTORS: tl.constexpr, NDIM: tl.constexpr):  # fmt: skip
        """One particle, all its ``t`` translations, ``BC`` complex coefficients: ``Q``'s
        real and imaginary tiles summed over its rows, then ``sum_t conj(S) Q``; ``S``
        read from ``phase_ptr``, or formed from the per-axis factors there (``FACTORS``,
        ``phase_kernel.phase_tile``)."""
        cs = tl.program_id(0) * BC + tl.arange(0, BC)  # axis 0: CUDA's longest
        b = tl.program_id(1)
        ts = tl.arange(0, BT)
        in_t = ts < t
        in_c = cs < kc
        w_base = w_ptr + b.to(tl.int64) * w_sb + ts[:, None].to(tl.int64) * w_st
        q_re = tl.zeros((BT, BC), dtype=tl.float32)
        q_im = tl.zeros((BT, BC), dtype=tl.float32)
        for j0 in range(0, r, BJ):
            js = j0 + tl.arange(0, BJ)
            in_j = js < r
            rows = tl.load(rows_ptr + b * rows_sb + js, mask=in_j, other=0).to(tl.int64)
            w = tl.load(w_base + js[None, :], mask=in_t[:, None] & in_j[None, :], other=0.0)
            p_at = table_ptr + rows[:, None] * table_sr + 2 * cs[None, :]
            in_p = in_j[:, None] & in_c[None, :]
            p_re = tl.load(p_at, mask=in_p, other=0.0)
            p_im = tl.load(p_at + 1, mask=in_p, other=0.0)
            if IEEE:
                q_re += tl.dot(w, p_re, input_precision="ieee")
                q_im += tl.dot(w, p_im, input_precision="ieee")
            else:
                q_re += tl.dot(w, p_re, input_precision="tf32")
                q_im += tl.dot(w, p_im, input_precision="tf32")
        s_base = phase_ptr + b.to(tl.int64) * phase_sb + ts[:, None].to(tl.int64) * phase_st
        in_s = in_t[:, None] & in_c[None, :]
        if FACTORS:
            s_re, s_im = phase_tile(s_base, f_sd, at_ptr, at_sk, cs, in_s, in_c, NDIM)
        else:
            s_re = tl.load(s_base + 2 * cs[None, :], mask=in_s, other=0.0)
            s_im = tl.load(s_base + 2 * cs[None, :] + 1, mask=in_s, other=0.0)
        g_re = tl.sum(s_re * q_re + s_im * q_im, axis=0)
        g_im = tl.sum(s_re * q_im - s_im * q_re, axis=0)
        out = out_ptr + b.to(tl.int64) * out_sb + 2 * cs
        tl.store(out, g_re, mask=in_c)
        tl.store(out + 1, g_im, mask=in_c)

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _weighted(w_ptr, f_ptr, at_ptr, y_ptr, out_ptr, t, m, kc, w_sb, w_st, f_sb, f_st,
                  f_sd, at_sk, y_sb, out_sb, out_sj,
                  NDIM: tl.constexpr, BT: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
                  IEEE: tl.constexpr):  # fmt: skip
        """One particle, ``BC`` complex coefficients: its phases formed from the per-axis
        factors (as ``phase_kernel``), then each block of rows' ``Y sum_t W S``."""
        cs = tl.program_id(0) * BC + tl.arange(0, BC)  # axis 0: CUDA's longest
        b = tl.program_id(1)
        ts = tl.arange(0, BT)
        in_t = ts < t
        in_c = cs < kc
        in_s = in_t[:, None] & in_c[None, :]
        f_base = f_ptr + b.to(tl.int64) * f_sb + ts[:, None].to(tl.int64) * f_st
        s_re, s_im = phase_tile(f_base, f_sd, at_ptr, at_sk, cs, in_s, in_c, NDIM)
        y_at = y_ptr + b.to(tl.int64) * y_sb + 2 * cs
        y_re = tl.load(y_at, mask=in_c, other=0.0)[None, :]
        y_im = tl.load(y_at + 1, mask=in_c, other=0.0)[None, :]
        w_base = w_ptr + b.to(tl.int64) * w_sb + ts[:, None].to(tl.int64) * w_st
        for j0 in range(0, m, BJ):
            js = j0 + tl.arange(0, BJ)
            in_j = js < m
            w = tl.trans(tl.load(w_base + js[None, :], mask=in_t[:, None] & in_j[None, :],
                                 other=0.0))  # (BJ, BT)  # fmt: skip
            if IEEE:
                a_re = tl.dot(w, s_re, input_precision="ieee")
                a_im = tl.dot(w, s_im, input_precision="ieee")
            else:
                a_re = tl.dot(w, s_re, input_precision="tf32")
                a_im = tl.dot(w, s_im, input_precision="tf32")
            out = (out_ptr + b.to(tl.int64) * out_sb + js[:, None].to(tl.int64) * out_sj
                   + 2 * cs[None, :])  # fmt: skip
            in_out = in_j[:, None] & in_c[None, :]
            tl.store(out, a_re * y_re - a_im * y_im, mask=in_out)
            tl.store(out + 1, a_re * y_im + a_im * y_re, mask=in_out)


def kernel_unshifted_combination(
    weights: Tensor,
    table: Tensor,
    rows: Tensor,
    phases: Tensor | ShiftFactors,
    *,
    tf32: bool = False,
) -> Tensor:
    """``G`` by the Triton kernel (``unshifted_combination``'s arguments), ``(b, k)`` complex64.

    ``phases`` as an array, or as their per-axis factors (``window.ShiftFactors``), which
    the kernel multiplies into each tile of phases. Runs wherever Triton does, the
    interpreter (``TRITON_INTERPRET=1``) included.
    """
    b, t, r = weights.shape
    kc = table.shape[1] // 2
    if weights.stride(2) != 1 or table.stride(1) != 1:
        raise ValueError("unshifted_combination needs unit stride along rows in W and 2k in P")
    if t > MAX_TILE_ROWS:
        raise ValueError(f"the kernel holds at most {MAX_TILE_ROWS} translations, got {t}")
    factors = isinstance(phases, ShiftFactors)
    if factors:
        shape = tuple(phases.factors.shape[-3:-1])
        dtype, ndim = phases.factors.dtype, phases.at.shape[1]
        good = shape == (t, ndim) and phases.at.shape[0] == kc
    else:
        shape, dtype, ndim = tuple(phases.shape[-2:]), phases.dtype, 1
        good = shape == (t, kc)
    if dtype != torch.complex64 or not good:
        raise ValueError(f"need complex64 phases (..., {t}, {kc}) or factors (..., {t}, ndim, n) "
                         f"of {kc} coefficients, got {dtype} {shape}")  # fmt: skip
    if factors:
        s, at = factor_table(phases.factors, phases.at, b)
        axis_stride = s.stride(2)
    else:
        phases = phases.resolve_conj()
        s = torch.view_as_real(phases.expand(b, t, kc))  # (b, t, k, 2), a view
        if s.stride(2) != 2 or s.stride(3) != 1:
            s = torch.view_as_real(phases.expand(b, t, kc).contiguous())
        at, axis_stride = rows, 0  # not read
    rows = rows.contiguous()
    out = weights.new_zeros((b, kc, 2), dtype=torch.float32)
    if b and t and r and kc:
        _unshifted[(triton.cdiv(kc, _BLOCK_COEFFICIENTS), b)](
            weights, table, rows, s, out, t, r, kc, weights.stride(0), weights.stride(1),
            rows.stride(0), table.stride(0), s.stride(0), s.stride(1), out.stride(0),
            axis_stride, at, at.stride(0),
            BT=max(16, triton.next_power_of_2(t)), BJ=_BLOCK_ROWS, BC=_BLOCK_COEFFICIENTS,
            IEEE=not tf32, FACTORS=factors, NDIM=ndim,
        )  # fmt: skip
    return torch.view_as_complex(out)


def unshifted_combination(
    weights: Float[Tensor, "b t r"],
    table: Float[Tensor, "n k2"],
    rows: Int[Tensor, "b r"],
    phases: Complex[Tensor, "b t k"] | Complex[Tensor, "t k"] | ShiftFactors,
    *,
    precision: str = "float32",
) -> Complex[Tensor, "b k"]:
    """``G[b] = sum_t conj(S[b, t]) sum_j W[b, t, j] P[rows[b, j]]`` (module docstring).

    ``table`` holds the projections as real pairs (``scores.as_real_pairs``), ``rows``
    index it. The kernel where ``held_cross.kernel_applies`` (no ``(b, t, k)`` array);
    else ``Q`` formed by one batched product of the gathered rows, then summed.
    """
    dtype = phases.factors.dtype if isinstance(phases, ShiftFactors) else phases.dtype
    if kernel_applies(weights, table, precision) and dtype == torch.complex64:
        return kernel_unshifted_combination(weights, table, rows, phases, tf32=precision == "tf32")
    if isinstance(phases, ShiftFactors):
        phases = phases.dense()
    with matmul_precision(precision):
        q = weights @ table[rows]  # (b, t, 2k)
    q = torch.view_as_complex(q.unflatten(-1, (-1, 2)))
    return (phases.to(q.dtype).conj() * q).sum(dim=1)


def kernel_weighted_shifts(
    weights: Tensor, data: Tensor, shifts: ShiftFactors, *, tf32: bool = False
) -> Tensor:
    """``D`` by the Triton kernel (``weighted_shifts``' arguments, the phases as their
    per-axis factors, complex64, one set per particle or shared): ``(b, m, 2k)`` float32.

    Runs wherever Triton does, the interpreter (``TRITON_INTERPRET=1``) included.
    """
    b, t, m = weights.shape
    kc = data.shape[1]
    factors = shifts.factors
    ndim = factors.shape[-2]
    if factors.dtype != torch.complex64 or factors.shape[-3] != t or shifts.at.shape != (kc, ndim):
        raise ValueError(f"need complex64 factors (..., {t}, ndim, n) and at ({kc}, ndim), "
                         f"got {factors.dtype} {tuple(factors.shape)}, "
                         f"{tuple(shifts.at.shape)}")  # fmt: skip
    if t > MAX_TILE_ROWS:
        raise ValueError(f"the kernel holds at most {MAX_TILE_ROWS} translations, got {t}")
    table, at = factor_table(factors, shifts.at, b)
    y = torch.view_as_real(data.to(torch.complex64).resolve_conj().contiguous())
    out = weights.new_empty((b, m, kc, 2), dtype=torch.float32)
    if b and t and m and kc:
        _weighted[(triton.cdiv(kc, _BLOCK_COEFFICIENTS), b)](
            weights, table, at, y, out, t, m, kc, weights.stride(0), weights.stride(1),
            table.stride(0), table.stride(1), table.stride(2), at.stride(0), y.stride(0),
            out.stride(0), out.stride(1),
            NDIM=ndim, BT=max(16, triton.next_power_of_2(t)), BJ=_BLOCK_ROWS,
            BC=_BLOCK_COEFFICIENTS, IEEE=not tf32,
        )  # fmt: skip
    return out.reshape(b, m, 2 * kc)


def shifts_kernel_applies(weights: Tensor, data: Tensor, translations: int, precision: str) -> bool:
    """Whether ``weighted_shifts`` forms the phases in its kernel for weights and data of
    these dtypes and ``translations`` per particle (given complex64 factors): the held-row
    kernels on, float32 weights, complex64 data, at most ``MAX_TILE_ROWS`` translations."""
    return (
        kernels_on(weights, precision)
        and weights.dtype == torch.float32
        and data.dtype == torch.complex64
        and translations <= MAX_TILE_ROWS
    )


def weighted_shifts(
    weights: Float[Tensor, "b t m"],
    data: Complex[Tensor, "b k"],
    phases: Complex[Tensor, "b t k"] | Complex[Tensor, "t k"] | ShiftFactors,
    *,
    precision: str = "float32",
) -> Float[Tensor, "b m k2"]:
    """``D[b, j] = Y[b] sum_t W[b, t, j] S[b, t]`` as real pairs (module docstring).

    Given the phases as their per-axis factors (``window.ShiftFactors``), the Triton
    kernel forms each tile of phases in registers where the held-row kernels are on
    (``held_cross.kernels_on``) for float32 data and at most ``MAX_TILE_ROWS``
    translations: nothing of size ``(b, t, k)`` is made. Otherwise one batched product
    of the weights with the phases (``m`` rows per particle rather than ``t`` shifted
    copies of ``Y``), then ``Y`` multiplied in place.
    """
    if isinstance(phases, ShiftFactors):
        if (
            shifts_kernel_applies(weights, data, weights.shape[1], precision)
            and phases.factors.dtype == torch.complex64
            and weights.stride(2) == 1
        ):
            return kernel_weighted_shifts(weights, data, phases, tf32=precision == "tf32")
        phases = phases.dense()
    with matmul_precision(precision):
        summed = weights.transpose(-1, -2) @ as_real_pairs(phases.to(data.dtype).resolve_conj())
    torch.view_as_complex(summed.unflatten(-1, (-1, 2))).mul_(data[:, None, :])
    return summed
