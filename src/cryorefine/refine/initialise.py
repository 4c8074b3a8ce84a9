"""The inputs of a refinement, checked, and its starting point (REFINE_SPEC §4.2).

Particles from ``--i`` or ``--ios``; the reference (box and pixel size of the
particles unless ``--trust_ref_size``); the solvent mask (values in [0, 1]);
half sets (``rlnRandomSubset`` kept when every particle has one, drawn with the
seed when none has, an error when mixed); the initial noise spectrum per optics
group from the first particles' power spectra; both half models from the
reference low-passed to ``--ini_high``. A particle whose image or CTF volume
holds a NaN or an infinity is named once per run (``RefineInputs.non_finite_rows``)
and left out of every sum, the initial noise's included.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier import check_mask_values, radial_average, shift_fourier
from cryorefine.geometry import SymmetryGroup, asymmetric_unit_pixels, point_group
from cryorefine.io import (
    OptimisationSet,
    ParticleSet,
    load_optimisation_set,
    load_particles,
    read_mrc,
)
from cryorefine.refine.maximisation import initial_half_model, initial_low_pass, scale_groups
from cryorefine.refine.model import HalfSetModel
from cryorefine.refine.noise import initial_noise_sums, initial_sigma2_noise
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.subtomo_noise import ctf2_per_multiplicity
from cryorefine.tomo import (
    HOST_MEMORY_SHARE,
    PSEUDO_SUBTOMOGRAM_FLAVOURS,
    ParticleCache,
    StackParticleSet,
    available_host_bytes,
    particle_batches,
    with_tomograms,
)

__all__ = ["RefineInputs", "initial_models", "load_inputs", "particle_cache"]

logger = logging.getLogger(__name__)

_PIXEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class RefineInputs:
    """Everything read from the user's files, validated.

    ``non_finite_rows``: rows (0-based) of the particles found with a NaN or an
    infinity in their image or CTF volume, each named in a warning when found
    (``tomo.particle_batches``); one set for the run, kept by ``dataclasses.replace``.
    ``particle_cache``: the particles' file values kept in host memory after their
    first read (``tomo.ParticleCache``), one for the run; None: read every time.
    ``ctf2_per_multiplicity``: ``(o, s)``, the CTF² per unit multiplicity of each optics
    group's shells (``subtomo_noise``), for RELION-4 pseudo-subtomograms with ``--ctf``
    unless ``--subtomo_noise_multiplicity``; None otherwise.
    """

    particles: ParticleSet
    optimisation_set: OptimisationSet | None
    reference: Tensor
    solvent_mask: Tensor | None
    half_sets: np.ndarray
    optics_group: np.ndarray
    scale_group: np.ndarray
    scale_group_names: tuple[str, ...]
    scale_group_counts: tuple[int, ...]
    group: SymmetryGroup
    pixel_size_angst: float
    ori_size: int
    ndim: int
    non_finite_rows: set[int] = field(default_factory=set)
    particle_cache: ParticleCache | None = None
    ctf2_per_multiplicity: Tensor | None = None


def particle_cache(particles: ParticleSet) -> ParticleCache | None:
    """A cache of the particles' files for the run (``tomo.particle_cache``), within
    ``HOST_MEMORY_SHARE`` of the host's available memory shared by the ranks on the host
    (``LOCAL_WORLD_SIZE``); None for 2D stacks, whose volumes are made, not read."""
    if isinstance(particles, StackParticleSet):
        return None
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    budget = int(HOST_MEMORY_SHARE * available_host_bytes() / ranks)
    logger.info(
        "particle files are kept in host memory after their first read, up to %.1f GB "
        "(%d%% of the available memory%s); the rest are read every iteration",
        budget / 1e9,
        round(100 * HOST_MEMORY_SHARE),
        f", shared by {ranks} ranks" if ranks > 1 else "",
    )
    return ParticleCache(len(particles), budget)


SCALE_GROUP_LABELS = ("rlnGroupName", "rlnMicrographName", "rlnTomoName")
"""Where RELION takes a particle's intensity-scale group from, first present first."""


def _scale_group_names(particles: ParticleSet) -> list[str]:
    """Each particle's scale group: its group, micrograph or tomogram name (one group if none)."""
    for label in SCALE_GROUP_LABELS:
        if label in particles.particles.columns:
            return [str(value) for value in particles.particles[label]]
    return ["group"] * len(particles)


def _read_volume(path: Path, what: str, device: torch.device) -> tuple[Tensor, float]:
    volume, voxel = read_mrc(path)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"{path}: {what} must be a cubic 3D map, found shape {volume.shape}")
    return torch.as_tensor(np.asarray(volume, dtype=np.float32), device=device), float(voxel)


def _half_sets(particles: ParticleSet, seed: int) -> np.ndarray:
    given = particles.half_sets()
    if np.all(np.isin(given, (1, 2))):
        return given
    if np.any(np.isin(given, (1, 2))):
        bad = np.flatnonzero(~np.isin(given, (1, 2)))[:5] + 1
        raise InputError(
            f"{particles.path}: rlnRandomSubset is 1 or 2 for some particles but not for rows "
            f"{', '.join(map(str, bad))}: give it for all particles or for none"
        )
    generator = np.random.default_rng(seed)
    return generator.integers(1, 3, len(particles))


def _check_one_grid(particles: ParticleSet) -> None:
    """One pixel size and one box for all particles: a refinement has one reference grid."""
    columns = (
        ("rlnImagePixelSize", particles.pixel_size_angst, " A", "rescale them to one pixel size"),
        ("rlnImageSize", particles.box_size_px.astype(float), " px", "re-extract them at one box"),
    )
    used = np.unique(particles.optics_row)
    for label, values, unit, remedy in columns:
        if not np.ptp(values) > _PIXEL_TOLERANCE * np.min(values):  # NaN: picks, no images
            continue
        per_row = [float(values[np.argmax(particles.optics_row == row)]) for row in used]
        rows = ", ".join(str(row + 1) for row in used[:5])
        more = f" and {len(used) - 5} more" if len(used) > 5 else ""
        found = ", ".join(f"{value:g}" for value in per_row[:5])
        raise InputError(
            f"{particles.path}: data_optics rows {rows}{more}: {label} is {found}{unit}; "
            f"expected one value for all particles (one reference grid): {remedy}"
        )


def _check_directions(healpix_order: int, group: SymmetryGroup, sym: str) -> None:
    """At least one HEALPix direction of ``healpix_order`` must lie in the asymmetric unit."""
    if asymmetric_unit_pixels(healpix_order, group).numel() > 0:
        return
    coarsest = next(
        o for o in range(healpix_order + 1, 9) if asymmetric_unit_pixels(o, group).numel()
    )
    raise InputError(
        f"--healpix_order {healpix_order}: none of its {12 * 4**healpix_order} directions lies "
        f"in the asymmetric unit of {sym} ({group.order} operators); use --healpix_order "
        f"{coarsest} or finer"
    )


def load_inputs(options: RefineOptions, *, device: torch.device) -> RefineInputs:
    """Read and check the particles, reference, mask and symmetry before the first iteration."""
    optimisation_set = None
    particles_file = options.input_particles
    if options.optimisation_set is not None:
        optimisation_set = load_optimisation_set(options.optimisation_set)
        particles_file = particles_file or optimisation_set.particles_file
    if particles_file is None:
        raise InputError("--i / --ios: no particles file given")
    tomograms_file = options.tomograms
    if tomograms_file is None and optimisation_set is not None:
        tomograms_file = optimisation_set.tomograms_file
    particles = with_tomograms(load_particles(particles_file), tomograms_file=tomograms_file)
    if len(particles) == 0:
        raise InputError(f"{particles_file}: the particles table is empty")
    _check_one_grid(particles)
    group = point_group(options.sym, device=device)
    _check_directions(options.healpix_order, group, options.sym)
    ori_size = int(particles.box_size_px[0])
    pixel = float(particles.pixel_size_angst[0])
    reference_path = options.reference
    if reference_path is None and optimisation_set is not None:
        reference_path = optimisation_set.reference_map1
    if reference_path is None:
        raise InputError("--ref: a reference map is required")
    reference, ref_pixel = _read_volume(reference_path, "the reference", device)
    if reference.shape[0] != ori_size:
        raise InputError(
            f"{reference_path}: box of {reference.shape[0]} pixels, but the particles' box is "
            f"{ori_size}: resample the reference "
            "(e.g. relion_image_handler --new_box / --rescale_angpix)"
        )
    if (
        not options.trust_ref_size
        and ref_pixel > 0
        and abs(ref_pixel - pixel) > _PIXEL_TOLERANCE * pixel
    ):
        raise InputError(
            f"{reference_path}: pixel size {ref_pixel:.4f} A, but the particles' is {pixel:.4f} A: "
            "rescale the reference, or pass --trust_ref_size if the header is wrong"
        )
    mask = None
    mask_path = options.solvent_mask
    if mask_path is None and optimisation_set is not None and options.solvent_correct_fsc:
        mask_path = optimisation_set.reference_mask
    if mask_path is not None:
        mask, _ = _read_volume(mask_path, "the solvent mask", device)
        if mask.shape != reference.shape:
            raise InputError(
                f"{mask_path}: mask of shape {tuple(mask.shape)}, "
                f"reference of shape {tuple(reference.shape)}"
            )
        check_mask_values(mask, name=str(mask_path))
    if options.particle_diameter <= 0:
        raise InputError("--particle_diameter: expected the particle's diameter in Angstrom (> 0)")
    ndim = 2 if particles.image_dimensionality == 2 else 3
    scale_group, scale_names, scale_counts = scale_groups(_scale_group_names(particles))
    cache = particle_cache(particles)
    optics_group = particles.optics_row.astype(np.int64)
    ratio = None
    if (
        particles.flavour in PSEUDO_SUBTOMOGRAM_FLAVOURS
        and options.ctf
        and not options.subtomo_noise_multiplicity
    ):
        ratio = ctf2_per_multiplicity(
            particles, optics_group, ori_size=ori_size, device=device, cache=cache
        )
    return RefineInputs(
        particles=particles,
        optimisation_set=optimisation_set,
        reference=reference,
        solvent_mask=mask,
        half_sets=_half_sets(particles, max(options.random_seed, 0)),
        optics_group=optics_group,
        scale_group=scale_group,
        scale_group_names=scale_names,
        scale_group_counts=scale_counts,
        group=group,
        pixel_size_angst=pixel,
        ori_size=ori_size,
        ndim=ndim,
        particle_cache=cache,
        ctf2_per_multiplicity=ratio,
    )


def _initial_sigma2(
    inputs: RefineInputs, options: RefineOptions, *, device: torch.device
) -> Tensor:
    """Noise spectrum per optics group from the first particles (REFINE_SPEC §4.2 step 2).

    For RELION-4 pseudo-subtomograms the spectrum is divided by the mean
    multiplicity of each shell, so that it is per unit multiplicity as the
    M-step's ``S / (2 M)`` is and as the scores' weight ``1 / (2 sigma2 M)``
    expects. RELION starts from the undivided spectrum, which makes its first
    iteration's posterior flatter by about the number of tilts (and that
    iteration's fine pass correspondingly longer); from the second iteration on
    both use the M-step's estimate.
    """
    per_group = options.nr_parts_sigma2noise
    if per_group <= 0:
        per_group = 1000 if inputs.ndim == 2 else 10
    rows = np.concatenate(
        [
            np.flatnonzero(inputs.optics_group == g)[:per_group]
            for g in np.unique(inputs.optics_group)
        ]
    )
    nr_groups = int(inputs.optics_group.max()) + 1
    with_multiplicity = inputs.particles.flavour in PSEUDO_SUBTOMOGRAM_FLAVOURS
    power = counts = transform = multiplicity = None
    used = 0
    for loaded in particle_batches(
        inputs.particles,
        batch_size=64,
        device=device,
        use_ctf=with_multiplicity,
        rows=rows,
        named_rows=inputs.non_finite_rows,
    ):
        finite = loaded.finite.cpu().numpy()
        if not finite.any():
            continue
        batch = loaded if finite.all() else loaded.select(loaded.finite)
        used += int(finite.sum())
        centred = shift_fourier(batch.data_ft, batch.origins_px)
        groups = torch.as_tensor(inputs.optics_group[batch.rows.cpu().numpy()], device=device)
        p, c, t = initial_noise_sums(centred, groups, nr_optics_groups=nr_groups, ndim=inputs.ndim)
        power, counts, transform = (
            (p, c, t) if power is None else (power + p, counts + c, transform + t)
        )
        if batch.multiplicity is not None:
            shells = radial_average(
                batch.multiplicity.to(torch.float64), inputs.ori_size, 3, exclude_redundant=False
            ).sum(dim=0)
            multiplicity = shells if multiplicity is None else multiplicity + shells
    if power is None or counts is None or transform is None:
        raise InputError(
            f"{inputs.particles.path}: the {len(rows)} particles read for the initial noise "
            "estimate (the first of each optics group) all hold NaN or infinity in their "
            "images or CTF volumes; expected finite images"
        )
    sigma2 = initial_sigma2_noise(power, counts, transform, ndim=inputs.ndim)
    if multiplicity is not None:
        mean = multiplicity / float(used)
        sigma2 = sigma2 / torch.where(mean > 0.1, mean, 1.0)[None, :]
    return sigma2


def initial_models(
    inputs: RefineInputs, options: RefineOptions, *, nr_directions: int, device: torch.device
) -> tuple[HalfSetModel, HalfSetModel]:
    """Both half models at iteration 0: the low-passed reference and the initial noise."""
    sigma2 = _initial_sigma2(inputs, options, device=device)
    reference = inputs.reference.to(torch.float64)
    if options.ini_high > 0:
        reference = initial_low_pass(
            reference, ini_high_angst=options.ini_high, pixel_size_angst=inputs.pixel_size_angst
        )
    names, counts = inputs.scale_group_names, inputs.scale_group_counts
    models = tuple(
        initial_half_model(
            reference.to(torch.float32),
            sigma2,
            half_set=half,
            options=options,
            pixel_size_angst=inputs.pixel_size_angst,
            data_dimensionality=inputs.ndim,
            group_names=names,
            group_particle_counts=counts,
            nr_directions=nr_directions,
        )
        for half in (1, 2)
    )
    return models[0], models[1]
