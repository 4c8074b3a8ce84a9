"""Batched particle images of the three flavours, from a Fourier reference of the truth.

Common to all: the truth's transform is sampled by the projector
(``fourier.extract_slices`` / ``rotate_volume``, padding 2, trilinear, zero
beyond Nyquist ``|k| > n / 2``) at pose ``A``; the signal is multiplied by the
B-factor envelope ``exp(-B s^2 / 4)`` and by the flavour's CTF term, then moved
so that the particle centre lies at ``-origin`` from the box centre
(``fourier.shift_fourier`` by ``-origin``; REFINE_SPEC §1.2). Microscope: 300 kV,
Cs 2.7 mm, amplitude contrast 0.1 (``MICROSCOPE``), or that of real tilt series.
Tomography takes each particle's tilts as a ``tomo.ParticleTilts``: rotation,
defocus (astigmatism included), dose, CTF scale and B-factor and visibility of
every tilt (``poses.scheme_tilts`` for a synthetic scheme, ``simulate.picks``
for real tilt series).

``spa``
    ``image = IFT(CTF P_A) + e``: ``CTF`` of the particle's defocus
    (``fourier.ctf_2d``), ``e`` white Gaussian noise in real space of standard
    deviation ``noise_sigma`` per pixel.
``subtomo3d`` (classic subtomograms, REFINE_SPEC §7.4)
    ``X = IFT(H V_A) + e``: ``H`` the signed slice-averaged CTF of the tilt
    series (``ctf_mean`` of ``fourier.ctf3d.tilt_series_ctf_weights``), 0 in the
    missing wedge; ``e`` white real-space noise. ``H`` is also returned as the
    full centred cube RELION reads from ``rlnCtfImage`` (zero frequency at voxel
    ``n // 2``; not CTF-premultiplied).
``relion4`` (RELION-4 pseudo-subtomograms, REFINE_SPEC §7.1)
    ``X = ctf2 V_A + E`` in the Fourier units of ``to_fourier`` of a volume, where
    ``ctf2 = sum_f w_f (CTF_f D_f)^2`` and ``M = sum_f w_f`` come from
    ``tilt_series_ctf_weights`` (``w_f`` the slab weight of tilt ``f`` at the
    voxel, ``D_f`` its dose weight). Derivation of the noise: tilt image ``f``
    is ``Y_f = CTF_f D_f n V_A + N_f`` on its central slice (a projection's
    transform is ``n`` times the 3D one), ``N_f`` white of power ``s2`` per 2D
    coefficient. RELION's pseudo-subtomogram adds ``w_f CTF_f D_f Y_f`` into each
    voxel; divided by ``n`` this is ``ctf2 V_A`` plus noise of variance
    ``sum_f w_f^2 (CTF_f D_f)^2 s2 / n^2``. ``tilt_series_ctf_weights`` returns
    ``ctf2`` (weights ``w_f``, not ``w_f^2``), so the variance is taken as
    ``ctf2 s2 / n^2``: exact where one slice passes through the voxel
    (``w_f = 1``), an overestimate by at most the factor ``sum w c^2 / sum w^2 c^2``
    between slices. Noise is drawn independently per voxel (Hermitian pairs
    excepted: it is the transform of real white noise, scaled). Coefficients
    with ``M < MULTIPLICITY_THRESHOLD`` (RELION's ``--subtomo_multi_thr``) or
    beyond Nyquist are set to 0. The weights volume is ``ctf2`` stacked on ``M``
    along z: ``(2 n, n, n // 2 + 1)``, the half-complex layout of
    ``fourier.conventions`` (REFINE_SPEC §2.2).
"""

import math
from collections.abc import Mapping

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier.conventions import frequency_indices, from_fourier, to_fourier
from cryorefine.fourier.ctf import ctf_2d
from cryorefine.fourier.ctf3d import tilt_series_ctf_weights
from cryorefine.fourier.filters import bfactor_envelope, shift_fourier
from cryorefine.fourier.projector import extract_slices, rotate_volume
from cryorefine.simulate.truth import PADDING_FACTOR
from cryorefine.tomo import ParticleTilts

__all__ = [
    "MICROSCOPE",
    "MULTIPLICITY_THRESHOLD",
    "half_to_centred_cube",
    "pseudo_subtomograms",
    "spa_images",
    "standard_noise",
    "subtomograms",
]

#: Voltage (kV), spherical aberration (mm) and amplitude contrast of every simulation.
MICROSCOPE = {"voltage_kv": 300.0, "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1}

#: Pseudo-subtomogram coefficients reached by less slice weight than this are zeroed.
MULTIPLICITY_THRESHOLD = 0.01


#: Normal draws per particle are rounded up to a multiple of this (module ``dataset``).
_DRAW_BLOCK = 16


def standard_noise(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype
) -> Tensor:
    """Standard normal draws of ``shape`` (particles first) on the generator's device.

    Each particle (``shape[0]``) takes a whole number of blocks of ``_DRAW_BLOCK``
    draws, the unit in which torch's CPU generator fills normal tensors: so the
    stream of a particle does not depend on how the particles are chunked.
    """
    per_particle = math.prod(shape[1:])
    padded = -(-per_particle // _DRAW_BLOCK) * _DRAW_BLOCK
    draws = torch.randn(
        (shape[0], padded), generator=generator, device=generator.device, dtype=dtype
    )
    return draws[:, :per_particle].reshape(shape)


def _noise(
    shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor, drawn: Tensor | None
) -> Tensor:
    """``drawn`` (standard normal, ``shape``) or fresh draws, on ``like``'s device and dtype."""
    if drawn is None:
        if generator is None:
            raise ValueError("noise needs a generator or drawn standard normal values")
        drawn = standard_noise(shape, generator, like.dtype)
    if tuple(drawn.shape) != shape:
        raise ValueError(f"drawn noise has shape {tuple(drawn.shape)}, expected {shape}")
    return drawn.to(like.device, like.dtype)


def _envelope(
    bfactor_angst2: float, n: int, ndim: int, pixel_size_angst: float, like: Tensor
) -> Tensor:
    """B-factor envelope on the half-complex grid, in the real dtype of ``like``."""
    return bfactor_envelope(
        n,
        ndim,
        bfactor_angst2=bfactor_angst2,
        pixel_size_angst=pixel_size_angst,
        device=like.device,
        dtype=like.real.dtype,
    )


def spa_images(
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "b 3 3"],
    origins_px: Float[Tensor, "b 2"],
    defocus_angst: Float[Tensor, " b"],
    *,
    pixel_size_angst: float,
    box_size: int,
    noise_sigma: float,
    bfactor_angst2: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Float[Tensor, "b n n"] | None = None,
) -> Float[Tensor, "b n n"]:
    """Single-particle images (module docstring), real dtype of ``reference_ft``.

    ``noise_sigma`` is the real-space standard deviation per pixel (0: none).
    The standard normal values it scales are ``noise`` if given (e.g. drawn
    ahead by another thread, ``standard_noise``), else drawn from ``generator``.
    """
    real = reference_ft.real.dtype
    slices = extract_slices(
        reference_ft, rotations.to(real), out_size=box_size, padding_factor=PADDING_FACTOR
    )
    ctf = ctf_2d(
        defocus_u_angst=defocus_angst,
        defocus_v_angst=defocus_angst,
        defocus_angle_deg=torch.zeros_like(defocus_angst),
        voltage_kv=MICROSCOPE["voltage_kv"],
        spherical_aberration_mm=MICROSCOPE["spherical_aberration_mm"],
        amplitude_contrast=MICROSCOPE["amplitude_contrast"],
        pixel_size_angst=pixel_size_angst,
        box_size=box_size,
        dtype=real,
    ).to(slices.device)
    signal = slices * (ctf * _envelope(bfactor_angst2, box_size, 2, pixel_size_angst, slices))
    signal = shift_fourier(signal, -origins_px.to(slices.device, real))
    images = from_fourier(signal, box_size, 2)
    if noise_sigma > 0:
        images = images + noise_sigma * _noise(tuple(images.shape), generator, images, noise)
    return images


def _tilt_weights(
    tilts: ParticleTilts,
    microscope: Mapping[str, float],
    *,
    pixel_size_angst: float,
    box_size: int,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``tilt_series_ctf_weights`` of the particles' tilts, in ``dtype``."""
    outputs = tilt_series_ctf_weights(
        tilts.rotations,
        defocus_u_angst=tilts.defocus_u_angst,
        defocus_v_angst=tilts.defocus_v_angst,
        defocus_angle_deg=tilts.defocus_angle_deg,
        voltage_kv=microscope["voltage_kv"],
        spherical_aberration_mm=microscope["spherical_aberration_mm"],
        amplitude_contrast=microscope["amplitude_contrast"],
        pixel_size_angst=pixel_size_angst,
        box_size=box_size,
        dose_e_per_angst2=tilts.dose_e_per_angst2,
        bfactor_angst2=tilts.bfactor_angst2,
        scale=tilts.scale,
        visible=tilts.visible,
    )
    ctf2, multiplicity, ctf_mean = (value.to(dtype) for value in outputs)
    return ctf2, multiplicity, ctf_mean


def _rotated_signal(
    reference_ft: Tensor, rotations: Tensor, box_size: int, pixel_size_angst: float, bfactor: float
) -> Tensor:
    real = reference_ft.real.dtype
    volumes: Tensor = rotate_volume(
        reference_ft, rotations.to(real), out_size=box_size, padding_factor=PADDING_FACTOR
    )
    envelope = _envelope(bfactor, box_size, 3, pixel_size_angst, volumes)
    return volumes * envelope


def subtomograms(
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "b 3 3"],
    origins_px: Float[Tensor, "b 3"],
    tilts: ParticleTilts,
    *,
    pixel_size_angst: float,
    box_size: int,
    noise_sigma: float,
    bfactor_angst2: float = 0.0,
    microscope: Mapping[str, float] = MICROSCOPE,
    generator: torch.Generator | None = None,
    noise: Float[Tensor, "b n n n"] | None = None,
) -> tuple[Float[Tensor, "b n n n"], Float[Tensor, "b n n n"]]:
    """Classic subtomograms and their signed 3D CTF as centred cubes (module docstring).

    ``tilts`` holds each particle's tilts (``tomo.particle_tilts``, ``poses.scheme_tilts``);
    the noise is ``noise`` (standard normal) if given, else drawn from ``generator``.
    """
    real = reference_ft.real.dtype
    signal = _rotated_signal(reference_ft, rotations, box_size, pixel_size_angst, bfactor_angst2)
    _, _, ctf_mean = _tilt_weights(
        tilts, microscope, pixel_size_angst=pixel_size_angst, box_size=box_size, dtype=real
    )
    ctf_mean = ctf_mean.to(signal.device)
    signal = shift_fourier(signal * ctf_mean, -origins_px.to(signal.device, real))
    volumes = from_fourier(signal, box_size, 3)
    if noise_sigma > 0:
        volumes = volumes + noise_sigma * _noise(tuple(volumes.shape), generator, volumes, noise)
    return volumes, half_to_centred_cube(ctf_mean)


def pseudo_subtomograms(
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "b 3 3"],
    origins_px: Float[Tensor, "b 3"],
    tilts: ParticleTilts,
    *,
    pixel_size_angst: float,
    box_size: int,
    tilt_noise_power: float,
    bfactor_angst2: float = 0.0,
    microscope: Mapping[str, float] = MICROSCOPE,
    generator: torch.Generator | None = None,
    noise: Float[Tensor, "b n n n"] | None = None,
) -> tuple[Float[Tensor, "b n n n"], Float[Tensor, "b n2 n nh"]]:
    """RELION-4 pseudo-subtomograms (real space) and their CTF^2 || multiplicity volumes.

    ``tilts`` holds each particle's tilts (``tomo.particle_tilts``,
    ``poses.scheme_tilts``); ``tilt_noise_power`` is ``s2``, the noise power per
    Fourier coefficient of a tilt image (module docstring; 0: no noise). The
    white noise is ``noise`` if given (standard normal, ``standard_noise``), else
    drawn from ``generator``.
    """
    n = box_size
    real = reference_ft.real.dtype
    signal = _rotated_signal(reference_ft, rotations, n, pixel_size_angst, bfactor_angst2)
    ctf2, multiplicity, _ = _tilt_weights(
        tilts, microscope, pixel_size_angst=pixel_size_angst, box_size=n, dtype=real
    )
    ctf2, multiplicity = ctf2.to(signal.device), multiplicity.to(signal.device)
    data = shift_fourier(signal * ctf2, -origins_px.to(signal.device, real))
    if tilt_noise_power > 0:
        # to_fourier of unit white noise has E|F|^2 = n^-3; the target is ctf2 s2 / n^2.
        white = to_fourier(_noise((data.shape[0], n, n, n), generator, ctf2, noise), 3)
        data = data + white * torch.sqrt(ctf2.clamp(min=0.0) * (tilt_noise_power * n))
    k = frequency_indices(n, 3, device=data.device)
    inside = (k * k).sum(dim=-1) <= (n // 2) ** 2
    keep = inside & (multiplicity >= MULTIPLICITY_THRESHOLD)
    data = torch.where(keep, data, torch.zeros_like(data))
    weights = torch.cat([ctf2, multiplicity], dim=1)
    return from_fourier(data, n, 3), weights


def half_to_centred_cube(values: Float[Tensor, "b n n nh"]) -> Float[Tensor, "b n n n"]:
    """Full centred cube of a real, Friedel-symmetric half-complex volume (``H(-k) = H(k)``).

    Frequency ``k`` lands at voxel ``n // 2 + k`` (and ``-k`` at ``n // 2 - k``), the
    layout 1 of REFINE_SPEC §7.4 (``fftshift`` of the full FFTW-order grid).
    """
    n = values.shape[-2]
    nh = n // 2 + 1
    index = torch.arange(n, device=values.device)
    mirror = (-index) % n
    # Columns kx < 0 (FFTW index nh .. n - 1) are the mates of kx = n - i at (-kz, -ky).
    negative = values[:, mirror][:, :, mirror][..., (n - torch.arange(nh, n, device=values.device))]
    full = torch.cat([values, negative], dim=-1)
    centred: Tensor = torch.fft.fftshift(full, dim=(-3, -2, -1))
    return centred
