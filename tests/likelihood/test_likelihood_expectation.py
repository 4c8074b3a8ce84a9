"""likelihood.expectation: one E-step batch, end to end on small synthetic cases."""

import importlib
import math
from dataclasses import replace

import pytest
import torch
from likelihood_cases import (
    blob_map,
    make_plan,
    particle_images,
    particle_terms,
    reference_of,
    whole_grid,
)

from cryorefine.fourier import fourier_crop, shift_fourier, zero_accumulators
from cryorefine.geometry import (
    angular_distance_deg,
    angular_step_deg,
    euler_to_matrix,
    oversampled_translations,
)
from cryorefine.likelihood import (
    coarse_rotations,
    coarse_window,
    expectation,
    fine_rotations,
    fourier_window,
    gather_window,
    insert_backprojection,
    memory_budget,
    prepare,
    projection_cache,
    search,
    window_phases,
)
from cryorefine.likelihood.search import UNION_PRODUCT_RATIO, union_is_cheaper
from cryorefine.timing import PhaseTimes

# the module, which the package's ``expectation`` (the function) hides
expectation_module = importlib.import_module("cryorefine.likelihood.expectation")


def _fine_pose(plan, coarse_id, child, translation_id, translation_child):
    rotation = fine_rotations(plan.orientations, torch.tensor([coarse_id]), oversampling=1)
    shift = oversampled_translations(
        plan.translations_px[translation_id], offset_step_px=plan.offset_step_px, oversampling=1
    )
    return rotation[0, child], shift[translation_child]


def _case(ndim, *, b=2, sigma2=None, seed=0, n=None, **options):
    """Noise-free particles at fine grid poses of a small plan (order 0), box ``n``."""
    gen = torch.Generator().manual_seed(seed)
    n = n or (16 if ndim == 2 else 12)
    reference = reference_of(blob_map(n, gen))
    grid = whole_grid(0, perturbation=0.3)
    plan = make_plan(grid, ndim=ndim, ori_size=n, current_size=n, coarse_size=n - 4, **options)
    poses = [
        _fine_pose(
            plan,
            int(torch.randint(grid.count, (1,), generator=gen)),
            int(torch.randint(8, (1,), generator=gen)),
            int(torch.randint(plan.translations_px.shape[0], (1,), generator=gen)),
            int(torch.randint(2**ndim, (1,), generator=gen)),
        )
        for _ in range(b)
    ]
    rotations = torch.stack([p[0] for p in poses])
    shifts = torch.stack([p[1] for p in poses])
    images = particle_images(reference, rotations, shifts, ori_size=n, ndim=ndim)
    if sigma2 is None:  # of the order of the signal power: a broad coarse posterior
        sigma2 = (images.abs() ** 2).mean().item()
    return reference, plan, images, rotations, shifts, sigma2


@pytest.mark.parametrize("ndim", [2, 3])
def test_noise_free_particles_peak_at_their_fine_grid_pose_and_translation(ndim):
    reference, plan, images, rotations, shifts, sigma2 = _case(ndim, adaptive_fraction=1.0)
    particles = particle_terms(
        images,
        current_size=plan.current_size,
        sigma2=sigma2,
        ndim=ndim,
        grid_count=plan.orientations.count,
    )
    result = expectation(particles, reference, plan)
    # diff2 = 0 at the true pose (same projections, shifts undone exactly), > 0 elsewhere
    torch.testing.assert_close(result.rotations, rotations, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.origins_px, shifts, rtol=0, atol=1e-12)
    torch.testing.assert_close(euler_to_matrix(result.angles_deg), rotations, rtol=0, atol=1e-9)
    assert ((result.pmax > 0) & (result.pmax <= 1)).all()
    assert (result.weight_sums <= 1 + 1e-9).all()
    assert (result.weight_sums >= plan.adaptive_fraction - 1e-9).all()
    torch.testing.assert_close(result.direction_mass.sum(), result.weight_sums.sum())


def test_the_fine_pass_recovers_off_grid_poses_better_than_the_fine_step():
    gen = torch.Generator().manual_seed(3)
    n, b = 24, 6
    reference = reference_of(blob_map(n, gen))
    grid = whole_grid(1, perturbation=-0.2)
    plan = make_plan(
        grid,
        ndim=2,
        ori_size=n,
        current_size=n,
        coarse_size=16,
        offset_range_px=2.0,
        offset_step_px=2.0,
    )
    rotations = euler_to_matrix(torch.rand(b, 3, generator=gen, dtype=torch.float64) * 180)
    shifts = (torch.rand(b, 2, generator=gen, dtype=torch.float64) - 0.5) * 3
    images = particle_images(reference, rotations, shifts, ori_size=n, ndim=2)
    sigma2 = 0.3 * (images.abs() ** 2).mean().item()
    particles = particle_terms(images, current_size=n, sigma2=sigma2, ndim=2, grid_count=grid.count)
    result = expectation(particles, reference, plan)
    fine_step = angular_step_deg(1, oversampling=1)  # 15 degrees
    coarse_error = angular_distance_deg(coarse_rotations(grid)[None], rotations[:, None]).amin(
        dim=1
    )
    error = angular_distance_deg(result.rotations, rotations)
    assert (error < fine_step).all()
    assert error.mean() < coarse_error.mean()  # oversampling does better than the coarse grid
    # fine translations are 1 px apart (coarse: 2 px); with the orientation off its grid
    # too, the best pair may take a neighbour of the nearest fine translation: within the
    # diagonal of a fine cell, sqrt(2) px, against 2 sqrt(2) px for the coarse cell.
    assert ((result.origins_px - shifts).norm(dim=1) < math.sqrt(2)).all()


@pytest.mark.parametrize("premultiplied", [False, True])
def test_one_particle_with_weight_one_back_projects_k_x_over_sigma2_shifted(premultiplied):
    gen = torch.Generator().manual_seed(4)
    reference, plan, images, rotations, shifts, _ = _case(2, b=1, seed=5)
    origin = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    stored = shift_fourier(images, -origin.float())  # centre now at -(origin + t)
    m = plan.current_size
    ctf = 0.5 + torch.rand(1, m, m // 2 + 1, generator=gen)
    sigma2 = 1e-4 * (images.abs() ** 2).mean().item()  # all weight on one pose
    particles = particle_terms(
        ctf * stored,
        current_size=m,
        sigma2=sigma2,
        ndim=2,
        grid_count=plan.orientations.count,
        ctf=ctf,
        origins_px=origin,
        ctf_premultiplied=premultiplied,
    )
    result = expectation(particles, reference, plan)
    assert result.pmax.item() == 1.0
    torch.testing.assert_close(result.rotations, rotations, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.origins_px, origin + shifts, rtol=0, atol=1e-12)
    sums = result.backprojection
    assert sums.data.shape[0] == 1
    torch.testing.assert_close(sums.rotations, rotations, rtol=0, atol=1e-12)
    window = sums.window
    x = gather_window(ctf * stored, window).to(torch.complex128)
    k = gather_window(ctf, window).double()
    phase = window_phases(window, origin + shifts, box_size=m, dtype=torch.complex128)
    want_data = (x if premultiplied else k * x) * phase / sigma2
    want_weight = (k if premultiplied else k**2) / sigma2
    # float32 data, CTF and phases: a few roundings of each term
    torch.testing.assert_close(
        sums.data[0].to(torch.complex128),
        want_data[0],
        rtol=8 * 2**-24,
        atol=8 * 2**-24 * want_data.abs().max().item(),
    )
    torch.testing.assert_close(sums.weight[0].double(), want_weight[0], rtol=8 * 2**-24, atol=0)
    # at the true pose the residual vanishes: noise sums ~ 0, signal product = reference power
    shell = result.shell_sums
    power = shell.reference_power.sum().item()
    assert abs(shell.residual_power.sum().item()) < 1e-4 * power
    torch.testing.assert_close(
        shell.signal_product, shell.reference_power, rtol=1e-4, atol=1e-6 * power
    )


def _exponent_error(particles, reference, plan):
    """Bound on the float64 rounding of any score: gamma_(2k+10) M with M <= 2 (A + max B).

    A = sum w |X|^2, B = sum w |P|^2 (K = 1); 2 |P| |X| <= |P|^2 + |X|^2 bounds the cross
    term. Differences in chunking or ordering move each weight by at most this, relatively.
    """
    cache = projection_cache(reference, plan, ndim=particles.ndim, fine=True)
    w = 0.5 / particles.sigma2_noise.min().item()
    window = fourier_window(plan.current_size, particles.ndim, device=torch.device("cpu"))
    a = w * (gather_window(particles.masked_ft, window).abs() ** 2).sum(1).max().item()
    b = w * max(
        (cache.coarse.abs() ** 2).sum(1).max().item(), (cache.fine.abs() ** 2).sum(1).max().item()
    )
    k = window.count + 1
    return (2 * k + 10) * 2.0**-53 * 2 * (a + b)


def _assert_same(result, want, tol):
    for name in ("rotations", "origins_px"):
        torch.testing.assert_close(getattr(result, name), getattr(want, name), rtol=0, atol=0)
    for name in ("pmax", "weight_sums", "offset_moments_px2", "direction_mass"):
        # weights: exp of exponents off by <= tol each (4 tol after normalising); sums of them
        torch.testing.assert_close(getattr(result, name), getattr(want, name), rtol=8 * tol, atol=0)
    # dLL: log of a sum of such terms, plus the same log-sigma2 constant
    torch.testing.assert_close(result.log_likelihood, want.log_likelihood, rtol=0, atol=4 * tol)
    assert (result.significant_samples == want.significant_samples).all()


def test_lists_are_scored_at_the_union_only_when_its_product_costs_less_than_the_gathers():
    # the union's flops (4 t k per particle and row) against the lists' bytes (24 k per entry)
    assert union_is_cheaper(100, 10.0, 5)  # 500 < 1000
    assert not union_is_cheaper(1000, 10.0, 5)
    assert union_is_cheaper(UNION_PRODUCT_RATIO - 1, 1.0, 1)
    assert not union_is_cheaper(UNION_PRODUCT_RATIO, 1.0, 1)


@pytest.mark.parametrize("cached", [False, True], ids=["projected", "whole grid held"])
@pytest.mark.parametrize("union", [True, False], ids=["union product", "per-particle lists"])
def test_local_search_lists_match_a_dense_prior_that_is_minus_inf_elsewhere(
    monkeypatch, union, cached
):
    # both ways of scoring lists: every particle at the batch's union, or each at its own;
    # the union's rows projected, or picked from a cache of the whole grid
    monkeypatch.setattr(search, "union_is_cheaper", lambda *_: union)
    reference, plan, images, *_ = _case(2, b=3, seed=6, precision="float64")
    cache = projection_cache(reference, plan, ndim=2, coarse=True, fine=True) if cached else None
    count = plan.orientations.count
    gen = torch.Generator().manual_seed(7)
    ids = torch.stack([torch.randperm(count, generator=gen)[:20] for _ in range(3)])
    log_prior = torch.log(torch.rand(3, 20, generator=gen, dtype=torch.float64))
    dense = torch.full((3, count), -math.inf, dtype=torch.float64).scatter(1, ids, log_prior)
    kwargs = {"current_size": plan.current_size, "sigma2": 1.0, "ndim": 2, "grid_count": count}
    full_particles = particle_terms(images, **kwargs, log_prior_orientations=dense)
    listed = expectation(
        particle_terms(images, **kwargs, log_prior_orientations=log_prior, orientation_ids=ids),
        reference,
        plan,
        cache=cache,
    )
    full = expectation(full_particles, reference, plan)
    _assert_same(listed, full, _exponent_error(full_particles, reference, plan))


@pytest.mark.parametrize("split", ["halves", "one particle by row ranges"])
def test_lists_whose_union_cannot_be_held_are_split_until_it_can(monkeypatch, split):
    # the union of three lists is beyond half the budget: the particles are scored in parts
    # whose unions are held, or (one particle whose list alone is beyond it) by row ranges
    monkeypatch.setattr(search, "UNION_PRODUCT_RATIO", 0)  # lists only
    reference, plan, images, *_ = _case(2, b=3, seed=6, precision="float64")
    plan = replace(plan, orientations=whole_grid(1, perturbation=0.3))  # 576: lists overlap little
    count = plan.orientations.count
    gen = torch.Generator().manual_seed(7)
    ids = torch.stack([torch.randperm(count, generator=gen)[:40] for _ in range(3)])
    log_prior = torch.log(torch.rand(3, 40, generator=gen, dtype=torch.float64))
    k = coarse_window(plan, 2, device=torch.device("cpu")).count
    row_bytes = k * reference.element_size()
    union = torch.unique(ids).numel()
    budget = 2 * row_bytes * (union - 1) if split == "halves" else 2 * row_bytes * 39
    original = search._list_scores

    def with_small_budget(data, ids, valid, reference_ft, window, plan, projections, times):
        small = replace(plan, max_bytes=budget)  # the chunk of the E-step keeps all three
        return original(data, ids, valid, reference_ft, window, small, projections, times)

    monkeypatch.setattr(search, "_list_scores", with_small_budget)
    held, ranged = [], []
    monkeypatch.setattr(search, "score_held_lists", _counting(search.score_held_lists, held))
    monkeypatch.setattr(search, "score_lists", _counting(search.score_lists, ranged))
    kwargs = {"current_size": plan.current_size, "sigma2": 1.0, "ndim": 2, "grid_count": count}
    listed = particle_terms(images, **kwargs, log_prior_orientations=log_prior, orientation_ids=ids)
    result = expectation(listed, reference, plan)
    if split == "halves":
        # particle 0, then particles 1 and 2, each part's union held
        assert [a[2].shape[0] for a in held] == [1, 2]
        assert not ranged
    else:
        assert not held
        assert [a[2].shape[0] for a in ranged] == [1, 1, 1]
    dense = torch.full((3, count), -math.inf, dtype=torch.float64).scatter(1, ids, log_prior)
    full_particles = particle_terms(images, **kwargs, log_prior_orientations=dense)
    full = expectation(full_particles, reference, plan)
    _assert_same(result, full, _exponent_error(full_particles, reference, plan))


def _wide_lists():
    """Three float64 particles of box 32 with 49 translations (each one's Z outweighs its
    scores and terms) and lists of 20 random candidates: reference, plan, images, lists
    and their log priors."""
    reference, plan, images, *_ = _case(
        2, b=3, seed=6, n=32, offset_range_px=4.0, precision="float64"
    )
    gen = torch.Generator().manual_seed(7)
    count = plan.orientations.count
    ids = torch.stack([torch.randperm(count, generator=gen)[:20] for _ in range(3)])
    log_prior = torch.log(torch.rand(3, 20, generator=gen, dtype=torch.float64))
    return reference, plan, images, ids, log_prior


@pytest.mark.parametrize("local", [True, False], ids=["local lists", "global grid"])
def test_a_local_searchs_chunks_count_its_scores_and_terms_but_not_its_z(monkeypatch, local):
    # Held lists make Z a few particles at a time, so a local search's chunk holds as many
    # particles as their scores (72 bytes per sample) and prepared terms (80 bytes per
    # coefficient of the half square in float64) allow; a global search's chunk holds
    # every particle's Z as well (32 bytes per translation and coarse coefficient)
    reference, plan, images, ids, log_prior = _wide_lists()
    count, t = plan.orientations.count, plan.translations_px.shape[0]
    k = coarse_window(plan, 2, device=torch.device("cpu")).count
    m = plan.current_size
    candidates = 20 if local else count
    terms = t * candidates * 72 + 80 * m * (m // 2 + 1)
    plan = replace(plan, max_bytes=2 * 3 * terms)  # three particles' scores and terms
    assert terms + t * 32 * k > 3 * terms / 2  # with each Z counted: fewer than two a chunk
    chunks = []
    monkeypatch.setattr(expectation_module, "coarse_pass", _counting(search.coarse_pass, chunks))
    kwargs = {"current_size": m, "sigma2": 1.0, "ndim": 2, "grid_count": count}
    if local:
        particles = particle_terms(
            images, **kwargs, log_prior_orientations=log_prior, orientation_ids=ids
        )
    else:
        particles = particle_terms(images, **kwargs)
    result = expectation(particles, reference, plan)
    assert [a[1].count for a in chunks] == ([3] if local else [1, 1, 1])
    whole = expectation(particles, reference, replace(plan, max_bytes=2**29))
    _assert_same(result, whole, _exponent_error(particles, reference, plan))


def test_the_union_route_takes_a_local_chunk_only_where_every_particles_z_fits(monkeypatch):
    # the union's dense product makes every particle's Z at once (32 bytes per translation
    # and coefficient in float64): beyond half the budget the lists are held instead
    monkeypatch.setattr(search, "union_is_cheaper", lambda *_: True)
    reference, plan, images, ids, log_prior = _wide_lists()
    count, t = plan.orientations.count, plan.translations_px.shape[0]
    k = coarse_window(plan, 2, device=torch.device("cpu")).count
    kwargs = {"current_size": plan.current_size, "sigma2": 1.0, "ndim": 2, "grid_count": count}
    particles = particle_terms(
        images, **kwargs, log_prior_orientations=log_prior, orientation_ids=ids
    )
    results = {}
    for z_fits, budget in ((True, 2**29), (False, 2 * 3 * t * 32 * k - 2)):
        shared, held = [], []
        monkeypatch.setattr(search, "score_shared", _counting(search.score_shared, shared))
        monkeypatch.setattr(search, "score_held_lists", _counting(search.score_held_lists, held))
        results[z_fits] = expectation(particles, reference, replace(plan, max_bytes=budget))
        assert (len(shared), len(held)) == ((1, 0) if z_fits else (0, 1))
    _assert_same(results[False], results[True], _exponent_error(particles, reference, plan))


def test_a_local_search_times_the_projection_of_its_lists_union_and_counts_its_rows(
    monkeypatch,
):
    monkeypatch.setattr(search, "UNION_PRODUCT_RATIO", 0)  # lists only
    reference, plan, images, *_ = _case(2, b=3, seed=6)
    plan = replace(plan, orientations=whole_grid(1, perturbation=0.3))
    count = plan.orientations.count
    gen = torch.Generator().manual_seed(8)
    ids = torch.stack([torch.randperm(count, generator=gen)[:40] for _ in range(3)])
    log_prior = torch.log(torch.rand(3, 40, generator=gen, dtype=torch.float64))
    kwargs = {"current_size": plan.current_size, "sigma2": 1.0, "ndim": 2, "grid_count": count}
    listed = particle_terms(images, **kwargs, log_prior_orientations=log_prior, orientation_ids=ids)
    times = PhaseTimes(torch.device("cpu"))
    expectation(listed, reference, plan, times=times)
    # one chunk of three particles: the union of their lists projected once
    assert times.counts()["coarse_projected_orientations"] == torch.unique(ids).numel()
    seconds = times.seconds()
    assert 0 < seconds["coarse_project"] <= seconds["coarse_score"] <= seconds["coarse"]


def _counting(function, calls):
    def counted(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return counted


def test_chunks_and_projection_caches_do_not_change_the_result():
    reference, plan, images, *_ = _case(2, b=4, seed=8, precision="float64")
    particles = particle_terms(
        images,
        current_size=plan.current_size,
        sigma2=0.3,  # some 200-300 significant coarse samples per particle
        ndim=2,
        grid_count=plan.orientations.count,
    )
    whole = expectation(particles, reference, plan)
    tol = _exponent_error(particles, reference, plan)
    small = replace(plan, max_bytes=500_000)  # 2 particle chunks, chunks of a few pairs
    cache = projection_cache(reference, plan, ndim=2, coarse=True, fine=True)
    for result in (
        expectation(particles, reference, small),
        expectation(particles, reference, plan, cache=cache),
    ):
        _assert_same(result, whole, tol)
        for name in ("residual_power", "signal_product", "reference_power"):
            got, want = getattr(result.shell_sums, name), getattr(whole.shell_sums, name)
            torch.testing.assert_close(got, want, rtol=0, atol=8 * tol * want.abs().max())
        got, want = result.backprojection.weight.sum(0), whole.backprojection.weight.sum(0)
        torch.testing.assert_close(got, want, rtol=8 * tol, atol=0)


def _three_groups(ndim: int):
    """Three float64 particles whose fine pass, under a small budget, takes 3 groups."""
    reference, plan, images, *_ = _case(ndim, b=3, seed=12, precision="float64")
    plan = replace(plan, max_bytes=2_000_000 if ndim == 2 else 12_000_000)
    particles = particle_terms(
        images,
        current_size=plan.current_size,
        sigma2=0.3,
        ndim=ndim,
        grid_count=plan.orientations.count,
    )
    return reference, plan, particles


@pytest.mark.parametrize("ndim", [2, 3])
def test_inserting_as_it_goes_equals_inserting_the_returned_sums(ndim):
    reference, plan, particles = _three_groups(ndim)
    whole = expectation(particles, reference, plan)
    n, device = plan.ori_size, reference.device
    want = zero_accumulators(n, padding_factor=plan.padding_factor, device=device)
    sums = whole.backprojection
    insert_backprojection(
        sums.data,
        sums.weight,
        sums.rotations,
        sums.window,
        accumulator_data=want[0],
        accumulator_weight=want[1],
        padding_factor=plan.padding_factor,
    )
    got = zero_accumulators(n, padding_factor=plan.padding_factor, device=device)
    times = PhaseTimes(device)
    direct = expectation(particles, reference, plan, accumulators=got, times=times)
    counts = times.counts()
    assert counts["fine_groups"] > 1  # inserted group by group
    # each group counted once under the rule that closed it
    closed = {k: v for k, v in counts.items() if k.startswith("fine_groups_closed_by_")}
    assert sum(closed.values()) == counts["fine_groups"]
    assert closed.get("fine_groups_closed_by_end", 0) >= 1
    assert direct.backprojection.data.shape[0] == 0
    torch.testing.assert_close(direct.pmax, whole.pmax, rtol=0, atol=0)
    # The same float64 terms added in another order: rounding of sums of ~|terms|.
    scale = sums.data.abs().sum().item() + sums.weight.abs().sum().item()
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=64 * 2.0**-53 * scale)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=64 * 2.0**-53 * scale)
    assert want[1].abs().sum() > 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_single_precision_batches_insert_within_float32_rounding_of_the_returned_sums(ndim):
    """On a GPU a float32 batch inserts into one packed float32 accumulator (vector
    reductions) and adds it to the float64 sums at its end; on the CPU directly.

    A voxel's float32 sum of ``N`` terms is within ``(N - 1) u`` times the sum of their
    magnitudes ``S`` (any order, as atomics add), ``S`` being the float64 insertion of the
    magnitudes. Each of the ``R`` inserted orientations adds at most 8 terms to a voxel
    (trilinear neighbours of its frequencies), so ``N <= 8 R``. The two E-step runs'
    float32 sums may differ by as much again: the bound is ``2 * 8 R u S`` per voxel, for
    the data's real and imaginary parts each (so twice that on its modulus).
    """
    reference, plan, images, *_ = _case(ndim, b=3, seed=12, precision="float32")
    particles = particle_terms(
        images, current_size=plan.current_size, sigma2=0.3, ndim=ndim,
        grid_count=plan.orientations.count,
    )  # fmt: skip
    whole = expectation(particles, reference, plan)
    sums = whole.backprojection
    n, device = plan.ori_size, reference.device

    def inserted(data: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = zero_accumulators(n, padding_factor=plan.padding_factor, device=device)
        insert_backprojection(
            data, weight, sums.rotations, sums.window, accumulator_data=out[0],
            accumulator_weight=out[1], padding_factor=plan.padding_factor,
        )  # fmt: skip
        return out

    want = inserted(sums.data, sums.weight)
    magnitude = inserted(sums.data.abs().to(sums.data.dtype), sums.weight.abs())
    got = zero_accumulators(n, padding_factor=plan.padding_factor, device=device)
    expectation(particles, reference, plan, accumulators=got)
    terms = 8 * sums.rotations.shape[0]
    data_bound = 4 * terms * 2.0**-24 * magnitude[0].real
    weight_bound = 2 * terms * 2.0**-24 * magnitude[1]
    assert bool(((got[0] - want[0]).abs() <= data_bound).all())
    assert bool(((got[1] - want[1]).abs() <= weight_bound).all())
    assert float(weight_bound.max()) < 0.01 * float(want[1].abs().max())  # a lost group shows


@pytest.mark.parametrize("ndim", [2, 3])
def test_groups_inserted_as_they_go_keep_none_of_their_sums_alive(ndim, monkeypatch):
    """Each group's back-projection sums are freed once inserted, not held until the batch ends.

    An empty slice of the sums would still hold their storage: with broad posteriors
    that is one group's sums per group (tens of GiB at box 64 on a GPU).
    """
    reference, plan, particles = _three_groups(ndim)
    kept = []
    merge = expectation_module._merge

    def keep(fine, *args):
        kept.extend(fine)
        return merge(fine, *args)

    monkeypatch.setattr(expectation_module, "_merge", keep)
    n, device = plan.ori_size, reference.device
    accumulators = zero_accumulators(n, padding_factor=plan.padding_factor, device=device)
    expectation(particles, reference, plan, accumulators=accumulators)
    assert len(kept) > 1
    for outcome in kept:
        for sums in (outcome.bp_rotations, outcome.bp_data, outcome.bp_weight):
            assert sums.shape[0] == 0
            assert sums.untyped_storage().nbytes() == 0
    assert accumulators[1].abs().sum() > 0


def test_cross_correlation_iteration_assigns_each_particle_to_its_pose():
    """Hard assignment keeps one coarse sample (RELION): exact at coarse poses, no oversampling."""
    gen = torch.Generator().manual_seed(9)
    n = 16
    reference = reference_of(blob_map(n, gen))
    grid = whole_grid(0, perturbation=0.3)
    plan = make_plan(
        grid,
        ndim=2,
        ori_size=n,
        current_size=n,
        coarse_size=12,
        oversampling=0,
        cross_correlation=True,
    )
    rotations = coarse_rotations(grid, torch.tensor([5, 40, 71]))
    shifts = plan.translations_px[torch.tensor([0, 3, 2])]
    images = particle_images(reference, rotations, shifts, ori_size=n, ndim=2)
    particles = particle_terms(images, current_size=n, sigma2=1.0, ndim=2, grid_count=grid.count)
    result = expectation(particles, reference, plan)
    assert result.pmax.tolist() == [1.0] * 3
    assert result.significant_samples.tolist() == [1] * 3
    assert result.weight_sums.tolist() == [1.0] * 3
    torch.testing.assert_close(result.rotations, rotations, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.origins_px, shifts, rtol=0, atol=1e-12)
    # dLL = -best score = cc of a particle with its own projection: 1 up to the float32
    # rounding of the correlation, <= 2 gamma_(2k+10) (test_likelihood_scores)
    k = fourier_window(n, 2, device=torch.device("cpu"), include_dc=True).count
    tol = 2 * (2 * k + 10) * 2.0**-24
    torch.testing.assert_close(
        result.log_likelihood, torch.ones(3, dtype=torch.float64), rtol=0, atol=tol
    )


def _relion4_case(seed: int) -> tuple:
    """Two pseudo-subtomograms with random multiplicity (0 to 3) and CTF² grids, and a
    rising noise spectrum: the reference, plan, particle terms, grids and spectrum."""
    reference, plan, images, *_ = _case(3, b=2, seed=10)
    gen = torch.Generator().manual_seed(seed)
    m = plan.current_size
    multiplicity = torch.rand(2, m, m, m // 2 + 1, generator=gen) * 3
    ctf2 = torch.rand(2, m, m, m // 2 + 1, generator=gen)
    sigma2 = torch.linspace(1.0, 2.0, plan.ori_size // 2 + 1, dtype=torch.float64)
    particles = particle_terms(
        images,
        current_size=m,
        sigma2=1.0,
        ndim=3,
        grid_count=plan.orientations.count,
        multiplicity=multiplicity,
        ctf=ctf2,
        ctf_premultiplied=True,
        sigma2_noise=sigma2.expand(2, -1),
    )
    return reference, plan, particles, multiplicity, ctf2, sigma2, gen


def _check_multiplicity_sums(result, multiplicity: torch.Tensor, plan) -> None:
    """The noise sums' multiplicity: summed per shell over the window with DC."""
    dc_window = fourier_window(plan.current_size, 3, device=torch.device("cpu"), include_dc=True)
    want = torch.zeros(2, plan.ori_size // 2 + 1, dtype=torch.float64).index_add_(
        1, dc_window.shell, gather_window(multiplicity, dc_window).double()
    )
    torch.testing.assert_close(result.multiplicity_sums, want, rtol=1e-12, atol=0)


def test_relion4_scores_divide_by_the_multiplicity_above_one_tenth():
    reference, plan, particles, multiplicity, ctf, sigma2, _ = _relion4_case(11)
    prep = prepare(particles, plan)
    window = prep.fine_window
    mult = gather_window(multiplicity, window).double()
    s2 = sigma2[window.shell]
    want = torch.where(mult > 0.1, 0.5 / (s2 * mult), 0.5 / s2)
    want = torch.where(window.shell > 0, want, 0.0)
    torch.testing.assert_close(prep.fine_weight, want, rtol=4 * 2**-24, atol=0)
    bp = prep.bp_window
    torch.testing.assert_close(
        prep.bp_weight.double(),
        gather_window(ctf, bp).double() / sigma2[bp.shell],
        rtol=4 * 2**-24,
        atol=0,
    )
    _check_multiplicity_sums(expectation(particles, reference, plan), multiplicity, plan)


@pytest.mark.parametrize("empty_shell", [False, True])
def test_relion4_scores_weigh_each_coefficient_by_its_ctf2_noise(empty_shell):
    # likelihood.subtomo_noise: weight 1 / (2 sigma2 V), V = (W / c + M / 10) / 1.1 where
    # M > 0.1 (1 elsewhere), c the particle's ratio of its shell; a shell with c = 0 keeps
    # RELION's V = M. The multiplicity still goes to the noise sums.
    reference, plan, particles, multiplicity, ctf2, sigma2, gen = _relion4_case(13)
    ratio = torch.rand(2, plan.ori_size // 2 + 1, generator=gen, dtype=torch.float64) + 0.2
    if empty_shell:
        ratio[:, 2] = 0.0
    particles = replace(particles, ctf2_per_multiplicity=ratio)
    prep = prepare(particles, plan)
    window = prep.fine_window
    w = gather_window(ctf2, window).double()
    mult = gather_window(multiplicity, window).double()
    c = ratio[:, window.shell]
    scale = torch.where(c > 0, (w / c + 0.1 * mult) / 1.1, mult)
    scale = torch.where(mult > 0.1, scale, 1.0)
    want = torch.where(window.shell > 0, 0.5 / (sigma2[window.shell] * scale), 0.0)
    torch.testing.assert_close(prep.fine_weight, want, rtol=4 * 2**-24, atol=0)
    _check_multiplicity_sums(expectation(particles, reference, plan), multiplicity, plan)


def test_a_narrow_offset_prior_pulls_the_origin_to_the_nearest_fine_translation():
    reference, plan, images, *_ = _case(2, b=1, seed=12, sigma2_offset_px2=0.05)
    prior = torch.tensor([[0.6, -0.3]], dtype=torch.float64)
    particles = particle_terms(
        images,
        current_size=plan.current_size,
        sigma2=1e6,
        ndim=2,  # data carry ~no weight
        grid_count=plan.orientations.count,
        offset_priors_px=prior,
    )
    result = expectation(particles, reference, plan)
    fine = oversampled_translations(
        plan.translations_px, offset_step_px=plan.offset_step_px, oversampling=1
    ).reshape(-1, 2)
    nearest = fine[(fine - prior).norm(dim=1).argmin()]
    torch.testing.assert_close(result.origins_px[0], nearest, rtol=0, atol=1e-12)


def test_particle_grids_of_the_wrong_size_are_refused():
    reference, plan, images, *_ = _case(2, b=1)
    particles = particle_terms(
        fourier_crop(images, 12, ndim=2),
        current_size=12,
        sigma2=1.0,
        ndim=2,
        grid_count=plan.orientations.count,
    )
    with pytest.raises(ValueError, match="current_size"):
        expectation(particles, reference, plan)


def test_the_work_counted_is_the_searched_grid_and_the_children_scored():
    reference, plan, images, *_ = _case(3, b=2, seed=3)
    particles = particle_terms(
        images,
        current_size=plan.current_size,
        sigma2=0.3,
        ndim=3,
        grid_count=plan.orientations.count,
    )
    times = PhaseTimes(torch.device("cpu"))
    result = expectation(particles, reference, plan, times=times)
    counts = times.counts()
    t, m = plan.translations_px.shape[0], plan.orientations.count
    assert counts["coarse_samples"] == 2 * t * m  # a global search: every sample of both
    # each significant coarse pair has 8 orientation x 8 translation children (3D,
    # oversampling 1); a group pads its particles to its widest one
    pairs = result.significant_samples
    assert 64 * int(pairs.sum()) <= counts["fine_samples"] <= 64 * 2 * int(pairs.max())
    assert counts["projected_orientations"] % 8 == 0
    assert counts["projected_orientations"] > 0
    assert counts["inserted_orientations"] == result.backprojection.rotations.shape[0]
    # the rows of phases and Z: 8 fine translations per distinct coarse translation of a
    # particle's pairs, at least one and at most all t of them each
    assert counts["fine_translation_rows"] % 8 == 0
    assert 8 * 2 <= counts["fine_translation_rows"] <= 8 * 2 * t
    # the coarse pass's sub-phases are timed inside it, as the fine pass's inside it
    seconds = times.seconds()
    for sub, whole in (("coarse_prepare", "coarse"), ("coarse_score", "coarse"),
                       ("coarse_select", "coarse"), ("fine_score", "fine")):  # fmt: skip
        assert 0 < seconds[sub] <= seconds[whole]


@pytest.mark.parametrize("premultiplied", [False, True], ids=["ctf", "premultiplied"])
def test_a_group_scale_scores_as_a_scaled_reference_and_back_projects_s_y_with_s2_v(
    premultiplied,
):
    # X = s K P: scoring with scale s is scoring against the reference s P; the
    # back-projection inserts s Y with weight s^2 V (RELION's Mctf *= scale); for
    # premultiplied data, Y = X / sigma2 stays and V = K / sigma2 becomes s V
    s = 1.25  # exact in float32, the CTF's dtype
    reference, plan, images, *_ = _case(3, b=3, seed=14, precision="float64")
    reference = reference.to(torch.complex128)  # s P exact to float64 rounding
    kwargs = {
        "current_size": plan.current_size,
        "sigma2": 0.3,
        "ndim": 3,
        "grid_count": plan.orientations.count,
        "ctf_premultiplied": premultiplied,
    }
    plain = particle_terms(images, **kwargs)
    scaled = replace(plain, scale=torch.full((3,), s, dtype=torch.float64))
    got = expectation(scaled, reference, plan)
    want = expectation(plain, reference * s, plan)
    _assert_same(got, want, _exponent_error(plain, reference * s, plan))
    for name in ("residual_power", "signal_product", "reference_power"):
        torch.testing.assert_close(
            getattr(got.shell_sums, name), getattr(want.shell_sums, name), rtol=1e-9, atol=0
        )
    # The inputs are float32 (complex64 images): s Y and s^2 V are each rounded once
    # (u = 2^-24 relative), then summed with the same weights in the same order. Data:
    # |error| <= u s sum_i w_i |Y_i| <= u s b max|Y| (weights of a particle sum to 1);
    # weights are sums of positive terms: relative error <= 2 u.
    u = 2.0**-24
    unscaled = want.backprojection
    largest = prepare(plain, plan).bp_data.abs().max().item()
    data_scale, weight_scale = (1.0, s) if premultiplied else (s, s**2)
    torch.testing.assert_close(
        got.backprojection.data, data_scale * unscaled.data, rtol=0, atol=u * s * 3 * largest
    )
    torch.testing.assert_close(
        got.backprojection.weight, weight_scale * unscaled.weight, rtol=2 * u, atol=0
    )


def test_memory_budget_is_half_a_gigabyte_on_the_cpu() -> None:
    assert memory_budget(torch.device("cpu")) == 2**29


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_budget_counts_memory_the_allocator_caches_as_free() -> None:
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    if free < 2**34:
        pytest.skip("needs 16 GiB of free GPU memory")
    before = memory_budget(device)
    block = torch.empty(free - 2**33, dtype=torch.uint8, device=device)  # all but 8 GiB
    del block  # back to torch's cache, not to the driver
    # counting the driver's free memory alone would give a quarter of 8 GiB
    assert memory_budget(device) == pytest.approx(before, rel=0.05)
    assert before > 2**31
    torch.cuda.empty_cache()
