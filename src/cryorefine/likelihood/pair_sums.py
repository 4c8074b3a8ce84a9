"""The fine pass's M-step sums over the children of each particle's significant coarse pairs.

With the pairs' posterior weights ``(b, q, g, f)`` (``likelihood.pairs`` for the
lists, blocks and scores): ``Q = sum_r w P_r`` per fine translation and
``sum_r W_r |P_r|^2`` per particle (the noise and scale sums, ``likelihood.sums``),
and each carried fine row's back-projection data and weight. With at most
``pairs.MAX_TRANSLATIONS_PER_PRODUCT`` translations per particle the weights
are spread over them (``pairs._spread``): one product per particle adds every
pair into ``Q`` and gives each child's data. With the projections held and
``held_cross``'s kernel on, ``Q`` is read through the rows' indices
(``kernel_combination``) and the chunks gather no projections at all.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood import pairs
from cryorefine.likelihood.held_cross import kernel_applies, kernel_combination
from cryorefine.likelihood.pairs import (
    BlockProjector,
    PairLists,
    _blocks,
    _child_rows,
    _held_row_power,
    _spread,
    _translation_index,
)
from cryorefine.likelihood.passes import merge_rows, row_chunks
from cryorefine.likelihood.scores import as_real_pairs, matmul_precision, working_dtypes
from cryorefine.likelihood.sums import ShellSums, shell_sums_from_products

__all__ = ["DENSE_TABLE_SHARE", "PairSums", "sum_pairs"]


DENSE_TABLE_SHARE = 4
"""``sum_pairs`` adds the back-projection data straight into a table of every fine row of
the group (``rows x 3 kb`` reals) when it takes at most ``1 / DENSE_TABLE_SHARE`` of the
budget; the row weights are then one product ``(rows, b) @ (b, kb)`` at the end. Otherwise
each chunk's carried children are picked and merged with the rows so far."""


@dataclass(frozen=True)
class PairSums:
    """What the pairs' weights add to the M-step.

    Attributes
    ----------
    shell_sums
        Noise and scale sums per particle and shell.
    rows, data, weight
        Fine rows (block row times ``f`` plus child) that carry weight,
        ascending, and their back-projection data and weight.
    translation_weights
        Weight of each fine translation ``(b, T g)``.
    pair_weights
        Weight of each pair ``(b, q)``.
    """

    shell_sums: ShellSums
    rows: Int[Tensor, " n"]
    data: Complex[Tensor, "n kb"]
    weight: Float[Tensor, "n kb"]
    translation_weights: Float[Tensor, "b tg"]
    pair_weights: Float[Tensor, "b q"]


def _chunk_of_sums(
    row_bytes: int,
    shape: tuple[int, int, int, int],
    k: int,
    kb: int,
    max_bytes: int,
    *,
    real_bytes: int,
    projected: bool,
    spread: bool,
    dense: bool,
) -> int:
    """Pairs per chunk of ``sum_pairs`` so that what a chunk makes takes about half of
    ``max_bytes``; ``shape`` is ``(b, g, f, T g)``, ``row_bytes`` the bytes of a row the
    projector projects (counted where ``projected``), ``real_bytes`` those of a real.

    Per pair and particle, in reals, where the data go into the dense table: the
    children's back-projection data (``3 f kb``, with room) and weights (``2 g f``);
    the weights over every translation (``T g f``, ``spread``) or the pair's blocks of
    ``Z`` rows (``4 g kb``); and, where ``Q`` was not combined by the kernel
    (``projected``), the projections, their squares and their products
    (``2 g k + 5 f k``, and the rows projected). Where the kernel combined ``Q``, the
    chunk makes no projections and holds about 5 times more pairs (box 96: ``kb``
    451,584, ``k`` 238,869, ``g = f = 8``). Where the carried children are picked and
    merged instead (not ``dense``), the picks, their weights and the concatenations
    take several times ``f kb`` more: the full count, as if projected and not spread.
    """
    b, g, f, tg = shape
    if not dense:
        projected, spread = True, False
    floats = 3 * f * kb + 2 * g * f + (tg * f if spread else 4 * g * kb)
    if projected:
        floats += 2 * g * k + 5 * f * k
    per_pair = (row_bytes if projected else 0) + real_bytes * b * floats
    return max(1, (max_bytes // 2) // per_pair)


def _combine(
    q_sum: Tensor,
    w_all: Tensor,
    lists: PairLists,
    projector: BlockProjector,
    rows: Tensor,
    precision: str,
) -> bool:
    """``Q`` of every pair at once by ``kernel_combination`` into ``q_sum (b, T g, 2k)``,
    reading the held projections through the children's rows; False (nothing done)
    where the kernel does not apply."""
    values = projector.projector.values
    if values is None or not values.is_contiguous():
        return False
    table = as_real_pairs(values)  # (rows, 2k), a view
    if not kernel_applies(w_all, table, precision):
        return False
    b, q, g, f = w_all.shape
    slots = torch.arange(q, device=rows.device).expand(b, q)
    spread = _spread(
        w_all * lists.valid[:, :, None, None], _translation_index(lists, slots, g), q_sum.shape[1]
    )
    children = _child_rows(torch.where(lists.valid, rows, 0), f)  # (b, q f)
    q_sum.copy_(kernel_combination(spread, table, children, tf32=precision == "tf32"))
    return True


def sum_pairs(
    particles: tuple[Tensor, Tensor, Tensor],
    projector: BlockProjector,
    rows: Int[Tensor, "b q"],
    lists: PairLists,
    weights: Float[Tensor, "b q g f"],
    shells: Float[Tensor, "k s"],
    backprojection: tuple[Tensor, Tensor, Tensor],
    *,
    precision: str,
    max_bytes: int,
) -> PairSums:
    """Shell sums and back-projection sums of the pairs' children (``likelihood.sums``).

    ``particles`` is ``(X (b, k), K (b, k), S (b, u, k))`` on the fine window;
    ``backprojection`` is ``(Y (b, kb), V (b, kb), S (b, u, kb))`` on the
    back-projection window; ``S`` are the phases of each particle's fine
    translations, which ``lists.translations`` (times ``g`` plus child) index.
    ``Q = sum_r w P_r`` is accumulated per fine translation, ``sum_r W_r |P_r|^2``
    per particle, and the back-projection terms per fine row; all are linear in
    the weights.
    """
    real, cplx = working_dtypes(precision)
    x, ctf, phases = particles
    y, v, bp_phases = backprojection
    b, _, g, f = weights.shape
    tg, k = phases.shape[-2:]
    w_all = weights.to(real)
    shifted_bp = as_real_pairs(y.to(cplx)[:, None, :] * bp_phases.to(cplx))  # (b, u g, 2kb)
    v = v.to(real)
    every_translation = tg // g <= pairs.MAX_TRANSLATIONS_PER_PRODUCT
    q_sum = w_all.new_zeros(b, tg, 2 * k)
    power = w_all.new_zeros(b, k)
    owner = torch.arange(b, device=rows.device)
    merged: tuple[Tensor, Tensor, Tensor] | None = None
    fine_rows_total = projector.projector.rows
    # the table of data and weights, and the (b, rows) row weights with their kept copy
    table_bytes = fine_rows_total * (3 * v.shape[1] + 2 * b) * w_all.element_size()
    dense = table_bytes <= max_bytes // DENSE_TABLE_SHARE
    budget = max_bytes - table_bytes if dense else max_bytes
    row_power = _held_row_power(projector, b * rows.shape[1] * f, cplx, budget)
    held_rows = row_power is not None or dense
    row_weights = w_all.new_zeros(b, fine_rows_total if held_rows else 0)
    data_table = w_all.new_zeros(fine_rows_total if dense else 0, 2 * v.shape[1])
    combined = (
        every_translation
        and row_power is not None
        and _combine(q_sum, w_all, lists, projector, rows, precision)
    )
    chunk = _chunk_of_sums(
        projector.bytes_per_row(), (b, g, f, tg), k, v.shape[1], budget,
        real_bytes=w_all.element_size(), projected=not combined, spread=every_translation,
        dense=dense,
    )  # fmt: skip
    chunks = 0
    for part in row_chunks(projector, rows, lists.valid, chunk, project=not combined):
        chunks += 1
        w = w_all.gather(1, part.slots[:, :, None, None].expand(-1, -1, g, f))
        w = w * part.inside[:, :, None, None]
        index = _translation_index(lists, part.slots, g)  # (b, l, g)
        per_child = w.sum(dim=2)  # (b, l, f)
        # projector rows of the children (b, l f); padding points at row 0 with weight 0
        child_rows = _child_rows(torch.where(part.inside, part.rows, 0), f)
        spread = _spread(w, index, tg) if every_translation else None  # (b, T g, l f)
        with matmul_precision(precision):
            if part.projections is not None:  # Q (unless combined) and |P|^2 from the copy
                p = as_real_pairs(part.projections.to(cplx))  # (b, l, f, 2k), the chunk's own
                if spread is not None:  # (b, T g, l f) @ (b, l f, 2k) straight into Q
                    q_sum.baddbmm_(spread, p.reshape(b, -1, 2 * k))
                else:
                    contribution = w @ p  # (b, l, g, 2k)
                    flat = (owner[:, None, None] * tg + index).reshape(-1)
                    q_sum.view(b * tg, 2 * k).index_add_(0, flat, contribution.reshape(-1, 2 * k))
                if row_power is None:  # square the copy in place; (Re^2, Im^2) added after
                    power_pairs = (per_child[:, :, None, :] @ p.square_()).sum(dim=(1, 2))
                    power += power_pairs.reshape(b, k, 2).sum(dim=-1)
            if held_rows:  # each row's weight per particle; products at the end
                row_weights.scatter_add_(1, child_rows, per_child.reshape(b, -1))
            if spread is not None:  # (b, l f, T g) @ (b, T g, 2kb): no copies of Z's rows
                data = spread.transpose(1, 2) @ shifted_bp
            else:
                data = w.transpose(-1, -2) @ _blocks(shifted_bp, index)  # (b, l, f, 2kb)
        if dense:  # straight into the group's table of fine rows: no picks, no merges
            data_table.index_add_(0, child_rows.reshape(-1), data.reshape(-1, data.shape[-1]))
            continue
        carried = (per_child > 0) & part.inside[:, :, None]  # (b, l, f)
        at = carried.reshape(-1).nonzero().squeeze(1)  # one host sync for the three picks
        who = at // (carried.shape[1] * f)  # the particle of each carried child
        fine_rows = child_rows.reshape(-1)[at]
        picked = data.reshape(-1, data.shape[-1])[at]
        fresh = (fine_rows, picked, per_child.reshape(-1)[at][:, None] * v[who])
        # Merge as we go: memory follows the distinct fine rows, not particles x rows.
        if merged is None:
            merged = merge_rows(*fresh)
        else:
            merged = merge_rows(*(torch.cat(pair) for pair in zip(merged, fresh, strict=True)))
    if row_power is not None:
        with matmul_precision(precision):
            power += row_weights @ row_power
    if dense and chunks:  # the weights in full float32, as the merge path forms them
        kept = (row_weights.sum(dim=0) > 0).nonzero().squeeze(1)
        merged = (kept, data_table[kept], row_weights[:, kept].T @ v)
    totals = shell_sums_from_products(
        x,
        ctf,
        phases.expand(b, -1, -1) if phases.dim() == 2 else phases,
        q_sum,
        power,
        w_all.sum(dim=(1, 2, 3)),
        shells,
        precision=precision,
    )
    if merged is None:
        raise ValueError("no fine pairs to sum")
    kept, data_sum, weight_sum = merged
    index_all = lists.translations[:, :, None] * g + torch.arange(g, device=rows.device)
    per_translation = weights.new_zeros(b, tg)
    per_translation.scatter_add_(1, index_all.reshape(b, -1), weights.sum(dim=3).reshape(b, -1))
    return PairSums(
        shell_sums=totals,
        rows=kept,
        data=torch.view_as_complex(data_sum.reshape(data_sum.shape[0], -1, 2).contiguous()),
        weight=weight_sum,
        translation_weights=per_translation,
        pair_weights=weights.sum(dim=(2, 3)),
    )
