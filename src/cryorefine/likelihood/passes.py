"""Scoring and summing over orientation lists in chunks that fit a memory budget.

The orientations of a pass are rows ``0 .. n - 1`` of a table of matrices
(``RowProjector``). Either all particles share all rows (``score_shared``), or
each particle has its own list of rows, ascending and padded at the end
(``rows (b, r)``, ``valid (b, r)``: ``score_lists``, and ``score_held_lists``
for held rows and shared translations). Rows are
projected a chunk at a time, each projection once per call; a particle's slots
that fall in the chunk are a contiguous run of its ascending list, gathered into
``(b, L, k)`` and scored with the batched products of ``likelihood.scores``.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Complex, Float, Int
from torch import Tensor

from cryorefine.fourier import sample_rotated
from cryorefine.likelihood.held_cross import kernel_applies, kernel_cross
from cryorefine.likelihood.scores import (
    as_real_pairs,
    data_terms,
    matmul_precision,
    per_particle_cross,
    scores_from_cross,
    scores_from_terms,
    squared_magnitude,
    working_dtypes,
)
from cryorefine.likelihood.window import FourierWindow, window_frequencies_xyz

__all__ = [
    "Chunk",
    "ParticleWindowData",
    "ProjectionTable",
    "RowProjector",
    "held_list_chunk",
    "row_chunks",
    "score_held_lists",
    "score_lists",
    "score_shared",
]


@runtime_checkable
class ProjectionTable(Protocol):
    """Rows of projections, computed on demand or precomputed (``values``)."""

    @property
    def rows(self) -> int:
        """Number of rows."""
        ...

    @property
    def values(self) -> Tensor | None:
        """All rows, if precomputed."""
        ...

    def project(self, lo: int, hi: int) -> Tensor:
        """Rows ``lo .. hi - 1``."""
        ...

    def bytes_per_row(self) -> int:
        """Peak bytes of computing one row."""
        ...


@dataclass(frozen=True)
class RowProjector:
    """Projections of the reference at a table of orientations, on one window.

    With ``values`` the projections are precomputed (``with_values``) and
    ``project`` only slices them; ``powers`` are their squared magnitudes, where
    ``with_values`` was asked for them and they fitted.
    """

    reference_ft: Complex[Tensor, "p p ph"]
    rotations: Float[Tensor, "n 3 3"] | None
    window: FourierWindow
    padding_factor: int
    values: Complex[Tensor, "n k"] | None = None
    powers: Float[Tensor, "n k"] | None = None

    @property
    def rows(self) -> int:
        """Number of orientations in the table."""
        table = self.values if self.values is not None else self.rotations
        if table is None:
            raise ValueError("a RowProjector needs rotations or values")
        return int(table.shape[0])

    def project(
        self,
        lo: int,
        hi: int,
        out: Complex[Tensor, "c k"] | None = None,
        powers: Float[Tensor, "c k"] | None = None,
    ) -> Complex[Tensor, "c k"]:
        """Window coefficients of rows ``lo .. hi - 1``, written into ``out`` where given,
        and their squared magnitudes into ``powers`` (``fourier.sample_rotated``'s)."""
        if self.values is not None:
            values = self.values[lo:hi] if out is None else out.copy_(self.values[lo:hi])
            if powers is not None:
                torch.sum(torch.view_as_real(values).square(), dim=-1, out=powers)
            return values
        if self.rotations is None:
            raise ValueError("a RowProjector needs rotations or values")
        size, ndim = self.window.size, self.window.ndim
        scale = self.reference_ft.shape[0] // self.padding_factor if ndim == 2 else 1
        return sample_rotated(
            self.reference_ft,
            self.rotations[lo:hi],
            window_frequencies_xyz(self.window),
            padding_factor=self.padding_factor,
            max_radius=float(size // 2),
            scale=float(scale),
            out=out,
            powers=powers,
        )

    def bytes_per_row(self) -> int:
        """Peak bytes of one projection: its values, and the torch path's ~4x temporaries."""
        if self.values is not None:
            return 0
        return 5 * self.window.count * self.reference_ft.element_size()

    def with_values(
        self,
        max_bytes: int,
        *,
        chunk_bytes: int = 2**28,
        powers: bool = False,
        powers_bytes: int | None = None,
    ) -> "RowProjector":
        """The same table with all projections computed once, if they take at most ``max_bytes``.

        They are computed ``chunk_bytes`` of projector temporaries at a time. With
        ``powers``, their squared magnitudes are written as they are (the texture
        kernel's, no second read), where they fit ``powers_bytes`` (default: what the
        projections leave of ``max_bytes``).
        """
        size = self.reference_ft.element_size()
        table_bytes = self.rows * self.window.count * size
        if self.values is not None or table_bytes > max_bytes:
            return self
        room = max_bytes - table_bytes if powers_bytes is None else powers_bytes
        with_powers = powers and table_bytes // 2 <= room
        chunk = max(1, chunk_bytes // max(1, self.bytes_per_row()))
        device, shape = self.reference_ft.device, (self.rows, self.window.count)
        # filled in place: no second copy of the table while it is joined
        values = torch.empty(shape, dtype=self.reference_ft.dtype, device=device)
        squares = None
        if with_powers:
            squares = torch.empty(shape, dtype=self.reference_ft.real.dtype, device=device)
        for lo in range(0, self.rows, chunk):  # the projections written straight into it
            hi = min(lo + chunk, self.rows)
            part = None if squares is None else squares[lo:hi]
            self.project(lo, hi, out=values[lo:hi], powers=part)
        return replace(self, values=values, powers=squares)


@dataclass(frozen=True)
class ParticleWindowData:
    """One pass's particle terms on its window (``likelihood.scores`` notation)."""

    data: Complex[Tensor, "b k"]
    ctf: Float[Tensor, "b k"]
    weight: Float[Tensor, "b k"]
    phases: Complex[Tensor, "b t k"]


def _chunk(projector: RowProjector, b: int, t: int, k: int, max_bytes: int) -> int:
    """Orientations per chunk so that a chunk's temporaries take about half of ``max_bytes``."""
    per_row = projector.bytes_per_row() + b * (24 * k + 8 * t)
    return max(1, (max_bytes // 2) // per_row)


def score_shared(
    particles: ParticleWindowData,
    projector: RowProjector,
    *,
    cross_correlation: bool,
    precision: str,
    max_bytes: int,
) -> Float[Tensor, "b t n"]:
    """Scores of every particle at every row; ``particles.phases`` must be shared (expanded)."""
    b, t, k = particles.phases.shape
    weight = torch.ones_like(particles.ctf) if cross_correlation else particles.weight
    terms = data_terms(
        particles.data, particles.ctf, weight, particles.phases[0], precision=precision
    )
    out = terms.data_power.new_empty((b, t, projector.rows))
    # per row: its projection's temporaries, |P|^2 and the real pairs (24 bytes per
    # coefficient), and its columns of the scores: the product and the copy into ``out``,
    # and for the cross-correlation its norms and quotient (nothing per particle and
    # coefficient)
    columns = 4 if cross_correlation else 2
    per_row = projector.bytes_per_row() + 24 * k + columns * terms.data_power.element_size() * b * t
    chunk = max(1, (max_bytes // 2) // per_row)
    for lo in range(0, projector.rows, chunk):
        hi = min(lo + chunk, projector.rows)
        p = projector.project(lo, hi)
        out[:, :, lo:hi] = scores_from_terms(terms, p, cross_correlation=cross_correlation)
    return out


@dataclass(frozen=True)
class Chunk:
    """Some slots of every particle's list: their projections, positions, mask and rows.

    ``projections`` is a copy made for the chunk (a gather): callers may overwrite it;
    None where the caller asked for none.
    """

    projections: Complex[Tensor, "b l ..."] | None
    slots: Int[Tensor, "b l"]
    inside: Bool[Tensor, "b l"]
    rows: Int[Tensor, "b l"]


def row_chunks(
    projector: ProjectionTable, rows: Tensor, valid: Tensor, chunk: int, *, project: bool = True
) -> Iterator[Chunk]:
    """Chunks of the slots of every particle's list ``rows (b, r)`` (ascending, ``valid``).

    With precomputed projections: consecutive slots of every list (their
    projections left out, None, where ``project`` is False). Otherwise
    the slots whose rows fall in consecutive row ranges, so that each row is
    projected once, at most ``chunk`` slots of each list at a time (a row can
    hold several slots of one list).
    """
    b, r = rows.shape
    n = projector.rows
    if projector.values is not None:
        for lo in range(0, r, chunk):
            slots = torch.arange(lo, min(lo + chunk, r), device=rows.device).expand(b, -1)
            picked = rows[:, lo : lo + chunk]
            projections = projector.values[picked.clamp(0, n - 1)] if project else None
            yield Chunk(projections, slots, valid[:, lo : lo + chunk], picked)
        return
    sentinel = torch.where(valid, rows, n)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        bounds = torch.tensor([lo, hi], device=rows.device).expand(b, 2).contiguous()
        start, end = torch.searchsorted(sentinel, bounds).unbind(-1)
        length = end - start
        width = int(length.max())
        if width == 0:
            continue
        projected = projector.project(lo, hi)
        # a row can hold many slots of one particle (pairs of one orientation at several
        # translations): at most ``chunk`` slots per particle at a time, as for the budget
        for first in range(0, width, chunk):
            step = torch.arange(first, min(first + chunk, width), device=rows.device)
            inside = step[None, :] < length[:, None]
            slots = (start[:, None] + step[None, :]).clamp(max=r - 1)
            picked = rows.gather(1, slots)
            local = (picked - lo).clamp(0, hi - lo - 1)
            yield Chunk(projected[local], slots, inside, picked)


def score_lists(
    particles: ParticleWindowData,
    projector: RowProjector,
    rows: Int[Tensor, "b r"],
    valid: Bool[Tensor, "b r"],
    *,
    cross_correlation: bool,
    precision: str,
    max_bytes: int,
) -> Float[Tensor, "b t r"]:
    """Scores of each particle at its own rows (ascending per particle); padded slots get +inf."""
    b, t, k = particles.phases.shape
    r = rows.shape[1]
    weight = torch.ones_like(particles.ctf) if cross_correlation else particles.weight
    terms = data_terms(particles.data, particles.ctf, weight, particles.phases, precision=precision)
    out = terms.data_power.new_full((b, t, r + 1), torch.inf)
    for part in row_chunks(projector, rows, valid, _chunk(projector, b, t, k, max_bytes)):
        scores = scores_from_terms(terms, part.projections, cross_correlation=cross_correlation)
        target = torch.where(part.inside, part.slots, r)[:, None, :].expand(b, t, -1)
        out.scatter_(2, target, scores)
    return out[:, :, :r]


def held_list_chunk(r: int, t: int, k: int, size: int, max_bytes: int, *, gathered: bool) -> int:
    """Particles per chunk of ``score_held_lists``: half of ``max_bytes`` over each one's bytes.

    Per particle: its ``Z`` (``t x 2k`` numbers of ``size`` bytes, and the complex array it
    is made from) and, where its ``r`` slots are ``gathered`` (the torch route), their copy
    (2 numbers per slot and coefficient, and as many again for a copy in the working dtype
    or their squares).
    """
    per_particle = 4 * t * k * size + (4 * r * k * size if gathered else 0)
    return max(1, (max_bytes // 2) // per_particle)


def score_held_lists(
    particles: ParticleWindowData,
    values: Complex[Tensor, "n k"],
    rows: Int[Tensor, "b r"],
    valid: Bool[Tensor, "b r"],
    *,
    cross_correlation: bool,
    precision: str,
    max_bytes: int,
    block_k: int | None = None,
    powers: Float[Tensor, "n k"] | None = None,
) -> Float[Tensor, "b t r"]:
    """``score_lists`` for held projections ``values`` and translations shared by all particles.

    ``sum w K^2 |P|^2``: when the table has no more rows than the lists have
    slots, one product of the particles with the table's ``|P|^2`` (``(b, n)``,
    gathered at the rows; ``powers``, ``RowProjector.with_values``'s, where given in
    the working real dtype); otherwise from each particle's gathered slots. The
    cross term is, for a few particles at a time, every slot of their lists
    gathered at once and one batched product per particle, ``Z (t, 2k) @ P^T
    (2k, r)`` cut along ``2k`` into blocks of ``block_k``
    (``scores.per_particle_cross``; default ``scores.CROSS_BLOCK``), and no
    ``(b, t, 2k)`` array of the whole chunk. Where the table of powers is made
    and the held-row kernel applies (``held_cross.kernel_applies``), the cross
    terms read each particle's rows through their indices
    (``held_cross.kernel_cross``): nothing is gathered. ``particles.phases`` must
    be shared by all particles (expanded).
    """
    b, t, k = particles.phases.shape
    if b > 1 and particles.phases.stride(0) != 0:
        raise ValueError("score_held_lists needs translations shared by all particles")
    r, n = rows.shape[1], values.shape[0]
    weight = torch.ones_like(particles.ctf) if cross_correlation else particles.weight
    real, cplx = working_dtypes(precision)
    size = torch.finfo(real).bits // 8  # bytes of a real working number
    ctf_power = weight.to(real) * particles.ctf.to(real).square()
    rows = rows.clamp(0, n - 1)
    table_power = None
    if n <= b * r:
        table_power = ctf_power.new_empty((b, n))
        # a block of rows: its working copy (2 numbers per coefficient) and its squared
        # magnitude (1), counted as 5 numbers (room), within a quarter of the budget
        block = max(1, (max_bytes // 4) // (5 * k * size))
        with matmul_precision(precision):
            for lo in range(0, n, block):
                if powers is not None and powers.dtype == real:
                    power = powers[lo : lo + block]
                else:
                    power = squared_magnitude(values[lo : lo + block].to(cplx))
                table_power[:, lo : lo + block] = ctf_power @ power.T
        table_power = table_power.gather(1, rows)
    out = ctf_power.new_empty((b, t, r))
    phases = particles.phases[:1]
    table = as_real_pairs(values) if values.is_contiguous() else None  # (n, 2k), a view
    # with the table of powers, the kernel reads each particle's rows through their
    # indices: no gathered copy. (The rows' powers from the kernel's own reads, in the
    # loop of the products, took the final iteration's coarse pass from 15.6 s to 21.2 s
    # on an H100: docs/performance.md.)
    z_like = ctf_power.new_empty((1, t, 2))  # a chunk's Z as the kernel would see it
    kernel = table is not None and table_power is not None
    kernel = kernel and kernel_applies(z_like, table, precision)
    step = held_list_chunk(r, t, k, size, max_bytes, gathered=not kernel)
    for lo in range(0, b, step):
        chunk = slice(lo, min(lo + step, b))
        terms = data_terms(
            particles.data[chunk],
            particles.ctf[chunk],
            weight[chunk],
            phases[0],
            precision=precision,
        )
        if kernel:  # Z as z_like: same device, dtype, t; unit stride (as_real_pairs)
            ref_power = table_power[chunk]
            cross = kernel_cross(terms.shifted, table, rows[chunk], tf32=precision == "tf32")
        else:
            slots = values[rows[chunk]].to(cplx)  # (s, r, k)
            if table_power is None:
                squares = squared_magnitude(slots)
                ref_power = (squares @ ctf_power[chunk, :, None]).squeeze(-1)
                del squares
            else:
                ref_power = table_power[chunk]
            cross = per_particle_cross(
                terms.shifted, as_real_pairs(slots), precision=precision, block=block_k
            )
        out[chunk] = scores_from_cross(
            terms.data_power, ref_power, cross, cross_correlation=cross_correlation
        )
    return out.masked_fill_(~valid[:, None, :], torch.inf)
