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
    set naming particles, tomograms, reference and mask.
``simulation.json``
    Every option, the SNR definition and its numbers, the reference's rotation,
    the tilt scheme and the conventions: what a test of a refinement needs.

Random numbers: three generators seeded from ``options.seed`` through
``numpy.random.SeedSequence``: particle parameters (drawn all at once), noise
(drawn chunk by chunk, in particle order) and the reference's axis. The same
options give the same files (MRC headers aside, which carry their creation
time); ``snr = inf`` gives the same particles without noise.
"""

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryorefine.fourier.projector import prepare_reference
from cryorefine.geometry import point_group
from cryorefine.io import (
    OptimisationSet,
    write_atomically,
    write_mrc,
    write_optimisation_set,
    write_star,
)
from cryorefine.simulate.images import pseudo_subtomograms, spa_images, subtomograms
from cryorefine.simulate.options import SimulationOptions
from cryorefine.simulate.poses import ParticleDraws, TiltScheme, draw_particles, tilt_scheme
from cryorefine.simulate.reference import make_mask, make_reference, reference_rotation
from cryorefine.simulate.summary import simulation_summary
from cryorefine.simulate.tables import (
    optics_table,
    particle_table,
    tomogram_blocks,
    tomogram_names,
    truth_columns,
)
from cryorefine.simulate.truth import PADDING_FACTOR, prepare_truth, signal_power

__all__ = ["CHUNK_SIZE", "SimulatedDataset", "chunk_size", "simulate_dataset"]

logger = logging.getLogger(__name__)

#: Particles simulated per batch at box 64 or less (3D boxes above 64: fewer, ``chunk_size``).
CHUNK_SIZE = 32


def chunk_size(options: SimulationOptions) -> int:
    """Particles per batch: ``CHUNK_SIZE``, cut by ``(64 / n)^3`` for 3D boxes above 64 pixels.

    A function of the options only, so the noise stream (drawn chunk by chunk) is
    fixed by the options and the seed. Measured peak resident memory of a
    1000-particle relion4 run at box 64 (chunks of 32): 1.2 GB.
    """
    if not options.is_tomography or options.box_size <= 64:
        return CHUNK_SIZE
    return max(1, (CHUNK_SIZE * 64**3) // options.box_size**3)


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


def _generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """Independent CPU generators for parameters, noise and the reference's axis."""
    children = np.random.SeedSequence(seed).spawn(3)
    states = [int(child.generate_state(1, dtype=np.uint64)[0]) for child in children]
    params, noise, axis = (torch.Generator().manual_seed(state) for state in states)
    return params, noise, axis


def _image_names(options: SimulationOptions) -> tuple[list[str], list[str] | None]:
    count = options.n_particles
    if options.data_format == "spa":
        return [f"{i:06d}@particles.mrcs" for i in range(1, count + 1)], None
    if options.data_format == "subtomo3d":
        stems = [f"subtomograms/particle_{i:06d}" for i in range(1, count + 1)]
        return [f"{s}.mrc" for s in stems], [f"{s}_ctf.mrc" for s in stems]
    stems = [f"subtomograms/{name}" for name in tomogram_names(count)]
    return [f"{s}_data.mrc" for s in stems], [f"{s}_weights.mrc" for s in stems]


def _chunk(
    options: SimulationOptions,
    reference_ft: torch.Tensor,
    draws: ParticleDraws,
    rows: slice,
    scheme: TiltScheme | None,
    noise_power: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images of particles ``rows``, and their 3D CTF (subtomo3d) or weights (relion4)."""
    n, pixel, bfactor = options.box_size, options.pixel_size_angst, options.bfactor_angst2
    device = reference_ft.device
    rotations = draws.rotations[rows].to(device, torch.float32)
    origins = draws.origins_px[rows].to(device, torch.float32)
    defocus = draws.defocus_angst[rows].to(device, torch.float32)
    if options.data_format == "spa":
        images = spa_images(
            reference_ft, rotations, origins[:, :2], defocus,
            pixel_size_angst=pixel, box_size=n, noise_sigma=math.sqrt(noise_power) * n,
            bfactor_angst2=bfactor, generator=generator,
        )  # fmt: skip
        return images, None
    assert scheme is not None
    matrices = scheme.matrices.to(device)
    dose = scheme.pre_exposure_e_per_angst2.to(device)
    if options.data_format == "subtomo3d":
        return subtomograms(
            reference_ft, rotations, origins, defocus, matrices, dose,
            pixel_size_angst=pixel, box_size=n, noise_sigma=math.sqrt(noise_power * n**3),
            bfactor_angst2=bfactor, generator=generator,
        )  # fmt: skip
    return pseudo_subtomograms(
        reference_ft, rotations, origins, defocus, matrices, dose,
        pixel_size_angst=pixel, box_size=n, tilt_noise_power=noise_power,
        bfactor_angst2=bfactor, generator=generator,
    )  # fmt: skip


def _simulate_images(
    options: SimulationOptions,
    truth: torch.Tensor,
    draws: ParticleDraws,
    scheme: TiltScheme | None,
    noise_power: float,
    *,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Simulate chunk by chunk (``chunk_size``) and write every image file."""
    n, pixel, out = options.box_size, options.pixel_size_angst, options.output_dir
    reference_ft = prepare_reference(
        truth.to(torch.float32), padding_factor=PADDING_FACTOR, gridding_correction="separable"
    )
    names, ctf_names = _image_names(options)
    stack = np.zeros((options.n_particles, n, n), dtype=np.float32)
    if options.is_tomography:
        (out / "subtomograms").mkdir(exist_ok=True)
    # RELION writes the CTF^2 || multiplicity volume with voxel size 1 / pixel.
    ctf_voxel = 1.0 / pixel if options.data_format == "relion4" else pixel
    step = chunk_size(options)
    for start in range(0, options.n_particles, step):
        rows = slice(start, min(start + step, options.n_particles))
        images, ctfs = _chunk(options, reference_ft, draws, rows, scheme, noise_power, generator)
        if options.is_tomography:
            _write_volumes(out, names[rows], images, pixel)
            assert ctfs is not None
            assert ctf_names is not None
            _write_volumes(out, ctf_names[rows], ctfs, ctf_voxel)
        else:
            stack[rows] = images.cpu().numpy()
        if progress is not None:
            progress(rows.stop, options.n_particles)
    if not options.is_tomography:
        write_mrc(out / "particles.mrcs", stack, voxel_size_angst=pixel)


def _write_volumes(folder: Path, names: list[str], volumes: torch.Tensor, pixel: float) -> None:
    values = volumes.detach().cpu().numpy()
    for name, volume in zip(names, values, strict=True):
        write_mrc(folder / name, volume, voxel_size_angst=pixel)


def simulate_dataset(
    options: SimulationOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str = "cpu",
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

    Raises
    ------
    InputError
        A bad ``--map`` or ``--sym``, or a ``--ref_rotation_deg`` too large for the group.
    """
    device = torch.device(device)
    out = options.output_dir
    group = point_group(options.symmetry, device=device, option="--sym")
    params_generator, noise_generator, axis_generator = _generators(options.seed)
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
        options.n_particles,
        max_offset_px=options.max_offset_px,
        defocus_range_angst=options.defocus_range_angst,
        three_d=options.is_tomography,
        generator=params_generator,
    )
    scheme = None
    if options.is_tomography:
        tilts = torch.from_numpy(options.tilt_angles_deg())
        scheme = tilt_scheme(tilts, dose_per_tilt_e_per_angst2=options.dose_per_tilt_e_per_angst2)
    out.mkdir(parents=True, exist_ok=True)
    logger.info(
        "simulating format=%s particles=%d box_px=%d pixel_angst=%g snr=%g signal_power=%.4g",
        options.data_format,
        options.n_particles,
        options.box_size,
        options.pixel_size_angst,
        options.snr,
        signal,
    )
    _simulate_images(
        options, truth, draws, scheme, noise_power, generator=noise_generator, progress=progress
    )
    pixel = options.pixel_size_angst
    write_mrc(out / "truth.mrc", truth.cpu().numpy(), voxel_size_angst=pixel)
    write_mrc(out / "reference.mrc", reference.cpu().numpy(), voxel_size_angst=pixel)
    write_mrc(out / "mask.mrc", mask.cpu().numpy(), voxel_size_angst=pixel)
    tomograms, optimisation = _write_tables(options, draws, scheme)
    summary = simulation_summary(
        options, truth_info, signal, noise_power, rotation, axis, group.name, scheme
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


def _write_tables(
    options: SimulationOptions, draws: ParticleDraws, scheme: TiltScheme | None
) -> tuple[Path | None, Path | None]:
    """particles.star, truth_particles.star and (relion4) tomograms.star, optimisation set."""
    out = options.output_dir
    names, ctf_names = _image_names(options)
    defocus = draws.defocus_angst.cpu().numpy()
    particles = particle_table(
        options,
        image_names=names,
        ctf_image_names=ctf_names,
        half_sets=draws.half_sets.cpu().numpy(),
        defocus_angst=defocus,
    )
    truth = truth_columns(
        particles,
        options,
        angles_deg=draws.angles_deg.cpu().numpy(),
        origins_px=draws.origins_px.cpu().numpy(),
        defocus_angst=defocus,
    )
    optics = optics_table(options)
    write_star({"optics": optics, "particles": particles}, out / "particles.star")
    write_star({"optics": optics, "particles": truth}, out / "truth_particles.star")
    if options.data_format != "relion4":
        return None, None
    assert scheme is not None
    blocks = tomogram_blocks(
        options,
        defocus_angst=defocus,
        tilt_deg=scheme.tilt_deg.numpy(),
        tilt_matrices=scheme.matrices.numpy(),
        pre_exposure_e_per_angst2=scheme.pre_exposure_e_per_angst2.numpy(),
    )
    tomograms = write_star(blocks, out / "tomograms.star")
    optimisation_set = OptimisationSet(
        particles_file=Path("particles.star"),
        tomograms_file=Path("tomograms.star"),
        reference_map1=Path("reference.mrc"),
        reference_mask=Path("mask.mrc"),
    )
    return tomograms, write_optimisation_set(optimisation_set, out / "optimisation_set.star")
