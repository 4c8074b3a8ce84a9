"""The second pass of RELION's adaptive oversampling for one group of particles.

For each particle, the children of its significant coarse (translation,
orientation) pairs, at the current size (``likelihood.pairs``); posterior; a
second significance cut for the sums (RELION's ``storeWeightedSums`` only adds
samples whose weight reaches the fine pass's significant weight, and does not
renormalise); best pose; the M-step sums.

Children's priors: a fine orientation inherits the prior of its coarse
orientation (as RELION); the Gaussian offset prior is evaluated at each fine
translation (RELION evaluates it at the coarse translation), divided by the
same mean as the coarse one.
"""

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.likelihood.fine_groups import FineGroup
from cryorefine.likelihood.pair_sums import sum_pairs
from cryorefine.likelihood.pairs import BlockProjector, PairLists, pair_lists, score_pairs
from cryorefine.likelihood.passes import RowProjector
from cryorefine.likelihood.plan import ExpectationPlan, ParticleTerms
from cryorefine.likelihood.poses import fine_rotations
from cryorefine.likelihood.posterior import log_likelihood_contribution, significant_samples
from cryorefine.likelihood.scores import data_terms
from cryorefine.likelihood.search import (
    CoarseOutcome,
    FineOutcome,
    Prepared,
    compact,
    offset_log_prior,
    weights_of,
)
from cryorefine.likelihood.sums import offset_moments
from cryorefine.likelihood.window import shell_matrix, window_phases
from cryorefine.timing import PhaseTimes, phase_of

__all__ = ["distinct_translations", "fine_pass", "fine_row_rotations", "fine_translations"]


def fine_row_rotations(plan: ExpectationPlan, rows: Int[Tensor, " n"]) -> Float[Tensor, "n 3 3"]:
    """Matrices of fine rows ``coarse_id * 8**oversampling + child`` of the whole grid."""
    f = 8**plan.oversampling
    children = fine_rotations(plan.orientations, rows // f, oversampling=plan.oversampling)
    return children[torch.arange(rows.shape[0], device=rows.device), rows % f]


def fine_translations(plan: ExpectationPlan) -> Float[Tensor, "tg ndim"]:
    """The fine translation grid: coarse translation ``i``'s children are rows ``i g + j``
    (``ExpectationPlan.fine_translations_px``, computed once per plan: shared, read-only)."""
    return plan.fine_translations_px


def _projector(
    ids: Tensor,
    valid: Tensor,
    prep: Prepared,
    reference_ft: Tensor,
    plan: ExpectationPlan,
    projections: Tensor | None,
    union: Tensor | None = None,
) -> tuple[BlockProjector, Tensor, Callable[[Tensor], Tensor]]:
    """Blocks of children, each pair's block row, and fine rows -> matrices.

    With ``projections`` of the whole fine grid the block rows are coarse ids;
    otherwise the children of the group's significant coarse orientations
    (``union``, ascending, if the caller knows it) are projected once (and kept
    if they fit a quarter of the budget).
    """
    f = 8**plan.oversampling
    window, pad = prep.fine_window, plan.padding_factor
    if projections is not None:
        projector = RowProjector(reference_ft, None, window, pad, projections)
        return BlockProjector(projector, f), ids, lambda rows: fine_row_rotations(plan, rows)
    union = torch.unique(ids[valid]) if union is None else union
    rows = torch.searchsorted(union, ids).clamp(max=union.shape[0] - 1)
    table = fine_rotations(plan.orientations, union, oversampling=plan.oversampling)
    table = table.reshape(-1, 3, 3)
    projector = RowProjector(reference_ft, table, window, pad)
    # the squares beside them, within an eighth: held whenever the projections are (the
    # fine scores' and sums' kernels need them; without, a group of ~2,000 rows took the
    # torch route, about 4 times slower)
    projector = projector.with_values(
        plan.max_bytes // 4, chunk_bytes=plan.max_bytes // 4, powers=True,
        powers_bytes=plan.max_bytes // 8,
    )  # fmt: skip
    return BlockProjector(projector, f), rows, lambda picked: table[picked]


def distinct_translations(
    lists: PairLists, count: int, width: int | None = None
) -> tuple[Tensor, PairLists]:
    """Each particle's distinct coarse translations ``(b, u)``, and ``lists`` indexing them.

    ``u`` = ``width`` if given (at least the largest number), else the largest number.

    The fine pass needs ``Z`` only at the children of these (a few per particle
    once posteriors are peaked), not at the whole fine grid: for 3D data the
    whole grid's ``Z`` is ~1 GB per particle at box 48. Padding of the result
    repeats a real translation (wasted work, no effect).
    """
    b = lists.translations.shape[0]
    device = lists.translations.device
    # scattered, not indexed by masks: a boolean index waits for the device (its count);
    # padding goes to a spare last column, dropped
    used = torch.zeros((b, count + 1), dtype=torch.bool, device=device)
    used.scatter_(1, torch.where(lists.valid, lists.translations, count), True)
    distinct, distinct_valid = compact(used[:, :count], width)
    position = torch.zeros((b, count + 1), dtype=torch.int64, device=device)
    column = torch.arange(distinct.shape[1], device=device).expand_as(distinct)
    position.scatter_(1, torch.where(distinct_valid, distinct, count), column)
    local = PairLists(lists.slots, position[:, :count].gather(1, lists.translations), lists.valid)
    return distinct, local


def _log_prior(
    particles: ParticleTerms,
    coarse: CoarseOutcome,
    lists: PairLists,
    translations: Tensor,
    index: Tensor,
    f: int,
    plan: ExpectationPlan,
) -> Tensor:
    """Log prior ``(b, q, g, f)`` of the children (module docstring); -inf for padding."""
    b, q, g = index.shape
    log_prior_t = offset_log_prior(particles, translations, plan.sigma2_offset_px2)
    log_prior_t = log_prior_t - coarse.log_norm_translations[:, None]
    log_prior_t = log_prior_t.gather(1, index.reshape(b, -1)).reshape(b, q, g, 1)
    log_prior_o = coarse.log_prior_orientations.gather(1, lists.slots)[:, :, None, None]
    log_prior = (log_prior_t + log_prior_o).expand(b, q, g, f)
    return log_prior.masked_fill(~lists.valid[:, :, None, None], -math.inf)


def fine_pass(
    prep: Prepared,
    particles: ParticleTerms,
    coarse: CoarseOutcome,
    reference_ft: Tensor,
    plan: ExpectationPlan,
    projections: Tensor | None = None,
    times: PhaseTimes | None = None,
    sizes: FineGroup | None = None,
) -> FineOutcome:
    """Score the children of the significant coarse pairs; posterior, best pose, sums.

    ``projections``: the whole fine grid's projections on the fine window
    (``ProjectionCache.fine``), or None. ``times``: where the sub-phases
    ``fine_project`` (the children's projections), ``fine_score`` and
    ``fine_sum`` add their seconds, or None. ``sizes``: the group's widths and
    orientations as ``fine_groups`` found them on the host (no waits for the
    device to find them again), or None.
    """

    lists = pair_lists(coarse.significant, None if sizes is None else sizes.pair_width)
    ids = coarse.ids.gather(1, lists.slots)  # ascending per particle
    with phase_of(times, "fine_project"):
        union = None if sizes is None else sizes.orientations
        projector, rows, rotation_of = _projector(
            ids, lists.valid, prep, reference_ft, plan, projections, union
        )
    translations = fine_translations(plan)
    b, q = ids.shape
    g, f = translations.shape[0] // plan.translations_px.shape[0], projector.block
    distinct, local = distinct_translations(
        lists, plan.translations_px.shape[0], None if sizes is None else sizes.translation_width
    )
    needed = (distinct[:, :, None] * g + torch.arange(g, device=ids.device)).reshape(b, -1)
    needed_px = translations[needed]  # (b, u g, ndim)
    with phase_of(times, "fine_score"):
        phases = window_phases(prep.fine_window, needed_px, box_size=plan.ori_size)
        weight = torch.ones_like(prep.fine_ctf) if plan.cross_correlation else prep.fine_weight
        terms = data_terms(prep.fine_data, prep.fine_ctf, weight, phases, precision=plan.precision)
        scores = score_pairs(
            terms,
            projector,
            rows,
            local,
            children=g,
            cross_correlation=plan.cross_correlation,
            max_bytes=plan.max_bytes,
        )
    index = lists.translations[:, :, None] * g + torch.arange(g, device=ids.device)  # (b, q, g)
    log_prior = _log_prior(particles, coarse, lists, translations, index, f, plan)
    flat_scores, flat_prior = scores.reshape(b, -1), log_prior.reshape(b, -1)
    weights = weights_of(flat_scores, flat_prior, plan)
    kept, _ = significant_samples(weights, plan.adaptive_fraction)
    summed = (weights * kept).reshape(b, q, g, f)
    best = weights.argmax(dim=1)
    everyone = torch.arange(b, device=best.device)
    best_pair, best_t, best_child = best // (g * f), (best // f) % g, best % f
    best_translation = translations[index[everyone, best_pair, best_t]]
    # Only pairs that carry weight after the second cut add to the sums (RELION's
    # storeWeightedSums skips the others): with peaked posteriors a few of many;
    # sum_pairs drops the others
    pair_weights = summed.sum(dim=(2, 3))  # (b, q)
    with phase_of(times, "fine_sum"):
        bp_phases = window_phases(prep.bp_window, needed_px, box_size=plan.ori_size)
        sums = sum_pairs(
            (prep.fine_data, prep.fine_ctf, phases),
            projector,
            rows,
            local,
            summed,
            shell_matrix(prep.fine_window, plan.ori_size // 2 + 1),
            (prep.bp_data, prep.bp_weight, bp_phases),
            precision=plan.precision,
            max_bytes=plan.max_bytes,
        )
    mass = sums.pair_weights.new_zeros(plan.orientations.pixels.shape[0])
    mass.index_add_(0, plan.orientations.direction_of(ids).reshape(-1), pair_weights.reshape(-1))
    return FineOutcome(
        rotations=rotation_of(rows[everyone, best_pair] * f + best_child),
        origins_px=particles.origins_px + best_translation,
        pmax=weights.amax(dim=1),
        log_likelihood=log_likelihood_contribution(
            flat_scores,
            flat_prior,
            log_sigma2=prep.log_sigma2,
            diff2_offset=particles.diff2_offset,
            cross_correlation=plan.cross_correlation,
        ),
        weight_sums=summed.sum(dim=(1, 2, 3)),
        offset_moments_px2=offset_moments(
            sums.translation_weights,
            particles.origins_px,
            needed_px,
            particles.offset_priors_px,
        ),
        shell_sums=sums.shell_sums,
        direction_mass=mass,
        bp_rotations=rotation_of(sums.rows),
        bp_data=sums.data,
        bp_weight=sums.weight,
        scored_samples=scores.numel(),
        translation_rows=b * needed.shape[1],
        projected_orientations=0 if projections is not None else projector.projector.rows,
        summed_children=sums.summed_children,
        carried_children=sums.carried_children,
    )
