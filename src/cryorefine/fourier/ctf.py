"""Contrast transfer function, dose weights and 3D CTF volumes, as RELION computes them.

Layout: ``fourier.conventions`` (half-complex, FFTW order, frequency ``k / (n p)``
in 1/Angstrom for integer index ``k``, box side ``n``, pixel size ``p``).

CTF (RELION ``CTF::initialise`` and ``CTF::getCTF``; [R5:ctf.cpp, ctf.h])
    With spatial frequency ``u = (x, y)`` in 1/Angstrom and ``|u|^2 = x^2 + y^2``::

        lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))      (V in volts, lambda in A)
        K1 = pi lambda,   K2 = (pi / 2) Cs lambda^3   (Cs in A = mm * 1e7)
        K3 = atan(Q0 / sqrt(1 - Q0^2)),   K5 = phase shift in radians
        gamma = -K1 (dU (u . e)^2 + dV (u . e_perp)^2) + K2 |u|^4 - K5 - K3
        ctf = scale * exp(-B |u|^2 / 4) * (-sin(gamma))

    where ``e = (cos a, sin a)`` is the direction at the defocus angle ``a`` from
    the x axis towards y, so ``dU`` (positive = underfocus) is the defocus along
    ``e`` and ``dV`` along ``e_perp``; either of ``dU``, ``dV`` may be the larger.
    With ``intact_first_peak`` RELION replaces ``-sin(gamma)`` by 1 wherever
    ``|gamma| < pi / 2`` (per frequency, before the B-factor and the scale).
    RELION finally moves values with ``|ctf| < 1e-8`` to ``+-1e-8`` (a guard
    against division by zero in its GPU code); we do not, so CTF zeros stay zero.
Dose weight (Grant & Grigorieff 2015, eLife 4:e06980; RELION ``Damage::weightImage``)
    ``w = exp(-D / (2 Ne(k)))``, ``Ne(k) = 0.245 k^-1.665 + 2.81`` e-/A^2 with ``k``
    in 1/Angstrom (``w = 1`` at ``k = 0``). RELION's tomography code applies no voltage
    factor; its motion correction divides the dose by 0.8 at 200 kV and by 0.64
    at 100 kV (``voltage_kv`` below, optional).
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import frequency_indices

__all__ = [
    "ctf_2d",
    "ctf_at_frequencies",
    "ctf_volume_to_half_complex",
    "dose_weight",
    "dose_weight_at_frequencies",
    "electron_wavelength_angst",
]

_DOSE_VOLTAGE_FACTOR = {300.0: 1.0, 200.0: 0.8, 100.0: 0.64}


def electron_wavelength_angst(voltage_kv: Float[Tensor, "*batch"] | float) -> Tensor:
    """Relativistic electron wavelength in Angstrom, RELION's formula.

    ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with ``V`` the voltage in volts.
    """
    volts = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1e3
    return 12.2643247 / torch.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def _column(value: Tensor | float, device: torch.device) -> Tensor:
    """Parameter as float64 ``(b, 1, 1)`` (or ``(1, 1, 1)`` for a scalar) for broadcasting."""
    return torch.as_tensor(value, dtype=torch.float64, device=device).reshape(-1, 1, 1)


def _param(value: Tensor | float, device: torch.device) -> Tensor:
    """Parameter as float64 on ``device``, shape kept (a float becomes a 0-d tensor)."""
    return torch.as_tensor(value, dtype=torch.float64, device=device)


def _frequency_grid_2d(
    box_size: int, pixel_size_angst: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Spatial frequencies ``x, y`` (1/Angstrom, float64) of the ``(n, n // 2 + 1)`` layout."""
    k = frequency_indices(box_size, 2, device=device).to(torch.float64)
    scale = 1.0 / (box_size * pixel_size_angst)
    return k[..., 0] * scale, k[..., 1] * scale


def ctf_at_frequencies(
    frequency_inv_angst: Float[Tensor, "*batch 2"],
    *,
    defocus_u_angst: Float[Tensor, "..."] | float,
    defocus_v_angst: Float[Tensor, "..."] | float,
    defocus_angle_deg: Float[Tensor, "..."] | float,
    voltage_kv: Float[Tensor, "..."] | float,
    spherical_aberration_mm: Float[Tensor, "..."] | float,
    amplitude_contrast: Float[Tensor, "..."] | float,
    phase_shift_deg: Float[Tensor, "..."] | float = 0.0,
    bfactor_angst2: Float[Tensor, "..."] | float = 0.0,
    scale: Float[Tensor, "..."] | float = 1.0,
    intact_first_peak: bool = False,
) -> Float[Tensor, "..."]:
    """CTF at arbitrary spatial frequencies ``(x, y)`` in 1/Angstrom, RELION's ``getCTF``.

    The formula and its conventions are in the module docstring. Each parameter
    (a float or a tensor) broadcasts against ``frequency_inv_angst[..., 0]``, so
    one call evaluates many images at many frequencies: parameters ``(b, 1)``
    with frequencies ``(k, 2)`` give ``(b, k)``. Computed and returned in
    float64 on the device of ``frequency_inv_angst``.
    """
    device = frequency_inv_angst.device
    freq = frequency_inv_angst.to(torch.float64)
    x, y = freq[..., 0], freq[..., 1]
    u2 = x * x + y * y
    angle = torch.deg2rad(_param(defocus_angle_deg, device))
    along = x * torch.cos(angle) + y * torch.sin(angle)
    across = -x * torch.sin(angle) + y * torch.cos(angle)
    lam = electron_wavelength_angst(_param(voltage_kv, device))
    cs_angst = _param(spherical_aberration_mm, device) * 1e7
    q0 = _param(amplitude_contrast, device)
    k1 = math.pi * lam
    k2 = 0.5 * math.pi * cs_angst * lam**3
    k3 = torch.atan(q0 / torch.sqrt(1.0 - q0 * q0))
    k5 = torch.deg2rad(_param(phase_shift_deg, device))
    defocus_term = _param(defocus_u_angst, device) * along**2
    defocus_term = defocus_term + _param(defocus_v_angst, device) * across**2
    gamma = -k1 * defocus_term + k2 * u2 * u2 - k5 - k3
    ctf = -torch.sin(gamma)
    if intact_first_peak:
        ctf = torch.where(gamma.abs() < 0.5 * math.pi, torch.ones_like(ctf), ctf)
    ctf = ctf * torch.exp(-0.25 * _param(bfactor_angst2, device) * u2)
    return ctf * _param(scale, device)


def ctf_2d(
    *,
    defocus_u_angst: Float[Tensor, " b"],
    defocus_v_angst: Float[Tensor, " b"],
    defocus_angle_deg: Float[Tensor, " b"],
    voltage_kv: Float[Tensor, " b"] | float,
    spherical_aberration_mm: Float[Tensor, " b"] | float,
    amplitude_contrast: Float[Tensor, " b"] | float,
    phase_shift_deg: Float[Tensor, " b"] | float = 0.0,
    bfactor_angst2: Float[Tensor, " b"] | float = 0.0,
    scale: Float[Tensor, " b"] | float = 1.0,
    pixel_size_angst: float,
    box_size: int,
    intact_first_peak: bool = False,
    dtype: torch.dtype | None = None,
) -> Float[Tensor, "b n nh"]:
    """CTF of each particle (or tilt image) on the half-complex grid, as RELION's ``getCTF``.

    ``ctf_at_frequencies`` on the frequencies of the ``(n, n // 2 + 1)`` layout.
    Computed in float64; returned in ``dtype`` (default: the dtype of
    ``defocus_u_angst``) on the device of ``defocus_u_angst``.

    Parameters
    ----------
    defocus_u_angst, defocus_v_angst
        ``rlnDefocusU``, ``rlnDefocusV`` (Angstrom, positive = underfocus).
    defocus_angle_deg
        ``rlnDefocusAngle``: direction of ``U`` from the x axis towards y.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``.
    phase_shift_deg, bfactor_angst2, scale
        ``rlnPhaseShift``, ``rlnCtfBfactor``, ``rlnCtfScalefactor``.
    pixel_size_angst, box_size
        Pixel size and side ``n`` of the images; ``nh = n // 2 + 1``.
    intact_first_peak
        Set the oscillating factor to 1 where ``|gamma| < pi / 2`` (RELION's
        ``--ctf_intact_first_peak``).
    """
    device = defocus_u_angst.device
    out_dtype = defocus_u_angst.dtype if dtype is None else dtype
    x, y = _frequency_grid_2d(box_size, pixel_size_angst, device)  # (n, nh)
    ctf = ctf_at_frequencies(
        torch.stack([x, y], dim=-1),
        defocus_u_angst=_column(defocus_u_angst, device),
        defocus_v_angst=_column(defocus_v_angst, device),
        defocus_angle_deg=_column(defocus_angle_deg, device),
        voltage_kv=_column(voltage_kv, device),
        spherical_aberration_mm=_column(spherical_aberration_mm, device),
        amplitude_contrast=_column(amplitude_contrast, device),
        phase_shift_deg=_column(phase_shift_deg, device),
        bfactor_angst2=_column(bfactor_angst2, device),
        scale=_column(scale, device),
        intact_first_peak=intact_first_peak,
    )
    return ctf.to(out_dtype)


def _critical_exposure(frequency_magnitude_inv_angst: Tensor) -> Tensor:
    """Grant & Grigorieff's ``Ne(k) = 0.245 k^-1.665 + 2.81`` (e-/A^2); ``inf`` at ``k = 0``."""
    # k = 0: 0.245 * inf + 2.81 = inf, so the weight exp(-D / (2 Ne)) is 1 as in RELION.
    return 0.245 * torch.pow(frequency_magnitude_inv_angst, -1.665) + 2.81


def dose_weight_at_frequencies(
    frequency_inv_angst: Float[Tensor, "*batch 2"],
    dose_e_per_angst2: Float[Tensor, "..."] | float,
) -> Float[Tensor, "..."]:
    """Grant & Grigorieff exposure filter at arbitrary frequencies ``(x, y)`` in 1/Angstrom.

    ``exp(-D / (2 Ne(|k|)))`` (module docstring); the dose broadcasts against
    ``frequency_inv_angst[..., 0]``. No voltage factor (RELION's tomography).
    Float64 on the device of the frequencies.
    """
    device = frequency_inv_angst.device
    k = torch.linalg.vector_norm(frequency_inv_angst.to(torch.float64), dim=-1)
    return torch.exp(-0.5 * _param(dose_e_per_angst2, device) / _critical_exposure(k))


def dose_weight(
    dose_e_per_angst2: Float[Tensor, " b"],
    *,
    pixel_size_angst: float,
    box_size: int,
    voltage_kv: float | None = None,
) -> Float[Tensor, "b n nh"]:
    """Grant & Grigorieff exposure filter per image on the 2D half-complex grid.

    ``exp(-D / (2 Ne(k)))`` with the critical exposure ``Ne`` of the module
    docstring; 1 at ``k = 0``. ``D`` is the accumulated dose before the image
    (``rlnMicrographPreExposure`` plus the image's own dose, as the caller
    decides). Computed in float64, returned in the dtype of the dose.

    Parameters
    ----------
    voltage_kv
        None (RELION's tomography: no voltage factor) or 300, 200 or 100: the
        dose is divided by 1, 0.8 or 0.64 as RELION's motion correction does.
    """
    device = dose_e_per_angst2.device
    dose = dose_e_per_angst2.to(torch.float64)
    if voltage_kv is not None:
        if float(voltage_kv) not in _DOSE_VOLTAGE_FACTOR:
            raise ValueError(f"dose weighting knows 300, 200 and 100 kV, not {voltage_kv}")
        dose = dose / _DOSE_VOLTAGE_FACTOR[float(voltage_kv)]
    x, y = _frequency_grid_2d(box_size, pixel_size_angst, device)
    critical = _critical_exposure(torch.sqrt(x * x + y * y))
    weight = torch.exp(-0.5 * dose.reshape(-1, 1, 1) / critical)
    return weight.to(dose_e_per_angst2.dtype)


def ctf_volume_to_half_complex(
    volume: Float[Tensor, "*batch z y x"],
    *,
    box_size: int,
    ctf_premultiplied: bool,
    ctf3d_squared: bool = True,
    multiplicity_threshold: float = 0.01,
    file_name: str = "3D CTF volume",
) -> tuple[Float[Tensor, "*batch n n nh"], Float[Tensor, "*batch n n nh"] | None]:
    """A particle's ``rlnCtfImage`` volume as the CTF weight and multiplicity of the 3D E-step.

    Accepts RELION's three layouts (REFINE_SPEC section 7.4; ``get3DCTFAndMulti``):

    1. ``(n, n, n)`` centred cube: the value for frequency ``k`` is read at voxel
       ``n // 2 - k`` on every axis (RELION reads the mirrored position);
    2. ``(n, n, n // 2 + 1)`` half-complex in FFTW order: taken as it is;
    3. ``(2 n, n, n // 2 + 1)``: CTF in z-slices ``0 .. n - 1``, multiplicity in
       ``n .. 2 n - 1``; coefficients with ``|k| > n // 2`` are set to 0 in both,
       and multiplicities not above ``multiplicity_threshold`` become 0
       (``--subtomo_multi_thr``).

    For CTF-premultiplied data the returned weight is CTF squared: ``|value|``
    when the file holds CTF squared (``ctf3d_squared``, RELION's default),
    ``value**2`` with ``--ctf3d_not_squared``. Otherwise the signed value is
    returned as it is. Leading axes (a batch of volumes of one layout) are kept.

    Raises
    ------
    InputError
        The shape fits none of the layouts, a multiplicity is negative, or
        multiplicities come without premultiplied data; ``file_name`` is named.
    """
    n, nh = box_size, box_size // 2 + 1
    shape = tuple(volume.shape[-3:])
    multiplicity = None
    if shape == (n, n, n):
        k = frequency_indices(n, 3, device=volume.device)  # (n, n, nh, 3) as (x, y, z)
        idx = (n // 2 - k) % n
        ctf = volume[..., idx[..., 2], idx[..., 1], idx[..., 0]]
    elif shape == (n, n, nh):
        ctf = volume
    elif shape == (2 * n, n, nh):
        if not ctf_premultiplied:
            raise InputError(
                f"{file_name}: CTF and multiplicity volume (2n x n x n/2+1) needs "
                "CTF-premultiplied data (rlnCtfDataAreCtfPremultiplied = 1)"
            )
        k = frequency_indices(n, 3, device=volume.device)
        inside = (k.to(torch.float64) ** 2).sum(-1) <= (nh - 1) ** 2
        ctf = torch.where(inside, volume[..., :n, :, :], 0.0)
        raw = torch.where(inside, volume[..., n:, :, :], 0.0)
        if bool((raw < 0).any()):
            raise InputError(f"{file_name}: multiplicity (z-slices n..2n-1) has negative values")
        multiplicity = torch.where(raw > multiplicity_threshold, raw, 0.0)
    else:
        raise InputError(
            f"{file_name}: 3D CTF volume of shape (z, y, x) = {shape}; expected "
            f"{(n, n, n)}, {(n, n, nh)} or {(2 * n, n, nh)} for box size {n}"
        )
    if ctf_premultiplied:
        ctf = ctf.abs() if ctf3d_squared else ctf * ctf
    return ctf, multiplicity
