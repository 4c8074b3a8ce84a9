"""Posterior weights of the sampled poses, significant samples, pmax and log-likelihood.

Samples of one particle are flattened to one axis ``s`` (e.g. translations x
orientations). Priors come as natural logarithms; ``-inf`` marks a sample that
is not searched (zero prior). Everything here is float64, as RELION's weights.

Posterior (RELION's ``convertAllSquaredDifferencesToWeights``)
    ``w[s] = prior[s] exp(-diff2[s]) / sum_s' prior[s'] exp(-diff2[s'])``,
    computed as ``exp(L[s] - max L)`` with ``L = log prior - diff2``, i.e. after
    subtracting the per-particle minimum of ``diff2 - log prior`` (RELION
    subtracts the minimum ``diff2`` alone), so that the largest term is 1.
Significant samples
    The smallest set of samples, taken in order of decreasing weight (equal
    weights: lower sample index first), whose summed weight reaches
    ``adaptive_fraction`` of the total; at least one sample, never a sample of
    weight 0. RELION stops at the first sample where the running sum *exceeds*
    the fraction and then keeps every sample whose weight is at least that
    sample's, so on exact ties it may keep a few more than this minimal set.
Log-likelihood contribution (RELION's ``rlnLogLikeliContribution``, ``dLL`` of
``storeWeightedSums``)
    ``log sum_s prior[s] exp(-diff2[s]) - sum_k log(2 pi sigma2[k])``, the sum over
    the window's scored coefficients (DC excluded), where RELION's priors are
    divided by their mean over the searched grid and ``diff2`` includes half the
    image power beyond the current size. In a cross-correlation iteration it is
    ``-min diff2`` (the best score).
"""

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "hard_assignment",
    "log_evidence",
    "log_likelihood_contribution",
    "log_sigma2_sum",
    "pmax",
    "posterior_weights",
    "significant_samples",
]


def posterior_weights(
    diff2: Float[Tensor, "b s"], log_prior: Float[Tensor, "b s"]
) -> Float[Tensor, "b s"]:
    """Normalised posterior weights, float64 (module docstring); NaN where no prior is finite."""
    weights = log_prior.to(torch.float64, copy=True)
    weights.sub_(diff2)
    weights.sub_(weights.amax(dim=-1, keepdim=True))
    weights.exp_()
    return weights.div_(weights.sum(dim=-1, keepdim=True))


def log_evidence(
    diff2: Float[Tensor, "b s"], log_prior: Float[Tensor, "b s"]
) -> Float[Tensor, " b"]:
    """``log sum_s prior[s] exp(-diff2[s])`` per particle, float64.

    RELION's ``log(sum_weight) - min_diff2``.
    """
    return torch.logsumexp(log_prior.to(torch.float64) - diff2.to(torch.float64), dim=-1)


FULL_SORT_SAMPLES = 4096
"""``significant_samples`` sorts all of a particle's samples when it has at most this many
(the fine pass: ``q g f``, a few thousand at most): picking the candidates first costs two
waits for the device (their widest count, their positions), a sort of a few thousand
numbers per particle none."""


def _candidates(weights: Tensor, adaptive_fraction: float) -> tuple[Tensor, Tensor]:
    """Positions ``(b, c)`` (ascending, padded with ``s``) of the samples above ``tau``.

    ``tau = (1 - fraction) total / s``: the samples at or below it hold at most
    ``1 - fraction`` of the total, so every significant sample is above it (the
    largest weights are always candidates).
    """
    b, s = weights.shape
    tau = (1.0 - adaptive_fraction) * weights.sum(dim=-1, keepdim=True) / s
    above = (weights > tau) | (weights == weights.amax(dim=-1, keepdim=True))
    count = above.sum(dim=-1)
    width = max(1, int(count.max()))
    rows, cols = above.nonzero(as_tuple=True)  # row-major: ascending columns per row
    first = torch.cumsum(count, dim=0) - count
    slot = torch.arange(rows.shape[0], device=weights.device) - first[rows]
    positions = torch.full((b, width), s, dtype=torch.int64, device=weights.device)
    positions[rows, slot] = cols
    return positions, count


def significant_samples(
    weights: Float[Tensor, "b s"], adaptive_fraction: float
) -> tuple[Bool[Tensor, "b s"], Int[Tensor, " b"]]:
    """The smallest set of samples holding ``adaptive_fraction`` of each particle's weight.

    Only the samples above ``(1 - fraction) total / s`` can be significant; they
    are sorted (stable, decreasing), so the cost is that of a sort of those. Up to
    ``FULL_SORT_SAMPLES`` samples per particle all are sorted, with the same result
    and no wait for the device.

    Returns
    -------
    mask
        True for the significant samples.
    count
        Their number (RELION's ``rlnNrOfSignificantSamples`` for the coarse pass), >= 1.
    """
    if not 0.0 <= adaptive_fraction <= 1.0:
        raise ValueError(f"adaptive_fraction must be in [0, 1], got {adaptive_fraction}")
    b, s = weights.shape
    if s <= FULL_SORT_SAMPLES:
        positions = torch.arange(s, device=weights.device).expand(b, s)
    else:
        positions, _ = _candidates(weights, adaptive_fraction)
    padded = torch.cat([weights, weights.new_full((b, 1), -1.0)], dim=-1)
    ordered, order = torch.sort(padded.gather(1, positions), dim=-1, descending=True, stable=True)
    positions = positions.gather(1, order)
    ordered = ordered.clamp_min(0.0)
    running = torch.cumsum(ordered, dim=-1)
    before = torch.cat([torch.zeros_like(running[:, :1]), running[:, :-1]], dim=-1)
    threshold = adaptive_fraction * weights.sum(dim=-1, keepdim=True)
    take = (before < threshold) & (ordered > 0)
    take[:, 0] = True  # the maximum is always kept
    mask = torch.zeros((b, s + 1), dtype=torch.bool, device=weights.device)
    # a row without a finite weight keeps no sample (its count stays 1), by either route
    mask.scatter_(1, torch.where(take & ~ordered.isnan(), positions, s), True)
    return mask[:, :s], take.sum(dim=-1)


def hard_assignment(
    scores: Float[Tensor, "b s"], log_prior: Float[Tensor, "b s"]
) -> Float[Tensor, "b s"]:
    """Weight 1 at the lowest score among the searched samples (finite prior), 0 elsewhere.

    RELION's cross-correlation iteration (``--firstiter_cc``); equal scores:
    the lower sample index wins. Finite prior values are otherwise ignored.
    """
    masked = torch.where(torch.isfinite(log_prior), scores.to(torch.float64), math.inf)
    best = masked.argmin(dim=-1, keepdim=True)
    return torch.zeros_like(masked).scatter_(-1, best, 1.0)


def pmax(weights: Float[Tensor, "b s"]) -> Float[Tensor, " b"]:
    """Largest posterior weight of each particle (``rlnMaxValueProbDistribution``)."""
    return weights.amax(dim=-1)


def log_sigma2_sum(
    sigma2: Float[Tensor, "b k"], scored: Bool[Tensor, " k"] | None = None
) -> Float[Tensor, " b"]:
    """``sum_k log(2 pi sigma2[b, k])`` over the scored coefficients (all if ``scored`` is None)."""
    terms = torch.log(2.0 * math.pi * sigma2.to(torch.float64))
    if scored is not None:
        terms = torch.where(scored, terms, 0.0)
    return terms.sum(dim=-1)


def log_likelihood_contribution(
    diff2: Float[Tensor, "b s"],
    log_prior: Float[Tensor, "b s"],
    *,
    log_sigma2: Float[Tensor, " b"],
    diff2_offset: Float[Tensor, " b"] | None = None,
    cross_correlation: bool = False,
) -> Float[Tensor, " b"]:
    """RELION's per-particle ``dLL`` (module docstring), float64.

    Parameters
    ----------
    diff2, log_prior
        Scores and log priors of the fine pass.
    log_sigma2
        ``log_sigma2_sum`` of the particle's scored coefficients.
    diff2_offset
        A constant per particle added to every ``diff2`` (RELION: half the
        image power beyond the current size), or None.
    cross_correlation
        A cross-correlation iteration: ``-min`` of the searched scores.
    """
    offset = 0.0 if diff2_offset is None else diff2_offset.to(torch.float64)
    if cross_correlation:
        masked = torch.where(torch.isfinite(log_prior), diff2.to(torch.float64), math.inf)
        return -(masked.amin(dim=-1) + offset)
    return log_evidence(diff2, log_prior) - offset - log_sigma2
