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
relion5_stack2d    as relion4, from the tilt images      ``X`` and ``K``
=================  ====================================  ==========================

RELION-4 pseudo-subtomograms are CTF-premultiplied, so their data already
carry one CTF and the back-projection adds ``X`` and ``CTF**2`` (REFINE_SPEC
§7.1); ``multiplicity`` is the number of tilt slices through each voxel (zero
masks the missing wedge). RELION-5 2D stacks (one stack of tilt images per
particle) are turned into the same three volumes on the device, batch by batch
(``tomo.stack_batches``: RELION-4's pseudo-subtomogram approximation of scoring
a particle over its tilts); they need their tomograms (``stack_batches.with_tomograms``).
Without ``--ctf``, ``K = 1``.

Bad particles: a particle whose transform, CTF term or multiplicity holds a NaN
or an infinity (a damaged image or ``rlnCtfImage`` file) is flagged in
``ParticleBatch.finite`` and its data, CTF term and multiplicity are set to
zero, so that nothing non-finite leaves this module: a back-projection adds
nothing for it, and one bad particle cannot poison the sums of its batch.
Consumers that count particles leave it out (``ParticleBatch.select``); with
``named_rows`` each is named once in a warning (file, row, ``rlnImageName``).
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from jaxtyping import Bool, Complex, Float, Int, Shaped
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import to_fourier
from cryorefine.fourier.ctf import ctf_2d, ctf_volume_to_half_complex
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import ParticleSet, read_images, stored_image_layout
from cryorefine.tomo.particle_cache import ParticleCache
from cryorefine.tomo.stack_batches import STACK2D_FLAVOUR, StackParticleSet, stack_volumes

__all__ = [
    "SUPPORTED_FLAVOURS",
    "ParticleBatch",
    "backprojection_terms",
    "finite_particles",
    "particle_batches",
]

logger = logging.getLogger(__name__)

SUPPORTED_FLAVOURS = ("spa", "subtomo3d", "relion4", STACK2D_FLAVOUR)


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
    finite
        False for a particle whose image, CTF term or multiplicity held a NaN
        or an infinity; its ``data_ft``, ``ctf`` and ``multiplicity`` are zero
        (module docstring).
    """

    rows: Int[Tensor, " b"]
    data_ft: Complex[Tensor, "b ..."]
    ctf: Float[Tensor, "b ..."]
    multiplicity: Float[Tensor, "b ..."] | None
    ctf_premultiplied: bool
    rotations: Float[Tensor, "b 3 3"]
    origins_px: Float[Tensor, "b ndim"]
    finite: Bool[Tensor, " b"]

    def select(self, keep: Bool[Tensor, " b"]) -> "ParticleBatch":
        """The particles where ``keep`` is True, in their order (e.g. ``keep = batch.finite``)."""
        return ParticleBatch(
            rows=self.rows[keep],
            data_ft=self.data_ft[keep],
            ctf=self.ctf[keep],
            multiplicity=None if self.multiplicity is None else self.multiplicity[keep],
            ctf_premultiplied=self.ctf_premultiplied,
            rotations=self.rotations[keep],
            origins_px=self.origins_px[keep],
            finite=self.finite[keep],
        )


def finite_particles(values: Shaped[Tensor, "b ..."]) -> Bool[Tensor, " b"]:
    """Whether every value of each particle is finite (no NaN, no infinity; complex: both parts).

    Parameters
    ----------
    values
        One tensor per particle along the first axis: images, transforms, CTF
        terms or multiplicities, of any dtype and shape.
    """
    finite = torch.isfinite(values)
    return finite if finite.ndim == 1 else finite.flatten(start_dim=1).all(dim=1)


def _zero_where(values: Tensor, bad: Bool[Tensor, " b"]) -> Tensor:
    """``values`` with the particles where ``bad`` set to zero (NaN * 0 would stay NaN)."""
    return torch.where(bad.reshape(-1, *([1] * (values.ndim - 1))), values.new_zeros(()), values)


def _name_bad_particles(
    particles: ParticleSet,
    rows: Int[np.ndarray, " b"],
    image_ok: Bool[np.ndarray, " b"],
    ctf_ok: Bool[np.ndarray, " b"],
    named_rows: set[int],
) -> None:
    """One warning per bad particle not yet in ``named_rows`` (which it joins)."""
    names = particles.image_names()
    with_files = particles.flavour in ("subtomo3d", "relion4")
    ctf_names = particles.ctf_image_names() if with_files else None
    for row, image_fine, ctf_fine in zip(rows.tolist(), image_ok, ctf_ok, strict=True):
        if (image_fine and ctf_fine) or row in named_rows:
            continue
        if not image_fine:
            what = "its image"
        elif ctf_names is not None:
            what = f"its CTF volume (rlnCtfImage {ctf_names[row]})"
        else:
            what = "its CTF"
        logger.warning(
            "%s: data_particles row %d (rlnImageName %s): %s holds NaN or infinity; "
            "the particle is left out",
            particles.path,
            row + 1,
            names[row],
            what,
        )
        named_rows.add(row)


def _check_flavour(particles: ParticleSet) -> int:
    if particles.flavour not in SUPPORTED_FLAVOURS:
        raise InputError(
            f"{particles.path}: particles of flavour {particles.flavour} are not read by this "
            f"command yet (supported: {', '.join(SUPPORTED_FLAVOURS)})"
        )
    if particles.flavour == STACK2D_FLAVOUR and not isinstance(particles, StackParticleSet):
        raise InputError(
            f"{particles.path}: RELION-5 2D stacks are read with their tilt series: give --ios "
            "with an optimisation set that names the tomograms (rlnTomoTomogramsFile)"
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


def _read_to_device(
    paths: list,
    indices: np.ndarray,
    device: torch.device,
    held: tuple[ParticleCache, str, np.ndarray] | None = None,
) -> Tensor:
    """A batch's images on ``device``, float32.

    The reading threads write them into one buffer in the files' own dtype
    (float16 stays float16 until it is on the device), pinned on a GPU so that
    the copy does not wait on the host. ``held``: a cache, the kind of values and
    the batch's rows; rows it holds are not read again but copied from it into the
    pinned buffer, and a batch read is kept in it (a pageable copy) where it fits.
    """
    pinned = device.type == "cuda"
    cache, kind, rows = held if held is not None else (None, "", indices)
    layout = None if cache is None else cache.layout(kind)
    if cache is not None and layout is not None and cache.holds(kind, rows):
        staging = torch.empty((len(paths), *layout[0]), dtype=layout[1], pin_memory=pinned)
        cache.gather(kind, rows, staging)
        return staging.to(device, non_blocking=pinned).to(torch.float32)
    shape, stored = stored_image_layout(paths[0], int(indices[0]))
    dtype = torch.float16 if stored == np.float16 else torch.float32
    buffer = torch.empty((len(paths), *shape), dtype=dtype, pin_memory=pinned)
    read_images(paths, indices, out=buffer.numpy())
    if cache is not None and cache.accepts(buffer.numel() * buffer.element_size()):
        kept = torch.empty(buffer.shape, dtype=buffer.dtype)  # pageable (particle_cache)
        cache.hold(kind, rows, kept.copy_(buffer))
    return buffer.to(device, non_blocking=pinned).to(torch.float32)


def _volume_ctfs(
    particles: ParticleSet,
    paths: list,
    box: int,
    device: torch.device,
    held: tuple[ParticleCache, str, np.ndarray] | None = None,
) -> tuple[Tensor, Tensor | None]:
    volumes = _read_to_device(paths, np.zeros(len(paths), dtype=np.int64), device, held)
    convert = partial(
        ctf_volume_to_half_complex, box_size=box, ctf_premultiplied=particles.ctf_premultiplied
    )
    try:
        ctf, multiplicity = convert(volumes)
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
    named_rows: set[int] | None = None,
    cache: ParticleCache | None = None,
) -> Iterator[ParticleBatch]:
    """Batches of ``particles`` (all, or ``rows`` in that order) as tensors on ``device``.

    Images are read lazily (memory-mapped) one batch at a time. A particle with
    a NaN or an infinity in its image or CTF volume has ``finite`` False and
    zero data, CTF term and multiplicity (module docstring).

    Parameters
    ----------
    named_rows
        Rows (0-based) of bad particles already named: each bad particle not in
        it is named in one warning (file, 1-based row, ``rlnImageName``) and
        added, so that a run that passes its one set names each particle once.
        None: no warning (the caller reads ``finite``).
    cache
        Where the files' values are kept after their first read (``ParticleCache``);
        rows it holds are not read from their files again. One file per particle only.

    Raises
    ------
    InputError
        A flavour this layer cannot read yet, 2D stacks without their tomograms,
        images of different sizes, or a bad ``rlnCtfImage`` (a malformed file;
        NaN or infinity inside flag the particle instead).
    """
    box = _check_flavour(particles)
    ndim = particles.image_dimensionality
    order = np.arange(len(particles)) if rows is None else np.asarray(rows, dtype=np.int64)
    angles = particles.angles_deg()
    origins = particles.origins_angst() / particles.pixel_size_angst[:, None]
    image_paths, image_indices = particles.image_paths(), particles.image_indices()
    with_volumes = use_ctf and particles.flavour in ("subtomo3d", "relion4")
    ctf_paths = particles.ctf_image_paths() if with_volumes else []
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    stacks = None
    if isinstance(particles, StackParticleSet):
        stacks = stack_volumes(particles, chunks, device=device, use_ctf=use_ctf)
    for chunk in chunks:
        multiplicity = None
        if stacks is not None:  # 2D stacks: the volumes a RELION-4 particle's files hold
            data_ft, ctf, multiplicity = next(stacks)
        else:
            images = _read_to_device(
                [image_paths[i] for i in chunk],
                image_indices[chunk],
                device,
                None if cache is None else (cache, "image", chunk),
            )
            data_ft = to_fourier(images, ndim)
        if not use_ctf:
            ctf = torch.ones(data_ft.shape, dtype=torch.float32, device=device)
            multiplicity = None
        elif particles.flavour == "spa":
            ctf = _spa_ctf(particles, chunk, box, device, intact_first_peak)
        elif stacks is None:
            ctf, multiplicity = _volume_ctfs(
                particles,
                [ctf_paths[i] for i in chunk],
                box,
                device,
                None if cache is None else (cache, "ctf", chunk),
            )
        image_ok = finite_particles(data_ft)
        ctf_ok = finite_particles(ctf)
        if multiplicity is not None:
            ctf_ok = ctf_ok & finite_particles(multiplicity)
        finite = image_ok & ctf_ok
        flags = torch.stack([image_ok, ctf_ok]).cpu().numpy()  # one transfer per batch
        if named_rows is not None and not flags.all():
            _name_bad_particles(particles, chunk, flags[0], flags[1], named_rows)
        if not flags.all():  # rare: the host check spares three passes over the batch
            data_ft, ctf = _zero_where(data_ft, ~finite), _zero_where(ctf, ~finite)
            if multiplicity is not None:
                multiplicity = _zero_where(multiplicity, ~finite)
        yield ParticleBatch(
            rows=torch.as_tensor(chunk, device=device),
            data_ft=data_ft,
            ctf=ctf,
            multiplicity=multiplicity,
            ctf_premultiplied=(particles.ctf_premultiplied or stacks is not None) and use_ctf,
            rotations=euler_to_matrix(torch.as_tensor(angles[chunk], device=device)),
            origins_px=torch.as_tensor(origins[chunk, :ndim], device=device),
            finite=finite,
        )


def backprojection_terms(batch: ParticleBatch) -> tuple[Tensor, Tensor]:
    """Data and weight that a batch adds to the back-projector (module table)."""
    if batch.ctf_premultiplied:
        return batch.data_ft, batch.ctf
    return batch.ctf * batch.data_ft, batch.ctf**2
