"""The files an auto-refine run writes (REFINE_SPEC §3); ``--continue`` from them: ``run_continue``.

Names for ``--o ROOT`` and iteration ``N`` (RELION's): ``ROOT_itNNN_half{1,2}_model.star``,
``ROOT_itNNN_half{1,2}_class001.mrc`` (and ``..._class001_unfil.mrc`` with
``--solvent_correct_fsc``), ``ROOT_itNNN_optimiser.star``, ``ROOT_itNNN_sampling.star``,
``ROOT_itNNN_data.star``, ``ROOT_itNNN_optimisation_set.star``; the final
iteration drops ``_itNNN`` and writes one joined ``ROOT_model.star`` with
``ROOT_class001.mrc`` and the unregularised ``ROOT_half{1,2}_class001_unfil.mrc``.
Names inside the files (``rlnReferenceImage``, ``rlnModelStarFile``...) are
written as the root was given, relative to the project directory, as RELION
writes them. Every file goes through ``io.write_star``/``io.write_mrc``
(whole or not at all). Block and label layouts: ``model_star`` and ``run_state``.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Shaped
from torch import Tensor

from cryorefine.io import (
    OptimisationSet,
    ParticleSet,
    write_atomically,
    write_mrc,
    write_optimisation_set,
    write_particles,
    write_star,
)
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.model_star import model_star_blocks
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.run_continue import ContinuedRun, last_finished_iteration, read_continue
from cryorefine.refine.run_state import optimiser_block, optimiser_comments, sampling_blocks

__all__ = [
    "ContinuedRun",
    "ParticleStatistics",
    "iteration_root",
    "last_finished_iteration",
    "read_continue",
    "write_data_star",
    "write_final_files",
    "write_iteration_files",
    "write_map",
    "write_model_star",
    "write_optimiser_star",
    "write_run_optimisation_set",
    "write_sampling_star",
]


_Column = Shaped[np.ndarray, " b"] | Shaped[Tensor, " b"]


def iteration_root(output_root: Path | str, iteration: int | None) -> str:
    """``ROOT_itNNN`` (three digits), or ``ROOT`` for the final files (``iteration`` None)."""
    return str(output_root) if iteration is None else f"{output_root}_it{iteration:03d}"


@dataclass(frozen=True)
class ParticleStatistics:
    """RELION's per-particle results of an iteration (one value per particle, file order).

    Written as ``rlnGroupNumber``, ``rlnClassNumber``, ``rlnNormCorrection``,
    ``rlnRandomSubset``, ``rlnLogLikeliContribution``,
    ``rlnMaxValueProbDistribution``, ``rlnNrOfSignificantSamples``; numpy
    arrays or tensors (on any device).
    """

    group_number: _Column
    class_number: _Column
    norm_correction: _Column
    half_set: _Column
    log_likelihood_contribution: _Column
    max_probability: _Column
    significant_samples: _Column


def _array(values: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def write_data_star(
    particles: ParticleSet,
    path: Path,
    *,
    angles_deg: np.ndarray | Tensor,
    origins_angst: np.ndarray | Tensor,
    statistics: ParticleStatistics,
) -> Path:
    """``ROOT_itNNN_data.star``: the particles with their poses and statistics (RELION 5's columns).

    ``origins_angst`` is ``(b, 3)`` (z written for 3D data and tilt series).
    Other blocks and columns of ``particles`` are kept (``io.write_particles``).
    """
    posed = particles.with_poses(
        angles_deg=_array(angles_deg).astype(np.float64),
        origins_angst=_array(origins_angst).astype(np.float64),
    )
    columns = {
        field.name: _array(getattr(statistics, field.name))
        for field in dataclasses.fields(statistics)
    }
    return write_particles(posed.with_columns(columns), path)


def write_map(path: Path | str, volume: Float[Tensor, "n n n"], *, pixel_size_angst: float) -> Path:
    """A map as RELION writes it (float32 MRC, voxel size in the header)."""
    return write_mrc(
        path, volume.detach().to("cpu", torch.float32).numpy(), voxel_size_angst=pixel_size_angst
    )


def write_model_star(
    path: Path | str,
    model: HalfSetModel,
    state: RefineState,
    options: RefineOptions,
    *,
    reference_image: str,
) -> Path:
    """A model file (``model_star.model_star_blocks``)."""
    return write_star(
        model_star_blocks(model, state, options, reference_image=reference_image), path
    )


def _write_with_comments(blocks: dict[str, object], path: Path | str, comments: list[str]) -> Path:
    def write(partial: Path) -> None:
        write_star(blocks, partial)
        partial.write_text("\n".join(comments) + "\n" + partial.read_text())

    return write_atomically(path, write)


def write_optimiser_star(
    path: Path | str,
    state: RefineState,
    options: RefineOptions,
    *,
    model_files: tuple[str, ...],
    data_file: str,
    sampling_file: str,
    final: bool = False,
) -> Path:
    """An optimiser file with its comment lines (``run_state.optimiser_block``)."""
    block = optimiser_block(
        state,
        options,
        model_files=model_files,
        data_file=data_file,
        sampling_file=sampling_file,
        final=final,
    )
    return _write_with_comments(
        {"optimiser_general": block}, path, optimiser_comments(state, options)
    )


def write_sampling_star(
    path: Path | str,
    state: RefineState,
    options: RefineOptions,
    *,
    rot_tilt_deg: Float[Tensor, "m 2"],
    pixel_size_angst: float,
    translations_3d: bool,
) -> Path:
    """A sampling file (``run_state.sampling_blocks``)."""
    blocks = sampling_blocks(
        state,
        options,
        rot_tilt_deg=rot_tilt_deg,
        pixel_size_angst=pixel_size_angst,
        translations_3d=translations_3d,
    )
    return write_star(blocks, path)


def _output_root(options: RefineOptions) -> Path:
    if options.output_root is None:
        raise ValueError("options.output_root (--o) is needed to name the output files")
    return options.output_root


def write_iteration_files(
    state: RefineState,
    options: RefineOptions,
    models: tuple[HalfSetModel, HalfSetModel],
    *,
    rot_tilt_deg: Float[Tensor, "m 2"],
    translations_3d: bool,
    unfiltered: tuple[Tensor, Tensor] | None = None,
) -> list[Path]:
    """Half maps, half models, optimiser and sampling files of iteration ``state.iteration``.

    ``unfiltered``: the unregularised half maps (``--solvent_correct_fsc``).
    The data file (``write_data_star``) and optimisation set are the caller's,
    to be written first: the optimiser file, written last, marks an iteration
    whose files are all there (``last_finished_iteration``).
    """
    root = iteration_root(_output_root(options), state.iteration)
    written: list[Path] = []
    model_files = []
    for model in models:
        half = f"{root}_half{model.half_set}"
        written.append(
            write_map(
                f"{half}_class001.mrc", model.reference, pixel_size_angst=model.pixel_size_angst
            )
        )
        if unfiltered is not None:
            volume = unfiltered[model.half_set - 1]
            written.append(
                write_map(
                    f"{half}_class001_unfil.mrc", volume, pixel_size_angst=model.pixel_size_angst
                )
            )
        model_files.append(f"{half}_model.star")
        written.append(
            write_model_star(
                model_files[-1], model, state, options, reference_image=f"{half}_class001.mrc"
            )
        )
    written += _sampling_then_optimiser(
        root,
        state,
        options,
        tuple(model_files),
        models[0].pixel_size_angst,
        rot_tilt_deg,
        translations_3d=translations_3d,
        final=False,
    )
    return written


def write_final_files(
    state: RefineState,
    options: RefineOptions,
    model: HalfSetModel,
    *,
    unfiltered: tuple[Tensor, Tensor],
    rot_tilt_deg: Float[Tensor, "m 2"],
    translations_3d: bool,
) -> list[Path]:
    """``ROOT_class001.mrc``, ``ROOT_model.star``, unfil half maps, optimiser and sampling files."""
    root = iteration_root(_output_root(options), None)
    pixel = model.pixel_size_angst
    written = [write_map(f"{root}_class001.mrc", model.reference, pixel_size_angst=pixel)]
    for half, volume in enumerate(unfiltered, start=1):
        written.append(
            write_map(f"{root}_half{half}_class001_unfil.mrc", volume, pixel_size_angst=pixel)
        )
    written.append(
        write_model_star(
            f"{root}_model.star", model, state, options, reference_image=f"{root}_class001.mrc"
        )
    )
    written += _sampling_then_optimiser(
        root,
        state,
        options,
        (f"{root}_model.star",),
        pixel,
        rot_tilt_deg,
        translations_3d=translations_3d,
        final=True,
    )
    return written


def _sampling_then_optimiser(
    root: str,
    state: RefineState,
    options: RefineOptions,
    model_files: tuple[str, ...],
    pixel_size_angst: float,
    rot_tilt_deg: Float[Tensor, "m 2"],
    *,
    translations_3d: bool,
    final: bool,
) -> list[Path]:
    """The sampling file, then the optimiser file: its presence marks a complete set of files."""
    sampling = write_sampling_star(
        f"{root}_sampling.star",
        state,
        options,
        rot_tilt_deg=rot_tilt_deg,
        pixel_size_angst=pixel_size_angst,
        translations_3d=translations_3d,
    )
    optimiser = write_optimiser_star(
        f"{root}_optimiser.star",
        state,
        options,
        model_files=model_files,
        data_file=f"{root}_data.star",
        sampling_file=f"{root}_sampling.star",
        final=final,
    )
    return [sampling, optimiser]


def write_run_optimisation_set(
    optimisation_set: OptimisationSet | None,
    path: Path | str,
    *,
    data_file: str,
    options: RefineOptions,
) -> Path:
    """``ROOT[_itNNN]_optimisation_set.star``: the input set, particles replaced by ``data_file``.

    Without an input set, a new one names the data file and the tomograms and
    trajectories of the options (RELION writes those three).
    """
    base = optimisation_set or OptimisationSet(
        tomograms_file=options.tomograms, trajectories_file=options.trajectories
    )
    return write_optimisation_set(base.replace(particles_file=Path(data_file)), path)
