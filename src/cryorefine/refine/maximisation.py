"""M-step pieces besides the map itself: tau2 and SSNR from the FSC, coverage, priors, scales.

RELION's ``BackProjector::updateSSNRarrays`` and ``MlOptimiser::maximizationOtherParameters``
(REFINE_SPEC §4.5), with ``p`` the padding factor and ``T`` ``--tau2_fudge``:

- ``sigma2_rec(r) = 1 / mean(p**3 W)`` over the padded voxels of shell
  ``round(|K| / p)`` inside ``current_size / 2`` (``fourier.reconstruction_sigma2``);
- ``SSNR = T F / (1 - F)`` from the gold-standard FSC (``fourier.fsc_to_ssnr``:
  ``F = max(FSC, 0.001)``, ``sqrt(2F / (F + 1))`` for joined halves,
  ``min(F, 0.999)``) and ``tau2 = SSNR * sigma2_rec``;
- Fourier completeness of shell ``r``: the fraction of its voxels where the data
  outweigh the prior, ``W p**3 T tau2 >= 1`` (``0.001 W**2 >= 1`` where ``tau2 = 0``);
  the overall value averages it over the cube of half side ``maxres - 1``
  (``maxres``: last shell before ``SSNR < 1``), each lattice point with the value
  of shell ``int(|k|)``;
- offset prior ``sigma2 = S / (d W)``, ``d = 3`` for subtomograms and tilt
  series, 2 for images, at least ``min_sigma2_offset``; orientation pdf
  ``S_dir / W``; average norm correction ``S / W``;
- scale per group ``XA / AA`` (1 where ``AA = 0``), clamped to
  ``[median / 5, 5 median]`` (median = ``sorted[g // 2]``) and divided by the
  particle-weighted mean.

The initial model (``MlModel::initialiseDataVersusPrior``): ``tau2 = T P / 2``
with ``P`` the reference's power spectrum (times ``n**2`` when 2D images are
compared with a 3D map), and ``SSNR(r) = N tau2(r) / (sigma2(r) 2r)`` (``N``
particles, ``sigma2`` the mean noise over optics groups; no ``2r`` at ``r = 0``).
"""

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int64
from torch import Tensor

from cryorefine.fourier import (
    centred_half_frequencies,
    from_fourier,
    fsc_to_ssnr,
    low_pass,
    padded_size,
    power_spectrum,
    reconstruction_sigma2,
    soft_sphere_mask,
    to_fourier,
)
from cryorefine.refine.model import HalfSetModel
from cryorefine.refine.options import RefineOptions

__all__ = [
    "attenuate_beyond_ini_high",
    "flattening_mask",
    "fourier_completeness",
    "initial_data_versus_prior",
    "initial_half_model",
    "initial_low_pass",
    "norm_correction_average",
    "overall_fourier_completeness",
    "reconstruction_statistics",
    "scale_groups",
    "uniform_orientation_pdf",
    "update_orientation_pdf",
    "update_scale_correction",
    "update_sigma2_offset",
]


def fourier_completeness(
    weight: Float[Tensor, "p p ph"],
    tau2: Float[Tensor, " s"],
    *,
    ori_size: int,
    padding_factor: int,
    tau2_fudge: float,
    max_radius: int,
) -> Float[Tensor, " s"]:
    """Fraction of voxels per shell where data outweigh the prior (``rlnFourierCompleteness``).

    ``weight`` is the symmetrised back-projector weight (layout
    ``fourier.interpolation``); voxels with ``|K| < round(max_radius p)``.
    """
    p = padded_size(weight.shape)
    k = centred_half_frequencies(p, device=weight.device)
    r2 = (k * k).sum(dim=-1)
    limit = math.floor(max_radius * padding_factor + 0.5)
    inside = r2 < limit * limit
    shell = torch.floor(torch.sqrt(r2[inside].to(torch.float64)) / padding_factor + 0.5).long()
    w = weight[inside].to(torch.float64)
    t = tau2.to(weight.device, torch.float64)[shell.clamp(max=tau2.shape[0] - 1)]
    ratio = torch.where(t > 0, w * padding_factor**3 * tau2_fudge * t, 0.001 * w * w)
    size = ori_size // 2 + 1
    counts = torch.bincount(shell, minlength=size)[:size].to(torch.float64)
    covered = torch.bincount(shell, weights=(ratio >= 1).to(torch.float64), minlength=size)[:size]
    return torch.where(counts > 0, covered / counts.clamp(min=1.0), 0.0)


def reconstruction_statistics(
    weight: Float[Tensor, "p p ph"],
    fsc_curve: Float[Tensor, " s"],
    *,
    ori_size: int,
    padding_factor: int,
    current_size: int,
    tau2_fudge: float,
    joined_halves: bool,
) -> tuple[Float[Tensor, " s"], Float[Tensor, " s"], Float[Tensor, " s"], Float[Tensor, " s"]]:
    """``(sigma2_rec, tau2, ssnr, completeness)`` of one half's back-projector (module docstring).

    ``tau2`` then goes to ``fourier.reconstruct(..., tau2=tau2, tau2_fudge=T,
    tau2_min_shell=minres_map, max_radius=current_size // 2)``. ``joined_halves``
    for the final iteration.
    """
    radius = min(current_size // 2, ori_size // 2)
    sigma2 = reconstruction_sigma2(
        weight, ori_size=ori_size, padding_factor=padding_factor, max_radius=radius
    )
    ssnr = fsc_to_ssnr(
        fsc_curve.to(sigma2.device), tau2_fudge=tau2_fudge, joined_halves=joined_halves
    )
    tau2 = ssnr * sigma2
    completeness = fourier_completeness(
        weight,
        tau2,
        ori_size=ori_size,
        padding_factor=padding_factor,
        tau2_fudge=tau2_fudge,
        max_radius=radius,
    )
    return sigma2, tau2, ssnr, completeness


def overall_fourier_completeness(
    ssnr: Float[Tensor, " s"],
    completeness: Float[Tensor, " s"],
    *,
    ori_size: int,
    pixel_size_angst: float,
) -> tuple[float, float]:
    """``(rlnEstimatedResolution, rlnOverallFourierCompleteness)`` of a model.

    RELION's ``calculateTotalFourierCoverage`` (module docstring).

    Estimated resolution ``n p / maxres`` Angstrom (``inf`` for ``maxres = 0``,
    where the completeness is NaN: no lattice point).
    """
    below = (ssnr < 1.0).nonzero()
    first = int(below[0]) if len(below) else ssnr.shape[0]
    maxres = max(first - 1, 0)
    resolution = ori_size * pixel_size_angst / maxres if maxres > 0 else math.inf
    half = maxres - 1
    if half < 0:
        return resolution, math.nan
    axis = torch.arange(-half, half + 1, device=ssnr.device, dtype=torch.float64)
    plane = (axis[:, None] ** 2 + axis[None, :] ** 2).reshape(-1)
    values = completeness.to(ssnr.device, torch.float64)
    total = torch.zeros((), dtype=torch.float64, device=ssnr.device)
    count = torch.zeros((), dtype=torch.float64, device=ssnr.device)
    for z in axis:  # 2 maxres - 1 planes, once per written model
        r = torch.sqrt(plane + z * z).long()  # int(sqrt(.)) as RELION
        kept = r <= maxres
        total += values[r[kept].clamp(max=values.shape[0] - 1)].sum()
        count += kept.sum()
    return resolution, float(total / count)


def attenuate_beyond_ini_high(
    tau2: Float[Tensor, " s"],
    ssnr: Float[Tensor, " s"],
    *,
    ini_high_angst: float,
    ori_size: int,
    pixel_size_angst: float,
) -> tuple[Float[Tensor, " s"], Float[Tensor, " s"]]:
    """tau2 and SSNR after a ``--firstiter_cc`` iteration, times the squared ``ini_high`` low-pass.

    Edge 2 shells centred on ``n p / ini_high``: 1 below ``R - 1``, 0 above
    ``R + 1``, ``(0.5 - 0.5 cos(pi (R + 1 - r) / 2))**2`` between.
    """
    radius = ori_size * pixel_size_angst / ini_high_angst - 1.0
    outer = radius + 2.0
    r = torch.arange(tau2.shape[0], device=tau2.device, dtype=torch.float64)
    cosine = 0.5 - 0.5 * torch.cos(torch.pi * (outer - r) / 2.0)
    factor = torch.where(r < radius, 1.0, torch.where(r > outer, 0.0, cosine * cosine))
    return tau2 * factor, ssnr * factor


def initial_data_versus_prior(
    reference: Float[Tensor, "n n n"],
    sigma2_noise: Float[Tensor, "o s"],
    *,
    nr_particles: int,
    tau2_fudge: float,
    data_dimensionality: int,
) -> tuple[Float[Tensor, " s"], Float[Tensor, " s"]]:
    """``(tau2, ssnr)`` of the initial model (module docstring); float64."""
    n = reference.shape[-1]
    norm = float(n * n) if data_dimensionality == 2 else 1.0
    spectrum = power_spectrum(
        to_fourier(reference.to(torch.float64), 3), ndim=3, exclude_redundant=False
    )
    tau2 = tau2_fudge * spectrum * norm / 2.0
    used = sigma2_noise.sum(dim=-1) > 0
    noise = sigma2_noise.to(torch.float64)[used].mean(dim=0)
    shells = torch.arange(tau2.shape[0], device=tau2.device, dtype=torch.float64)
    evidence = nr_particles / noise.clamp(min=1e-300) / torch.where(shells > 0, 2.0 * shells, 1.0)
    return tau2, torch.where(noise > 0, evidence * tau2, 0.0)


def uniform_orientation_pdf(
    nr_directions: int, *, device: torch.device | None
) -> Float[Tensor, " m"]:
    """``1 / m`` for each of ``m`` directions (RELION's ``initialisePdfDirection``), float64."""
    return torch.full((nr_directions,), 1.0 / nr_directions, dtype=torch.float64, device=device)


def initial_half_model(
    reference: Float[Tensor, "n n n"],
    sigma2_noise: Float[Tensor, "o s"],
    *,
    half_set: int,
    options: RefineOptions,
    pixel_size_angst: float,
    data_dimensionality: int,
    group_names: tuple[str, ...],
    group_particle_counts: tuple[int, ...],
    nr_directions: int | None,
) -> HalfSetModel:
    """The model of one half before iteration 1 (``options.offset`` sets the offset prior)."""
    tau2, ssnr = initial_data_versus_prior(
        reference,
        sigma2_noise,
        nr_particles=sum(group_particle_counts),
        tau2_fudge=options.tau2_fudge,
        data_dimensionality=data_dimensionality,
    )
    zeros = torch.zeros_like(tau2)
    device = reference.device
    return HalfSetModel(
        half_set=half_set,
        reference=reference,
        pixel_size_angst=pixel_size_angst,
        data_dimensionality=data_dimensionality,
        sigma2_noise=sigma2_noise.to(torch.float64),
        tau2=tau2,
        ssnr=ssnr,
        fsc=zeros,
        sigma2_reconstruction=zeros,
        fourier_completeness=zeros,
        orientability=None,
        orientation_pdf=None
        if nr_directions is None
        else uniform_orientation_pdf(nr_directions, device=device),
        sigma2_offset_angst2=options.offset**2,
        norm_correction_average=1.0,
        average_pmax=0.0,
        log_likelihood=0.0,
        acc_rot_deg=999.0,
        acc_trans_angst=999.0,
        scale_correction=torch.ones(len(group_names), dtype=torch.float64, device=device),
        group_names=group_names,
        group_particle_counts=group_particle_counts,
    )


def update_sigma2_offset(
    offset_sums_angst2: float,
    weight_sum: float,
    *,
    data_is_3d: bool,
    min_sigma2_offset: float = 2.0,
) -> float:
    """Offset prior variance ``S / (d W)``, ``d = 3`` (3D, tomo) or 2, floored (Angstrom^2)."""
    dims = 3.0 if data_is_3d else 2.0
    return max(offset_sums_angst2 / (dims * weight_sum), min_sigma2_offset)


def norm_correction_average(norm_sum: float, weight_sum: float) -> float:
    """``rlnNormCorrectionAverage``: summed per-particle norm corrections over summed weights."""
    return norm_sum / weight_sum


def update_orientation_pdf(
    direction_sums: Float[Tensor, " m"], weight_sum: float
) -> Float[Tensor, " m"]:
    """Posterior mass per direction over the summed weights (``rlnOrientationDistribution``)."""
    return direction_sums.to(torch.float64) / weight_sum


def update_scale_correction(
    signal_product: Float[Tensor, " g"],
    reference_power: Float[Tensor, " g"],
    particle_counts: Float[Tensor, " g"],
) -> Float[Tensor, " g"]:
    """Per-group scale ``XA / AA``, clamped around the median and normalised (module docstring)."""
    xa = signal_product.to(torch.float64)
    aa = reference_power.to(torch.float64)
    scale = torch.where(aa > 0, xa / torch.where(aa > 0, aa, 1.0), 1.0)
    median = torch.sort(scale).values[scale.shape[0] // 2]
    scale = torch.minimum(torch.maximum(scale, median / 5.0), 5.0 * median)
    counts = particle_counts.to(torch.float64)
    return scale / ((counts * scale).sum() / counts.sum())


def initial_low_pass(
    volume: Float[Tensor, "n n n"], *, ini_high_angst: float, pixel_size_angst: float
) -> Float[Tensor, "n n n"]:
    """The initial reference low-passed at ``--ini_high`` (``initialLowPassFilterReferences``).

    Raised cosine of 2 shells centred on ``R = n p / ini_high`` (unrounded):
    coefficients kept below ``R - 1``, zero above ``R + 1`` (``fourier.low_pass``).
    ``ini_high <= 0`` returns the map unchanged.
    """
    if ini_high_angst <= 0:
        return volume
    n = volume.shape[-1]
    radius = n * pixel_size_angst / ini_high_angst
    filtered = low_pass(to_fourier(volume, 3), cutoff_shells=radius, ndim=3, edge_width_shells=2.0)
    return from_fourier(filtered, n, 3).to(volume.dtype)


def flattening_mask(
    options: RefineOptions, *, ori_size: int, pixel_size_angst: float, device: torch.device | None
) -> Float[Tensor, "n n n"]:
    """RELION's solvent mask without ``--solvent_mask`` (``solventFlatten``, REFINE_SPEC §4.9).

    1 inside radius ``particle_diameter / (2 p)`` pixels, 0 beyond it plus
    ``--maskedge``, raised cosine between (``fourier.soft_sphere_mask``); apply
    with ``fourier.solvent_flatten``, not in the final iteration. float64.
    """
    radius = options.particle_diameter / (2.0 * pixel_size_angst)
    return soft_sphere_mask(
        ori_size,
        3,
        radius_px=radius,
        edge_width_px=options.maskedge,
        device=device,
        dtype=torch.float64,
    )


_PIPELINE_PREFIX = re.compile(r"^[^/]+/job\d+/")


def scale_groups(
    names: Sequence[str],
) -> tuple[Int64[np.ndarray, " b"], tuple[str, ...], tuple[int, ...]]:
    """Scale groups of particles: ``(group index (0-based), group names, particles per group)``.

    RELION groups by ``rlnGroupName`` if present, else by micrograph (SPA) or
    tomogram name, the pipeline prefix ``Job/jobNNN/`` removed, numbering the
    groups in order of first appearance; it sorts the particles by
    micrograph (or 3D tomogram) name first, so pass the names in that order.
    """
    stripped = pd.Series(list(names), dtype=str).str.replace(_PIPELINE_PREFIX, "", regex=True)
    unique, first, inverse = np.unique(
        stripped.to_numpy(dtype=str), return_index=True, return_inverse=True
    )
    by_appearance = np.argsort(first)
    rank = np.empty_like(by_appearance)
    rank[by_appearance] = np.arange(len(unique))
    index = rank[inverse].astype(np.int64)
    counts = np.bincount(index, minlength=len(unique))
    return index, tuple(str(u) for u in unique[by_appearance]), tuple(int(c) for c in counts)
