"""Fourier conventions of cryorefine, stated once (RELION's, shared/docs/REFINE_SPEC.md §1.4-1.5).

Axes
    Tensors index ``(z, y, x)`` (2D: ``(y, x)``); coordinate vectors, frequency
    vectors and rotation matrices are ``(x, y, z)``.
Real-space origin
    The centre of a box of side ``n`` is voxel ``n // 2`` on every axis
    (RELION's logical origin). Rotations, masks and shifts are about it.
Transform
    ``to_fourier`` moves voxel ``n // 2`` to index 0 (``ifftshift``) and takes
    ``torch.fft.rfftn(..., norm="forward")``: the forward transform is divided
    by the number of voxels, the inverse is not (FFTW as RELION uses it).
    So the transform of a centred object is real where the object is even.
Layout
    Half-complex, not centred: the last axis holds ``kx = 0 .. n // 2``
    (``n // 2 + 1`` entries); the other axes hold ``k = i`` for
    ``i <= n // 2`` and ``k = i - n`` above (FFTW order). Frequencies are
    integer indices; ``k / (n * pixel_size_angst)`` is in 1/Angstrom, and
    ``k / n`` in cycles per pixel (``_fftfreq``).
Shells
    Shell of a coefficient: ``round(|k|)``; the Nyquist shell is ``n // 2``;
    spectra have ``n // 2 + 1`` entries. The ``kx = 0`` plane holds each
    coefficient and its Friedel mate; ``friedel_redundant`` marks the mates that
    per-shell counts leave out (``kx == 0`` and ``ky < 0``, as RELION).
Shifts
    Moving content by ``+s`` pixels multiplies ``F(k)`` by
    ``exp(-2 pi i k . s / n)``.
"""

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "frequency_indices",
    "friedel_redundant",
    "from_fourier",
    "rfft_shape",
    "shell_index",
    "to_fourier",
]


def rfft_shape(n: int, ndim: int) -> tuple[int, ...]:
    """Shape ``(n, .., n, n // 2 + 1)`` of the half-complex transform of an ``n**ndim`` box."""
    return (n,) * (ndim - 1) + (n // 2 + 1,)


def to_fourier(x: Float[Tensor, "..."], ndim: int) -> Tensor:
    """Half-complex transform of the last ``ndim`` axes, real-space origin at ``n // 2``.

    Returns complex ``(..., n, .., n // 2 + 1)``; normalised as RELION (forward / n**ndim).
    """
    dims = tuple(range(-ndim, 0))
    return torch.fft.rfftn(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="forward")


def from_fourier(f: Tensor, n: int, ndim: int) -> Tensor:
    """Inverse of ``to_fourier`` for a box of side ``n``: real ``(..., n, .., n)``."""
    dims = tuple(range(-ndim, 0))
    x = torch.fft.irfftn(f, s=(n,) * ndim, dim=dims, norm="forward")
    return torch.fft.fftshift(x, dim=dims)


def frequency_indices(
    n: int, ndim: int, *, device: torch.device | None = None
) -> Int[Tensor, "... ndim"]:
    """Integer frequency ``(kx, ky[, kz])`` of every coefficient of the half-complex layout.

    Returns ``(n, .., n // 2 + 1, ndim)`` int64, last axis in ``(x, y, z)`` order.
    Index ``n // 2`` on a full axis is ``+n // 2`` (FFTW order).
    """
    full = torch.arange(n, device=device)
    full = torch.where(full <= n // 2, full, full - n)
    half = torch.arange(n // 2 + 1, device=device)
    axes = [full] * (ndim - 1) + [half]  # (z, y, x) order of the tensor axes
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids[::-1], dim=-1)


def shell_index(n: int, ndim: int, *, device: torch.device | None = None) -> Int[Tensor, "..."]:
    """Shell ``round(|k|)`` of every coefficient of the half-complex layout (int64)."""
    k = frequency_indices(n, ndim, device=device).to(torch.float64)
    return torch.round(torch.linalg.vector_norm(k, dim=-1)).to(torch.int64)


def friedel_redundant(
    n: int, ndim: int, *, device: torch.device | None = None
) -> Bool[Tensor, "..."]:
    """Coefficients on ``kx = 0`` with ``ky < 0``: Friedel mates left out of per-shell counts."""
    k = frequency_indices(n, ndim, device=device)
    return (k[..., 0] == 0) & (k[..., 1] < 0)
