"""Gridding: the real-space correction for trilinear interpolation, and iterative weights.

Trilinear interpolation on the padded Fourier grid of side ``p`` is a
convolution with a tent of one voxel, so it multiplies real space by the
tent's transform ``prod_i sinc^2(x_i / p)`` (``x`` in voxels from the box
centre ``n // 2``, ``sinc(t) = sin(pi t) / (pi t)``). RELION approximates it by
the radial ``sinc^2(|x| / p)`` and divides the map by it, before the transform
for projection and after the inverse transform of a reconstruction
(``Projector::griddingCorrect``). ``kind="radial"`` is RELION's,
``"separable"`` the exact product, ``"none"`` no correction.

The iterative weights are RELION's ``--dont_skip_gridding`` path (Pipe & Menon
1999, eq. 14; Matej 2001): ``w <- w / |c * (w W)|`` repeated, with ``c`` a
Kaiser-Bessel blob (radius 3.8 padded voxels, alpha 15, order 0), the
convolution done as a product with the blob's transform in real space.
"""

import math
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "GriddingCorrection",
    "iterative_gridding_weights",
    "mask_outside_sphere",
    "trilinear_gridding_correction",
]

GriddingCorrection = Literal["radial", "separable", "none"]

# RELION's BackProjector blob: radius 1.9 * 2 padded voxels, alpha 15, order 0.
BLOB_RADIUS_PX = 3.8
BLOB_ALPHA = 15.0


def _centred_coordinates(n: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(n, n, n, 3)`` voxel offsets ``(x, y, z)`` from the box centre ``n // 2``."""
    axis = torch.arange(n, device=device, dtype=dtype) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def trilinear_gridding_correction(
    n: int,
    *,
    padding_factor: int,
    kind: GriddingCorrection = "radial",
    device: torch.device,
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "n n n"]:
    """Real-space transform of the trilinear kernel on a padded grid, to divide a map by.

    Parameters
    ----------
    n
        Side of the (unpadded) box in voxels; the centre is voxel ``n // 2``.
    padding_factor
        The padded grid has side ``p = padding_factor * n``.
    kind
        ``"radial"``: ``sinc^2(|x| / p)`` (RELION); ``"separable"``:
        ``prod_i sinc^2(x_i / p)`` (exact for trilinear interpolation);
        ``"none"``: ones.
    device, dtype
        Of the returned tensor.
    """
    p = padding_factor * n
    x = _centred_coordinates(n, device=device, dtype=dtype) / p
    if kind == "radial":
        return torch.sinc(torch.linalg.vector_norm(x, dim=-1)) ** 2
    if kind == "separable":
        return (torch.sinc(x) ** 2).prod(dim=-1)
    if kind == "none":
        return torch.ones((n, n, n), device=device, dtype=dtype)
    raise ValueError(f"gridding correction kind must be radial, separable or none, got {kind!r}")


def _blob_transform(frequency: Tensor) -> Tensor:
    """3D transform of RELION's blob at ``frequency`` (cycles per voxel), up to a constant.

    Lewitt (1990): for order 0 in 3D the transform is proportional to
    ``I_{3/2}(z) / z^{3/2}`` with ``z^2 = alpha^2 - (2 pi a f)^2``, i.e. to
    ``(cosh z - sinh(z) / z) / z^2``; for ``z^2 < 0`` the same function of
    ``z^2`` is ``(sin(y) / y - cos(y)) / y^2``, ``y^2 = -z^2``.
    """
    s = BLOB_ALPHA**2 - (2 * math.pi * BLOB_RADIUS_PX * frequency) ** 2
    root = s.abs().sqrt().clamp(min=1e-3)
    positive = (torch.cosh(root) - torch.sinh(root) / root) / root**2
    negative = (torch.sin(root) / root - torch.cos(root)) / root**2
    series = 1 / 3 + s / 30 + s**2 / 840  # Taylor series in s about 0
    return torch.where(s.abs() < 1e-2, series, torch.where(s > 0, positive, negative))


def _blob_multiplier(p: int, *, device: torch.device) -> Float[Tensor, "p p p"]:
    """Blob transform on the real-space grid of side ``p`` in FFTW order, 1 at the origin."""
    axis = torch.arange(p, device=device, dtype=torch.float64)
    axis = torch.where(axis < p // 2, axis, axis - p)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    radius = torch.sqrt(x * x + y * y + z * z) / p
    return _blob_transform(radius) / _blob_transform(torch.zeros((), dtype=torch.float64))


def iterative_gridding_weights(
    weight: Float[Tensor, "p p ph"], inside: Tensor, *, iterations: int
) -> Float[Tensor, "p p ph"]:
    """Inverse weights by RELION's iterative gridding, on an FFTW-order half-grid (float64).

    Starts from ``w = 1`` inside the sphere ``inside`` (0 outside) and repeats
    ``w <- w / max(1e-6, |c * (w W)|)`` inside, ``c`` the blob; ``B * w``
    then replaces ``B / W``.
    """
    p = weight.shape[0]
    multiplier = _blob_multiplier(p, device=weight.device)
    weight = weight.to(torch.float64)
    inverse = inside.to(torch.float64)
    for _ in range(iterations):
        real = torch.fft.irfftn(inverse * weight, s=(p, p, p), norm="forward")
        convolved = torch.fft.rfftn(real * multiplier, norm="forward").abs()
        inverse = torch.where(inside, inverse / convolved.clamp(min=1e-6), inverse)
    return inverse


def mask_outside_sphere(
    volume: Float[Tensor, "n n n"], *, width_px: float | int
) -> Float[Tensor, "n n n"]:
    """RELION's ``softMaskOutsideMap``: beyond radius ``n / 2`` blend into the background mean.

    A raised cosine of ``width_px`` voxels goes from the map (at ``n / 2``) to
    the mean of the region outside (at ``n / 2 + width_px``), that mean taken
    with the same raised-cosine weights.
    """
    n = volume.shape[-1]
    offsets = _centred_coordinates(n, device=volume.device, dtype=volume.dtype)
    r = torch.linalg.vector_norm(offsets, dim=-1)
    radius = n / 2
    blend = 0.5 + 0.5 * torch.cos(math.pi * (radius + width_px - r) / width_px)
    blend = torch.where(r < radius, 0.0, torch.where(r > radius + width_px, 1.0, blend))
    background = (blend * volume).sum() / blend.sum().clamp(min=1e-30)
    return (1 - blend) * volume + blend * background
