"""The E-step of an iteration: the half sets here, on this rank's rows, then combined.

For each half set the communicator gives this rank (both in one process),
``half_pass.run_half_set`` scores this rank's share of the half set's particles;
``Communicator.combine`` then sums the shares of each half set and brings both
halves' sums and every rank's pose updates here; each half's back-projector is
then symmetrised. The background noise seed of the iteration comes from
``--random_seed`` and the iteration (``particle_noise``), not from the run's
generator, so that every rank draws the same perturbations and noise.
Particles with NaN or infinity in their image or CTF volume are left out and
named once per run (``inputs.non_finite_rows``; ``half_pass``).
"""

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from cryorefine.fourier import symmetrise
from cryorefine.fourier.texture import reference_texture
from cryorefine.geometry import perturb_translations, translation_grid
from cryorefine.likelihood import ExpectationPlan, OrientationGrid, memory_budget
from cryorefine.refine.communicator import Communicator
from cryorefine.refine.half_pass import PoseUpdate, run_half_set
from cryorefine.refine.half_sums import HalfSetSums, empty_sums
from cryorefine.refine.initialise import RefineInputs
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.particle_noise import iteration_noise_seed

__all__ = ["default_batch_size", "e_step", "empty_pose_update", "expectation_plan"]

logger = logging.getLogger(__name__)


BATCH_BYTES_PER_VOXEL = 144
"""GPU memory a 3D particle of a batch holds while it is read, masked and scored, per voxel
of its box (measured on an H100, box 96: +21.3 GiB from 64 to 256 particles per batch, 135
bytes per voxel, rounded up). It is outside ``memory_budget``, which is taken before the
batches are read: a fifth of the card for the batch leaves the budget's share."""


def default_batch_size(ndim: int, ori_size: int, device: torch.device) -> int:
    """Particles per batch when ``--batch_size`` is 0.

    Larger batches spend less host time per particle (the launches and syncs of a
    batch's coarse pass and masking are per batch): on an H100, the tutorial-shaped
    job's E-step took 22.1 s with 64 particles per batch and 17.5 s with 256
    (2,000 particles, 4 iterations). 3D particles are volumes: on a GPU a batch
    takes at most a fifth of the card (``BATCH_BYTES_PER_VOXEL``), between 8 and
    256 particles; 256 at box 96 took the H100 to its limit. On the CPU, 8.
    2D particles: 256 on a GPU, 32 on the CPU.
    """
    if ndim != 3:
        return 256 if device.type == "cuda" else 32
    if device.type != "cuda":
        return 8
    total = torch.cuda.get_device_properties(device).total_memory
    fits = total // 5 // (BATCH_BYTES_PER_VOXEL * ori_size**3)
    return int(min(max(fits, 8), 256))


#: Seconds between two progress lines of one half set's E-step.
PROGRESS_INTERVAL_S = 10.0


def _progress_lines(iteration: int, half: int, start: float) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` that logs, at most every ``PROGRESS_INTERVAL_S``, the
    particles done, their rate and the time left of this half set's E-step."""
    last = [start]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] < PROGRESS_INTERVAL_S or done >= total:
            return
        last[0] = now
        rate = done / max(now - start, 1e-9)
        eta_seconds = (total - done) / max(rate, 1e-9)
        logger.info(
            "iter=%03d half_set=%d phase=e_step particles=%d/%d particles_per_second=%.1f "
            "eta_seconds=%.0f",
            iteration,
            half,
            done,
            total,
            rate,
            eta_seconds,
            extra={  # a redrawn bar on a terminal (cli.progress); this plain line elsewhere
                "progress": {
                    "iteration": iteration,
                    "half_set": half,
                    "phase": "E-step",
                    "done": done,
                    "total": total,
                    "particles_per_second": rate,
                    "eta_seconds": eta_seconds,
                }
            },
        )

    return progress


def expectation_plan(
    state: RefineState,
    options: RefineOptions,
    inputs: RefineInputs,
    grid: OrientationGrid,
    model: HalfSetModel,
    *,
    cc: bool,
    precision: str,
    device: torch.device,
) -> ExpectationPlan:
    """The sampling and sizes of one half set's E-step in this iteration."""
    range_px, step_px = state.offset_px(inputs.pixel_size_angst)
    translations = translation_grid(range_px, step_px, ndim=inputs.ndim, device=device)
    translations = perturb_translations(
        translations, perturbation=state.perturbation, offset_step_px=step_px
    )
    return ExpectationPlan(
        ori_size=inputs.ori_size,
        current_size=state.current_size,
        coarse_size=state.coarse_size,
        orientations=grid,
        translations_px=translations,
        offset_step_px=step_px,
        sigma2_offset_px2=model.sigma2_offset_angst2 / inputs.pixel_size_angst**2,
        oversampling=options.oversampling,
        adaptive_fraction=options.adaptive_fraction,
        padding_factor=options.pad,
        cross_correlation=cc,
        precision=precision,
        max_bytes=memory_budget(device),
    )


def empty_pose_update() -> PoseUpdate:
    """The pose update of no particle."""
    return PoseUpdate(
        rows=np.zeros(0, dtype=np.int64),
        angles_deg=np.zeros((0, 3)),
        origins_angst=np.zeros((0, 3)),
        pmax=np.zeros(0),
        significant_samples=np.zeros(0, dtype=np.int64),
        log_likelihood=np.zeros(0),
    )


def e_step(
    inputs: RefineInputs,
    options: RefineOptions,
    state: RefineState,
    models: tuple[HalfSetModel, HalfSetModel],
    references: list[torch.Tensor],
    grid: OrientationGrid,
    *,
    communicator: Communicator,
    cc: bool,
    precision: str,
    interpolation: str = "texture",
    batch_size: int,
    device: torch.device,
) -> tuple[tuple[HalfSetSums, HalfSetSums], list[PoseUpdate]]:
    """Both half sets' symmetrised sums and all particles' pose updates, on every rank.

    ``interpolation`` ``"texture"`` samples the references through the GPU's
    texture units where they can (``fourier.texture``), ``"exact"`` never.
    """
    noise_seed = iteration_noise_seed(options.random_seed, state.iteration)
    sums_by_half: dict[int, HalfSetSums] = {}
    updates_by_half: dict[int, PoseUpdate] = {}
    for half in communicator.halves_here():
        model = models[half - 1]
        rows = communicator.local_rows(
            half, np.flatnonzero(inputs.half_sets == half), block_size=batch_size
        )
        tic = time.perf_counter()
        if len(rows) == 0:
            sums_by_half[half] = empty_sums(
                model, grid.pixels.shape[0], padding_factor=options.pad, device=device
            )
            updates_by_half[half] = empty_pose_update()
        else:
            plan = expectation_plan(
                state, options, inputs, grid, model, cc=cc, precision=precision, device=device
            )
            reference = references[half - 1]
            sampling = reference_texture(reference) if interpolation == "texture" else nullcontext()
            with sampling:  # the texture is freed when the half set is done
                sums_by_half[half], updates_by_half[half] = run_half_set(
                    inputs.particles,
                    rows,
                    model,
                    state,
                    options,
                    plan,
                    optics_group=inputs.optics_group,
                    scale_group=inputs.scale_group,
                    operators=inputs.group.rotations,
                    reference_ft=reference,
                    batch_size=batch_size,
                    device=device,
                    noise_seed=noise_seed,
                    progress=_progress_lines(state.iteration, half, tic),
                    named_rows=inputs.non_finite_rows,
                    particle_cache=inputs.particle_cache,
                    ctf2_per_multiplicity=inputs.ctf2_per_multiplicity,
                )
        seconds = time.perf_counter() - tic
        rate = len(rows) / max(seconds, 1e-9)
        line = (
            f"iter={state.iteration:03d} half_set={half} particles={len(rows)} "
            f"e_step_seconds={seconds:.1f} particles_per_second={rate:.1f}"
        )
        if inputs.particle_cache is not None:  # what is held after this half set
            line += f" particle_files_held_mb={inputs.particle_cache.held_bytes / 1e6:.1f}"
        update = updates_by_half[half]
        updates_by_half[half] = replace(update, log_lines=(*update.log_lines, line))
    totals, updates = communicator.combine(sums_by_half, updates_by_half, iteration=state.iteration)
    if communicator.is_writer:  # every rank's lines, in rank order, in the writer's run.log
        for update in updates:
            for line in update.log_lines:
                logger.info("%s", line)
    operators = inputs.group.operators
    for sums in totals.values():
        sums.data, sums.weight = symmetrise(sums.data, sums.weight, operators.to(sums.weight.dtype))
    return (totals[1], totals[2]), updates
