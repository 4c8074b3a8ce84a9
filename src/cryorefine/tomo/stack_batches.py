"""RELION-5 2D stacks read as RELION-4 pseudo-subtomograms, batch by batch on the device.

A ``relion5_stack2d`` particle (``extract --stack2d``, RELION 5's ``relion_tomo_subtomo
--stack2d``) is one MRC stack of 2D images, one per tilt that sees it
(``rlnTomoVisibleFrames``, tilt order). It is scored over its tilts in RELION-4's
pseudo-subtomogram approximation: its tilt images are inserted as central slices
of one 3D Fourier volume and the E-step sees what ``extract`` without
``--stack2d`` would have written for it. One model for the E-step
(ARCHITECTURE.md): nothing above this layer knows the particle was a stack.

Per batch (``stack_volumes``), per tomogram in it:

1. Geometry (``tilt_geometry``): the tomogram's projections from the tomograms
   file (``StackParticleSet.tomograms``), the particle's tilts at its
   ``rlnCenteredCoordinate*Angst`` (the extraction centre) in the frame of its
   ``rlnTomoSubtomogramRot/Tilt/Psi``: rotations ``R_f S``, defocus with depth,
   dose, CTF B-factor and scale of each tilt; visibility is
   ``rlnTomoVisibleFrames`` (as extracted, not recomputed). The tilt images' size,
   which no STAR file records, does not enter: rotations and depths do not depend on it.
2. Images: the stack's images, transformed (``fourier.to_fourier``) and divided
   by the binning (the stacks are ``binning`` times the transforms ``Z`` of the
   3D insertion: ``tomo.extract_job``), the binning being ``rlnImagePixelSize``
   over the tilt series' pixel size. Invisible tilts are 0. Stacks that are not
   CTF-premultiplied (``rlnCtfDataAreCtfPremultiplied`` 0: ``extract --no_ctf``)
   are multiplied here by each tilt's CTF and dose weight
   (``tilt_images.premultiply``, no contrast inversion: the stack has it), when
   the CTF is used; RELION-4 premultiplies before its crop, we after it.
3. Volumes: ``extract.pseudo_subtomogram_volumes`` (slab insertion, CTF^2 and
   multiplicity of ``fourier.tilt_series_ctf_weights``), then what
   ``tomo.particle_batches`` does to a RELION-4 particle's files: the data to
   Fourier space and the weights through ``fourier.ctf_volume_to_half_complex``.
   The insertion of a tomogram's tilts is built once and reused when its
   particles share their rotations (``extract.slab_insertion``).

The particles must come with their tomograms (``with_tomograms``); a set
without them is refused with an ``InputError`` naming the file.
"""

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import to_fourier
from cryorefine.fourier.ctf import ctf_volume_to_half_complex
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import (
    ParticleSet,
    TomogramSet,
    check_particles_against_tomograms,
    load_tomograms,
    read_images,
)
from cryorefine.tomo.extract import SlabInsertion, pseudo_subtomogram_volumes, slab_insertion
from cryorefine.tomo.tilt_geometry import (
    ParticleTilts,
    TiltSeriesGeometry,
    particle_tilts,
    tilt_series_geometry,
)
from cryorefine.tomo.tilt_images import premultiply

__all__ = [
    "PSEUDO_SUBTOMOGRAM_FLAVOURS",
    "STACK2D_FLAVOUR",
    "StackParticleSet",
    "stack_volumes",
    "with_tomograms",
]

#: The flavour of RELION-5 2D stacks (``io.particle_checks``).
STACK2D_FLAVOUR = "relion5_stack2d"

#: Flavours the E-step sees as RELION-4 pseudo-subtomograms (CTF^2 and multiplicity).
PSEUDO_SUBTOMOGRAM_FLAVOURS = ("relion4", STACK2D_FLAVOUR)


@dataclass(frozen=True)
class StackParticleSet(ParticleSet):
    """A ``relion5_stack2d`` set with the tomograms its stacks were cut from.

    ``image_dimensionality`` is 3: every layer above reads each particle as the
    3D pseudo-subtomogram of its stack (module docstring). The particle table,
    its blocks and its optics are the file's, written back as they are.

    Attributes
    ----------
    tomograms
        The tomograms file of the set (``--ios``'s ``rlnTomoTomogramsFile`` or ``--tomograms``).
    """

    tomograms: TomogramSet


def with_tomograms(particles: ParticleSet, *, tomograms_file: Path | None) -> ParticleSet:
    """``particles`` as the E-step reads them: 2D stacks joined to their tomograms.

    Other flavours come back unchanged (``tomograms_file`` is not read).

    Raises
    ------
    InputError
        2D stacks without a tomograms file (the message names the particles
        file and asks for ``--ios``), or a particle whose tomogram is not in
        it or whose ``rlnTomoVisibleFrames`` does not count its tilts.
    """
    if particles.flavour != STACK2D_FLAVOUR or isinstance(particles, StackParticleSet):
        return particles
    if tomograms_file is None:
        raise InputError(
            f"{particles.path}: RELION-5 2D stacks (rlnTomoVisibleFrames, one stack of tilt "
            "images per particle) are read with their tilt series: give --ios with an "
            "optimisation set that names the tomograms (rlnTomoTomogramsFile), or --tomograms"
        )
    tomograms = load_tomograms(tomograms_file)
    check_particles_against_tomograms(particles, tomograms)
    particles.centered_coordinates_angst()  # required: the extraction centres
    fields = {field.name: getattr(particles, field.name) for field in dataclasses.fields(particles)}
    fields["image_dimensionality"] = 3
    return StackParticleSet(**fields, tomograms=tomograms)


def _stack_transforms(
    paths: Sequence[Path],
    visible: np.ndarray,
    *,
    box_size: int,
    binning: Float[np.ndarray, " b"],
    device: torch.device,
) -> Tensor:
    """``Z (b, i, n, nh)`` complex64 of ``b`` stacks with ``visible (b, i)`` (module docstring)."""
    counts = visible.sum(axis=1)
    files = np.repeat(np.arange(len(paths)), counts)  # each image's stack, and its 1-based index
    indices = np.arange(len(files)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    out = torch.zeros(
        *visible.shape, box_size, box_size // 2 + 1, dtype=torch.complex64, device=device
    )
    if len(files) == 0:
        return out
    images = read_images([paths[f] for f in files.tolist()], indices)
    scale = torch.as_tensor(binning[files], dtype=torch.float32, device=device)
    transforms = to_fourier(torch.as_tensor(images).to(device), 2) / scale[:, None, None]
    out[torch.as_tensor(visible, device=device)] = transforms  # particle-major, tilt order
    return out


def _tilts(
    geometry: TiltSeriesGeometry,
    centres_angst: Float[np.ndarray, "b 3"],
    frames_deg: Float[np.ndarray, "b 3"],
    visible: Tensor,
) -> ParticleTilts:
    """The particles' tilts at their extraction centres, visibility from the file."""
    device = geometry.projections.device
    frames = euler_to_matrix(torch.as_tensor(frames_deg)).to(device)
    tilts = particle_tilts(
        geometry, torch.as_tensor(centres_angst, device=device), subtomogram_rotations=frames
    )
    return dataclasses.replace(tilts, visible=visible)


def _premultiply(
    transforms: Tensor, tilts: ParticleTilts, microscope: tuple[float, float, float, float]
) -> Tensor:
    """Each tilt's CTF and dose weight on stacks written without them (no contrast inversion)."""
    voltage, cs, amplitude, pixel = microscope
    return premultiply(
        transforms, tilts, voltage_kv=voltage, spherical_aberration_mm=cs,
        amplitude_contrast=amplitude, pixel_size_angst=pixel, invert_contrast=False,
    )  # fmt: skip


def _insertion(
    cache: dict[str, SlabInsertion], name: str, rotations: Tensor, box_size: int
) -> SlabInsertion | None:
    """The tomogram's shared insertion (built once), or None when its particles' frames differ."""
    first = rotations[0]
    if not torch.equal(rotations, first.expand_as(rotations)):
        return None
    known = cache.get(name)
    if known is None or not torch.equal(known.rotations, first):
        known = cache[name] = slab_insertion(first, box_size=box_size)
    return known


def stack_volumes(
    particles: StackParticleSet,
    chunks: Sequence[Int[np.ndarray, " _c"]],
    *,
    device: torch.device,
    use_ctf: bool = True,
) -> Iterator[
    tuple[Complex[Tensor, "b n n nh"], Float[Tensor, "b n n nh"], Float[Tensor, "b n n nh"]]
]:
    """Data, CTF^2 and multiplicity of each chunk of rows, as a RELION-4 particle's files give.

    One item per chunk (rows of ``particles``, 0-based), in order; on
    ``device``, complex64 and float32 (module docstring for every step).
    ``use_ctf``: whether stacks that are not CTF-premultiplied get their CTF here.
    """
    n = int(particles.box_size_px[0])
    tomo_names = np.array(particles.tomo_names())
    visible_frames = particles.visible_frames()
    paths = particles.image_paths()
    centres, frames = particles.centered_coordinates_angst(), particles.subtomogram_angles_deg()
    geometries: dict[str, TiltSeriesGeometry] = {}
    insertions: dict[str, SlabInsertion] = {}
    premultiplied = particles.ctf_premultiplied
    for chunk in chunks:
        shape = (len(chunk), n, n, n // 2 + 1)
        data = torch.zeros(shape, dtype=torch.complex64, device=device)
        ctf = torch.zeros(shape, dtype=torch.float32, device=device)
        multiplicity = torch.zeros(shape, dtype=torch.float32, device=device)
        for name in dict.fromkeys(tomo_names[chunk].tolist()):
            where = np.flatnonzero(tomo_names[chunk] == name)
            rows = chunk[where]
            if name not in geometries:
                geometries[name] = tilt_series_geometry(particles.tomograms[name], device=device)
            geometry = geometries[name]
            visible = np.stack([visible_frames[row] for row in rows])
            tilts = _tilts(
                geometry, centres[rows], frames[rows], torch.as_tensor(visible, device=device)
            )
            pixel = particles.pixel_size_angst[rows]
            transforms = _stack_transforms(
                [paths[row] for row in rows], visible, box_size=n,
                binning=pixel / geometry.pixel_size_angst, device=device,
            )  # fmt: skip
            microscope = (
                geometry.voltage_kv,
                geometry.spherical_aberration_mm,
                geometry.amplitude_contrast,
                float(pixel[0]),
            )
            if use_ctf and not premultiplied:
                transforms = _premultiply(transforms, tilts, microscope)
            volumes, weights = pseudo_subtomogram_volumes(
                transforms, tilts, voltage_kv=microscope[0],
                spherical_aberration_mm=microscope[1], amplitude_contrast=microscope[2],
                pixel_size_angst=microscope[3],
                insertion=_insertion(insertions, name, tilts.rotations, n),
            )  # fmt: skip
            ctf2, counts = ctf_volume_to_half_complex(weights, box_size=n, ctf_premultiplied=True)
            index = torch.as_tensor(where, device=device)
            data[index] = to_fourier(volumes, 3)
            ctf[index] = ctf2
            assert counts is not None  # the (2n, n, nh) layout always has multiplicities
            multiplicity[index] = counts
        yield data, ctf, multiplicity
