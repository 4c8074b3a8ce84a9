"""Auto-sampling: finer angles, translations, local searches (REFINE_SPEC §5.2, §5.4)."""

import dataclasses

import pytest

from cryorefine.refine.auto_sampling import update_angular_sampling, updated_translations
from cryorefine.refine.model import RefineState, initial_refine_state
from cryorefine.refine.options import RefineOptions

OPTIONS = RefineOptions(particle_diameter=200.0, auto_local_healpix_order=4, oversampling=1)


def _state(**changes) -> RefineState:
    state = initial_refine_state(OPTIONS, ori_size=64, pixel_size_angst=2.0)
    ready = {
        "nr_iter_wo_resol_gain": 1,
        "nr_iter_wo_large_hidden_variable_changes": 1,
        "acc_rot_deg": 1.0,
        "acc_trans_angst": 1.0,
        "changes_offsets_angst": 1.0,
        "current_resolution_inv_angst": 1 / 20.0,
    }
    return dataclasses.replace(state, **(ready | changes))


def test_entering_order_4_with_oversampling_1_switches_to_local_searches_of_sigma_3_75():
    state = _state(healpix_order=3, psi_step_deg=7.5)
    new = update_angular_sampling(state, OPTIONS, data_dimensionality=2, is_tomo=False)
    assert new.healpix_order == 4
    assert new.psi_step_deg == 3.75  # coarse psi step of order 4
    assert new.fine_angular_step_deg(1) == 1.875
    assert new.local_searches
    assert (new.sigma_rot_deg, new.sigma_tilt_deg, new.sigma_psi_deg) == (3.75, 3.75, 3.75)
    assert not new.has_fine_enough_angular_sampling


def test_finer_sampling_resets_the_counters_and_the_smallest_changes():
    state = _state(
        smallest_changes_offsets_angst=0.3,
        smallest_changes_orientations_deg=0.2,
        smallest_changes_classes=0,
    )
    new = update_angular_sampling(state, OPTIONS, data_dimensionality=2, is_tomo=False)
    assert new.healpix_order == 3
    assert new.psi_step_deg == 7.5
    assert not new.local_searches
    assert (new.nr_iter_wo_resol_gain, new.nr_iter_wo_large_hidden_variable_changes) == (0, 0)
    assert (new.smallest_changes_offsets_angst, new.smallest_changes_orientations_deg) == (
        999.0,
        999.0,
    )
    assert new.smallest_changes_classes == 9999999


def test_nothing_changes_until_both_resolution_and_hidden_variables_have_stalled():
    for counters in ((0, 1), (1, 0), (0, 0)):
        state = _state(
            nr_iter_wo_resol_gain=counters[0], nr_iter_wo_large_hidden_variable_changes=counters[1]
        )
        assert (
            update_angular_sampling(state, OPTIONS, data_dimensionality=2, is_tomo=False) == state
        )
    ignore = dataclasses.replace(OPTIONS, auto_ignore_angles=True)
    state = _state(nr_iter_wo_large_hidden_variable_changes=0)
    assert (
        update_angular_sampling(state, ignore, data_dimensionality=2, is_tomo=False).healpix_order
        == 3
    )


def test_auto_resol_angles_proceeds_for_a_finer_resolution_step_but_not_into_local_searches():
    options = dataclasses.replace(OPTIONS, auto_resol_angles=True)
    # 1/10 A and 200 A: ceil(pi * 20) = 63 steps -> 5.7 degrees < 7.5 (fine step of order 2)
    state = _state(nr_iter_wo_resol_gain=0, current_resolution_inv_angst=0.1)
    assert (
        update_angular_sampling(state, options, data_dimensionality=2, is_tomo=False).healpix_order
        == 3
    )
    # from order 3 the next order is the local one: wait for a stalled resolution
    # (1/5 A: ceil(pi * 40) = 126 steps -> 2.86 degrees < 3.75)
    state3 = dataclasses.replace(
        state, healpix_order=3, psi_step_deg=7.5, current_resolution_inv_angst=0.2
    )
    assert update_angular_sampling(state3, options, data_dimensionality=2, is_tomo=False) == state3
    coarse = _state(
        nr_iter_wo_resol_gain=0, current_resolution_inv_angst=1 / 60.0
    )  # 11 steps: 32.7 deg
    assert update_angular_sampling(coarse, options, data_dimensionality=2, is_tomo=False) == coarse


def test_sampling_finer_than_three_quarters_of_the_accuracy_is_fine_enough():
    state = _state(acc_rot_deg=10.1)  # fine step 7.5 < 0.75 * 10.1 = 7.575
    new = update_angular_sampling(state, OPTIONS, data_dimensionality=2, is_tomo=False)
    assert new == dataclasses.replace(state, has_fine_enough_angular_sampling=True)
    capped = dataclasses.replace(OPTIONS, maximum_angular_sampling=8.0)
    assert update_angular_sampling(
        _state(), capped, data_dimensionality=2, is_tomo=False
    ).has_fine_enough_angular_sampling
    floor = dataclasses.replace(OPTIONS, minimum_angular_sampling=5.0)  # 7.5 > 5: keep refining
    assert (
        update_angular_sampling(state, floor, data_dimensionality=2, is_tomo=False).healpix_order
        == 3
    )


@pytest.mark.parametrize(
    ("acc_trans", "changes", "old_step", "old_range", "dims", "tomo", "want"),
    [
        # step min(1.5, 0.75) * 2 = 1.5; range min(1.3 * 12, 5 * 1) = 5, not > 6 -> (1.5, 5)
        (1.0, 1.0, 4.0, 12.0, 2, False, (1.5, 5.0)),
        # 3D: step max(2 / 2, 1.5) = 1.5; range 3 * 1 = 3 >= 1.5 * 1.5 -> (1.5, 3)
        (1.0, 1.0, 2.0, 12.0, 3, False, (1.5, 3.0)),
        # step 0.3 * 2 = 0.6; 3D rule: max(4 / 2, 0.6) = 2; range max(3, 3) -> (2, 3)
        (0.4, 1.0, 4.0, 12.0, 3, False, (2.0, 3.0)),
        # tilt series: 3D step rule, 2D range factor 5: step 2, range 5 -> (2, 5)
        (0.4, 1.0, 4.0, 12.0, 2, True, (2.0, 5.0)),
        # large changes: range min(1.3 * 10, 5 * 4) = 13 > 4 * 1.5 -> 6.5 > 6 -> step 6.5 / 4
        (1.0, 4.0, 4.0, 10.0, 2, False, (6.5 / 4, 6.5)),
        # tiny changes: range at least 1.5 steps -> 2.25
        (1.0, 0.01, 4.0, 10.0, 2, False, (1.5, 2.25)),
        # new step coarser than the old one: keep both
        (1.0, 1.0, 1.0, 3.0, 2, False, (1.0, 3.0)),
    ],
)
def test_translations_follow_relions_rules(
    acc_trans, changes, old_step, old_range, dims, tomo, want
):
    state = _state(
        acc_trans_angst=acc_trans,
        changes_offsets_angst=changes,
        offset_step_angst=old_step,
        offset_range_angst=old_range,
    )
    step, search = updated_translations(
        state, oversampling=1, data_dimensionality=dims, is_tomo=tomo
    )
    assert (step, search) == pytest.approx(want, rel=1e-15)


def test_finer_sampling_stores_the_new_translations():
    state = _state(offset_step_angst=4.0, offset_range_angst=12.0)
    new = update_angular_sampling(state, OPTIONS, data_dimensionality=2, is_tomo=False)
    assert (new.offset_step_angst, new.offset_range_angst) == (1.5, 5.0)
    assert new.offset_px(2.0) == (2.5, 0.75)


def test_initial_state_starts_local_searches_when_the_first_order_is_already_local():
    options = dataclasses.replace(OPTIONS, healpix_order=4)
    state = initial_refine_state(options, ori_size=64, pixel_size_angst=2.0)
    assert state.local_searches
    assert state.sigma_rot_deg == 3.75
    given = initial_refine_state(
        dataclasses.replace(OPTIONS, sigma_tilt=10.0), ori_size=64, pixel_size_angst=2.0
    )
    assert given.local_searches
    assert (
        given.sigma_rot_deg,
        given.sigma_tilt_deg,
        given.sigma_psi_deg,
    ) == (0, 10, 0)
    assert (given.offset_range_angst, given.offset_step_angst) == (
        12.0,
        4.0,
    )  # 6 and 2 pixels of 2 A
