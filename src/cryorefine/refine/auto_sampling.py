"""Auto-sampling: when and how the angular and translational sampling become finer.

RELION's ``MlOptimiser::updateAngularSampling`` (REFINE_SPEC §5.2, §5.4), called
before the E-step of every iteration after the first, with the accuracies of
this iteration (``accuracy.estimate_accuracies``). With ``s`` the current
oversampled step, ``d`` the particle diameter (Angstrom) and ``res`` the current
resolution (1/Angstrom):

- proceed on resolution when ``--auto_resol_angles`` and ``360 / ceil(pi d res)
  < s`` and the next order is not the local-search order, or after an
  iteration without resolution gain;
- proceed on hidden variables with ``--auto_ignore_angles`` or after an
  iteration without large changes of the best poses;
- if both: if ``s < 0.75 acc_rot`` (or ``s`` below ``--maximum_angular_sampling``)
  the sampling is fine enough and nothing changes; otherwise the HEALPix order
  goes up by one (psi step halves), the translations are updated, the two
  counters reset to 0 and the smallest changes to 999 (classes 9999999), and
  from ``--auto_local_healpix_order`` on the search is local with
  ``sigma_rot = sigma_tilt = sigma_psi = 2 x`` the new fine step (entering order
  4 with oversampling 1: fine step 1.875, sigma 3.75 degrees).

Translations (Angstrom): step ``min(1.5, 0.75 acc_trans) 2**oversampling``, for
subtomograms and tilt series at least half the old step; range 5 (2D data) or
3 (3D data) times the RMS change of the offsets, at most 1.3 times the old
range, at least 1.5 steps; halved if above 4 steps, and if still above, the step
becomes range / 4; if the new step is coarser than the old one, both stay.
"""

import dataclasses
import math

from cryorefine.geometry import angular_step_deg
from cryorefine.refine.model import RefineState
from cryorefine.refine.options import RefineOptions

__all__ = ["MAX_ITERATIONS_WITHOUT_GAIN", "update_angular_sampling", "updated_translations"]

#: RELION's ``MAX_NR_ITER_WO_RESOL_GAIN`` and ``MAX_NR_ITER_WO_LARGE_HIDDEN_VARIABLE_CHANGES``.
MAX_ITERATIONS_WITHOUT_GAIN = 1


def updated_translations(
    state: RefineState, *, oversampling: int, data_dimensionality: int, is_tomo: bool
) -> tuple[float, float]:
    """New coarse ``(offset_step, offset_range)`` in Angstrom (module docstring).

    ``data_dimensionality`` 3 (subtomograms) or 2 (images, also 2D tilt
    stacks); ``is_tomo`` for tilt-series data, which take the 3D step rule but
    the 2D range factor, as RELION does.
    """
    old_step, old_range = state.offset_step_angst, state.offset_range_angst
    step = min(1.5, 0.75 * state.acc_trans_angst) * 2.0**oversampling
    if data_dimensionality == 3 or is_tomo:
        step = max(old_step / 2.0, step)
    factor = 5.0 if data_dimensionality == 2 else 3.0
    search = min(1.3 * old_range, factor * state.changes_offsets_angst)
    search = max(search, 1.5 * step)
    if search > 4.0 * step:
        search /= 2.0
    if search > 4.0 * step:
        step = search / 4.0
    if step > old_step:
        return old_step, old_range
    return step, search


def _proceed(state: RefineState, options: RefineOptions, old_step: float) -> bool:
    steps = math.ceil(math.pi * options.particle_diameter * state.current_resolution_inv_angst)
    resolution_step = 360.0 / steps if steps > 0 else math.inf
    on_resolution = (
        options.auto_resol_angles
        and resolution_step < old_step
        and state.healpix_order + 1 != options.auto_local_healpix_order
    ) or state.nr_iter_wo_resol_gain >= MAX_ITERATIONS_WITHOUT_GAIN
    on_hidden = (
        options.auto_ignore_angles
        or state.nr_iter_wo_large_hidden_variable_changes >= MAX_ITERATIONS_WITHOUT_GAIN
    )
    return on_resolution and on_hidden


def update_angular_sampling(
    state: RefineState, options: RefineOptions, *, data_dimensionality: int, is_tomo: bool
) -> RefineState:
    """RELION's auto-refine sampling update (module docstring); the state is returned unchanged
    when neither condition holds.

    When the HEALPix order changes, the caller resets the orientation pdf of
    both halves (``maximisation.uniform_orientation_pdf``) and rebuilds its grids.
    """
    oversampling = options.oversampling
    old_step = angular_step_deg(state.healpix_order, oversampling=oversampling)
    if not _proceed(state, options, old_step):
        return state
    fine_enough = (
        options.maximum_angular_sampling > 0 and old_step < options.maximum_angular_sampling
    ) or (
        old_step < 0.75 * state.acc_rot_deg
        and not (
            options.minimum_angular_sampling > 0 and old_step > options.minimum_angular_sampling
        )
    )
    if fine_enough:
        return dataclasses.replace(state, has_fine_enough_angular_sampling=True)
    step, search = updated_translations(
        state, oversampling=oversampling, data_dimensionality=data_dimensionality, is_tomo=is_tomo
    )
    order = state.healpix_order + 1
    fine_step = angular_step_deg(order, oversampling=oversampling)
    new = dataclasses.replace(
        state,
        has_fine_enough_angular_sampling=False,
        healpix_order=order,
        psi_step_deg=fine_step * 2.0**oversampling,
        offset_step_angst=step,
        offset_range_angst=search,
        nr_iter_wo_resol_gain=0,
        nr_iter_wo_large_hidden_variable_changes=0,
        smallest_changes_classes=9999999,
        smallest_changes_offsets_angst=999.0,
        smallest_changes_orientations_deg=999.0,
    )
    if order >= options.auto_local_healpix_order:
        sigma = 2.0 * fine_step
        new = dataclasses.replace(
            new, local_searches=True, sigma_rot_deg=sigma, sigma_tilt_deg=sigma, sigma_psi_deg=sigma
        )
    return new
