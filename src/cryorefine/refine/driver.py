"""The auto-refine iteration driver (relion_refine --auto_refine --split_random_halves).

Per iteration (REFINE_SPEC §4.3): convergence check; image sizes; accuracies;
angular sampling; the E-step of each half set (``e_step``: each rank's share,
combined through the ``Communicator``); symmetrisation;
the low-resolution join; the gold-standard FSC; per half set the regularised
reconstruction with tau2 from the FSC, solvent flattening, the noise, offset and
orientation updates; the current resolution; the files of the iteration. The
converged iteration joins the halves, goes to Nyquist and writes the final
``run_*`` files. ``refine_run`` is what ``cryorefine refine`` calls; a user can
call it from Python with a ``RefineOptions``.
"""

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier import prepare_reference
from cryorefine.geometry import (
    asymmetric_unit_pixels,
    euler_to_matrix,
    next_perturbation,
    psi_angles_deg,
)
from cryorefine.likelihood import OrientationGrid, resolve_precision, working_dtypes
from cryorefine.refine.auto_sampling import update_angular_sampling
from cryorefine.refine.communicator import Communicator, SingleProcess
from cryorefine.refine.convergence import (
    check_convergence,
    hidden_variable_change_sums,
    iteration_limit,
    update_hidden_variable_changes,
)
from cryorefine.refine.e_step import default_batch_size, e_step
from cryorefine.refine.file_writer import FileWriter, on_host
from cryorefine.refine.half_frames import (
    axial_gauge,
    best_axial_turn_deg,
    best_rotation_deg,
    full_gauge,
    rotated_angles,
    rotated_map,
    turned_angles,
    turned_map,
)
from cryorefine.refine.half_models import accuracies
from cryorefine.refine.half_pass import PoseUpdate
from cryorefine.refine.half_set_maximisation import maximise_half_sets
from cryorefine.refine.initialise import RefineInputs, initial_models, load_inputs
from cryorefine.refine.iteration_files import (
    apply_poses,
    iteration_log_line,
    write_final,
    write_iteration,
)
from cryorefine.refine.maximisation import uniform_orientation_pdf
from cryorefine.refine.model import HalfSetModel, RefineState, initial_refine_state
from cryorefine.refine.options import RefineOptions, check_option_ranges
from cryorefine.refine.resolution import image_sizes
from cryorefine.refine.run_continue import continued_options
from cryorefine.refine.run_files import ParticleStatistics, read_continue
from cryorefine.timing import PhaseTimes

__all__ = ["refine_run"]

logger = logging.getLogger(__name__)


def _grid(state: RefineState, group, device: torch.device) -> OrientationGrid:
    pixels = asymmetric_unit_pixels(state.healpix_order, group)
    return OrientationGrid(
        healpix_order=state.healpix_order,
        pixels=pixels.to(device),
        psi_deg=psi_angles_deg(state.psi_step_deg, device=device),
        perturbation=state.perturbation,
    )


def _iteration(
    inputs: RefineInputs,
    options: RefineOptions,
    state: RefineState,
    models: tuple[HalfSetModel, HalfSetModel],
    *,
    device: torch.device,
    precision: str,
    interpolation: str,
    batch_size: int,
    generator: torch.Generator,
    communicator: Communicator,
    writer: FileWriter,
):
    """One iteration; returns the new inputs (poses), state, models and whether it was the last.
    Its files are written by ``writer`` while the next iteration runs (the last one's here)."""
    start = time.perf_counter()
    state = dataclasses.replace(state, iteration=state.iteration + 1)
    # Seeded per iteration: a run continued from iteration k draws what the uninterrupted one drew.
    generator.manual_seed(max(options.random_seed, 0) + state.iteration)
    state = check_convergence(state, options)
    final = state.has_converged
    cc = options.firstiter_cc and state.iteration == 1
    current, coarse = image_sizes(
        state,
        options=options,
        ori_size=inputs.ori_size,
        pixel_size_angst=inputs.pixel_size_angst,
        average_pmax=models[0].average_pmax,
    )
    state = dataclasses.replace(state, current_size=current, coarse_size=coarse)
    times = PhaseTimes(device)  # the iteration's parts, logged with its line
    if final and (axial_gauge(inputs.group) or full_gauge(inputs.group)):
        with times.phase("half_frames"):
            inputs, models = _half_set_2_in_half_1s_frame(inputs, models, state, communicator)
    # the projector works in the E-step's precision (the maps are float64 after an M-step)
    real_dtype = working_dtypes(precision)[0]
    with times.phase("references"):
        references = [
            prepare_reference(m.reference.to(device, real_dtype), padding_factor=options.pad)
            for m in models
        ]
    if not cc and state.iteration > 1:
        with times.phase("accuracy"):
            state = accuracies(
                state, inputs, options, models, references[0], device=device, generator=generator
            )
        order = state.healpix_order
        state = update_angular_sampling(
            state,
            options,
            data_dimensionality=inputs.ndim,
            is_tomo=inputs.particles.flavour.startswith("relion"),
        )
        if state.healpix_order != order:
            count = asymmetric_unit_pixels(state.healpix_order, inputs.group).shape[0]
            models = tuple(
                dataclasses.replace(m, orientation_pdf=uniform_orientation_pdf(count, device=None))
                for m in models
            )
    perturbation = next_perturbation(
        state.perturbation, factor=options.perturb, generator=generator
    )
    state = dataclasses.replace(state, perturbation=perturbation)
    grid = _grid(state, inputs.group, device)
    writer.start()  # the last iteration's files, while the E-step's host waits for the device
    with times.phase("e_step"):
        all_sums, updates = e_step(
            inputs, options, state, models, references, grid, communicator=communicator, cc=cc,
            precision=precision, interpolation=interpolation, batch_size=batch_size, device=device,
        )  # fmt: skip
    with times.phase("m_step"):
        state, models, unfiltered = maximise_half_sets(
            all_sums, models, state, options, inputs, grid,
            final=final, cc=cc, device=device, generator=generator,
        )  # fmt: skip
    with times.phase("poses"):
        inputs, state, statistics = _new_poses(inputs, state, options, updates, device)
    # Every rank computed the same state; the writer's is kept, so that no rounding
    # difference between devices can make the ranks' samplings part ways.
    state = communicator.same_everywhere(state)
    with times.phase("files"):  # the next iteration runs while these are written
        if communicator.is_writer and final:
            writer.wait()
            write_final(
                state, options, models[0], inputs.particles, statistics, grid,
                optimisation_set=inputs.optimisation_set, unfiltered=unfiltered, ndim=inputs.ndim,
            )  # fmt: skip
        elif communicator.is_writer:
            writer.submit(
                write_iteration, on_host(state), options, on_host(models), inputs.particles,
                statistics, on_host(grid), optimisation_set=inputs.optimisation_set,
                unfiltered=on_host(unfiltered) if options.solvent_correct_fsc else None,
                ndim=inputs.ndim,
            )  # fmt: skip
        communicator.barrier()
    parts = " ".join(f"{name}={seconds:.2f}" for name, seconds in times.seconds().items())
    logger.info(f"iter={state.iteration:03d} phase_seconds {parts}")
    logger.info(iteration_log_line(state, inputs.pixel_size_angst, time.perf_counter() - start))
    return inputs, state, models, final


def _half_set_2_in_half_1s_frame(
    inputs: RefineInputs,
    models: tuple[HalfSetModel, HalfSetModel],
    state: RefineState,
    communicator: Communicator,
) -> tuple[RefineInputs, tuple[HalfSetModel, HalfSetModel]]:
    """Half set 2's reference and poses turned about the symmetry axis (C_n), or rotated
    (C1), onto half set 1's frame before the final iteration joins them
    (``refine.half_frames``)."""
    fsc = models[0].fsc.cpu()
    below = torch.nonzero(fsc[1:] < 0.143)
    shells = int(below[0, 0]) if below.numel() else fsc.shape[0] - 1  # shells 1.. above 0.143
    shells = max(shells, 2)  # shells 1 and 2 at least, even where the FSC falls below first
    half_2 = inputs.half_sets == 2
    angles = np.array(inputs.particles.angles_deg())
    if axial_gauge(inputs.group):
        turn = communicator.same_everywhere(
            best_axial_turn_deg(models[0].reference, models[1].reference, shells=shells)
        )
        logger.info(
            f"iter={state.iteration:03d} half_set_2_turn_deg={turn:.3f} fsc_shells={shells}: "
            "half set 2's map and poses turned about the symmetry axis onto half set 1's "
            "frame before the halves are joined"
        )
        angles[half_2] = turned_angles(angles[half_2], turn)
        second = dataclasses.replace(models[1], reference=turned_map(models[1].reference, turn))
    else:
        rotation = communicator.same_everywhere(
            best_rotation_deg(models[0].reference, models[1].reference, shells=shells)
        )
        about = " ".join(f"{axis}={value:.3f}" for axis, value in zip("xyz", rotation, strict=True))
        logger.info(
            f"iter={state.iteration:03d} half_set_2_rotation_deg {about} fsc_shells={shells}: "
            "half set 2's map and poses rotated onto half set 1's frame before the halves are "
            "joined"
        )
        angles[half_2] = rotated_angles(angles[half_2], rotation)
        reference = rotated_map(models[1].reference, rotation)
        second = dataclasses.replace(models[1], reference=reference)
    particles = inputs.particles.with_poses(angles_deg=angles)
    return dataclasses.replace(inputs, particles=particles), (models[0], second)


def _new_poses(
    inputs: RefineInputs,
    state: RefineState,
    options: RefineOptions,
    updates: list[PoseUpdate],
    device: torch.device,
) -> tuple[RefineInputs, RefineState, ParticleStatistics]:
    """The particles with the E-step's poses, the state with the changes of the hidden
    variables (RELION's convergence measures), and the poses' statistics for the files."""
    old = inputs.particles
    particles, statistics = apply_poses(inputs, updates)
    ndim = inputs.ndim
    # Particles left out (NaN or infinity) kept their poses: they are not "no change".
    scored = np.ones(len(old), dtype=bool)
    for update in updates:
        scored[update.left_out] = False
    changes = hidden_variable_change_sums(
        _matrices(old.angles_deg()[scored], device),
        _matrices(particles.angles_deg()[scored], device),
        torch.as_tensor(old.origins_angst()[scored, :ndim], device=device),
        torch.as_tensor(particles.origins_angst()[scored, :ndim], device=device),
        inputs.group.rotations,
    )
    state = update_hidden_variable_changes(state, changes, oversampling=options.oversampling)
    return dataclasses.replace(inputs, particles=particles), state, statistics


def _check_continued_groups(model: tuple[str, ...], particles: tuple[str, ...], path: Path) -> None:
    """The continued model's scale groups must be the particles' (RELION's group names)."""
    if tuple(model) != tuple(particles):
        raise InputError(
            f"{path}: its model has the scale groups {list(model)[:5]} "
            f"({len(model)}), the particles {list(particles)[:5]} ({len(particles)}); "
            "expected the same groups (rlnGroupName, micrograph or tomogram names): "
            "continue a run written by this version, or start a new one"
        )


def refine_run(
    options: RefineOptions,
    *,
    device: torch.device,
    continue_from: Path | None = None,
    precision: str = "auto",
    interpolation: str = "texture",
    batch_size: int = 0,
    communicator: Communicator | None = None,
    given_options: frozenset[str] | None = None,
) -> tuple[HalfSetModel, RefineState]:
    """Run (or continue) a gold-standard auto-refinement; returns the final model and state.

    ``communicator`` (default ``SingleProcess``) shares the E-step between ranks;
    every rank returns the same model and state, only its writer writes files.
    With ``continue_from`` the options are the continued run's, except those that
    ``run_continue.continued_options`` lets the command line (``given_options``:
    the names given on it, or None for those that differ from the defaults) change.
    ``precision`` is the E-step's arithmetic (``likelihood.scores``); ``"auto"`` is
    tf32 on a GPU and float32 on the CPU (``likelihood.resolve_precision``); on a GPU
    ``interpolation`` ``"texture"`` samples the references by the texture units
    (``fourier.texture``), ``"exact"`` by the float32 kernel.

    Raises
    ------
    InputError
        Any input that is not what RELION's relion_refine expects, before the first iteration.
    """
    if interpolation not in ("texture", "exact"):
        raise ValueError(f"interpolation must be 'texture' or 'exact', got {interpolation!r}")
    if precision == "auto":
        precision = resolve_precision(precision, device)
        logger.info("E-step arithmetic: %s (--precision auto on this device)", precision)
    working_dtypes(precision)  # an unknown precision is refused before anything runs
    communicator = communicator or SingleProcess()
    check_option_ranges(options)
    state: RefineState | None = None
    models = None
    if continue_from is not None:
        continued = read_continue(continue_from, device=device)
        # As RELION: the run's own options, with those a --continue command line may change
        options = continued_options(continued, options, given_options)
        state, models = continued.state, tuple(continued.half_models)
        logger.info("continuing from %s (iteration %d)", continue_from, state.iteration)
    inputs = load_inputs(options, device=device)
    if models is not None and continue_from is not None:
        _check_continued_groups(models[0].group_names, inputs.scale_group_names, continue_from)
    generator = torch.Generator(device="cpu").manual_seed(
        max(options.random_seed, 0) + (state.iteration if state else 0)
    )
    if state is None or models is None:
        state = initial_refine_state(
            options, ori_size=inputs.ori_size, pixel_size_angst=inputs.pixel_size_angst
        )
        count = asymmetric_unit_pixels(state.healpix_order, inputs.group).shape[0]
        models = initial_models(inputs, options, nr_directions=count, device=device)
        grid = _grid(state, inputs.group, device)
        particles, statistics = apply_poses(inputs, [])
        if communicator.is_writer:
            write_iteration(
                state,
                options,
                models,
                particles,
                statistics,
                grid,
                optimisation_set=inputs.optimisation_set,
                unfiltered=None,
                ndim=inputs.ndim,
            )
        communicator.barrier()
    if batch_size <= 0:
        # one size on every rank: it is also the block size that deals rows to ranks
        batch_size = communicator.same_everywhere(
            default_batch_size(inputs.ndim, inputs.ori_size, device)
        )
    limit = iteration_limit(options)
    final = False
    # on a GPU the E-step's host sets the pace, and a writing thread would take its turns
    with FileWriter(in_process=device.type == "cuda" and communicator.is_writer) as writer:
        while not final:
            if state.iteration >= limit:
                logger.warning("stopping at the iteration limit (%d) before convergence", limit)
                break
            inputs, state, models, final = _iteration(
                inputs, options, state, models, device=device, precision=precision,
                interpolation=interpolation, batch_size=batch_size, generator=generator,
                communicator=communicator, writer=writer,
            )  # fmt: skip
    return models[0], state


def _matrices(angles: np.ndarray, device: torch.device) -> Tensor:
    return euler_to_matrix(torch.as_tensor(angles, device=device))
