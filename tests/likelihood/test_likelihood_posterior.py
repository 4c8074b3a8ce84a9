"""likelihood.posterior: weights, significant samples, pmax, log-likelihood."""

import itertools
import math

import pytest
import torch
from likelihood_cases import U64

from cryorefine.likelihood import (
    hard_assignment,
    log_evidence,
    log_likelihood_contribution,
    log_sigma2_sum,
    pmax,
    posterior,
    posterior_weights,
    significant_samples,
)


def _random_problem(gen, b=4, s=50, spread=30.0):
    diff2 = 1e4 + spread * torch.rand(b, s, generator=gen, dtype=torch.float64)
    log_prior = torch.log(torch.rand(b, s, generator=gen, dtype=torch.float64))
    log_prior[torch.rand(b, s, generator=gen) < 0.2] = -math.inf  # not searched
    return diff2, log_prior


def _slow_weights(diff2, log_prior):
    out = torch.zeros_like(diff2)
    for i in range(diff2.shape[0]):
        terms = [lp - d for lp, d in zip(log_prior[i].tolist(), diff2[i].tolist(), strict=True)]
        top = max(terms)
        e = [math.exp(v - top) if v != -math.inf else 0.0 for v in terms]
        out[i] = torch.tensor(e, dtype=torch.float64) / math.fsum(e)
    return out


def test_posterior_weights_equal_the_slow_loop(device):
    gen = torch.Generator().manual_seed(0)
    diff2, log_prior = _random_problem(gen)
    got = posterior_weights(diff2.float().to(device), log_prior.to(device))
    want = _slow_weights(diff2.float().double(), log_prior)
    # exponents L - max L are formed from values up to ~1e4: absolute error ~ 2e4 u in the
    # exponent, i.e. relative error 2e4 u in each weight, plus s u from the normalisation.
    torch.testing.assert_close(got.cpu(), want, rtol=(2e4 + 50) * U64, atol=0)
    assert got.dtype == torch.float64


def test_weights_sum_to_one_and_unsearched_samples_get_none(device):
    gen = torch.Generator().manual_seed(1)
    diff2, log_prior = _random_problem(gen)
    weights = posterior_weights(diff2.to(device), log_prior.to(device)).cpu()
    torch.testing.assert_close(
        weights.sum(1), torch.ones(4, dtype=torch.float64), rtol=0, atol=50 * U64
    )
    assert (weights[torch.isinf(log_prior)] == 0).all()


def test_huge_scores_do_not_underflow_the_posterior():
    diff2 = torch.tensor([[1e9, 1e9 + 1.0, 1e9 + 800.0]], dtype=torch.float64)
    weights = posterior_weights(diff2, torch.zeros_like(diff2))
    e = math.exp(-1.0)
    torch.testing.assert_close(
        weights[0, :2],
        torch.tensor([1 / (1 + e), e / (1 + e)], dtype=torch.float64),
        rtol=1e-6,
        atol=0,
    )  # 1e9 u ~ 1e-7 in exp


def _smallest_set_size(weights, fraction):
    """Brute force: fewest samples (of nonzero weight) whose sum reaches fraction * total."""
    values = [w for w in weights.tolist() if w > 0]
    target = fraction * math.fsum(weights.tolist())
    for size in range(1, len(values) + 1):
        if any(math.fsum(c) >= target for c in itertools.combinations(values, size)):
            return size
    return len(values)


@pytest.fixture(params=["candidates first", "all sorted"])
def sorting(request, monkeypatch):
    """Both routes of ``significant_samples``: the candidates above tau, or every sample."""
    monkeypatch.setattr(posterior, "FULL_SORT_SAMPLES", 0 if request.param == "candidates first"
                        else 2**40)  # fmt: skip


@pytest.mark.usefixtures("sorting")
@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999, 1.0])
def test_significant_samples_are_the_smallest_set_holding_the_fraction(fraction):
    gen = torch.Generator().manual_seed(2)
    weights = torch.rand(6, 9, generator=gen, dtype=torch.float64) ** 4
    weights[0, 3:] = 0.0
    weights = weights / weights.sum(1, keepdim=True)
    mask, count = significant_samples(weights, fraction)
    for i in range(6):
        assert count[i].item() == _smallest_set_size(weights[i], fraction)
        assert mask[i].sum().item() == count[i].item()
        kept, dropped = weights[i][mask[i]], weights[i][~mask[i]]
        assert kept.sum() >= fraction * weights[i].sum() * (1 - 9 * U64)
        if len(dropped):
            assert kept.min() >= dropped.max()  # the heaviest samples


@pytest.mark.usefixtures("sorting")
def test_significant_samples_break_ties_by_lower_index():
    weights = torch.tensor([[0.1, 0.3, 0.3, 0.3]], dtype=torch.float64)
    mask, count = significant_samples(weights, 0.5)
    assert count.tolist() == [2]
    assert mask.tolist() == [[False, True, True, False]]


@pytest.mark.usefixtures("sorting")
def test_significant_samples_keep_at_least_the_maximum():
    weights = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    mask, count = significant_samples(weights, 0.0)
    assert count.tolist() == [1]
    assert mask.tolist() == [[False, True, False]]


def test_both_routes_to_the_significant_samples_agree_on_ties_and_zeros(monkeypatch):
    # weights of few distinct values (many ties), zeros, and a particle of equal weights
    gen = torch.Generator().manual_seed(3)
    weights = torch.randint(0, 4, (20, 300), generator=gen).to(torch.float64) ** 3
    weights[5] = 1.0
    weights[6, 1:] = 0.0
    got = {}
    for name, limit in (("candidates", 0), ("all", 2**40)):
        monkeypatch.setattr(posterior, "FULL_SORT_SAMPLES", limit)
        got[name] = significant_samples(weights, 0.9)
    assert torch.equal(got["candidates"][0], got["all"][0])
    assert torch.equal(got["candidates"][1], got["all"][1])
    assert got["all"][1][5] == 270  # equal weights: the first 90 % of them


def test_hard_assignment_picks_the_lowest_searched_score():
    scores = torch.tensor([[-0.9, -0.5, -0.7], [-0.2, -0.2, 0.3]], dtype=torch.float64)
    log_prior = torch.tensor([[-math.inf, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    weights = hard_assignment(scores, log_prior)
    assert weights.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert pmax(weights).tolist() == [1.0, 1.0]


def test_log_evidence_and_relion_dll_match_the_slow_formula():
    gen = torch.Generator().manual_seed(3)
    diff2, log_prior = _random_problem(gen, b=2, s=7)
    sigma2 = torch.rand(2, 11, generator=gen, dtype=torch.float64) + 0.5
    scored = torch.ones(11, dtype=torch.bool)
    scored[0] = False  # DC
    offset = torch.tensor([3.0, 5.0], dtype=torch.float64)
    got = log_likelihood_contribution(
        diff2, log_prior, log_sigma2=log_sigma2_sum(sigma2, scored), diff2_offset=offset
    )
    for i in range(2):
        full = [d + offset[i].item() for d in diff2[i].tolist()]
        searched = [
            (lp, d) for lp, d in zip(log_prior[i].tolist(), full, strict=True) if lp != -math.inf
        ]
        min_diff2 = min(d for _, d in searched)
        sum_weight = math.fsum(math.exp(lp - (d - min_diff2)) for lp, d in searched)
        logsigma2 = math.fsum(math.log(2 * math.pi * v) for v in sigma2[i, 1:].tolist())
        want = math.log(sum_weight) - min_diff2 - logsigma2  # RELION's dLL
        # terms of size ~1e4: rounding of ~10 operations on them
        assert abs(got[i].item() - want) <= 10 * 2e4 * U64
    evidence = log_evidence(diff2, log_prior)
    assert torch.all(evidence < -diff2.amin(1) + torch.logsumexp(log_prior, 1) + 1e-9)


def test_cross_correlation_dll_is_minus_the_best_score():
    scores = torch.tensor([[-0.3, -0.8, -0.5]], dtype=torch.float64)
    log_prior = torch.tensor([[0.0, -math.inf, 0.0]], dtype=torch.float64)
    dll = log_likelihood_contribution(
        scores, log_prior, log_sigma2=torch.zeros(1, dtype=torch.float64), cross_correlation=True
    )
    assert dll.tolist() == [0.5]
