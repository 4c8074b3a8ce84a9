"""The files of one iteration (or of the final one), and its log line."""

import logging
from pathlib import Path

import numpy as np
from torch import Tensor

from cryorefine.geometry import angular_step_deg, pixel_rot_tilt_deg
from cryorefine.io import OptimisationSet, ParticleSet
from cryorefine.likelihood import OrientationGrid
from cryorefine.refine.angdist import write_angdist_bild
from cryorefine.refine.half_pass import PoseUpdate
from cryorefine.refine.initialise import RefineInputs
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.run_files import (
    ParticleStatistics,
    iteration_root,
    write_data_star,
    write_final_files,
    write_iteration_files,
    write_run_optimisation_set,
)

__all__ = [
    "apply_poses",
    "iteration_log_line",
    "particle_statistics",
    "write_final",
    "write_iteration",
]

logger = logging.getLogger(__name__)


def _data_and_set(
    root: str,
    particles: ParticleSet,
    statistics: ParticleStatistics,
    optimisation_set: OptimisationSet | None,
    options: RefineOptions,
) -> None:
    data_file = f"{root}_data.star"
    write_data_star(
        particles,
        Path(data_file),
        angles_deg=particles.angles_deg(),
        origins_angst=particles.origins_angst(),
        statistics=statistics,
    )
    if optimisation_set is not None:
        write_run_optimisation_set(
            optimisation_set, f"{root}_optimisation_set.star", data_file=data_file, options=options
        )


def _angdist(path: str, model: HalfSetModel, grid: OrientationGrid) -> None:
    """``*_class001_angdist.bild`` of a model's orientation distribution, if it has one."""
    if model.orientation_pdf is None:
        return
    pdf = model.orientation_pdf.detach().cpu().numpy()
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, grid.pixels.cpu()).numpy()
    if pdf.shape[0] != rot_tilt.shape[0]:  # the order changed after the E-step: not yet summed
        return
    write_angdist_bild(
        path,
        pdf,
        rot_tilt,
        radius_angst=model.ori_size * model.pixel_size_angst / 2,
        angular_step_deg=angular_step_deg(grid.healpix_order),
    )


def write_iteration(
    state: RefineState,
    options: RefineOptions,
    models: tuple[HalfSetModel, HalfSetModel],
    particles: ParticleSet,
    statistics: ParticleStatistics,
    grid: OrientationGrid,
    *,
    optimisation_set: OptimisationSet | None,
    unfiltered: tuple[Tensor, Tensor] | None,
    ndim: int,
) -> None:
    """``run_itNNN_*`` files (REFINE_SPEC §3); the optimiser file, which ``--continue`` reads,
    comes last, so that it marks a whole iteration."""
    root = iteration_root(options.output_root or Path("run"), state.iteration)
    _data_and_set(root, particles, statistics, optimisation_set, options)
    write_iteration_files(
        state,
        options,
        models,
        rot_tilt_deg=pixel_rot_tilt_deg(grid.healpix_order, grid.pixels.cpu()),
        translations_3d=ndim == 3,
        unfiltered=unfiltered,
    )
    for model in models if state.iteration > 0 else ():  # iteration 0 has no posterior yet
        _angdist(f"{root}_half{model.half_set}_class001_angdist.bild", model, grid)


def write_final(
    state: RefineState,
    options: RefineOptions,
    model: HalfSetModel,
    particles: ParticleSet,
    statistics: ParticleStatistics,
    grid: OrientationGrid,
    *,
    optimisation_set: OptimisationSet | None,
    unfiltered: tuple[Tensor, Tensor],
    ndim: int,
) -> None:
    """The final ``run_*`` files (REFINE_SPEC §3)."""
    write_final_files(
        state,
        options,
        model,
        unfiltered=unfiltered,
        rot_tilt_deg=pixel_rot_tilt_deg(grid.healpix_order, grid.pixels.cpu()),
        translations_3d=ndim == 3,
    )
    root = iteration_root(options.output_root or Path("run"), None)
    _angdist(f"{root}_class001_angdist.bild", model, grid)
    _data_and_set(root, particles, statistics, optimisation_set, options)


def iteration_log_line(state: RefineState, pixel_size_angst: float, seconds: float) -> str:
    """One ``key=value`` line per iteration (STYLE.md 2.9)."""
    resolution = (
        1.0 / state.current_resolution_inv_angst
        if state.current_resolution_inv_angst > 0
        else float("inf")
    )
    range_px, step_px = state.offset_px(pixel_size_angst)
    return (
        f"iter={state.iteration:03d} resolution_angst={resolution:.2f} "
        f"current_size={state.current_size} coarse_size={state.coarse_size} "
        f"healpix_order={state.healpix_order} local_searches={int(state.local_searches)} "
        f"offset_range_px={range_px:.2f} offset_step_px={step_px:.2f} "
        f"acc_rot_deg={state.acc_rot_deg:.2f} acc_trans_angst={state.acc_trans_angst:.2f} "
        f"changes_orientations_deg={state.changes_orientations_deg:.2f} "
        f"changes_offsets_angst={state.changes_offsets_angst:.2f} "
        f"converged={int(state.has_converged)} seconds={seconds:.1f}"
    )


def particle_statistics(
    particles: ParticleSet,
    half_sets: np.ndarray,
    pmax: np.ndarray,
    significant: np.ndarray,
    log_likelihood: np.ndarray,
    scale_group: np.ndarray | None = None,
) -> ParticleStatistics:
    """RELION's per-particle labels of run_data.star (``scale_group`` 0-based, or all 1)."""
    count = len(particles)
    groups = np.zeros(count, dtype=np.int64) if scale_group is None else scale_group
    return ParticleStatistics(
        group_number=groups.astype(np.int64) + 1,
        class_number=np.ones(count, dtype=np.int64),
        norm_correction=particles.norm_corrections(),
        half_set=half_sets.astype(np.int64),
        log_likelihood_contribution=log_likelihood,
        max_probability=pmax,
        significant_samples=significant.astype(np.int64),
    )


def apply_poses(
    inputs: RefineInputs, updates: list[PoseUpdate]
) -> tuple[ParticleSet, ParticleStatistics]:
    """The particle set with the half sets' new poses, and RELION's statistics columns."""
    angles = inputs.particles.angles_deg().copy()
    origins = inputs.particles.origins_angst().copy()
    pmax = np.zeros(len(inputs.particles))
    significant = np.zeros(len(inputs.particles), dtype=np.int64)
    log_likelihood = np.zeros(len(inputs.particles))
    for update in updates:
        angles[update.rows] = update.angles_deg
        origins[update.rows] = update.origins_angst
        pmax[update.rows] = update.pmax
        significant[update.rows] = update.significant_samples
        log_likelihood[update.rows] = update.log_likelihood
    particles = inputs.particles.with_poses(angles_deg=angles, origins_angst=origins)
    norms = [u for u in updates if u.norm_correction is not None]
    if norms:  # --norm: the new rlnNormCorrection go into the table, read next iteration
        values = particles.norm_corrections().copy()
        for update in norms:
            values[update.rows] = update.norm_correction
        particles = particles.with_columns({"norm_correction": values})
    return particles, particle_statistics(
        particles, inputs.half_sets, pmax, significant, log_likelihood, inputs.scale_group
    )
