"""The fine pass's particle side with its phases kept as per-axis factors.

The fine pass scores each particle at the children of its significant pairs, at
every fine translation ``t`` of its own: ``Z[b, t] = w K X[b] S[b, t]``
(``scores.data_terms``). Made whole, ``Z`` and the phases ``S`` are ``(b, t, k)``
arrays, 16 bytes per coefficient and translation: at box 96 about 300 MB per particle
with 40 translations, which is what closed most fine groups (``fine_groups``).
``PhasedTerms`` keeps ``w K X`` and the phases' per-axis factors
(``window.ShiftFactors``) instead, and ``phased_cross`` forms each tile of ``Z`` in
registers (``phase_kernel.phase_tile``) inside ``held_cross``'s product with the
held rows:

    cross[b, t, j] = sum_k Re(w K X[b, k] S[b, t, k]) Re P[rows[b, j], k]
                     + Im(w K X[b, k] S[b, t, k]) Im P[rows[b, j], k]

``PhasedTerms.dense`` gives the ``scores.DataTerms`` of the same numbers for the torch
routes (bit for bit those of ``data_terms``).
"""

from dataclasses import dataclass
from typing import no_type_check

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood.held_cross import _BLOCK_ROWS, MAX_TILE_ROWS, _splits, kernels_on
from cryorefine.likelihood.phase_kernel import factor_table, phase_tile
from cryorefine.likelihood.scores import (
    DataTerms,
    as_real_pairs,
    particle_side,
    working_dtypes,
)
from cryorefine.likelihood.window import ShiftFactors

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["PhasedTerms", "phased_applies", "phased_cross", "phased_terms"]

_BLOCK_COEFFICIENTS = 16  # complex coefficients per step of the kernel's loop


@dataclass(frozen=True)
class PhasedTerms:
    """``scores.DataTerms`` with ``Z`` kept as ``w K X`` and the phases' factors.

    Attributes
    ----------
    data_power, ctf_power, precision
        As ``DataTerms``'.
    weighted
        ``w K X`` ``(b, k)``, complex in the working precision.
    shifts
        The phases of each particle's translations as per-axis factors.
    """

    data_power: Float[Tensor, " b"]
    ctf_power: Float[Tensor, "b k"]
    weighted: Complex[Tensor, "b k"]
    shifts: ShiftFactors
    precision: str

    @property
    def translations(self) -> int:
        """Number ``t`` of translations per particle."""
        return int(self.shifts.factors.shape[-3])

    def dense(self) -> DataTerms:
        """The ``DataTerms`` of the same numbers: ``Z`` made whole, ``(b, t, 2k)``."""
        _, cplx = working_dtypes(self.precision)
        z = self.weighted[:, None, :] * self.shifts.dense().to(cplx)
        return DataTerms(self.data_power, self.ctf_power, as_real_pairs(z), self.precision)


def phased_terms(
    data: Complex[Tensor, "b k"],
    ctf: Float[Tensor, "b k"],
    weight: Float[Tensor, "b k"],
    shifts: ShiftFactors,
    *,
    precision: str = "float32",
) -> PhasedTerms:
    """``scores.data_terms`` with the phases as their factors (the same operations)."""
    return PhasedTerms(*particle_side(data, ctf, weight, precision=precision), shifts, precision)


if triton is not None:

    @triton.jit
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _phased(z_ptr, f_ptr, at_ptr, table_ptr, rows_ptr, out_ptr, t, r, kc, span, z_sb,
                f_sb, f_st, f_sd, at_sk, rows_sb, table_sr, out_ss, out_sb, out_st,
                NDIM: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                IEEE: tl.constexpr):  # fmt: skip
        """One particle, ``BR`` of its rows, all its ``t`` translations, one range of
        coefficients: each tile of ``Z`` formed from ``w K X`` and the factors."""
        b = tl.program_id(0)
        block = tl.program_id(1)
        part = tl.program_id(2)
        ts = tl.arange(0, BT)
        rs = block * BR + tl.arange(0, BR)
        in_t = ts < t
        in_r = rs < r
        rows = tl.load(rows_ptr + b * rows_sb + rs, mask=in_r, other=0).to(tl.int64)
        f_base = f_ptr + b.to(tl.int64) * f_sb + ts[:, None].to(tl.int64) * f_st
        z_base = z_ptr + b.to(tl.int64) * z_sb
        p_base = table_ptr + rows[:, None] * table_sr
        acc = tl.zeros((BT, BR), dtype=tl.float32)
        start = part * span
        for c0 in range(start, tl.minimum(start + span, kc), BC):
            cs = c0 + tl.arange(0, BC)
            in_c = cs < kc
            s_re, s_im = phase_tile(
                f_base, f_sd, at_ptr, at_sk, cs, in_t[:, None] & in_c[None, :], in_c, NDIM
            )
            z_re = tl.load(z_base + 2 * cs, mask=in_c, other=0.0)[None, :]
            z_im = tl.load(z_base + 2 * cs + 1, mask=in_c, other=0.0)[None, :]
            a_re = z_re * s_re - z_im * s_im  # Z = (w K X) S, as scores.data_terms
            a_im = z_re * s_im + z_im * s_re
            in_p = in_r[:, None] & in_c[None, :]
            p_re = tl.load(p_base + 2 * cs[None, :], mask=in_p, other=0.0)
            p_im = tl.load(p_base + 2 * cs[None, :] + 1, mask=in_p, other=0.0)
            if IEEE:
                acc += tl.dot(a_re, tl.trans(p_re), input_precision="ieee")
                acc += tl.dot(a_im, tl.trans(p_im), input_precision="ieee")
            else:
                acc += tl.dot(a_re, tl.trans(p_re), input_precision="tf32")
                acc += tl.dot(a_im, tl.trans(p_im), input_precision="tf32")
        out = (
            out_ptr
            + part.to(tl.int64) * out_ss
            + b.to(tl.int64) * out_sb
            + ts[:, None].to(tl.int64) * out_st
            + rs[None, :]
        )
        tl.store(out, acc, mask=in_t[:, None] & in_r[None, :])


def phased_applies(terms: PhasedTerms, table: Tensor) -> bool:
    """Whether ``phased_cross`` can take ``terms`` and ``table``: the held-row kernels on
    (``held_cross.kernels_on``), complex64 ``w K X`` and factors, a float32 table with unit
    stride along ``2k``, at most ``MAX_TILE_ROWS`` translations."""
    return (
        kernels_on(terms.weighted, terms.precision)
        and terms.weighted.dtype == terms.shifts.factors.dtype == torch.complex64
        and table.dtype == torch.float32
        and table.stride(-1) == 1
        and terms.translations <= MAX_TILE_ROWS
    )


def phased_cross(
    terms: PhasedTerms, table: Float[Tensor, "n k2"], rows: Int[Tensor, "b r"]
) -> Float[Tensor, "b t r"]:
    """``cross[b, t, j]`` (module docstring) by the Triton kernel, tf32 where
    ``terms.precision`` is; ``rows`` index ``table`` (in range). Runs wherever Triton
    does, the interpreter (``TRITON_INTERPRET=1``) included."""
    weighted = terms.weighted
    b, kc = weighted.shape
    t, r = terms.translations, rows.shape[1]
    if table.shape[1] != 2 * kc or table.stride(1) != 1:
        raise ValueError(f"need a table of {2 * kc} reals per row, unit stride, got {table.shape}")
    if t > MAX_TILE_ROWS:
        raise ValueError(f"the kernel holds at most {MAX_TILE_ROWS} translations, got {t}")
    factors, at = factor_table(terms.shifts.factors, terms.shifts.at, b)
    z = torch.view_as_real(weighted.resolve_conj().contiguous())  # (b, k, 2)
    rows = rows.contiguous()
    row_blocks = triton.cdiv(max(r, 1), _BLOCK_ROWS)
    split = _splits(b, row_blocks, 2 * kc)
    span = triton.cdiv(triton.cdiv(kc, split), _BLOCK_COEFFICIENTS) * _BLOCK_COEFFICIENTS
    split = triton.cdiv(kc, span) if kc else 1
    partial = z.new_empty((split, b, t, r), dtype=torch.float32)
    if b and r and t and kc:
        _phased[(b, row_blocks, split)](
            z, factors, at, table, rows, partial, t, r, kc, span, z.stride(0),
            factors.stride(0), factors.stride(1), factors.stride(2), at.stride(0),
            rows.stride(0), table.stride(0), partial.stride(0), partial.stride(1),
            partial.stride(2),
            NDIM=at.shape[1], BT=max(16, triton.next_power_of_2(t)), BR=_BLOCK_ROWS,
            BC=_BLOCK_COEFFICIENTS, IEEE=terms.precision != "tf32",
            num_warps=8,  # the tiles of phases and Z besides the (t, rows) accumulator
        )  # fmt: skip
    else:
        partial.zero_()
    return partial.sum(dim=0) if split > 1 else partial[0]
