"""``cryorefine extract``: particles of an optimisation set extracted from their tilt series.

What ``relion_tomo_subtomo`` does (REFINE_SPEC sections 7.1 to 7.3), batched on a device:

1. Read the optimisation set's particles and tomograms (``io``); every particle's
   centre is its position (``rlnCenteredCoordinate*Angst``, else ``rlnCoordinate*``)
   minus ``S origin`` unless ``--dont_apply_offsets`` (``S`` the subtomogram
   matrix of ``rlnTomoSubtomogramRot/Tilt/Psi``), and its frame is ``S``.
2. Per tomogram, in the order the particles first name them: read the tilt
   images (``extract_tables.tilt_image_references``; their size is the images'
   ``W x H``), find every particle in every tilt (``tilt_geometry.particle_tilts``:
   a tilt sees it when a circle of ``binning * crop / 2`` bin-1 pixels around it
   fits in the image and, with ``--max_dose``, the tilt's pre-exposure is not
   above it); particles seen by fewer than ``--min_frames`` tilts are dropped,
   and a warning says how many.
3. ``batch_size`` particles at a time (fewer where their bin-1 boxes would pass
   ``MAX_BOX_ELEMENTS`` pixels): boxes, binning, CTF and crop
   (``tilt_images.tilt_image_transforms``), then either the RELION-4
   pseudo-subtomogram and its CTF^2 || multiplicity volume
   (``extract.pseudo_subtomogram_volumes``) or, with ``--stack2d``, the 2D images
   of the visible tilts. Files are written by ``WRITER_THREADS`` threads while
   the next batch is computed; ``progress(done, total)`` after each batch.
4. ``particles.star`` (``extract_tables.extracted_blocks``) and
   ``optimisation_set.star``: the input's entries, the particles replaced.

Files (as RELION names them): ``<o>/Subtomograms/<rlnTomoParticleName>`` (a name
without ``/`` gets a folder per tomogram) plus ``_data.mrc`` (real space,
pixel ``binning * p``) and ``_weights.mrc`` (voxel size ``1 / (binning * p)``, as
RELION writes it), or ``_stack2d.mrcs``. Grey scale: the 3D data are in the
units of ``fourier.to_fourier`` of a map at the binned pixel
(``extract.pseudo_subtomogram_volumes``); the 2D stacks, as RELION makes them,
do not depend on the binning: they are ``binning`` times the transforms ``Z``
that enter the 3D insertion (``tilt_images``), so a reader divides by
``rlnTomoSubtomogramBinning`` to get ``Z``.
"""

import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import (
    ParticleSet,
    TomogramSet,
    check_particles_against_tomograms,
    load_optimisation_set,
    load_particles,
    load_tomograms,
    make_output_folder,
    read_images,
    write_mrc,
    write_optimisation_set,
    write_star,
)
from cryorefine.tomo.extract import SlabInsertion, pseudo_subtomogram_volumes, slab_insertion
from cryorefine.tomo.extract_tables import (
    extracted_blocks,
    particle_centres_angst,
    particle_names,
    rebased_optimisation_set,
    tilt_image_references,
)
from cryorefine.tomo.host_buffers import HostBuffers
from cryorefine.tomo.tilt_geometry import (
    ParticleTilts,
    TiltSeriesGeometry,
    particle_tilts,
    tilt_series_geometry,
)
from cryorefine.tomo.tilt_images import source_box_size, tilt_image_transforms

__all__ = [
    "MAX_BOX_ELEMENTS",
    "WRITER_THREADS",
    "ExtractOptions",
    "ExtractedSet",
    "extract_particles",
]

logger = logging.getLogger(__name__)

#: Bin-1 box pixels (particles x tilts x side^2) cut at once; bounds a batch's memory.
MAX_BOX_ELEMENTS = 2**26

#: Threads writing particle files while the next batch is computed.
WRITER_THREADS = 4


@dataclass(frozen=True)
class ExtractOptions:
    """The options of ``cryorefine extract`` (RELION's names), checked once.

    Attributes
    ----------
    optimisation_set
        ``--ios``: names the particles and tomograms.
    output_dir
        ``--o``.
    box_size, crop_size
        ``--box`` (RELION's ``--b``: binned pixels of the 2D boxes) and ``--crop``
        (the output box; ``None``: ``box_size``).
    binning
        ``--bin``: output pixel = binning x tilt-series pixel.
    float16
        ``--float16``: MRC mode 12.
    max_dose_e_per_angst2
        ``--max_dose``: tilts with more pre-exposure are left out (``None``: all).
    min_frames
        ``--min_frames``: fewer visible tilts drop the particle.
    stack2d
        ``--stack2d``: RELION-5 2D stacks instead of 3D pseudo-subtomograms.
    invert_contrast, use_ctf, circle_crop, apply_offsets
        Off with ``--no_ic``, ``--no_ctf``, ``--no_circle_crop``, ``--dont_apply_offsets``.
    batch_size
        Particles per batch (at most).
    """

    optimisation_set: Path
    output_dir: Path
    box_size: int
    crop_size: int | None = None
    binning: float = 1.0
    float16: bool = False
    max_dose_e_per_angst2: float | None = None
    min_frames: int = 1
    stack2d: bool = False
    invert_contrast: bool = True
    use_ctf: bool = True
    circle_crop: bool = True
    apply_offsets: bool = True
    batch_size: int = 32

    def __post_init__(self) -> None:
        """Check every option (``InputError`` naming the command-line option)."""
        if self.box_size < 2 or self.box_size % 2:
            raise InputError(f"--box {self.box_size}: expected an even number of pixels >= 2")
        crop = self.crop
        if crop < 2 or crop % 2 or crop > self.box_size:
            raise InputError(
                f"--crop {crop}: expected an even number of pixels from 2 to --box {self.box_size}"
            )
        if not (math.isfinite(self.binning) and self.binning > 0):
            raise InputError(f"--bin {self.binning}: expected a positive number")
        dose = self.max_dose_e_per_angst2
        if dose is not None and not math.isfinite(dose):
            raise InputError(f"--max_dose {dose}: expected a number (<= 0: every tilt)")
        if self.min_frames < 0:
            raise InputError(f"--min_frames {self.min_frames}: expected a whole number >= 0")
        if self.batch_size < 1:
            raise InputError(f"--batch {self.batch_size}: expected a positive whole number")

    @property
    def crop(self) -> int:
        """The output box: ``crop_size``, or ``box_size`` when not given."""
        return self.box_size if self.crop_size is None else self.crop_size


@dataclass(frozen=True)
class ExtractedSet:
    """What ``extract_particles`` wrote: the new particles and optimisation set, and counts."""

    particles_star: Path
    optimisation_set: Path
    particles: int
    dropped: int


def _take(tilts: ParticleTilts, index: torch.Tensor) -> ParticleTilts:
    """The particles ``index`` of ``tilts``."""
    return ParticleTilts(**{name: value[index] for name, value in vars(tilts).items()})


def _roots(options: ExtractOptions, tomograms: list[str], names: list[str]) -> list[str]:
    folder = options.output_dir / "Subtomograms"
    return [
        str(folder / name) if "/" in name else str(folder / tomogram / name)
        for tomogram, name in zip(tomograms, names, strict=True)
    ]


def _write_batch(
    writers: ThreadPoolExecutor,
    host: HostBuffers,
    options: ExtractOptions,
    roots: list[str],
    transforms: torch.Tensor,
    tilts: ParticleTilts,
    geometry: TiltSeriesGeometry,
    insertion: SlabInsertion | None,
    previous: list[Future[Path]],
) -> list[Future[Path]]:
    """Compute the batch's volumes (or stacks) and copy them to ``host``; once the
    ``previous`` batch's files are written, hand this batch's to the writer threads."""
    for parent in {Path(root).parent for root in roots}:
        parent.mkdir(parents=True, exist_ok=True)
    pixel = options.binning * geometry.pixel_size_angst
    write = {"float16": options.float16}
    if options.stack2d:
        images = host.copy(from_fourier(transforms, options.crop, 2) * options.binning, "stack")
        visible = tilts.visible.cpu().numpy()  # the stacks' rows are copied at submission
        files = [(f"{root}_stack2d.mrcs", stack[seen], pixel)
                 for root, stack, seen in zip(roots, images, visible, strict=True)]  # fmt: skip
    else:
        data, weights = pseudo_subtomogram_volumes(
            transforms,
            tilts,
            voltage_kv=geometry.voltage_kv,
            spherical_aberration_mm=geometry.spherical_aberration_mm,
            amplitude_contrast=geometry.amplitude_contrast,
            pixel_size_angst=pixel,
            use_ctf=options.use_ctf,
            insertion=insertion,
        )
        volumes, weight_volumes = host.copy(data, "data"), host.copy(weights, "weights")
        files = []
        for root, volume, weight in zip(roots, volumes, weight_volumes, strict=True):
            files += [
                (f"{root}_data.mrc", volume, pixel),
                (f"{root}_weights.mrc", weight, 1 / pixel),
            ]
    for future in previous:
        future.result()  # re-raises a failed write here; its host buffers are free again
    return [writers.submit(write_mrc, path, values, voxel_size_angst=voxel, **write)
            for path, values, voxel in files]  # fmt: skip


def _shared_insertion(
    options: ExtractOptions, tilts: ParticleTilts, count: int
) -> SlabInsertion | None:
    """The insertion of a tomogram's tilts, built once, when its particles share one frame."""
    rotations = tilts.rotations
    if options.stack2d or count == 0:
        return None
    if not torch.equal(rotations, rotations[:1].expand_as(rotations)):
        return None
    return slab_insertion(rotations[0], box_size=options.crop)


def _tomogram_tilts(
    options: ExtractOptions,
    particles: ParticleSet,
    tomograms: TomogramSet,
    name: str,
    rows: np.ndarray,
    centres: np.ndarray,
    device: torch.device,
) -> tuple[TiltSeriesGeometry, ParticleTilts, torch.Tensor]:
    """Geometry, every particle's tilts and the tilt images of tomogram ``name``."""
    series = tomograms[name]
    paths, indices = tilt_image_references(series)
    images = torch.as_tensor(read_images(paths, indices)).to(device)
    height, width = images.shape[-2:]
    geometry = tilt_series_geometry(series, device=device, image_size_px=(width, height))
    frames = euler_to_matrix(torch.as_tensor(particles.subtomogram_angles_deg()[rows]))
    dose = options.max_dose_e_per_angst2
    tilts = particle_tilts(
        geometry,
        torch.as_tensor(centres[rows], device=device),
        visibility_radius_px=options.binning * options.crop / 2,
        max_dose_e_per_angst2=dose if dose is not None and dose > 0 else None,
        subtomogram_rotations=frames.to(device),
    )
    return geometry, tilts, images


def extract_particles(
    options: ExtractOptions,
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> ExtractedSet:
    """Extract every particle of ``options.optimisation_set`` (module docstring).

    Raises
    ------
    InputError
        Unreadable or inconsistent inputs (named by file, block, row or
        label), no particles file or tomograms in the set, or no particle seen
        by ``--min_frames`` tilts.
    """
    device = torch.device(device)
    optimisation = load_optimisation_set(options.optimisation_set)
    particles_file, tomograms_file = optimisation.particles_file, optimisation.tomograms_file
    if particles_file is None or tomograms_file is None:
        label = "rlnTomoParticlesFile" if particles_file is None else "rlnTomoTomogramsFile"
        raise InputError(f"--ios {options.optimisation_set}: no {label} in the set")
    tomograms = load_tomograms(tomograms_file)
    particles = load_particles(particles_file, check_images=False)
    check_particles_against_tomograms(particles, tomograms)
    centres = particle_centres_angst(particles, tomograms, options.apply_offsets)
    names, tomo_names = particle_names(particles), particles.tomo_names()
    make_output_folder(options.output_dir, option="--o")
    order = list(dict.fromkeys(tomo_names))
    tomo = np.array(tomo_names)
    kept_rows: list[np.ndarray] = []
    visible_frames: list[np.ndarray] = []
    done, total = 0, len(particles)
    source = source_box_size(options.box_size, options.binning)
    # a batch's buffers are reused two batches on: its writes are awaited before the next
    # batch's are submitted, while that batch is computed into the other slot
    host = HostBuffers(slots=2)
    with ThreadPoolExecutor(WRITER_THREADS) as writers:
        pending: list[Future[Path]] = []
        for name in order:
            rows = np.flatnonzero(tomo == name)
            geometry, tilts, images = _tomogram_tilts(
                options, particles, tomograms, name, rows, centres, device
            )
            seen = tilts.visible.sum(dim=1) >= options.min_frames
            keep = torch.nonzero(seen).squeeze(1)
            kept = rows[keep.cpu().numpy()]
            kept_rows.append(kept)
            insertion = _shared_insertion(options, tilts, len(kept))
            logger.info("tomogram=%s particles=%d tilts=%d", name, len(kept), len(geometry))
            step = max(1, min(options.batch_size, MAX_BOX_ELEMENTS // (len(geometry) * source**2)))
            for first in range(0, len(kept), step):
                index = keep[first : first + step]
                batch = _take(tilts, index)
                transforms = tilt_image_transforms(
                    images, batch, geometry, binning=options.binning, box_size=options.box_size,
                    crop_size=options.crop, invert_contrast=options.invert_contrast,
                    use_ctf=options.use_ctf, circle_crop=options.circle_crop,
                )  # fmt: skip
                if options.stack2d:
                    visible_frames.extend(batch.visible.cpu().numpy())
                chunk = kept[first : first + step]
                roots = _roots(options, [tomo_names[r] for r in chunk], [names[r] for r in chunk])
                pending = _write_batch(
                    writers, host, options, roots, transforms, batch, geometry, insertion, pending
                )
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            done += len(rows) - len(kept)
        for future in pending:
            future.result()
    return _write_tables(options, particles, tomograms, kept_rows, visible_frames, centres, names)


def _write_tables(
    options: ExtractOptions,
    particles: ParticleSet,
    tomograms: TomogramSet,
    kept_rows: list[np.ndarray],
    visible_frames: list[np.ndarray],
    centres: np.ndarray,
    names: list[str],
) -> ExtractedSet:
    """particles.star and optimisation_set.star of the extracted particles."""
    kept = np.concatenate(kept_rows) if kept_rows else np.zeros(0, dtype=np.int64)
    dropped = len(particles) - len(kept)
    if dropped:
        logger.warning(
            "%d particle(s) dropped: fewer than --min_frames %d tilts see a circle of %g "
            "bin-1 pixels around them",
            dropped,
            options.min_frames,
            options.binning * options.crop / 2,
        )
    if len(kept) == 0:
        raise InputError(
            f"--ios {options.optimisation_set}: no particle is seen by --min_frames "
            f"{options.min_frames} tilts with a box of --crop {options.crop} at --bin "
            f"{options.binning:g}"
        )
    tomo_names = particles.tomo_names()
    blocks = extracted_blocks(
        particles,
        tomograms,
        kept=kept,
        names=[names[r] for r in kept],
        centered_coordinates_angst=centres[kept],
        roots=_roots(options, [tomo_names[r] for r in kept], [names[r] for r in kept]),
        visible=visible_frames if options.stack2d else None,
        binning=options.binning,
        crop_size=options.crop,
        ctf_premultiplied=options.use_ctf or not options.stack2d,
        offsets_applied=options.apply_offsets,
    )
    particles_star = write_star(blocks, options.output_dir / "particles.star")
    new_set = write_optimisation_set(
        rebased_optimisation_set(
            load_optimisation_set(options.optimisation_set, check_files=False), particles_star
        ),
        options.output_dir / "optimisation_set.star",
    )
    logger.info("extracted particles=%d dropped=%d written=%s", len(kept), dropped, particles_star)
    return ExtractedSet(
        particles_star=particles_star, optimisation_set=new_set, particles=len(kept),
        dropped=dropped,
    )  # fmt: skip
