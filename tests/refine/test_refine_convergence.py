"""Changes of the best poses and the convergence test of auto-refine (REFINE_SPEC §5.5)."""

import dataclasses
import math

import pytest
import torch

from cryorefine.geometry import euler_to_matrix, orientation_change_deg, point_group
from cryorefine.refine.convergence import (
    check_convergence,
    hidden_variable_change_sums,
    iteration_limit,
    update_hidden_variable_changes,
)
from cryorefine.refine.model import initial_refine_state
from cryorefine.refine.options import RefineOptions

OPTIONS = RefineOptions(particle_diameter=200.0)


def _state(**changes):
    state = initial_refine_state(OPTIONS, ori_size=64, pixel_size_angst=2.0)
    return dataclasses.replace(state, **changes)


def test_change_sums_match_a_loop_over_particles(device):
    gen = torch.Generator().manual_seed(31)
    old = torch.rand(6, 3, generator=gen, dtype=torch.float64) * 90
    new = old + torch.randn(6, 3, generator=gen, dtype=torch.float64) * 3
    old_origins = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 5
    new_origins = old_origins + torch.randn(6, 3, generator=gen, dtype=torch.float64)
    operators = point_group("C6", device=device).rotations
    sums = hidden_variable_change_sums(
        euler_to_matrix(old).to(device),
        euler_to_matrix(new).to(device),
        old_origins.to(device),
        new_origins.to(device),
        operators,
        old_classes=torch.tensor([1, 1, 1, 1, 1, 1], device=device),
        new_classes=torch.tensor([1, 2, 1, 1, 1, 2], device=device),
    )
    angle = sum(
        float(
            orientation_change_deg(
                euler_to_matrix(new[b]), euler_to_matrix(old[b]), operators.cpu()
            )
        )
        for b in range(6)
    )
    offset2 = sum(float(((new_origins[b] - old_origins[b]) ** 2).sum()) for b in range(6))
    # Sums of 6 float64 terms.
    torch.testing.assert_close(
        sums.cpu(),
        torch.tensor([angle, offset2, 2.0, 6.0], dtype=torch.float64),
        rtol=1e-13,
        atol=1e-13,
    )


def test_changes_are_means_and_the_rms_offset_per_axis():
    state = _state()
    sums = torch.tensor([30.0, 80.0, 1.0, 10.0], dtype=torch.float64)
    new = update_hidden_variable_changes(state, sums, oversampling=1)
    assert new.changes_orientations_deg == 3.0
    assert new.changes_offsets_angst == pytest.approx(math.sqrt(80 / 20), rel=1e-15)
    assert new.changes_classes == 0.1
    assert new.smallest_changes_orientations_deg == 3.0
    assert new.smallest_changes_offsets_angst == pytest.approx(2.0)
    assert new.smallest_changes_classes == 0  # ROUND(0.1)
    empty = update_hidden_variable_changes(
        state, torch.zeros(4, dtype=torch.float64), oversampling=1
    )
    assert (empty.changes_orientations_deg, empty.changes_offsets_angst, empty.changes_classes) == (
        0,
        0,
        0,
    )


def test_counter_goes_up_when_changes_stop_shrinking_or_are_small_against_the_sampling():
    # order 2, oversampling 1: fine angular step 7.5; offset step 4 A -> fine 2 A
    base = _state(
        smallest_changes_orientations_deg=5.0,
        smallest_changes_offsets_angst=1.5,
        smallest_changes_classes=0,
        nr_iter_wo_large_hidden_variable_changes=2,
    )

    def after(orient, offset):
        sums = torch.tensor([orient * 10, offset**2 * 20, 0.0, 10.0], dtype=torch.float64)
        return update_hidden_variable_changes(base, sums, oversampling=1)

    shrinking = after(4.0, 1.0)  # both shrink by more than 3 % and are above 40 % of the step
    assert shrinking.nr_iter_wo_large_hidden_variable_changes == 0
    stalled = after(4.9, 1.46)  # 1.03 x change >= smallest for both
    assert stalled.nr_iter_wo_large_hidden_variable_changes == 3
    small_steps = after(2.9, 0.79)  # below 40 % of 7.5 and of 2: counted although shrinking
    assert small_steps.nr_iter_wo_large_hidden_variable_changes == 3
    assert small_steps.smallest_changes_orientations_deg == 2.9


def test_convergence_needs_fine_sampling_no_gain_and_no_large_changes():
    ready = _state(
        has_fine_enough_angular_sampling=True,
        nr_iter_wo_resol_gain=1,
        nr_iter_wo_large_hidden_variable_changes=1,
    )
    assert check_convergence(ready, OPTIONS).has_converged
    for change in (
        {"has_fine_enough_angular_sampling": False},
        {"nr_iter_wo_resol_gain": 0},
        {"nr_iter_wo_large_hidden_variable_changes": 0},
    ):
        assert not check_convergence(dataclasses.replace(ready, **change), OPTIONS).has_converged
    ignore = dataclasses.replace(OPTIONS, auto_ignore_angles=True)
    moving = dataclasses.replace(ready, nr_iter_wo_large_hidden_variable_changes=0)
    assert check_convergence(moving, ignore).has_converged


def test_iteration_limit_is_auto_iter_max_in_auto_refine():
    assert iteration_limit(RefineOptions()) == 999
    assert iteration_limit(RefineOptions(auto_iter_max=12)) == 12
    assert iteration_limit(RefineOptions(auto_refine=False, iter=25)) == 25
