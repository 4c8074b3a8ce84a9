"""Soft real-space masks, particle masking and solvent flattening, as RELION does them.

Real-space centre: voxel ``n // 2`` (``fourier.conventions``); ``r`` below is the
distance from it in pixels.

Soft sphere (RELION ``softMaskOutsideMap``, ``MlOptimiser::solventFlatten``)
    1 for ``r < R``, 0 for ``r > R + w``, ``0.5 + 0.5 cos(pi (r - R) / w)``
    between: the raised-cosine edge starts at the radius and runs *outwards*
    over ``w`` pixels (value 0.5 at ``R + w / 2``). For particles RELION takes
    ``R = particle_diameter / (2 pixel_size)`` and ``w = --maskedge`` (5 px).
Particle masking in the E-step (``MlOptimiser::getFourierTransformsAndCtfs``)
    ``x' = m x + (1 - m) b``. With ``--zero_mask`` RELION's ``b`` is the average
    of the background weighted by ``1 - m`` (about 0 for normalised particles,
    not exactly 0); without it (the default) ``b`` is a fresh noise image with
    the current noise spectrum (``noise_images``).
Solvent flattening
    The reference is multiplied by the mask; a second mask (``--solvent_mask2``)
    sets its region to the average of the map there.
"""

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier, rfft_shape
from cryorefine.fourier.shells import shell_values_to_grid

__all__ = [
    "check_mask_values",
    "mask_transforms",
    "mask_with_background",
    "noise_images",
    "radius_from_centre",
    "soft_sphere_mask",
    "solvent_flatten",
]


def radius_from_centre(
    box_size: int, ndim: int, *, device: torch.device | None, dtype: torch.dtype = torch.float64
) -> Float[Tensor, "..."]:
    """Distance in pixels of every voxel from voxel ``box_size // 2``: ``(n, .., n)``."""
    axis = torch.arange(box_size, device=device, dtype=dtype) - box_size // 2
    grids = torch.meshgrid(*([axis] * ndim), indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def soft_sphere_mask(
    box_size: int,
    ndim: int,
    *,
    radius_px: float,
    edge_width_px: float,
    device: torch.device | None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "..."]:
    """Sphere (circle for ``ndim=2``) of radius ``radius_px`` with a raised-cosine outer edge.

    Values as in the module docstring; ``edge_width_px = 0`` gives a hard
    mask (1 for ``r <= R``). ``(n, .., n)`` of ``ndim`` axes.
    """
    r = radius_from_centre(box_size, ndim, device=device)
    if edge_width_px <= 0:
        mask = (r <= radius_px).to(torch.float64)
    else:
        t = ((r - radius_px) / edge_width_px).clamp(0.0, 1.0)
        mask = 0.5 + 0.5 * torch.cos(torch.pi * t)
    return mask.to(dtype)


def check_mask_values(mask: Float[Tensor, "..."], *, name: str = "mask") -> None:
    """Raise ``InputError`` naming ``name`` (e.g. the file) unless all values lie in [0, 1]."""
    low, high = float(mask.min()), float(mask.max())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"{name}: mask values must lie between 0 and 1; found minimum {low:.6g} "
            f"and maximum {high:.6g}"
        )


def mask_with_background(
    images: Float[Tensor, "..."],
    mask: Float[Tensor, "..."],
    *,
    noise: Float[Tensor, "..."] | None = None,
) -> Float[Tensor, "..."]:
    """``mask * x + (1 - mask) * background`` for each image (RELION's particle masking).

    ``images (..., n, .., n)`` and ``mask (n, .., n)`` share their trailing
    axes. ``noise`` None: the background is each image's average weighted by
    ``1 - mask`` (RELION with ``--zero_mask``); otherwise ``noise`` (shaped
    like ``images``) fills it (RELION's default).
    """
    background = 1.0 - mask
    if noise is None:
        dims = tuple(range(-mask.ndim, 0))
        weight = background.sum()
        mean = (images * background).sum(dim=dims, keepdim=True) / weight
        return mask * images + background * mean
    return mask * images + background * noise


def mask_transforms(
    data_ft: Complex[Tensor, "..."],
    mask: Float[Tensor, "..."],
    *,
    noise: Float[Tensor, "..."] | None = None,
) -> Complex[Tensor, "..."]:
    """``to_fourier(mask_with_background(from_fourier(data_ft), mask, noise=noise))``.

    ``data_ft`` is ``(..., n, .., n // 2 + 1)`` over ``mask.ndim`` axes; ``mask`` and
    ``noise`` are centred as ``mask_with_background`` takes them (``noise`` is brought
    to the images' dtype and device). The images stay in
    the transforms' own order (origin at voxel 0) and the mask and noise are put in
    that order instead: no ``fftshift`` of every image and back, and the same values
    (masking voxel by voxel commutes with moving the voxels, and the background's
    average is a sum over them all).
    """
    dims = tuple(range(-mask.ndim, 0))
    n = mask.shape[0]
    images = torch.fft.irfftn(data_ft, s=(n,) * mask.ndim, dim=dims, norm="forward")
    mask = torch.fft.ifftshift(mask, dim=dims)
    if noise is not None:
        noise = torch.fft.ifftshift(noise, dim=dims).to(images)
    masked = mask_with_background(images, mask, noise=noise)
    return torch.fft.rfftn(masked, dim=dims, norm="forward")


def noise_images(
    sigma2_noise: Float[Tensor, "*batch s"],
    box_size: int,
    ndim: int,
    *,
    generator: torch.Generator,
    sigma2_fudge: float = 1.0,
) -> Float[Tensor, "..."]:
    """Real-space Gaussian noise with RELION's noise spectrum: ``(*batch, n, .., n)``.

    Real and imaginary parts of each coefficient of shell ``i`` are drawn from
    ``N(0, sigma2_fudge * sigma2_noise[i])`` (0 beyond the curve), then
    inverse-transformed with ``conventions.from_fourier`` (unnormalised
    inverse, as RELION). Random numbers come from ``generator`` on its device
    and are moved to the device of ``sigma2_noise``.
    """
    sigma = torch.sqrt(sigma2_fudge * sigma2_noise.clamp(min=0.0))
    std = shell_values_to_grid(sigma, box_size, ndim)  # (*batch, n, .., nh)
    shape = (*std.shape[:-ndim], *rfft_shape(box_size, ndim), 2)
    draws = torch.randn(
        shape, generator=generator, device=generator.device, dtype=sigma2_noise.dtype
    )
    coefficients = torch.view_as_complex(draws.to(std.device)) * std
    return from_fourier(coefficients, box_size, ndim)


def solvent_flatten(
    volume: Float[Tensor, "*batch z y x"],
    mask: Float[Tensor, "z y x"],
    *,
    second_mask: Float[Tensor, "z y x"] | None = None,
) -> Float[Tensor, "*batch z y x"]:
    """Multiply references by the solvent mask (RELION's ``solventFlatten``).

    With ``second_mask`` (``--solvent_mask2``): afterwards, ``v = (1 - m2) v +
    m2 * a`` where ``a`` is the ``m2``-weighted average of the flattened map.
    Mask values are the caller's to check (``check_mask_values``).
    """
    flattened = volume * mask
    if second_mask is None:
        return flattened
    dims = (-3, -2, -1)
    mean = (flattened * second_mask).sum(dim=dims, keepdim=True) / second_mask.sum()
    return (1.0 - second_mask) * flattened + second_mask * mean
