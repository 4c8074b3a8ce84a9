"""refine.orientation_priors: global pdf, local lists, and long lists scored as the whole grid."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from cryorefine.geometry import (
    angular_step_deg,
    healpix_npix,
    local_angle_prior,
    pixel_rot_tilt_deg,
    point_group,
    psi_angles_deg,
)
from cryorefine.likelihood import ExpectationPlan, OrientationGrid
from cryorefine.refine.model import RefineState
from cryorefine.refine.orientation_priors import (
    DENSE_FRACTION_INVERSE,
    orientation_priors,
    prior_centres_deg,
    search_order,
)


def _plan(order: int) -> ExpectationPlan:
    grid = OrientationGrid(
        order,
        torch.arange(healpix_npix(order)),
        psi_angles_deg(angular_step_deg(order), device="cpu"),
    )
    return ExpectationPlan(
        ori_size=16,
        current_size=16,
        coarse_size=16,
        orientations=grid,
        translations_px=torch.zeros(1, 3, dtype=torch.float64),
        offset_step_px=1.0,
    )


def _state(**sigmas: float) -> RefineState:
    state = RefineState(
        iteration=1,
        healpix_order=1,
        psi_step_deg=15.0,
        offset_range_angst=5.0,
        offset_step_angst=1.0,
        current_resolution_inv_angst=0.05,
        best_resolution_inv_angst=0.05,
        current_size=16,
        coarse_size=16,
        incr_size=10,
    )
    return dataclasses.replace(state, local_searches=True, **sigmas)


def _angles(b: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return torch.rand(b, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [360.0, 180.0, 360.0], dtype=torch.float64
    ) - torch.tensor([180.0, 0.0, 180.0], dtype=torch.float64)


def test_narrow_local_searches_list_each_particles_orientations():
    plan, operators = _plan(2), point_group("C1", device="cpu").operators
    state = _state(sigma_rot_deg=5.0, sigma_tilt_deg=5.0, sigma_psi_deg=5.0)
    log_prior, ids = orientation_priors(plan, state, None, operators, _angles(4))
    assert ids is not None
    assert ids.shape[1] * DENSE_FRACTION_INVERSE < plan.orientations.count
    assert torch.isfinite(log_prior).any(dim=1).all()


def test_a_prior_on_tilt_alone_is_scored_as_the_whole_grid_with_the_same_weights():
    plan, operators = _plan(1), point_group("C1", device="cpu").operators
    grid = plan.orientations
    angles = _angles(3)
    log_prior, ids = orientation_priors(plan, _state(sigma_tilt_deg=10.0), None, operators, angles)
    assert ids is None
    assert log_prior.shape == (3, grid.count)
    # every psi alike (no psi prior), directions weighted by the tilt prior alone
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, grid.pixels)
    directions = local_angle_prior(
        angles[:, 1], rot_tilt, angle="tilt", sigma_deg=10.0, operators=operators
    )
    p = grid.psi_deg.shape[0]
    want = torch.log(directions / p).repeat_interleave(p, dim=1)  # log 0 = -inf outside
    torch.testing.assert_close(log_prior, want, rtol=1e-12, atol=0.0)
    assert (torch.isinf(log_prior) == (directions == 0).repeat_interleave(p, dim=1)).all()
    assert math.isclose(float(log_prior.exp().sum(dim=1)[0]), 1.0, rel_tol=1e-12)


def test_priors_centre_on_the_tables_prior_angles_where_defined_until_auto_local_searches():
    angles = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0], [70.0, 80.0, 90.0]])
    priors = np.array(
        [[np.nan, 90.0, np.nan], [999.0, 999.0, 5.0], [1.0, 2.0, 3.0]]  # 999: RELION's unset
    )
    got = prior_centres_deg(angles, priors, use_priors=True)
    want = np.array([[10.0, 90.0, 30.0], [40.0, 50.0, 5.0], [1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(got, want)
    # auto-refine's local searches centre on the current angles, priors or not
    np.testing.assert_array_equal(prior_centres_deg(angles, priors, use_priors=False), angles)


def test_search_order_puts_particles_with_the_same_local_search_next_to_each_other():
    plan, operators = _plan(2), point_group("C1", device="cpu").operators
    grid = plan.orientations
    state = _state(sigma_rot_deg=5.0, sigma_tilt_deg=5.0, sigma_psi_deg=5.0)
    gen = torch.Generator().manual_seed(3)
    # 24 centres on distinct grid orientations, 4 particles each within 0.2 degrees
    # of them (well inside half the 15-degree step), shuffled
    picked = torch.randperm(grid.count, generator=gen)[:24]
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, grid.pixels)
    p = grid.psi_deg.shape[0]
    centres = torch.cat([rot_tilt[picked // p], grid.psi_deg[picked % p, None]], dim=1)
    owner = torch.arange(24).repeat_interleave(4)
    jitter = (torch.rand(96, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.4
    shuffle = torch.randperm(96, generator=gen)
    angles, owner = (centres[owner] + jitter)[shuffle], owner[shuffle]
    order = search_order(plan, state, operators, angles)
    assert sorted(order.tolist()) == list(range(96))
    runs = owner[torch.as_tensor(order)]
    # each centre's particles form one run: 23 changes between neighbours, no more
    assert int((runs[1:] != runs[:-1]).sum()) == 23


@pytest.mark.parametrize("sigma_psi_deg", [5.0, 0.0])
def test_search_order_takes_psi_bands_as_wide_as_a_list_then_directions(sigma_psi_deg):
    # order 2: 15-degree psi steps; sigma 5: lists hold the psi strictly within 15 degrees
    # of their centre, bands are 2 ceil(15 / 15) + 1 = 3 grid psi: grid psi 0-2 are one
    # band and 3 the next. Without a psi prior there is one band.
    plan, operators = _plan(2), point_group("C1", device="cpu").operators
    grid = plan.orientations
    state = _state(sigma_rot_deg=5.0, sigma_tilt_deg=5.0, sigma_psi_deg=sigma_psi_deg)
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, grid.pixels)
    # (direction, grid psi): direction order and psi order disagree
    poses = [(40, 3), (30, 0), (10, 2), (20, 3), (35, 1)]
    angles = torch.stack([torch.cat([rot_tilt[d], grid.psi_deg[i : i + 1]]) for d, i in poses]).to(
        torch.float64
    )
    order = search_order(plan, state, operators, angles).tolist()
    if sigma_psi_deg > 0:
        assert order == [2, 1, 4, 3, 0]  # band 0 by direction (10, 30, 35), then band 1
    else:
        assert order == [2, 3, 1, 4, 0]  # by direction alone: 10, 20, 30, 35, 40


def test_search_order_keeps_the_given_order_for_global_searches():
    plan, operators = _plan(1), point_group("C1", device="cpu").operators
    state = dataclasses.replace(_state(), local_searches=False)
    assert search_order(plan, state, operators, _angles(7)).tolist() == list(range(7))
