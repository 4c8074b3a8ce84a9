"""Reconstruction from symmetrised accumulators: regularised average, inverse transform, gridding.

RELION's ``BackProjector::reconstruct`` (REFINE_SPEC §4.5), on accumulators
``B`` (data) and ``W`` (weight) of side ``p = padding_factor * ori_size`` that
went through ``symmetrise`` (layout: ``fourier.interpolation``):

1. Regularisation (``tau2`` given): inside the sphere ``|K| < max_radius *
   padding_factor``, for voxels whose shell ``round(|K| / padding_factor)``
   (``round`` half away from zero, as RELION's ``ROUND``) is at least
   ``tau2_min_shell``, ``W' = W + 1 / (padding_factor**3 * tau2_fudge *
   tau2[shell])``; where ``tau2[shell] <= 0``, ``W' = W + 1 / (0.001 * W)``
   (``W > 1e-20``, else ``W``). ``tau2`` has ``ori_size // 2 + 1`` entries, one
   per shell of the *unpadded* box, in the units of ``|B / W|^2`` (for 2D data
   those of the images' Fourier coefficients, like ``sigma2_noise``).
   ``padding_factor**3`` converts the padded grid's weight density to the
   unpadded one's.
2. Average: ``F = B / max(W', floor)`` inside the sphere, 0 outside, with
   ``floor`` = ``min_weight_fraction`` (1/1000) times the mean ``W'`` of the
   voxels whose ``floor(|K| / padding_factor)`` is the same (shells beyond
   ``max_radius - 1`` use the last one); this is RELION's default
   ("gridding skipped") and also the rule without ``tau2``. With
   ``iterative_gridding`` (RELION's ``--dont_skip_gridding``), ``F = B * w``
   with ``w`` from ``fourier.gridding.iterative_gridding_weights`` instead.
3. ``F`` divided by ``padding_factor**3`` (and by ``ori_size`` for 2D data,
   whose coefficients are ``ori_size`` times the 3D ones), inverse transform,
   crop the centre ``ori_size**3``, RELION's soft mask outside radius
   ``ori_size / 2`` (``fourier.gridding.mask_outside_sphere``), divide by the
   gridding correction of the trilinear insertion.

``reconstruction_sigma2`` gives RELION's noise power of the reconstruction per
shell, and ``downsampled_average`` the unregularised ``B / W`` on the unpadded
grid that RELION's gold-standard FSC compares.
"""

from typing import Literal

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier.conventions import from_fourier
from cryorefine.fourier.gridding import (
    GriddingCorrection,
    iterative_gridding_weights,
    mask_outside_sphere,
    trilinear_gridding_correction,
)
from cryorefine.fourier.interpolation import (
    _real_dtype,
    centred_half_frequencies,
    padded_size,
)

__all__ = [
    "average_to_map",
    "downsampled_average",
    "reconstruct",
    "reconstruction_sigma2",
    "regularised_average",
]


def _shells(p: int, padding_factor: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Squared radius ``|K|^2`` (int64), RELION ``ROUND(|K| / pad)`` and ``FLOOR(|K| / pad)``."""
    k = centred_half_frequencies(p, device=device)
    r2 = (k * k).sum(dim=-1)
    r = torch.sqrt(r2.to(torch.float64)) / padding_factor
    return r2, torch.floor(r + 0.5).to(torch.int64), torch.floor(r).to(torch.int64)


def _check_sizes(data: Tensor, weight: Tensor, ori_size: int, padding_factor: int) -> int:
    p = padded_size(data.shape)
    if weight.shape != data.shape or p != padding_factor * ori_size:
        raise ValueError(
            f"accumulators {tuple(data.shape)} / {tuple(weight.shape)} do not fit "
            f"ori_size {ori_size} with padding_factor {padding_factor}"
        )
    return p


def _radius(max_radius: int | None, ori_size: int, *, most: int) -> int:
    radius = ori_size // 2 if max_radius is None else max_radius
    if not 1 <= radius <= most:
        raise ValueError(f"max_radius must be in [1, {most}] shells, got {radius}")
    return radius


def _add_tau2_term(
    weight: Tensor,
    tau2: Tensor,
    regularised: Tensor,
    shell: Tensor,
    *,
    tau2_fudge: float | int,
    padding_factor: int,
) -> Tensor:
    tau = tau2.to(weight.device, weight.dtype)[shell.clamp(max=tau2.shape[0] - 1)]
    positive = 1 / (padding_factor**3 * tau2_fudge * tau.clamp(min=torch.finfo(tau.dtype).tiny))
    small = torch.where(weight > 1e-20, 1 / (0.001 * weight.clamp(min=1e-20)), 0.0)
    return torch.where(regularised, weight + torch.where(tau > 0, positive, small), weight)


def regularised_average(
    data: Complex[Tensor, "p p ph"],
    weight: Float[Tensor, "p p ph"],
    *,
    ori_size: int,
    padding_factor: int = 2,
    tau2: Float[Tensor, " s"] | None = None,
    tau2_fudge: float | int = 1.0,
    tau2_min_shell: int = 5,
    max_radius: int | None = None,
    min_weight_fraction: float | int = 1e-3,
    iterative_gridding: bool = False,
    gridding_iterations: int = 10,
) -> Complex[Tensor, "p p ph"]:
    """Regularised Fourier average ``F`` of the accumulators (steps 1-2 of the module docstring).

    Parameters
    ----------
    data, weight
        Symmetrised accumulators.
    ori_size
        Box side of the map; ``p = padding_factor * ori_size``.
    padding_factor
        Of the accumulators.
    tau2
        Signal power per unpadded shell (``ori_size // 2 + 1`` entries,
        RELION's ``rlnReferenceTau2``), or ``None`` for no regularisation.
    tau2_fudge
        RELION's ``--tau2_fudge`` ``T``.
    tau2_min_shell
        Shells below it get no ``tau2`` term (RELION's ``--minres_map``, 5).
    max_radius
        Unpadded radius in shells beyond which ``F = 0``; default ``ori_size // 2``
        (RELION's ``current_size / 2`` of the back-projector); at most ``ori_size``.
    min_weight_fraction
        Floor of the weight as a fraction of its shell mean (RELION: 1/1000).
    iterative_gridding, gridding_iterations
        RELION's ``--dont_skip_gridding`` and ``--gridding_iter`` (10).

    Returns
    -------
    Tensor
        ``F`` in the same centred half-grid layout, dtype of ``data``.
    """
    p = _check_sizes(data, weight, ori_size, padding_factor)
    radius = _radius(max_radius, ori_size, most=ori_size)
    r2, shell, floor_shell = _shells(p, padding_factor, data.device)
    inside = r2 < (radius * padding_factor) ** 2
    if tau2 is not None:
        if tau2.shape != (ori_size // 2 + 1,):
            raise ValueError(f"tau2 must have {ori_size // 2 + 1} shells, got {tuple(tau2.shape)}")
        regularised = inside & (shell >= tau2_min_shell)
        weight = _add_tau2_term(
            weight,
            tau2,
            regularised,
            shell,
            tau2_fudge=tau2_fudge,
            padding_factor=padding_factor,
        )
    if iterative_gridding:
        to_fftw = (0, 1)
        inverse = iterative_gridding_weights(
            torch.fft.ifftshift(weight, dim=to_fftw),
            torch.fft.ifftshift(inside, dim=to_fftw),
            iterations=gridding_iterations,
        )
        inverse = torch.fft.fftshift(inverse, dim=to_fftw).to(_real_dtype(data.dtype))
        return torch.where(inside, data * inverse, 0)
    floor_shell = floor_shell.clamp(max=radius - 1)
    index = floor_shell[inside]
    sums = torch.zeros(radius, dtype=weight.dtype, device=weight.device)
    sums.index_add_(0, index, weight[inside])
    counts = torch.bincount(index, minlength=radius).clamp(min=1).to(weight.dtype)
    floor = (min_weight_fraction * sums / counts)[floor_shell]
    denominator = torch.maximum(weight, floor)
    safe = inside & (denominator > 0)
    return torch.where(safe, data / torch.where(safe, denominator, 1.0), 0)


def average_to_map(
    average: Complex[Tensor, "p p ph"],
    *,
    ori_size: int,
    padding_factor: int = 2,
    data_dim: Literal[2, 3],
    gridding_correction: GriddingCorrection = "radial",
    mask_width_px: float | int | None = 3.0,
) -> Float[Tensor, "n n n"]:
    """Real-space map of side ``ori_size`` from a padded Fourier average (step 3).

    Parameters
    ----------
    average
        From ``regularised_average``.
    ori_size, padding_factor
        ``p = padding_factor * ori_size``.
    data_dim
        2 for slices (``insert_slices``: coefficients scaled by ``ori_size``),
        3 for volumes (``insert_volumes``).
    gridding_correction
        Kind of the trilinear correction divided out (``fourier.gridding``).
    mask_width_px
        Width of RELION's soft mask beyond radius ``ori_size / 2``; ``None``
        leaves the corners as they are.
    """
    p = padded_size(average.shape)
    if p != padding_factor * ori_size or data_dim not in (2, 3):
        raise ValueError(
            f"average {tuple(average.shape)} with ori_size {ori_size}, padding_factor "
            f"{padding_factor}, data_dim {data_dim}: expected p = padding_factor * ori_size"
        )
    scale = padding_factor**3 * (ori_size if data_dim == 2 else 1)
    padded = from_fourier(torch.fft.ifftshift(average, dim=(0, 1)) / scale, p, 3)
    start = p // 2 - ori_size // 2
    box = slice(start, start + ori_size)
    volume = padded[box, box, box]
    if mask_width_px is not None:
        volume = mask_outside_sphere(volume, width_px=mask_width_px)
    correction = trilinear_gridding_correction(
        ori_size,
        padding_factor=padding_factor,
        kind=gridding_correction,
        device=volume.device,
        dtype=volume.dtype,
    )
    return volume / correction


def reconstruct(
    data: Complex[Tensor, "p p ph"],
    weight: Float[Tensor, "p p ph"],
    *,
    ori_size: int,
    padding_factor: int = 2,
    data_dim: Literal[2, 3],
    tau2: Float[Tensor, " s"] | None = None,
    tau2_fudge: float | int = 1.0,
    tau2_min_shell: int = 5,
    max_radius: int | None = None,
    min_weight_fraction: float | int = 1e-3,
    iterative_gridding: bool = False,
    gridding_iterations: int = 10,
    gridding_correction: GriddingCorrection = "radial",
    mask_width_px: float | int | None = 3.0,
) -> Float[Tensor, "n n n"]:
    """Map from symmetrised accumulators: ``average_to_map(regularised_average(...))``.

    All work stays on the accumulators' device. Parameters as in
    ``regularised_average`` and ``average_to_map`` (module docstring: the
    steps, the units of ``tau2``, the weight floor).
    """
    average = regularised_average(
        data,
        weight,
        ori_size=ori_size,
        padding_factor=padding_factor,
        tau2=tau2,
        tau2_fudge=tau2_fudge,
        tau2_min_shell=tau2_min_shell,
        max_radius=max_radius,
        min_weight_fraction=min_weight_fraction,
        iterative_gridding=iterative_gridding,
        gridding_iterations=gridding_iterations,
    )
    return average_to_map(
        average,
        ori_size=ori_size,
        padding_factor=padding_factor,
        data_dim=data_dim,
        gridding_correction=gridding_correction,
        mask_width_px=mask_width_px,
    )


def reconstruction_sigma2(
    weight: Float[Tensor, "p p ph"],
    *,
    ori_size: int,
    padding_factor: int = 2,
    max_radius: int | None = None,
) -> Float[Tensor, " s"]:
    """Noise power of the reconstruction per unpadded shell, ``1 / mean(padding_factor**3 * W)``.

    RELION's ``rlnReferenceSigma2`` (REFINE_SPEC §4.5 step 1): mean over the
    voxels with ``|K| < max_radius * padding_factor`` whose
    ``round(|K| / padding_factor)`` is the shell; 0 where the summed weight is
    at most 1e-10. Returns ``ori_size // 2 + 1`` float64 values.
    """
    p = _check_sizes(weight, weight, ori_size, padding_factor)
    radius = _radius(max_radius, ori_size, most=ori_size // 2)
    r2, shell, _ = _shells(p, padding_factor, weight.device)
    inside = r2 < (radius * padding_factor) ** 2
    index = shell[inside]
    size = ori_size // 2 + 1
    sums = torch.zeros(size, dtype=torch.float64, device=weight.device)
    sums.index_add_(0, index, padding_factor**3 * weight[inside].to(torch.float64))
    counts = torch.bincount(index, minlength=size)[:size].to(torch.float64)
    return torch.where(sums > 1e-10, counts / sums.clamp(min=1e-10), 0.0)


def downsampled_average(
    data: Complex[Tensor, "p p ph"],
    weight: Float[Tensor, "p p ph"],
    *,
    padding_factor: int = 2,
) -> Complex[Tensor, "n n nh"]:
    """Unregularised average ``sum B / sum W`` on the unpadded grid, for the gold-standard FSC.

    RELION's ``getDownsampledAverage``: every padded voxel ``K`` adds its data
    and weight to the unpadded coefficient ``k = round(K / padding_factor)``
    (per axis, half away from zero); ``k`` with no weight get 0. Returns the
    half-complex FFTW layout of ``fourier.conventions`` for side
    ``n = p // padding_factor``, as ``to_fourier`` gives, so the FSC of two
    halves can be computed directly (RELION uses shells ``<= current_size / 2``).
    """
    p = padded_size(data.shape)
    if weight.shape != data.shape or p % padding_factor:
        raise ValueError(
            f"accumulators {tuple(data.shape)} do not fit padding_factor {padding_factor}"
        )
    n = p // padding_factor
    k = centred_half_frequencies(p, device=data.device).to(torch.float64) / padding_factor
    k = (torch.sign(k) * torch.floor(k.abs() + 0.5)).to(torch.int64)
    kx, ky, kz = k.unbind(-1)
    index = ((torch.remainder(kz, n) * n + torch.remainder(ky, n)) * (n // 2 + 1) + kx).reshape(-1)
    size = n * n * (n // 2 + 1)
    real_dtype = _real_dtype(data.dtype)
    sums = torch.zeros((size, 2), dtype=real_dtype, device=data.device)
    sums.index_add_(0, index, torch.view_as_real(data.contiguous()).reshape(-1, 2))
    counts = torch.zeros(size, dtype=real_dtype, device=data.device)
    counts.index_add_(0, index, weight.reshape(-1).to(real_dtype))
    average = torch.view_as_complex(sums) / torch.where(counts > 0, counts, 1.0)
    return torch.where(counts > 0, average, 0).reshape(n, n, n // 2 + 1)
