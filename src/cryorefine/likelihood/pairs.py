"""The fine pass over the children of each particle's significant coarse pairs.

RELION scores, for each significant coarse (translation, orientation) pair, its
``g = 2**(ndim oversampling)`` fine translations times its ``f = 8**oversampling``
fine orientations. Here each
particle's pairs are a padded list ``(b, q)`` (coarse orientation row and
coarse translation of each pair, ascending by row), and one pair is a block
``(g x 2k) @ (2k x f)`` of the products of ``likelihood.scores``, batched over
particles and pairs: ``[b, q, g, 2k] @ [b, q, 2k, f]``. The particle side
``Z = w K X S`` is computed once for the whole fine translation grid (coarse
translation ``i``'s children are fine translations ``i g .. i g + g - 1``).

Projections come in blocks of ``f`` rows (``BlockProjector``): the children of
one coarse orientation. Pairs are processed in chunks (``passes.row_chunks``) so
that each block is projected once and the temporaries fit the budget.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood.held_cross import kernel_applies, kernel_cross
from cryorefine.likelihood.passes import RowProjector, row_chunks
from cryorefine.likelihood.scores import (
    DataTerms,
    as_real_pairs,
    matmul_precision,
    squared_magnitude,
    working_dtypes,
)
from cryorefine.likelihood.search import compact

__all__ = [
    "MAX_TRANSLATIONS_PER_PRODUCT",
    "BlockProjector",
    "PairLists",
    "pair_lists",
    "score_pairs",
]


@dataclass(frozen=True)
class BlockProjector:
    """A ``RowProjector`` read ``block`` consecutive rows at a time: ``(n, block, k)``."""

    projector: RowProjector
    block: int

    @property
    def rows(self) -> int:
        """Number of blocks."""
        return self.projector.rows // self.block

    @property
    def values(self) -> Tensor | None:
        """Precomputed blocks ``(n, block, k)``, or None."""
        values = self.projector.values
        return None if values is None else values.reshape(self.rows, self.block, -1)

    def project(self, lo: int, hi: int) -> Complex[Tensor, "c f k"]:
        """Blocks ``lo .. hi - 1``."""
        values = self.projector.project(lo * self.block, hi * self.block)
        return values.reshape(hi - lo, self.block, -1)

    def bytes_per_row(self) -> int:
        """Peak bytes of projecting one block."""
        return self.block * self.projector.bytes_per_row()


@dataclass(frozen=True)
class PairLists:
    """Each particle's significant coarse pairs, ascending by orientation slot.

    Attributes
    ----------
    slots
        Candidate slot (column of ``CoarseOutcome.ids``) of each pair's orientation.
    translations
        Coarse translation index of each pair.
    valid
        False for padding.
    """

    slots: Int[Tensor, "b q"]
    translations: Int[Tensor, "b q"]
    valid: Bool[Tensor, "b q"]


def pair_lists(significant: Bool[Tensor, "b t c"], width: int | None = None) -> PairLists:
    """The significant pairs of each particle, padded to ``width`` (default: the largest count).

    A ``width`` the caller knows (``fine_groups.FineGroup.pair_width``) spares a
    wait for the device. Padding points at pair 0 (slot 0, translation 0).
    """
    b, t, c = significant.shape
    by_slot = significant.transpose(1, 2).reshape(b, c * t)  # orientation-major
    chosen, valid = compact(by_slot, width)  # ascending flat positions per particle
    chosen = torch.where(valid, chosen, 0)
    return PairLists(chosen // t, chosen % t, valid)


MAX_TRANSLATIONS_PER_PRODUCT = 14
"""``score_pairs`` multiplies each pair's children by all of its particle's ``T`` distinct
coarse translations' ``Z`` (``T`` times the flops of its own ``g``) when ``T`` is at most
this: per pair the blocks of ``Z`` gathered and its ``|P|^2`` temporaries move about
``(28 f + 16 g) k`` bytes, the wider product ``4 T g f k`` flops instead of ``4 g f k``;
at float32's ~17 flops per byte (H100) the product wins below ``T`` ~ 15. ``sum_pairs``
uses the same rule for its two products (``Q`` and the back-projection data): weights spread
over all ``T g`` translations instead of per-pair blocks and an index_add over them."""


def _chunk(projector: BlockProjector, b: int, g: int, k: int, kb: int, max_bytes: int) -> int:
    """Pairs per chunk so that a chunk's temporaries take about half of ``max_bytes``."""
    f = projector.block
    floats = 2 * g * k + 5 * f * k + 4 * g * kb + 3 * f * kb + 2 * g * f
    return max(1, (max_bytes // 2) // (projector.bytes_per_row() + 4 * b * floats))


def _held_row_power(
    projector: BlockProjector, pair_children: int, cplx: torch.dtype, max_bytes: int
) -> Float[Tensor, "rows k"] | None:
    """``|P|^2`` of every row of a held projector ``(rows, k)``, or None.

    Where the squares were written with the projections (``RowProjector.with_values``'
    ``powers``, in the working dtype) they are taken as they are, whatever the rows and
    the budget: they cost nothing more. Otherwise squaring each pair's gathered
    children costs a pass over ``(b, q, f, 2k)`` per product (``|P|^2``, then a
    matrix-vector product). With the projections held, no more rows than the pairs'
    children (``pair_children = b q f``) and the table of powers within an eighth of
    ``max_bytes`` (a group's children are held within a quarter; a cache of the whole
    fine grid of 2D data is not squared per call), each row is squared once and one
    product gives every particle's weighted power at every row.
    """
    values = projector.projector.values
    if values is None:
        return None
    if projector.projector.powers is not None and values.dtype == cplx:  # made with the values
        return projector.projector.powers
    if values.shape[0] > pair_children:
        return None
    if values.numel() * torch.finfo(cplx).bits // 8 > max_bytes // 8:  # the real powers' bytes
        return None
    held = values.to(cplx)
    return squared_magnitude(held)


def _child_rows(rows: Tensor, f: int) -> Tensor:
    """Projector rows ``(b, l f)`` of the ``f`` children of block rows ``(b, l)``."""
    children = torch.arange(f, device=rows.device)
    return (rows[:, :, None] * f + children).reshape(rows.shape[0], -1)


def _translation_index(lists: PairLists, slots: Tensor, g: int) -> Tensor:
    """Fine translation index ``(b, l, g)`` of the children of the pairs at ``slots``."""
    coarse = lists.translations.gather(1, slots)
    return coarse[:, :, None] * g + torch.arange(g, device=slots.device)


def _spread(w: Tensor, index: Tensor, tg: int) -> Tensor:
    """Weights ``w (b, l, g, f)`` at their translations ``index (b, l, g)``: ``(b, T g, l f)``.

    Column ``(l, f)`` holds pair ``l``'s child ``f`` at its own ``g`` rows and zeros at
    the particle's other translations, so that one product per particle adds every
    pair into every translation (no per-pair copies of ``Z`` or of the products).
    """
    b, width, g, f = w.shape
    out = w.new_zeros(b, tg, width, f)
    out.scatter_(1, index.transpose(1, 2)[..., None].expand(b, g, width, f), w.transpose(1, 2))
    return out.reshape(b, tg, width * f)


def _blocks(shifted: Tensor, index: Tensor) -> Tensor:
    """Rows ``index (b, l, g)`` of ``shifted (b, T, c)``: ``(b, l, g, c)``."""
    b = index.shape[0]
    picked = shifted.gather(1, index.reshape(b, -1, 1).expand(-1, -1, shifted.shape[-1]))
    return picked.reshape(*index.shape, -1)


def score_pairs(
    terms: DataTerms,
    projector: BlockProjector,
    rows: Int[Tensor, "b q"],
    lists: PairLists,
    *,
    children: int,
    cross_correlation: bool,
    max_bytes: int,
) -> Float[Tensor, "b q g f"]:
    """Scores of every pair's ``g x f`` children; padded pairs get +inf.

    ``terms`` hold ``Z`` for the whole fine translation grid ``(b, T g, 2k)``
    (``children`` = ``g``; weight 1 for the cross-correlation); ``rows`` are the
    pairs' blocks in ``projector``, ascending per particle.
    """
    _, cplx = working_dtypes(terms.precision)
    b, tg, k2 = terms.shifted.shape
    g, f, q = children, projector.block, rows.shape[1]
    out = terms.data_power.new_full((b, q + 1, g, f), torch.inf)
    chunk = _chunk(projector, b, g, k2 // 2, 0, max_bytes)
    every_translation = tg // g <= MAX_TRANSLATIONS_PER_PRODUCT
    row_power = _held_row_power(projector, b * q * f, cplx, max_bytes)
    if row_power is not None:  # sum_k w K^2 |P_row|^2 of every particle and held row
        with matmul_precision(terms.precision):
            held_power = terms.ctf_power @ row_power.T  # (b, rows)
        values = projector.projector.values
        if (
            every_translation
            and values.is_contiguous()
            and kernel_applies(terms.shifted, as_real_pairs(values), terms.precision)
        ):
            return _kernel_scores(terms, projector, rows, lists, held_power, g, cross_correlation)
    else:  # w K^2 on the real pairs, for each chunk's |P|^2 product
        ctf_pairs = terms.ctf_power.repeat_interleave(2, dim=-1)[:, :, None]  # (b, 2k, 1)
    for part in row_chunks(projector, rows, lists.valid, chunk):
        p = as_real_pairs(part.projections.to(cplx))  # (b, l, f, 2k), the chunk's own copy
        index = _translation_index(lists, part.slots, g)  # (b, l, g)
        width = p.shape[1]  # l
        with matmul_precision(terms.precision):
            if every_translation:  # (b, T g, 2k) @ (b, 2k, l f): no copies of Z's rows
                product = terms.shifted @ p.reshape(b, width * f, k2).transpose(1, 2)
                product = product.reshape(b, tg, width, f).transpose(1, 2)  # (b, l, T g, f)
                cross = product.gather(2, index[:, :, :, None].expand(-1, -1, -1, f))
            else:
                cross = _blocks(terms.shifted, index) @ p.transpose(-1, -2)  # (b, l, g, f)
            if row_power is not None:
                power = held_power.gather(1, _child_rows(part.rows, f))
            else:  # |P|^2 weighted by w K^2: square the copy in place, one product
                power = p.square_().reshape(b, width * f, k2) @ ctf_pairs
            power = power.reshape(b, width, 1, f)
        scores = _pair_scores(cross, power, terms.data_power, cross_correlation)
        target = torch.where(part.inside, part.slots, q)[:, :, None, None].expand(-1, -1, g, f)
        out.scatter_(1, target, scores)
    return out[:, :q]


def _pair_scores(
    cross: Tensor, power: Tensor, data_power: Tensor, cross_correlation: bool
) -> Tensor:
    """Scores ``(b, l, g, f)`` from the cross terms, ``sum w K^2 |P|^2 (b, l, 1, f)`` and
    ``sum w |X|^2 (b,)``; ``cross`` is overwritten."""
    if cross_correlation:
        tiny = torch.finfo(cross.dtype).tiny
        norm = power.clamp_min(tiny).sqrt() * data_power.clamp_min(tiny).sqrt()[:, None, None, None]
        return -cross / norm
    return cross.mul_(-2.0).add_(power).add_(data_power[:, None, None, None])


def _kernel_scores(
    terms: DataTerms,
    projector: BlockProjector,
    rows: Tensor,
    lists: PairLists,
    held_power: Tensor,
    g: int,
    cross_correlation: bool,
) -> Tensor:
    """``score_pairs`` for held projections by ``held_cross``'s kernel: every pair's children
    read through their row indices (no gathered copies), all translations at once."""
    b, tg, _ = terms.shifted.shape
    f, q = projector.block, rows.shape[1]
    values = projector.projector.values
    children = _child_rows(rows.clamp(0, projector.rows - 1), f)  # (b, q f)
    table = as_real_pairs(values)  # (rows, 2k), a view of the held projections
    cross = kernel_cross(terms.shifted, table, children, tf32=terms.precision == "tf32")
    cross = cross.reshape(b, tg, q, f).transpose(1, 2)  # (b, q, T g, f)
    slots = torch.arange(q, device=rows.device).expand(b, q)
    index = _translation_index(lists, slots, g)  # (b, q, g)
    cross = cross.gather(2, index[:, :, :, None].expand(-1, -1, -1, f))
    power = held_power.gather(1, children).reshape(b, q, 1, f)
    scores = _pair_scores(cross, power, terms.data_power, cross_correlation)
    return scores.masked_fill_(~lists.valid[:, :, None, None], torch.inf)
