"""Gaussian-blob truths for the simulation tests: analytic projections, transforms, error bounds.

A blob ``a exp(-|x - c|^2 / (2 s^2))`` centred at offset ``c`` (voxels, ``(x, y, z)``,
from the box centre ``n // 2``) has the continuous transform, in the units of
``to_fourier`` (forward-normalised: ``F = (1/n^3) sum_x v(x) exp(-2 pi i q . x / n)``),

    F(q) = (a (2 pi s^2)^(3/2) / n^3) exp(-2 pi^2 s^2 |q|^2 / n^2) exp(-2 pi i q . c / n),

and its projection along z is ``a sqrt(2 pi) s exp(-|(x, y) - c_xy|^2 / (2 s^2))``.
Everything here is float64 and independent of the simulate package.
"""

import math
from pathlib import Path

import mrcfile
import numpy as np


def grid(n: int, ndim: int) -> np.ndarray:
    """Offsets from the centre ``n // 2``: ``(n, .., n, ndim)`` in ``(x, y[, z])`` order."""
    axis = np.arange(n, dtype=np.float64) - n // 2
    grids = np.meshgrid(*([axis] * ndim), indexing="ij")  # (z, y, x) tensor order
    return np.stack(grids[::-1], axis=-1)


def blob_volume(
    centres: np.ndarray, sigma: np.ndarray, amplitude: np.ndarray, n: int
) -> np.ndarray:
    """The blobs sampled on the ``n**3`` grid, axes ``(z, y, x)``."""
    d2 = ((grid(n, 3)[..., None, :] - centres) ** 2).sum(axis=-1)
    return (amplitude * np.exp(-d2 / (2 * sigma**2))).sum(axis=-1)


def write_truth(path: Path, volume: np.ndarray, pixel_size_angst: float) -> Path:
    """An MRC map written with mrcfile directly (not through the package under test)."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(volume.astype(np.float32))
        mrc.voxel_size = pixel_size_angst
    return path


def projections(
    centres: np.ndarray,
    sigma: np.ndarray,
    amplitude: np.ndarray,
    rotations: np.ndarray,
    origins_px: np.ndarray,
    n: int,
) -> np.ndarray:
    """Projections along z of the blobs at ``A c - origin``, for each pose: ``(b, n, n)``."""
    moved = np.einsum("bij,kj->bki", rotations, centres) - origins_px[:, None, :]
    xy = grid(n, 2)  # (n, n, 2)
    d2 = ((xy[None, :, :, None, :] - moved[:, None, None, :, :2]) ** 2).sum(axis=-1)
    height = amplitude * math.sqrt(2 * math.pi) * sigma
    return (height * np.exp(-d2 / (2 * sigma**2))).sum(axis=-1)


def blob_transform(
    q: np.ndarray, centres: np.ndarray, sigma: np.ndarray, amplitude: np.ndarray, n: int
) -> np.ndarray:
    """Continuous 3D transform (module docstring) at frequencies ``q (..., 3)`` (index units)."""
    mass = amplitude * (2 * math.pi * sigma**2) ** 1.5 / n**3
    q2 = (q**2).sum(axis=-1)[..., None]
    phase = np.exp(-2j * math.pi * (q @ centres.T) / n)
    return (mass * np.exp(-2 * math.pi**2 * sigma**2 * q2 / n**2) * phase).sum(axis=-1)


def trilinear_excess(volume: np.ndarray, padding_factor: int) -> float:
    """``sum_x |v(x)| (1 - L(x)) / L(x)``, ``L = prod_i sinc^2(x_i / p)``, ``p = padding n``.

    The projector divides the map by ``L`` (separable gridding correction) and
    interpolates its padded transform trilinearly. By Poisson summation, the
    interpolated value at ``q`` is ``(1/n^3) sum_x (v/L)(x) sum_j L(x/p + j)
    exp(-2 pi i q (x/p + j))``: the ``j = 0`` term is the exact transform of ``v``,
    and since ``sum_j L(u + j) = 1`` the aliases ``j != 0`` add at most
    ``(1/n^3) sum_x |v| (1 - L) / L``. This returns that sum without ``1/n^3``.
    """
    n = volume.shape[-1]
    x = grid(n, 3) / (padding_factor * n)
    lam = (np.sinc(x) ** 2).prod(axis=-1)
    return float((np.abs(volume) * (1 - lam) / lam).sum())


def alias_bound(sigma: np.ndarray, amplitude: np.ndarray) -> float:
    """Bound on the gap between the sampled blobs' transform and the continuous one, times n^3.

    Sampling at unit spacing adds copies of the continuous transform shifted by
    whole cycles per voxel; inside Nyquist (``|q_i| <= 1/2`` cycle per voxel)
    each of the 26 nearest copies is at least half a cycle away, so it is at
    most ``mass exp(-2 pi^2 s^2 / 4)``, and the farther ones sum to less than
    the nearest. Both the volume and a projection are sampled: factor 2.
    """
    mass = amplitude * (2 * math.pi * sigma**2) ** 1.5
    return float(2 * 2 * 26 * (mass * np.exp(-2 * math.pi**2 * sigma**2 / 4)).sum())


def first_harmonic_positions(ft_first: np.ndarray, n: int) -> np.ndarray:
    """Positions ``m`` (pixels) from ``F(e_i) = |F| exp(-2 pi i m_i / n)`` (``|m_i| < n / 2``)."""
    return -np.angle(ft_first) * n / (2 * math.pi)
