"""The first pass of RELION's adaptive oversampling for one chunk of particles.

Coarse pass: every particle's coarse orientations (the whole grid, shared, or
its own list) x the coarse translations, at the coarse size; posterior; the
significant coarse samples (``likelihood.fine`` takes it from there).

Priors (RELION's ``convertAllSquaredDifferencesToWeights``): each is divided by
its mean over the coarse grid it is given on (finite entries), which matters
only for the log-likelihood contribution.
"""

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, TypeVar

import torch
from jaxtyping import Bool, Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood.passes import (
    ParticleWindowData,
    RowProjector,
    score_held_lists,
    score_lists,
    score_shared,
)
from cryorefine.likelihood.plan import ExpectationPlan, ParticleTerms
from cryorefine.likelihood.poses import coarse_rotations
from cryorefine.likelihood.posterior import (
    hard_assignment,
    posterior_weights,
    significant_samples,
)
from cryorefine.likelihood.scores import working_dtypes
from cryorefine.likelihood.sums import ShellSums
from cryorefine.likelihood.window import FourierWindow
from cryorefine.timing import PhaseTimes, phase_of

__all__ = [
    "CoarseOutcome",
    "FineOutcome",
    "Prepared",
    "coarse_pass",
    "compact",
    "offset_log_prior",
    "select",
    "union_is_cheaper",
    "weights_of",
]

T = TypeVar("T")


def select(obj: T, part: slice | Tensor) -> T:
    """Index every tensor field (and nested dataclass) of a dataclass along its first axis."""
    changes: dict[str, Any] = {}
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, Tensor) and value.dim() > 0:
            changes[f.name] = value[part]
        elif is_dataclass(value) and not isinstance(value, FourierWindow | type):
            changes[f.name] = select(value, part)
    return replace(obj, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class Prepared:
    """Window coefficients of one chunk of particles (``expectation.prepare``)."""

    coarse: ParticleWindowData
    coarse_window: FourierWindow
    fine_data: Complex[Tensor, "b kf"]
    fine_ctf: Float[Tensor, "b kf"]
    fine_weight: Float[Tensor, "b kf"]
    fine_window: FourierWindow
    bp_data: Complex[Tensor, "b kb"]
    bp_weight: Float[Tensor, "b kb"]
    bp_window: FourierWindow
    log_sigma2: Float[Tensor, " b"]


@dataclass(frozen=True)
class CoarseOutcome:
    """Significant coarse samples ``(b, t, c)`` over each particle's candidate ids ``(b, c)``."""

    significant: Bool[Tensor, "b t c"]
    count: Int[Tensor, " b"]
    ids: Int[Tensor, "b c"]
    log_prior_orientations: Float[Tensor, "b c"]
    log_norm_translations: Float[Tensor, " b"]


@dataclass(frozen=True)
class FineOutcome:
    """Per-particle results and sums of the fine pass of some particles."""

    rotations: Float[Tensor, "b 3 3"]
    origins_px: Float[Tensor, "b ndim"]
    pmax: Float[Tensor, " b"]
    log_likelihood: Float[Tensor, " b"]
    weight_sums: Float[Tensor, " b"]
    offset_moments_px2: Float[Tensor, " b"]
    shell_sums: ShellSums
    direction_mass: Float[Tensor, " m"]
    bp_rotations: Float[Tensor, "r 3 3"]
    bp_data: Complex[Tensor, "r kb"]
    bp_weight: Float[Tensor, "r kb"]
    scored_samples: int = 0  # (particle, orientation, translation) samples scored, padding included
    translation_rows: int = 0  # (particle, fine translation) rows of phases and Z, padding included
    projected_orientations: int = 0  # child orientations projected (0 when cached)
    summed_children: int = 0  # (particle, pair, child) of the carried pairs in the sums
    carried_children: int = 0  # those with weight after the second significance cut


def compact(
    mask: Bool[Tensor, "b n"], width: int | None = None
) -> tuple[Int[Tensor, "b l"], Bool[Tensor, "b l"]]:
    """Positions of each row's True entries, ascending, padded at the end.

    ``l`` = ``width`` if given (at least the largest count: the caller knows it, and
    the device is not asked), else the largest count.
    """
    count = mask.sum(dim=1)
    width = max(1, int(count.max())) if width is None else width
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < count[:, None]
    return order, valid


def _log_mean_exp(log_values: Tensor) -> Tensor:
    finite = torch.isfinite(log_values).sum(dim=1).clamp_min(1)
    return torch.logsumexp(log_values, dim=1) - torch.log(finite.to(log_values.dtype))


def offset_log_prior(
    particles: ParticleTerms, translations_px: Tensor, sigma2_px2: float
) -> Float[Tensor, "b t"]:
    """``-|origin + t - prior|^2 / (2 sigma2)``; translations ``(t, ndim)`` or ``(b, t, ndim)``."""
    b = particles.count
    if translations_px.dim() == 2:
        translations_px = translations_px.expand(b, -1, -1)
    if math.isinf(sigma2_px2):
        return translations_px.new_zeros(translations_px.shape[:2], dtype=torch.float64)
    d = particles.origins_px[:, None, :] + translations_px - particles.offset_priors_px[:, None, :]
    return -d.to(torch.float64).square().sum(dim=-1) / (2.0 * sigma2_px2)


def weights_of(scores: Tensor, log_prior: Tensor, plan: ExpectationPlan) -> Tensor:
    if plan.cross_correlation:
        return hard_assignment(scores, log_prior)
    return posterior_weights(scores, log_prior)


def _candidates(particles: ParticleTerms, plan: ExpectationPlan) -> tuple[Tensor, Tensor, bool]:
    """Coarse candidate ids (ascending, valid first), their log priors, whether all are shared."""
    b, grid_count = particles.count, plan.orientations.count
    log_prior = particles.log_prior_orientations.to(torch.float64)
    if particles.orientation_ids is None:
        if log_prior.shape[1] != grid_count:
            raise ValueError(
                f"log_prior_orientations has {log_prior.shape[1]} columns, the grid {grid_count}"
            )
        ids = torch.arange(grid_count, device=log_prior.device).expand(b, -1)
        if bool(torch.isfinite(log_prior).all()):
            return ids, log_prior, True
    else:
        ids, order = torch.sort(particles.orientation_ids, dim=1, stable=True)
        log_prior = log_prior.gather(1, order)
    slots, valid = compact(torch.isfinite(log_prior))
    log_prior = log_prior.gather(1, slots).masked_fill(~valid, -math.inf)
    return ids.gather(1, slots), log_prior, False


UNION_PRODUCT_RATIO = 100
"""``union_is_cheaper``'s constant: a GPU's float32 matrix rate over its bandwidth times
the bytes moved per list entry, over the flops per union entry (the rule's docstring)."""


def union_is_cheaper(union: int, mean_list: float, translations: int) -> bool:
    """Whether every particle is better scored at the whole union of the chunk's lists.

    The union is one dense product, ``4 t k`` flops per particle and union row at
    the full matrix rate; held lists (``passes.score_held_lists``) move about
    ``24 k`` bytes per list entry (the gather written and read, and read by the
    product). With float32 rates about 17 flops per byte (H100: ~42 TFLOP/s over
    ~2.5 TB/s) the union wins while ``union * t < UNION_PRODUCT_RATIO * mean_list``
    (``17 * 24 / 4``, rounded). Chunks in ``search_order`` share some candidates,
    but a grid orientation lies in only a few lists of a local search (on an H100
    the tutorial job's first iterations at HEALPix order 4 scored unions 33 times
    the mean list, 18 s of products per half set).
    """
    return union * translations < UNION_PRODUCT_RATIO * mean_list


def _list_scores(
    data: ParticleWindowData,
    ids: Int[Tensor, "b c"],
    valid: Bool[Tensor, "b c"],
    reference_ft: Tensor,
    window: FourierWindow,
    plan: ExpectationPlan,
    projections: Tensor | None,
    times: PhaseTimes | None = None,
) -> Float[Tensor, "b t c"]:
    """Scores of each particle's candidate list (+inf at padded slots).

    Either every particle at the union of the lists (``union_is_cheaper``), or
    each at its own list with the union projected once and held (or picked from
    ``projections``, the whole grid's). A union beyond half the budget is not
    held: the particles are split in two (neighbours in search order share more
    of their lists) until it fits; a single particle's list beyond it is scored
    by ranges of rows. Held lists make ``Z`` a few particles at a time; the other
    routes make every particle's at once, and take the particles only where it
    fits in half the budget (``expectation`` does not count it for local lists).
    ``times``: where the union's projection (``coarse_project``) adds its seconds and
    its orientations (``coarse_projected_orientations``), or None.
    """
    scoring = {
        "cross_correlation": plan.cross_correlation,
        "precision": plan.precision,
        "max_bytes": plan.max_bytes,
    }
    b, t = ids.shape[0], data.phases.shape[1]
    union = torch.unique(ids[valid])
    if union.shape[0] == 0:  # no candidate: coarse_pass names the particles
        return torch.full((b, t, ids.shape[1]), torch.inf, device=ids.device)
    n = union.shape[0]
    rows = torch.searchsorted(union, ids).clamp(max=n - 1)
    mean_list = float(valid.sum()) / max(1, b)
    # the union's scores (b, t, union) and the lists picked from them, up to float64
    fits = 16 * b * t * n <= plan.max_bytes // 2
    # every particle's Z at once: t x 2k reals and the complex array it is made from
    real_bytes = working_dtypes(plan.precision)[0].itemsize
    z_fits = 4 * b * t * window.count * real_bytes <= plan.max_bytes // 2
    if fits and z_fits and union_is_cheaper(n, mean_list, t):
        table = None if projections is not None else coarse_rotations(plan.orientations, union)
        held_rows = None if projections is None else projections[union]
        shared = RowProjector(reference_ft, table, window, plan.padding_factor, held_rows)
        everything = score_shared(data, shared, **scoring)  # (b, t, union)
        scores = everything.gather(2, rows[:, None, :].expand(-1, t, -1))
        return scores.masked_fill_(~valid[:, None, :], torch.inf)
    if projections is not None:  # the whole grid is held: no copy of the union's rows
        return score_held_lists(data, projections, ids, valid, **scoring)

    def halves() -> Tensor:  # neighbours in search order share more of their lists
        return torch.cat(
            [
                _list_scores(select(data, part), ids[part], valid[part], reference_ft,
                             window, plan, None, times)
                for part in (slice(0, b // 2), slice(b // 2, b))
            ]
        )  # fmt: skip

    row_bytes = window.count * reference_ft.element_size()
    if b > 1 and n * row_bytes > plan.max_bytes // 2:
        return halves()
    table = coarse_rotations(plan.orientations, union)
    projector = RowProjector(reference_ft, table, window, plan.padding_factor)
    with phase_of(times, "coarse_project"):
        held = projector.with_values(
            plan.max_bytes // 2, chunk_bytes=plan.max_bytes // 4, powers=True
        )
    if times is not None and held.values is not None:
        times.add_count("coarse_projected_orientations", n)
    if held.values is None:  # one particle's list beyond half the budget
        if b > 1 and not z_fits:
            return halves()
        return score_lists(data, projector, rows, valid, **scoring)
    return score_held_lists(data, held.values, rows, valid, powers=held.powers, **scoring)


def coarse_pass(
    prep: Prepared,
    particles: ParticleTerms,
    reference_ft: Tensor,
    plan: ExpectationPlan,
    projections: Tensor | None = None,
    times: PhaseTimes | None = None,
) -> CoarseOutcome:
    """Score the coarse grid, compute the posterior and mark the significant samples.

    ``projections``: the whole coarse grid's projections on the coarse window, or None.
    ``times``: where the sub-phases ``coarse_score`` (the candidates' projections and
    scores) and ``coarse_select`` (the posterior and its significant samples) add
    their seconds, or None.
    """

    ids, log_prior_o, shared = _candidates(particles, plan)
    log_prior_o = log_prior_o - _log_mean_exp(log_prior_o)[:, None]
    log_prior_t = offset_log_prior(particles, plan.translations_px, plan.sigma2_offset_px2)
    norm_t = _log_mean_exp(log_prior_t)
    log_prior_t = log_prior_t - norm_t[:, None]
    with phase_of(times, "coarse_score"):
        scores = _coarse_scores(
            prep, ids, log_prior_o, shared, reference_ft, plan, projections, times
        )
    with phase_of(times, "coarse_select"):
        b, t, c = scores.shape
        log_prior = log_prior_t[:, :, None] + log_prior_o[:, None, :]
        weights = weights_of(scores.reshape(b, -1), log_prior.reshape(b, -1), plan)
        if not bool(torch.isfinite(weights).all()):
            bad = (~torch.isfinite(weights).all(dim=1)).nonzero().squeeze(1)[:5].tolist()
            raise ValueError(
                f"particles {bad} of the chunk have no searched pose with a finite score"
            )
        significant, count = significant_samples(weights, plan.adaptive_fraction)
    return CoarseOutcome(significant.reshape(b, t, c), count, ids, log_prior_o, norm_t)


def _coarse_scores(
    prep: Prepared,
    ids: Int[Tensor, "b c"],
    log_prior_o: Float[Tensor, "b c"],
    shared: bool,
    reference_ft: Tensor,
    plan: ExpectationPlan,
    projections: Tensor | None,
    times: PhaseTimes | None = None,
) -> Float[Tensor, "b t c"]:
    """The coarse scores: the whole grid shared by all particles, or each one's own list."""
    window, pad = prep.coarse_window, plan.padding_factor
    if shared:
        table = coarse_rotations(plan.orientations)
        projector = RowProjector(reference_ft, table, window, pad, projections)
        return score_shared(
            prep.coarse,
            projector,
            cross_correlation=plan.cross_correlation,
            precision=plan.precision,
            max_bytes=plan.max_bytes,
        )
    valid = torch.isfinite(log_prior_o)
    return _list_scores(prep.coarse, ids, valid, reference_ft, window, plan, projections, times)
