"""Particles of every flavour as batches of Fourier tensors on the device.

Every flavour is brought to one model (ARCHITECTURE.md, the E-step): the
particle's transform ``X`` (``fourier.conventions``: origin at ``n // 2``,
half-complex, forward-normalised) is ``X = K P(V) + noise``, where ``P`` is the
projection (2D) or rotation (3D) of the reference at the particle's pose and
shifted so that the particle centre lies at ``-origin``, and ``K`` the CTF term:

=================  ====================================  ==========================
flavour            ``K`` (``ctf``)                       back-projected data/weight
=================  ====================================  ==========================
spa                CTF from the defocus labels (signed)  ``K X`` and ``K**2``
subtomo3d          the signed 3D CTF in ``rlnCtfImage``  ``K X`` and ``K**2``
relion4            CTF**2 volume of ``rlnCtfImage``      ``X`` and ``K``
=================  ====================================  ==========================

RELION-4 pseudo-subtomograms are CTF-premultiplied, so their data already
carry one CTF and the back-projection adds ``X`` and ``CTF**2`` (REFINE_SPEC
§7.1); ``multiplicity`` is the number of tilt slices through each voxel (zero
masks the missing wedge). Without ``--ctf``, ``K = 1``.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import to_fourier
from cryorefine.fourier.ctf import ctf_2d, ctf_volume_to_half_complex
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import ParticleSet, read_images

__all__ = ["SUPPORTED_FLAVOURS", "ParticleBatch", "backprojection_terms", "particle_batches"]

SUPPORTED_FLAVOURS = ("spa", "subtomo3d", "relion4")


@dataclass(frozen=True)
class ParticleBatch:
    """``b`` particles of one set, on one device.

    Attributes
    ----------
    rows
        Positions of the particles in their ``ParticleSet`` (0-based).
    data_ft
        Transforms ``(b, n, nh)`` (2D) or ``(b, n, n, nh)`` (3D), as stored:
        the particle centre lies at ``-origin``.
    ctf
        ``K`` of the model ``X = K P(V)`` (module docstring), same shape, real.
    multiplicity
        Tilt slices through each voxel (RELION-4), or None.
    ctf_premultiplied
        Whether ``data_ft`` already carries one CTF (RELION-4).
    rotations
        RELION's matrices ``A`` of the poses in the table ``(b, 3, 3)`` float64.
    origins_px
        Origins ``(x, y[, z])`` in pixels, float64.
    """

    rows: Int[Tensor, " b"]
    data_ft: Complex[Tensor, "b ..."]
    ctf: Float[Tensor, "b ..."]
    multiplicity: Float[Tensor, "b ..."] | None
    ctf_premultiplied: bool
    rotations: Float[Tensor, "b 3 3"]
    origins_px: Float[Tensor, "b ndim"]


def _check_flavour(particles: ParticleSet) -> int:
    if particles.flavour not in SUPPORTED_FLAVOURS:
        raise InputError(
            f"{particles.path}: particles of flavour {particles.flavour} are not read by this "
            f"command yet (supported: {', '.join(SUPPORTED_FLAVOURS)})"
        )
    sizes = np.unique(particles.box_size_px)
    if len(sizes) != 1:
        raise InputError(f"{particles.path}: images of different sizes {sizes.tolist()}")
    return int(sizes[0])


def _spa_ctf(
    particles: ParticleSet, rows: np.ndarray, box: int, device: torch.device, intact: bool
) -> Tensor:
    params = particles.ctf_parameters()

    def column(values: np.ndarray) -> Tensor:
        return torch.as_tensor(values[rows], dtype=torch.float64, device=device)

    pixel = np.unique(particles.pixel_size_angst[rows])
    if len(pixel) != 1:
        raise InputError(f"{particles.path}: one pixel size per batch expected, found {pixel}")
    return ctf_2d(
        defocus_u_angst=column(params.defocus_u_angst),
        defocus_v_angst=column(params.defocus_v_angst),
        defocus_angle_deg=column(params.defocus_angle_deg),
        voltage_kv=column(params.voltage_kv),
        spherical_aberration_mm=column(params.spherical_aberration_mm),
        amplitude_contrast=column(params.amplitude_contrast),
        phase_shift_deg=column(params.phase_shift_deg),
        bfactor_angst2=column(params.bfactor_angst2),
        scale=column(params.scale),
        pixel_size_angst=float(pixel[0]),
        box_size=box,
        intact_first_peak=intact,
        dtype=torch.float32,
    )


def _volume_ctfs(
    particles: ParticleSet, rows: np.ndarray, box: int, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    all_paths = particles.ctf_image_paths()
    paths = [all_paths[i] for i in rows]
    volumes = torch.as_tensor(read_images(paths, np.zeros(len(rows), dtype=np.int64)))
    convert = partial(
        ctf_volume_to_half_complex, box_size=box, ctf_premultiplied=particles.ctf_premultiplied
    )
    try:
        ctf, multiplicity = convert(volumes.to(device))
    except InputError:  # name the particle's own file
        for volume, path in zip(volumes, paths, strict=True):
            convert(volume.to(device), file_name=str(path))
        raise
    return ctf.to(torch.float32), None if multiplicity is None else multiplicity.float()


def particle_batches(
    particles: ParticleSet,
    *,
    batch_size: int,
    device: torch.device,
    use_ctf: bool = True,
    rows: Int[np.ndarray, " c"] | None = None,
    intact_first_peak: bool = False,
) -> Iterator[ParticleBatch]:
    """Batches of ``particles`` (all, or ``rows`` in that order) as tensors on ``device``.

    Images are read lazily (memory-mapped) one batch at a time.

    Raises
    ------
    InputError
        A flavour this layer cannot read yet, images of different sizes, or a
        bad ``rlnCtfImage``.
    """
    box = _check_flavour(particles)
    ndim = particles.image_dimensionality
    order = np.arange(len(particles)) if rows is None else np.asarray(rows, dtype=np.int64)
    angles = particles.angles_deg()
    origins = particles.origins_angst() / particles.pixel_size_angst[:, None]
    image_paths, image_indices = particles.image_paths(), particles.image_indices()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        images = read_images([image_paths[i] for i in chunk], image_indices[chunk])
        data_ft = to_fourier(torch.as_tensor(images, device=device), ndim)
        multiplicity = None
        if not use_ctf:
            ctf = torch.ones(data_ft.shape, dtype=torch.float32, device=device)
        elif particles.flavour == "spa":
            ctf = _spa_ctf(particles, chunk, box, device, intact_first_peak)
        else:
            ctf, multiplicity = _volume_ctfs(particles, chunk, box, device)
        yield ParticleBatch(
            rows=torch.as_tensor(chunk, device=device),
            data_ft=data_ft,
            ctf=ctf,
            multiplicity=multiplicity,
            ctf_premultiplied=particles.ctf_premultiplied and use_ctf,
            rotations=euler_to_matrix(torch.as_tensor(angles[chunk], device=device)),
            origins_px=torch.as_tensor(origins[chunk, :ndim], device=device),
        )


def backprojection_terms(batch: ParticleBatch) -> tuple[Tensor, Tensor]:
    """Data and weight that a batch adds to the back-projector (module table)."""
    if batch.ctf_premultiplied:
        return batch.data_ft, batch.ctf
    return batch.ctf * batch.data_ft, batch.ctf**2
