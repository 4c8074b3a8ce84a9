"""The fine pass's M-step sums over the children of each particle's significant coarse pairs.

With the pairs' posterior weights ``(b, q, g, f)`` (``likelihood.pairs`` for the
lists, blocks and scores): ``Q = sum_r w P_r`` per fine translation and
``sum_r W_r |P_r|^2`` per particle (the noise and scale sums, ``likelihood.sums``),
and each carried fine row's back-projection data and weight. With at most
``pairs.MAX_TRANSLATIONS_PER_PRODUCT`` translations per particle the weights
are spread over them (``pairs._spread``): one product per particle adds every
pair into ``Q`` and gives the data of the children that carry weight (the
second significance cut leaves a few of each pair's). With the projections held
and ``held_cross``'s kernels on, the noise sums' ``sum_t conj(S_t) Q_t`` is made by
``unshifted``'s kernel, reading the rows through their indices: no ``Q`` of every
translation, and the chunks gather no projections at all. The children's data are
the weights' product with the phases times ``Y`` (``unshifted.weighted_shifts``), not
products with shifted copies of ``Y``. The fine rows that carry weight are found
from the weights before the chunks, and each chunk adds its data into a table of
those rows: nothing is merged. Where ``unshifted``'s kernel combined ``Q``, the
carried rows' data and weights are formed in their tables by ``carried_rows``' kernel,
for every pair at once: no chunks, and no arrays of the children's data.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood import pairs
from cryorefine.likelihood.carried_rows import add_carried_rows
from cryorefine.likelihood.carried_rows import kernel_applies as kernel_adds_carried
from cryorefine.likelihood.held_cross import MAX_TILE_ROWS, kernels_on
from cryorefine.likelihood.pairs import (
    BlockProjector,
    PairLists,
    _blocks,
    _child_rows,
    _held_row_power,
    _spread,
    _translation_index,
)
from cryorefine.likelihood.passes import row_chunks
from cryorefine.likelihood.scores import as_real_pairs, matmul_precision, working_dtypes
from cryorefine.likelihood.search import compact
from cryorefine.likelihood.sums import (
    ShellSums,
    shell_sums_from_products,
    shell_sums_from_unshifted,
)
from cryorefine.likelihood.unshifted import kernel_unshifted_combination, weighted_shifts

__all__ = ["MIN_CHUNK_SHARE", "PairSums", "sum_pairs"]


MIN_CHUNK_SHARE = 4
"""``sum_pairs``'s chunks keep at least ``1 / MIN_CHUNK_SHARE`` of the budget, however large
the table of the group's carried fine rows (which the sums need whole in the end)."""


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
    summed_children, carried_children
        The pairs' children, and those with weight (the work counts of the log).
    """

    shell_sums: ShellSums
    rows: Int[Tensor, " n"]
    data: Complex[Tensor, "n kb"]
    weight: Float[Tensor, "n kb"]
    translation_weights: Float[Tensor, "b tg"]
    pair_weights: Float[Tensor, "b q"]
    summed_children: int = 0  # children of the pairs (particle, pair, child), padding excluded
    carried_children: int = 0  # those with weight: their data were made and added


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
) -> int:
    """Pairs per chunk of ``sum_pairs`` so that what a chunk makes takes about half of
    ``max_bytes``; ``shape`` is ``(b, g, f, T g)``, ``row_bytes`` the bytes of a row the
    projector projects (counted where ``projected``), ``real_bytes`` those of a real.

    Per pair and particle, in reals: the children's back-projection data (``3 f kb``,
    with room; only the children that carry weight are made where the weights are
    spread, but all are counted) and weights (``2 g f``); the weights over every
    translation (``T g f``, ``spread``) or the pair's blocks of ``Z`` rows (``4 g
    kb``); and, where ``Q`` was not combined by the kernel (``projected``), the
    projections, their squares and their products (``2 g k + 5 f k``, and the rows
    projected). Where the kernel combined ``Q``, the chunk makes no projections and
    holds about 3 times more pairs (box 96: ``kb`` 242,499, ``k`` 238,869, ``g = f =
    8``).
    """
    b, g, f, tg = shape
    floats = 3 * f * kb + 2 * g * f + (tg * f if spread else 4 * g * kb)
    if projected:
        floats += 2 * g * k + 5 * f * k
    per_pair = (row_bytes if projected else 0) + real_bytes * b * floats
    return max(1, (max_bytes // 2) // per_pair)


def _table_rows(children: Int[Tensor, "b c"], kept: Int[Tensor, " n"]) -> Int[Tensor, "b c"]:
    """Position of each fine row ``children`` in the ascending ``kept``; ``n`` (the
    table's spare last row) where a row is not kept."""
    n = kept.shape[0]
    if n == 0:
        return torch.zeros_like(children)
    at = torch.searchsorted(kept, children).clamp_max(n - 1)
    return torch.where(kept[at] == children, at, n)


def _carried_counts(carried: Bool[Tensor, "b q f"], chunk: int) -> Int[Tensor, "2 c"]:
    """For each chunk of ``chunk`` consecutive pairs: the largest count of carried children
    of one particle, and the count of all the chunk's carried children."""
    b, q, f = carried.shape
    chunks = -(-q // chunk)
    padded = torch.nn.functional.pad(carried.reshape(b, -1), (0, (chunks * chunk - q) * f))
    per_particle = padded.reshape(b, chunks, chunk * f).sum(dim=2)
    return torch.stack([per_particle.amax(dim=0), per_particle.sum(dim=0)])


def _combined_spread(
    phases: Tensor,
    w_all: Tensor,
    lists: PairLists,
    projector: BlockProjector,
    rows: Tensor,
    precision: str,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``sum_t conj(S_t) Q_t (b, k)`` of every pair at once by the kernel of
    ``unshifted.unshifted_combination``, reading the held projections through the
    children's rows (no ``Q`` of every translation), with the weights spread over every
    translation ``(b, T g, q f)`` and the children's rows ``(b, q f)`` it read; None where
    the kernel does not apply."""
    values = projector.projector.values
    if values is None or not values.is_contiguous():
        return None
    table = as_real_pairs(values)  # (rows, 2k), a view
    b, q, g, f = w_all.shape
    tg = phases.shape[-2]
    # the kernel's rows of W are the fine translations: at most MAX_TILE_ROWS of them
    if not (
        kernels_on(w_all, precision)
        and w_all.dtype == table.dtype == torch.float32
        and tg <= MAX_TILE_ROWS
        and phases.dtype == torch.complex64
    ):
        return None
    slots = torch.arange(q, device=rows.device).expand(b, q)
    spread = _spread(w_all * lists.valid[:, :, None, None], _translation_index(lists, slots, g), tg)
    children = _child_rows(torch.where(lists.valid, rows, 0), f)  # (b, q f)
    combined = kernel_unshifted_combination(
        spread, table, children, phases, tf32=precision == "tf32"
    )
    return combined, spread, children


def _first_owners(
    carried: Bool[Tensor, "b c"], table_rows: Int[Tensor, "b c"], rows: int
) -> Bool[Tensor, "b c"]:
    """Of the carried children, the first (in particle-major order) on each of the
    ``rows`` table rows: one per row that any child carries, on the device."""
    b, c = carried.shape
    at = torch.where(carried, table_rows, rows - 1)  # the others on the spare last row
    order = torch.arange(b * c, device=at.device).reshape(b, c)
    first = torch.full((rows,), b * c, device=at.device, dtype=order.dtype)
    first.scatter_reduce_(0, at.reshape(-1), order.reshape(-1), "amin")
    return carried & (first[at] == order)


def _add_carried(
    spread: Tensor,
    table_rows: Tensor,
    child_weights: Tensor,
    widest: int,
    backprojection: tuple[Tensor, Tensor, Tensor],
    data_table: Tensor,
    precision: str,
) -> Tensor:
    """The carried children's data written into ``data_table`` and their weights into a new
    table, returned, by ``carried_rows``' kernel; ``child_weights (b, q f)`` are zero where
    not carried, ``widest`` is the largest count of one particle's carried children.

    Each row's first owner (in particle-major order) stores its data and weight, so that
    every row but the spare last one is written: the tables may come uninitialised. The
    other owners' are added after.
    """
    y, v, bp_phases = backprojection
    carried = child_weights > 0
    weight_table = data_table.new_empty(data_table.shape[0], v.shape[1])
    owner = _first_owners(carried, table_rows, data_table.shape[0])
    for listed, store in ((owner, True), (carried & ~owner, False)):
        picks, _ = compact(listed, max(1, widest))
        add_carried_rows(
            spread, table_rows, child_weights, picks, listed.sum(dim=1), (y, v), bp_phases,
            (data_table, weight_table), tf32=precision == "tf32", store=store,
        )  # fmt: skip
    return weight_table


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
    weights = weights * lists.valid[:, :, None, None]
    pair_weights = weights.sum(dim=(2, 3))
    w_all = weights.to(real)
    y = y.to(cplx)
    bp_phases = bp_phases.to(cplx)
    v = v.to(real)
    every_translation = tg // g <= pairs.MAX_TRANSLATIONS_PER_PRODUCT
    power = w_all.new_zeros(b, k)
    owner = torch.arange(b, device=rows.device)
    # What the host must know of the pairs that carry weight (RELION's storeWeightedSums
    # skips the others) is read at once, before their work is queued: their widest list,
    # the fine rows they carry (a table of them, and a spare last row), the work counts.
    per_child_all = w_all.sum(dim=2)  # (b, q, f)
    carried_all = per_child_all > 0
    carries = carried_all.any(dim=2)  # (b, q)
    n_rows = projector.projector.rows
    marked = torch.zeros(n_rows + 1, dtype=torch.bool, device=rows.device)
    marked[torch.where(carried_all.reshape(b, -1), _child_rows(rows, f), n_rows)] = True
    per_particle = carried_all.reshape(b, -1).sum(dim=1)
    read = torch.stack([carries.sum(dim=1).amax(), marked[:n_rows].sum(), carries.sum() * f,
                        per_particle.sum(), per_particle.amax()]).tolist()  # fmt: skip
    width, n_kept, summed_children, carried_children, widest = read
    kept = torch.argsort((~marked[:n_rows]).to(torch.int8), stable=True)[:n_kept]  # ascending
    slots, inside = compact(carries, max(1, width))
    rows = rows.gather(1, slots)
    lists = PairLists(lists.slots.gather(1, slots), lists.translations.gather(1, slots), inside)
    weights = weights.gather(1, slots[:, :, None, None].expand(-1, -1, g, f))
    weights = weights * inside[:, :, None, None]
    w_all = weights.to(real)
    per_child_all = per_child_all.gather(1, slots[..., None].expand(-1, -1, f)) * inside[..., None]
    carried_all = per_child_all > 0
    table_bytes = (n_kept + 1) * (3 * v.shape[1] + 2 * b) * w_all.element_size()
    budget = max(max_bytes - table_bytes, max_bytes // MIN_CHUNK_SHARE)
    row_power = _held_row_power(projector, b * rows.shape[1] * f, cplx, budget)
    # each fine row's weight per particle, for the products with |P|^2 at the end
    row_weights = w_all.new_zeros(b, projector.projector.rows if row_power is not None else 0)
    data_table = w_all.new_empty(n_kept + 1, 2 * v.shape[1])
    combined_spread = (
        _combined_spread(phases, w_all, lists, projector, rows, precision)
        if every_translation and row_power is not None
        else None
    )
    unshifted, spread_all, children_all = combined_spread or (None, None, None)
    combined = unshifted is not None
    # the carried rows' data and weights formed in their tables by one kernel (carried_rows)
    fused = spread_all is not None and kernel_adds_carried(spread_all, precision)
    table_weights = None if fused else w_all.new_zeros(b, n_kept + 1)
    if not fused:  # the kernel writes every row; the chunks add into the table
        data_table.zero_()
    # Q per fine translation, (b, T g, 2k), where the kernel did not combine it; the
    # shifted data (b, T g, 2kb) where the weights are not spread over every translation
    q_sum = None if combined else w_all.new_zeros(b, tg, 2 * k)
    shifted_bp = None if every_translation else as_real_pairs(y[:, None, :] * bp_phases)
    chunk = _chunk_of_sums(
        projector.bytes_per_row(), (b, g, f, tg), k, v.shape[1], budget,
        real_bytes=w_all.element_size(), projected=not combined, spread=every_translation,
    )  # fmt: skip
    # chunks of consecutive slots (held rows): each one's widest list of carried children
    # and its count of them, read at once; otherwise counted per chunk
    consecutive = projector.projector.values is not None and not fused
    read = _carried_counts(carried_all, chunk).reshape(-1).tolist() if consecutive else []
    widths = read[: len(read) // 2] if consecutive else None
    chunk_counts = read[len(read) // 2 :] if consecutive else None
    chunks = 0
    weight_table = None
    if fused:
        row_weights.scatter_add_(1, children_all, per_child_all.reshape(b, -1))
        weight_table = _add_carried(
            spread_all, _table_rows(children_all, kept), per_child_all.reshape(b, -1),
            widest, (y, v, bp_phases), data_table, precision,
        )  # fmt: skip
        chunks = int(rows.shape[1] > 0)
    parts = () if fused else row_chunks(projector, rows, lists.valid, chunk, project=not combined)
    for part in parts:
        w = w_all.gather(1, part.slots[:, :, None, None].expand(-1, -1, g, f))
        w = w * part.inside[:, :, None, None]
        index = _translation_index(lists, part.slots, g)  # (b, l, g)
        # (b, l, f): the sums the widths were counted from, not summed again
        per_child = per_child_all.gather(1, part.slots[:, :, None].expand(-1, -1, f))
        per_child = per_child * part.inside[:, :, None]
        # projector rows of the children (b, l f); padding points at row 0 with weight 0
        child_rows = _child_rows(torch.where(part.inside, part.rows, 0), f)
        at_table = _table_rows(child_rows, kept)  # (b, l f)
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
            if row_power is not None:
                row_weights.scatter_add_(1, child_rows, per_child.reshape(b, -1))
            table_weights.scatter_add_(1, at_table, per_child.reshape(b, -1))
            if spread is not None:  # only the children that carry weight: (b, m, 2kb)
                carried = (per_child > 0).reshape(b, -1)
                width = None if widths is None else max(1, widths[chunks])
                picks, picked = compact(carried, width)
                columns = spread.gather(2, picks[:, None, :].expand(-1, tg, -1))
                data = weighted_shifts(columns, y, bp_phases, precision=precision)
                at_table = torch.where(picked, at_table.gather(1, picks), n_kept)
                if chunk_counts is not None:  # the picked rows alone, in order: no padding
                    order = torch.argsort((~picked).reshape(-1).to(torch.uint8), stable=True)
                    order = order[: chunk_counts[chunks]]
                    data = data.reshape(-1, data.shape[-1]).index_select(0, order)
                    at_table = at_table.reshape(-1)[order]
            else:
                data = w.transpose(-1, -2) @ _blocks(shifted_bp, index)  # (b, l, f, 2kb)
        data_table.index_add_(0, at_table.reshape(-1), data.reshape(-1, data.shape[-1]))
        chunks += 1
    if not chunks:
        raise ValueError("no fine pairs to sum")
    if row_power is not None:
        with matmul_precision(precision):
            power += row_weights @ row_power
    data_sum = data_table[:n_kept]
    if weight_table is not None:
        weight_sum = weight_table[:n_kept]
    else:
        weight_sum = table_weights[:, :n_kept].T @ v  # in full float32
    weight_totals = w_all.sum(dim=(1, 2, 3))
    if unshifted is not None:
        totals = shell_sums_from_unshifted(
            x, ctf, unshifted, power, weight_totals, shells, precision=precision
        )
    else:
        totals = shell_sums_from_products(
            x,
            ctf,
            phases.expand(b, -1, -1) if phases.dim() == 2 else phases,
            q_sum,
            power,
            weight_totals,
            shells,
            precision=precision,
        )
    index_all = lists.translations[:, :, None] * g + torch.arange(g, device=rows.device)
    per_translation = weights.new_zeros(b, tg)
    per_translation.scatter_add_(1, index_all.reshape(b, -1), weights.sum(dim=3).reshape(b, -1))
    return PairSums(
        shell_sums=totals,
        rows=kept,
        data=torch.view_as_complex(data_sum.reshape(data_sum.shape[0], -1, 2).contiguous()),
        weight=weight_sum,
        translation_weights=per_translation,
        pair_weights=pair_weights,
        summed_children=summed_children,
        carried_children=carried_children,
    )
