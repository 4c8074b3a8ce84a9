"""Test objects for the projector tests: Gaussian blobs, projections, bounds, accumulators.

A blob ``a exp(-|r - c|^2 / (2 s^2))`` at reference position ``c`` lies at
``A c`` in the particle frame (RELION's ``A``); its projection along the
particle's z is ``a sqrt(2 pi) s exp(-|(x, y) - (A c)_xy|^2 / (2 s^2))``.
Positions are voxel offsets ``(x, y, z)`` from the box centre ``n // 2``.
"""

import math

import torch
from torch import Tensor

from cryorefine.fourier.gridding import trilinear_gridding_correction


def random_rotations(count: int, gen: torch.Generator) -> Tensor:
    """Uniformly random proper rotations (QR of Gaussian matrices), float64."""
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, dtype=torch.float64, generator=gen))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(q)
    return q * det[:, None, None]  # det -1 -> flip all columns: det becomes +1


def random_blobs(
    count: int, n: int, gen: torch.Generator, *, sigma_px: tuple[float, float] = (1.5, 2.5)
) -> tuple[Tensor, Tensor, Tensor]:
    """Centres within ``n / 8`` of the box centre, widths in ``sigma_px``, amplitudes 0.5-1.5."""
    direction = torch.randn(count, 3, dtype=torch.float64, generator=gen)
    direction /= direction.norm(dim=1, keepdim=True)
    radius = n / 8 * torch.rand(count, 1, dtype=torch.float64, generator=gen)
    low, high = sigma_px
    sigma = low + (high - low) * torch.rand(count, dtype=torch.float64, generator=gen)
    amplitude = 0.5 + torch.rand(count, dtype=torch.float64, generator=gen)
    return direction * radius, sigma, amplitude


def _grid(n: int, ndim: int) -> Tensor:
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    grids = torch.meshgrid(*([axis] * ndim), indexing="ij")
    return torch.stack(grids[::-1], dim=-1)  # (..., ndim) in (x, y[, z]) order


def blob_volume(centres: Tensor, sigma: Tensor, amplitude: Tensor, n: int) -> Tensor:
    """Blobs sampled on the ``n**3`` grid, tensor axes ``(z, y, x)``."""
    d2 = ((_grid(n, 3)[..., None, :] - centres) ** 2).sum(dim=-1)
    return (amplitude * torch.exp(-d2 / (2 * sigma**2))).sum(dim=-1)


def blob_projections(
    centres: Tensor, sigma: Tensor, amplitude: Tensor, rotations: Tensor, n: int
) -> Tensor:
    """Analytic projections along z of the blobs rotated by each ``A``: ``(r, n, n)``."""
    moved = centres @ rotations.transpose(-1, -2)  # (r, blobs, 3): A c
    d2 = ((_grid(n, 2)[None, :, :, None, :] - moved[:, None, None, :, :2]) ** 2).sum(dim=-1)
    height = amplitude * math.sqrt(2 * math.pi) * sigma
    return (height * torch.exp(-d2 / (2 * sigma**2))).sum(dim=-1)


def rotated_blob_volumes(
    centres: Tensor, sigma: Tensor, amplitude: Tensor, rotations: Tensor, n: int
) -> Tensor:
    """The blobs rotated by each ``A`` into the particle frame, sampled: ``(r, n, n, n)``."""
    return torch.stack(
        [blob_volume(centres @ a.T, sigma, amplitude, n) for a in rotations.unbind(0)]
    )


def trilinear_error_bound(volume: Tensor, *, padding_factor: int, kind: str) -> float:
    """Bound on ``|interpolated - exact|`` of the padded reference's Fourier values, times ``n**3``.

    Trilinear interpolation of the padded DFT at ``q`` equals
    ``p**-3 sum_x f(x) sum_j L(x/p + j) exp(-2 pi i q (x/p + j))`` (Poisson
    summation), ``L(u) = prod sinc^2(u_i)`` the tent's transform and
    ``f = v / g`` the pre-corrected map. With ``sum_j L(u + j) = 1`` the error
    against the exact ``p**-3 sum_x v(x) exp(-2 pi i q x / p)`` is at most
    ``p**-3 sum_x |v| (|L/g - 1| + (1 - L) / g)``. Returned: that sum without
    ``p**-3``, scaled by ``padding_factor**3`` as the reference is, i.e. to be
    divided by ``n**2`` for slices and ``n**3`` for volumes.
    """
    n = volume.shape[-1]
    exact = trilinear_gridding_correction(
        n, padding_factor=padding_factor, kind="separable", device=volume.device
    )
    applied = trilinear_gridding_correction(
        n, padding_factor=padding_factor, kind=kind, device=volume.device
    )
    excess = (exact / applied - 1).abs() + (1 - exact) / applied
    return float((volume.abs() * excess).sum())


def truth_error_bound(sigma: Tensor, amplitude: Tensor, n: int) -> float:
    """Bound on the gap between sampled sums and the continuous blobs, times ``n**3`` (or ``n**2``).

    Two effects, each bounded by the blobs' total mass times a relative factor:
    tails beyond the box (centres within ``n / 8``, so at least ``t = n / 2 -
    1 - n / 8`` from the nearest face; chi-3 tail ``erfc(u / sqrt 2) +
    sqrt(2 / pi) u exp(-u^2 / 2)``, ``u = t / s``) and aliasing of the
    transform at ``|nu| <= 1/2`` (each of the 26 neighbouring aliases at
    least ``1/2`` cycle per pixel away: ``exp(-2 pi^2 s^2 / 4)``). Both the
    volume and the image suffer each once, hence the factor 2.
    """
    mass = amplitude * (2 * math.pi * sigma**2) ** 1.5
    u = (n / 2 - 1 - n / 8) / sigma
    tail = torch.erfc(u / math.sqrt(2)) + math.sqrt(2 / math.pi) * u * torch.exp(-(u**2) / 2)
    alias = 26 * torch.exp(-2 * math.pi**2 * sigma**2 / 4)
    return float(2 * (mass * (tail + alias)).sum())


def random_accumulators(p: int, gen: torch.Generator, *, radius: float):
    """Random data and positive weights inside ``|K| <= radius``, zero outside (centred layout)."""
    shape = (p, p, p // 2 + 1)
    data = torch.complex(
        torch.randn(shape, dtype=torch.float64, generator=gen),
        torch.randn(shape, dtype=torch.float64, generator=gen),
    )
    weight = torch.rand(shape, dtype=torch.float64, generator=gen)
    k = centred_k(p)
    inside = (k * k).sum(dim=-1) <= radius**2
    return data * inside, weight * inside


def centred_k(p: int) -> torch.Tensor:
    """Integer ``(kx, ky, kz)`` of a ``(p, p, p // 2 + 1)`` centred half-grid, written out again."""
    axis = torch.arange(p) - p // 2
    kz, ky, kx = torch.meshgrid(axis, axis, torch.arange(p // 2 + 1), indexing="ij")
    return torch.stack([kx, ky, kz], dim=-1)
