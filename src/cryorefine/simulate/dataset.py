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
``simulation.json``
    Every option, the SNR definition and its numbers, the reference's rotation,
    the tilt scheme and the conventions: what a test of a refinement needs.

Random numbers: four generators seeded from ``options.seed`` through
``numpy.random.SeedSequence``: particle parameters (drawn all at once), noise
(drawn chunk by chunk, in particle order), the reference's axis and the choice
of picks. The same options give the same files (MRC headers aside, which carry
their creation time; float32 rounding aside between chunk sizes); ``snr = inf``
gives the same particles without noise. How the particles are computed and
written, chunk by chunk: ``simulate.batches``.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryorefine.geometry import point_group
from cryorefine.io import write_atomically, write_mrc
from cryorefine.simulate.batches import chunk_size, image_names, particle_count, simulate_particles
from cryorefine.simulate.options import SimulationOptions
from cryorefine.simulate.picks import load_picked_geometry
from cryorefine.simulate.poses import draw_particles, tilt_scheme
from cryorefine.simulate.reference import make_mask, make_reference, reference_rotation
from cryorefine.simulate.summary import simulation_summary
from cryorefine.simulate.tables import write_tables
from cryorefine.simulate.truth import prepare_truth, signal_power

__all__ = ["SimulatedDataset", "simulate_dataset"]

logger = logging.getLogger(__name__)


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
        A bad ``--map`` or ``--sym``, or a ``--ref_rotation_deg`` too large for the group.
    """
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
    scheme = None
    if options.is_tomography and picked is None:
        angles = torch.from_numpy(options.tilt_angles_deg())
        scheme = tilt_scheme(angles, dose_per_tilt_e_per_angst2=options.dose_per_tilt_e_per_angst2)
    out.mkdir(parents=True, exist_ok=True)
    logger.info(
        "simulating format=%s particles=%d box_px=%d pixel_angst=%g snr=%g signal_power=%.4g",
        options.data_format,
        particle_count(options),
        options.box_size,
        options.pixel_size_angst,
        options.snr,
        signal,
    )
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
    tomograms, optimisation = write_tables(
        options, draws, scheme, picked, *image_names(options, picked)
    )
    summary = simulation_summary(
        options, truth_info, signal, noise_power, rotation, axis, group.name, scheme, picked
    )
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
