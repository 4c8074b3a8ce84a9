"""``simulate_dataset``: a complete simulated data set with its ground truth, in one folder.

Files written in ``options.output_dir`` (every one through the io writers, atomically):

``particles.star``
    The refinement input: optics and particles, no ``rlnAngle*``/``rlnOrigin*``,
    ``rlnRandomSubset`` kept.
``truth_particles.star``
    The same with the true ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/Y(/Z)Angst``.
``particles.mrcs`` (spa), ``subtomograms/`` (subtomo3d: ``particle_NNNNNN.mrc`` and
``_ctf.mrc``; relion4: ``TS_NNNN_data.mrc`` and ``_weights.mrc``)
    The particle images (``simulate.images``).
``truth.mrc``, ``reference.mrc``, ``mask.mrc``
    The truth on the particles' grid, the starting reference and the solvent mask
    (``simulate.truth``, ``simulate.reference``).
``tomograms.star``, ``optimisation_set.star`` (relion4)
    The tilt series of each particle (``simulate.tables``) and the optimisation
    set naming particles, tomograms, reference and mask. With real tilt series
    (``--tomograms``, ``--particles``; ``simulate.picks``) the particles are the
    picks, their files ``subtomograms/<tomogram>/<number>_data.mrc``, and
    tomograms.star is the real one in RELION-5 layout (``tilt_series/<name>.star``,
    with the projection rows the simulation used; ``simulate.picks_tables``).
``tilt_series/`` (tilt_series)
    Whole tilt series instead of particles: one MRC stack and one per-tilt table
    per tomogram, tomograms.star, the picks as particles.star and an optimisation
    set naming both (``simulate.tilt_series``); ``cryorefine extract`` makes
    particles of them.
``simulation.json``
    Every option, the SNR definition and its numbers, the reference's rotation,
    the tilt scheme and the conventions: what a test of a refinement needs.

Random numbers: four generators seeded from ``options.seed`` through
``numpy.random.SeedSequence``: particle parameters (drawn all at once), noise
(drawn chunk by chunk, in particle order), the reference's axis and the choice
of picks (tilt_series: where the particles lie). The same options give the same
files (MRC headers aside, which carry their creation time; float32 rounding aside
between chunk sizes); ``snr = inf`` gives the same particles without noise. How the
particles are computed and written, chunk by chunk: ``simulate.batches``.
"""

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryorefine.errors import InputError
from cryorefine.geometry import euler_to_matrix, matrix_to_euler, point_group
from cryorefine.io import make_output_folder, write_atomically, write_mrc
from cryorefine.simulate.batches import chunk_size, image_names, particle_count, simulate_particles
from cryorefine.simulate.options import SimulationOptions
from cryorefine.simulate.picks import load_picked_geometry
from cryorefine.simulate.poses import draw_particles, tilt_scheme
from cryorefine.simulate.reference import make_mask, make_reference, reference_rotation
from cryorefine.simulate.summary import simulation_summary
from cryorefine.simulate.surface_frames import poses_in_frames
from cryorefine.simulate.tables import write_tables
from cryorefine.simulate.tilt_series import simulate_tilt_series
from cryorefine.simulate.truth import prepare_truth, signal_power

__all__ = ["MAX_BOX_SIZE", "SimulatedDataset", "simulate_dataset"]

logger = logging.getLogger(__name__)

#: Largest ``--box`` (pixels). The truth's projector (``PADDING_FACTOR`` 2) holds a real pad of
#: ``(2n)^3`` float32 and its half transform, about 64 n^3 bytes: 8.6 GB at 512, 69 GB at
#: 1024; symmetrising with a group that is not on the grid pads by 4 (about 512 n^3 bytes,
#: 8.6 GB at 256, 69 GB at 512). 512 covers the particle boxes of cryo-EM and tomography at
#: the sizes a simulation is useful at, and fits a GPU or host of 80-128 GB in the worst case.
MAX_BOX_SIZE = 512

#: Bytes per voxel of the truth's padded projector at padding 2 (real pad and half transform).
_PROJECTOR_BYTES_PER_VOXEL = 64


@dataclass(frozen=True)
class SimulatedDataset:
    """Where a simulated data set was written, and the numbers behind its noise.

    Attributes
    ----------
    particles_star, truth_particles_star, truth_map, reference_map, mask, summary_json
        Files in the output folder (module docstring).
    optimisation_set, tomograms_star
        relion4 only; ``None`` otherwise.
    signal_power
        ``S`` of ``SNR_DEFINITION``.
    noise_power
        ``N = S / snr`` per Fourier coefficient of one measurement (0 without noise).
    reference_rotation
        ``Q`` (active, 3x3 nested lists): ``reference(x) = truth_lowpassed(Q.T x)``.
    """

    particles_star: Path
    truth_particles_star: Path
    truth_map: Path
    reference_map: Path
    mask: Path
    summary_json: Path
    optimisation_set: Path | None
    tomograms_star: Path | None
    signal_power: float
    noise_power: float
    reference_rotation: list[list[float]]


def _check_box(box_size: int) -> None:
    """Refuse ``--box`` above ``MAX_BOX_SIZE`` before any memory is taken."""
    if box_size > MAX_BOX_SIZE:
        gigabytes = _PROJECTOR_BYTES_PER_VOXEL * box_size**3 / 1e9
        raise InputError(
            f"--box {box_size}: expected at most {MAX_BOX_SIZE} pixels; the padded Fourier "
            f"transform of the truth alone would take {gigabytes:.0f} GB (symmetrising it "
            "8 times more)"
        )


def _generators(seed: int) -> list[torch.Generator]:
    """Independent CPU generators: parameters, noise, the reference's axis, the picks."""
    children = np.random.SeedSequence(seed).spawn(4)
    states = [int(child.generate_state(1, dtype=np.uint64)[0]) for child in children]
    return [torch.Generator().manual_seed(state) for state in states]


def simulate_dataset(
    options: SimulationOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str = "cpu",
    chunk_particles: int | None = None,
) -> SimulatedDataset:
    """Simulate particles of ``options.data_format`` with ground truth (module docstring).

    Parameters
    ----------
    options
        Checked options (``SimulationOptions``).
    progress
        Called as ``progress(particles_done, n_particles)`` after each chunk.
    device
        Where the images are computed; random numbers come from CPU generators,
        so the draws do not depend on it.
    chunk_particles
        Particles per batch; ``None``: ``chunk_size(options, device)``. The data
        do not depend on it.

    Raises
    ------
    InputError
        A bad ``--map`` or ``--sym``, a ``--ref_rotation_deg`` too large for the group,
        a box above ``MAX_BOX_SIZE``, or an output folder that cannot be created.
    """
    _check_box(options.box_size)
    device = torch.device(device)
    out = options.output_dir
    group = point_group(options.symmetry, device=device, option="--sym")
    params_generator, noise_generator, axis_generator, picks_generator = _generators(options.seed)
    picked = None
    if options.uses_real_tilt_series:
        picked = load_picked_geometry(options, generator=picks_generator, device=device)
        options = picked.options
    truth, truth_info = prepare_truth(options, group, device=device)
    rotation, axis = reference_rotation(
        options.ref_rotation_deg, group.rotations.cpu(), generator=axis_generator
    )
    reference = make_reference(
        truth,
        rotation.to(device),
        pixel_size_angst=options.pixel_size_angst,
        lowpass_angst=options.ref_lowpass_angst,
    )
    mask = make_mask(reference)
    signal = signal_power(truth, ndim=3 if options.data_format == "subtomo3d" else 2)
    noise_power = 0.0 if options.noise_free else signal / options.snr
    draws = draw_particles(
        particle_count(options),
        max_offset_px=options.max_offset_px,
        defocus_range_angst=options.defocus_range_angst,
        three_d=options.is_tomography,
        generator=params_generator,
    )
    if picked is not None and picked.subtomogram_angles_deg is not None:
        count, spread = particle_count(options), options.normal_spread_deg
        rotations = euler_to_matrix(
            poses_in_frames(count, spread_deg=spread, generator=params_generator)
        )  # written as RELION's angles (tilt in 0 .. 180)
        draws = dataclasses.replace(
            draws, angles_deg=matrix_to_euler(rotations), rotations=rotations
        )
    scheme = None
    if options.is_tomography and picked is None:
        angles = torch.from_numpy(options.tilt_angles_deg())
        scheme = tilt_scheme(angles, dose_per_tilt_e_per_angst2=options.dose_per_tilt_e_per_angst2)
    make_output_folder(out, option="--o")
    logger.info(
        "simulating format=%s particles=%d box_px=%d pixel_angst=%g snr=%g signal_power=%.4g",
        options.data_format,
        particle_count(options),
        options.box_size,
        options.pixel_size_angst,
        options.snr,
        signal,
    )
    layout = None
    if options.data_format == "tilt_series":
        assert scheme is not None
        tomograms, optimisation, layout = simulate_tilt_series(
            options, truth, draws, scheme, noise_power, noise_generator=noise_generator,
            layout_generator=picks_generator, progress=progress,
        )  # fmt: skip
    else:
        simulate_particles(
            options,
            truth,
            draws,
            noise_power,
            scheme=scheme,
            picked=picked,
            generator=noise_generator,
            progress=progress,
            step=chunk_size(options, device) if chunk_particles is None else chunk_particles,
        )
    pixel = options.pixel_size_angst
    write_mrc(out / "truth.mrc", truth.cpu().numpy(), voxel_size_angst=pixel)
    write_mrc(out / "reference.mrc", reference.cpu().numpy(), voxel_size_angst=pixel)
    write_mrc(out / "mask.mrc", mask.cpu().numpy(), voxel_size_angst=pixel)
    if layout is None:
        tomograms, optimisation = write_tables(
            options, draws, scheme, picked, *image_names(options, picked)
        )
    summary = simulation_summary(
        options, truth_info, signal, noise_power, rotation, axis, group.name, scheme, picked
    )
    if layout is not None:
        summary["tilt_series"].update(layout)  # type: ignore[attr-defined]
    summary_path = out / "simulation.json"
    text = json.dumps(summary, indent=2) + "\n"

    def write_text(partial: Path) -> None:
        partial.write_text(text)

    write_atomically(summary_path, write_text)
    logger.info("written: %s", out)
    return SimulatedDataset(
        particles_star=out / "particles.star",
        truth_particles_star=out / "truth_particles.star",
        truth_map=out / "truth.mrc",
        reference_map=out / "reference.mrc",
        mask=out / "mask.mrc",
        summary_json=summary_path,
        optimisation_set=optimisation,
        tomograms_star=tomograms,
        signal_power=signal,
        noise_power=noise_power,
        reference_rotation=rotation.tolist(),
    )
