"""Sharpening pieces of post-processing: Guinier plot and fit, FSC weighting, MTF division.

Facts from RELION's ``relion_postprocess`` (REFINE_SPEC section 8); the order in
which ``refine.postprocess`` applies them is in its module docstring. Transforms
are half-complex 3D (``fourier.conventions``); a shell's mean amplitude runs over
every stored coefficient, Friedel mates included, as RELION's loops do.
"""

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier.conventions import frequency_indices
from cryorefine.fourier.shells import radial_average, resolution_shell

__all__ = [
    "NO_AMPLITUDE",
    "divide_by_mtf",
    "fit_guinier_line",
    "fsc_weighting_curve",
    "guinier_plot",
    "particle_fraction_fsc",
]

#: Guinier value of a shell without amplitude (RELION's -99); such shells are not fitted.
NO_AMPLITUDE = -99.0

_WEIGHTING_FLOOR = 1e-4


def guinier_plot(
    volume_ft: Complex[Tensor, "n n nh"], *, pixel_size_angst: float
) -> tuple[Float[Tensor, " s"], Float[Tensor, " s"]]:
    """Guinier plot of a half-complex 3D transform: ``s^2`` (1/Angstrom^2) and ``ln`` mean ``|F|``.

    One point per shell ``i = 0 .. n // 2``: ``s^2 = (i / (n p))^2`` and the log of
    the mean amplitude over every stored coefficient of the shell, or
    ``NO_AMPLITUDE`` where that mean is 0.
    """
    n = volume_ft.shape[-3]
    mean = radial_average(volume_ft.abs(), n, 3, exclude_redundant=False)
    shells = torch.arange(n // 2 + 1, dtype=torch.float64, device=volume_ft.device)
    log_amplitude = torch.where(mean > 0, torch.log(mean.clamp(min=1e-300)), NO_AMPLITUDE)
    return (shells / (n * pixel_size_angst)) ** 2, log_amplitude


def fit_guinier_line(
    resolution_squared: Float[Tensor, " s"],
    log_amplitude: Float[Tensor, " s"],
    *,
    lowres_angst: float,
    highres_angst: float,
) -> tuple[float, float, float]:
    """Least-squares line through the Guinier points between two resolutions.

    Points with ``highres_angst <= 1 / s <= lowres_angst`` and an amplitude
    (``log_amplitude > NO_AMPLITUDE``) are fitted. Returns the slope, intercept
    and the squared correlation coefficient (RELION's ``rlnCorrelationFitGuinierPlot``);
    zeros when fewer than two distinct points remain (as RELION).
    """
    x = resolution_squared.to(torch.float64)
    y = log_amplitude.to(torch.float64)
    resolution = torch.where(x > 0, 1.0 / torch.sqrt(x.clamp(min=1e-300)), torch.inf)
    use = (resolution <= lowres_angst) & (resolution >= highres_angst) & (y > NO_AMPLITUDE)
    w = use.to(torch.float64)
    count = w.sum()
    if count < 2:
        return 0.0, 0.0, 0.0
    mean_x, mean_y = (w * x).sum() / count, (w * y).sum() / count
    ss_xx = (w * (x - mean_x) ** 2).sum()
    ss_yy = (w * (y - mean_y) ** 2).sum()
    ss_xy = (w * (x - mean_x) * (y - mean_y)).sum()
    if ss_xx <= 0:
        return 0.0, 0.0, 0.0
    slope = ss_xy / ss_xx
    correlation = ss_xy**2 / (ss_xx * ss_yy) if ss_yy > 0 else torch.ones_like(ss_xy)
    return float(slope), float(mean_y - slope * mean_x), float(correlation)


def fsc_weighting_curve(fsc_curve: Float[Tensor, " s"]) -> Float[Tensor, " s"]:
    """Per-shell FSC weight ``sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003).

    0 where ``FSC <= 0``, and from the first shell ``i > 0`` with ``FSC < 1e-4`` on
    (RELION's ``applyFscWeighting``).
    """
    f = fsc_curve.to(torch.float64)
    last = resolution_shell(f, _WEIGHTING_FLOOR).clamp(min=0)
    shells = torch.arange(f.shape[-1], device=f.device)
    weight = torch.sqrt((2.0 * f / (1.0 + f)).clamp(min=0.0))
    return torch.where((shells <= last) & (f > 0), weight, 0.0)


def divide_by_mtf(
    volume_ft: Complex[Tensor, "n n nh"],
    mtf: tuple[Float[Tensor, " m"], Float[Tensor, " m"]],
    *,
    pixel_size_angst: float,
) -> Complex[Tensor, "n n nh"]:
    """Divide each coefficient below Nyquist by the detector MTF at its frequency.

    ``mtf`` is a table of spatial frequencies (1/Angstrom, increasing) and MTF
    values, interpolated linearly between rows and held constant beyond its
    ends. Coefficients at or beyond Nyquist (``|k| >= n / 2``) are left as they
    are, as RELION's ``divideByMtf`` leaves them. (RELION looks a frequency up
    by dividing it by the mean row spacing, which assumes evenly spaced rows
    from 0; here the rows are searched, so both agree on such tables up to the
    curvature of the MTF within one row.)
    """
    n = volume_ft.shape[-3]
    device = volume_ft.device
    table_x = mtf[0].to(device=device, dtype=torch.float64)
    table_y = mtf[1].to(device=device, dtype=torch.float64)
    k = frequency_indices(n, 3, device=device).to(torch.float64)
    s = torch.linalg.vector_norm(k, dim=-1) / (n * pixel_size_angst)
    upper = torch.searchsorted(table_x, s.reshape(-1)).clamp(1, table_x.numel() - 1)
    x0, x1 = table_x[upper - 1], table_x[upper]
    t = ((s.reshape(-1) - x0) / (x1 - x0)).clamp(0.0, 1.0)
    value = (table_y[upper - 1] + t * (table_y[upper] - table_y[upper - 1])).reshape(s.shape)
    value = torch.where(s < 0.5 / pixel_size_angst, value, 1.0)
    return volume_ft / value.to(volume_ft.real.dtype)


def particle_fraction_fsc(
    fsc_unmasked: Float[Tensor, " s"], *, particle_box_fraction: float
) -> Float[Tensor, " s"]:
    """cisTEM-like "part" FSC of the unmasked maps: ``f FSC / (1 + (f - 1) FSC)``.

    RELION takes ``f = 0.476 / (fraction of box voxels where the mask > 0.5)``
    (``rlnParticleBoxFractionSolventMask``; 0.476 is a sphere's share of its box)
    and writes the curve as ``rlnFourierShellCorrelationParticleMaskFraction``.
    """
    f = particle_box_fraction
    u = fsc_unmasked.to(torch.float64)
    return f * u / (1.0 + (f - 1.0) * u)
