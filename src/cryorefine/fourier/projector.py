"""Projector: a padded Fourier reference, its central slices and its 3D rotations.

The reference is kept as a padded centred half-grid (layout:
``fourier.interpolation``): the map of side ``n`` is zero-padded about its
centre ``n // 2`` to ``p = padding_factor * n``, transformed with
``to_fourier`` and multiplied by ``padding_factor ** 3``, so that
``reference_ft[K]`` is the unpadded map's coefficient at frequency
``K / padding_factor`` (exactly at multiples of ``padding_factor`` when no
gridding correction is applied).
RELION stores the same grid times ``n`` for 2D data; here that factor is
applied by ``extract_slices``.

Rotation matrices are RELION's ``A`` (``geometry``), mapping reference
coordinates to the particle frame: slice pixel ``(x, y)`` samples the reference
at ``A.T @ (x, y, 0) * padding_factor`` and voxel ``k`` of a rotated volume at
``A.T @ k * padding_factor``, by trilinear interpolation (RELION's
``Projector::project`` and ``rotate3D``). Outputs are in the half-complex,
non-centred layout of ``fourier.conventions`` for a box of side ``out_size``,
directly comparable with ``to_fourier`` of particle images; coefficients with
``|k| > max_radius`` are zero.
"""

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier.conventions import to_fourier
from cryorefine.fourier.gridding import GriddingCorrection, trilinear_gridding_correction
from cryorefine.fourier.interpolation import (
    _kept_frequencies,
    centred_half_frequencies,
    padded_size,
)
from cryorefine.fourier.rotated_samples import sample_rotated

__all__ = ["extract_slices", "prepare_reference", "rotate_volume"]


def prepare_reference(
    volume: Float[Tensor, "n n n"],
    *,
    padding_factor: int = 2,
    gridding_correction: GriddingCorrection = "radial",
    max_radius: float | int | None = None,
) -> Complex[Tensor, "p p ph"]:
    """Pad and transform a map into a centred Fourier reference (``computeFourierTransformMap``).

    Parameters
    ----------
    volume
        Map, tensor axes ``(z, y, x)``, centre at voxel ``n // 2``; float32 or
        float64 (the result is complex64 or complex128).
    padding_factor
        ``p = padding_factor * n``; RELION's ``--pad`` (2).
    gridding_correction
        Divide the map by the trilinear kernel's transform before padding
        (``fourier.gridding``): ``"radial"`` ``sinc^2(|x| / p)`` as RELION,
        ``"separable"`` the exact product, ``"none"``.
    max_radius
        If given, coefficients with ``|K| > max_radius * padding_factor``
        (``max_radius`` in shells of the unpadded box) are set to zero, as
        RELION does with ``current_size / 2``.

    Returns
    -------
    Tensor
        ``(p, p, p // 2 + 1)`` centred half-grid, zero frequency at
        ``[p // 2, p // 2, 0]``, scaled by ``padding_factor ** 3``.
    """
    n = volume.shape[-1]
    if volume.shape != (n, n, n):
        raise ValueError(f"volume must be a cube, got shape {tuple(volume.shape)}")
    p = padding_factor * n
    correction = trilinear_gridding_correction(
        n,
        padding_factor=padding_factor,
        kind=gridding_correction,
        device=volume.device,
        dtype=volume.dtype,
    )
    padded = volume.new_zeros((p, p, p))
    start = p // 2 - n // 2
    padded[start : start + n, start : start + n, start : start + n] = volume / correction
    reference: Tensor = torch.fft.fftshift(to_fourier(padded, 3), dim=(0, 1))
    reference = reference * padding_factor**3
    if max_radius is not None:
        k = centred_half_frequencies(p, device=volume.device)
        outside = (k * k).sum(dim=-1) > (max_radius * padding_factor) ** 2
        reference = reference.masked_fill(outside, 0)
    return reference.contiguous()


def _sample(
    reference_ft: Tensor,
    rotations: Tensor,
    *,
    out_size: int,
    ndim: int,
    padding_factor: int,
    max_radius: float | int | None,
    scale: float | int,
) -> Tensor:
    """Body of ``extract_slices`` and ``rotate_volume``: ``(r, n**(ndim-1) * nh)`` complex."""
    p = padded_size(reference_ft.shape)
    if p % padding_factor:
        raise ValueError(f"padded side {p} is not a multiple of padding_factor {padding_factor}")
    if out_size > p // padding_factor:
        raise ValueError(f"out_size {out_size} exceeds the reference's size {p // padding_factor}")
    radius = out_size // 2 if max_radius is None else max_radius
    flat, freq = _kept_frequencies(out_size, ndim, float(radius), reference_ft.device)
    values = torch.view_as_real(
        sample_rotated(
            reference_ft,
            rotations,
            freq,
            padding_factor=padding_factor,
            max_radius=float(radius),
            scale=float(scale),
        )
    )
    nh = out_size // 2 + 1
    out = values.new_zeros((rotations.shape[0], out_size ** (ndim - 1) * nh, 2))
    out[:, flat] = values
    return torch.view_as_complex(out)


def extract_slices(
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "r 3 3"],
    *,
    out_size: int,
    padding_factor: int = 2,
    max_radius: float | int | None = None,
) -> Complex[Tensor, "r n nh"]:
    """Central slices of a Fourier reference, the transforms of its projections (``project``).

    Slice pixel ``(x, y)`` samples the reference at ``A.T @ (x, y, 0) *
    padding_factor`` (trilinear, Friedel mate for ``x < 0``) and is multiplied
    by the unpadded size ``p // padding_factor``, so that a slice equals
    ``to_fourier(projection, 2)`` of the map rotated by ``A`` and summed along z.

    Parameters
    ----------
    reference_ft
        From ``prepare_reference``.
    rotations
        RELION's matrices ``A`` (reference to particle frame).
    out_size
        Side ``n`` of the slices (the current image size), at most ``p // padding_factor``.
    padding_factor
        The one ``reference_ft`` was made with.
    max_radius
        Pixels with ``|k| > max_radius`` are 0; default ``out_size // 2``.

    Returns
    -------
    Tensor
        ``(r, n, n // 2 + 1)`` half-complex slices in FFTW order, dtype of
        ``reference_ft``. Memory: one slice batch plus ~8 gathers of
        ``r * n * n / 2`` complex values; batch the rotations to bound it.
    """
    values = _sample(
        reference_ft,
        rotations,
        out_size=out_size,
        ndim=2,
        padding_factor=padding_factor,
        max_radius=max_radius,
        scale=reference_ft.shape[0] // padding_factor,
    )
    return values.reshape(rotations.shape[0], out_size, out_size // 2 + 1)


def rotate_volume(
    reference_ft: Complex[Tensor, "p p ph"],
    rotations: Float[Tensor, "r 3 3"],
    *,
    out_size: int,
    padding_factor: int = 2,
    max_radius: float | int | None = None,
) -> Complex[Tensor, "r n n nh"]:
    """Rotate the reference by each ``A``, sampled on the ``out_size`` grid (``rotate3D``).

    Voxel ``k`` samples the reference at ``A.T @ k * padding_factor``
    (trilinear, Friedel mate for ``x < 0``), so the result equals
    ``to_fourier(rotated_map, 3)`` of the map rotated by ``A`` into the
    particle frame (pseudo-subtomograms and classic subtomograms).

    Parameters
    ----------
    reference_ft
        From ``prepare_reference``.
    rotations
        RELION's matrices ``A``.
    out_size
        Side ``n`` of the output volumes, at most ``p // padding_factor``.
    padding_factor
        The one ``reference_ft`` was made with.
    max_radius
        Voxels with ``|k| > max_radius`` are 0; default ``out_size // 2``.

    Returns
    -------
    Tensor
        ``(r, n, n, n // 2 + 1)`` half-complex volumes in FFTW order. Memory:
        ``r * n**3 / 2`` complex values plus ~8 gathers of the ~52 % inside
        the sphere; the caller batches ``r`` to fit.
    """
    values = _sample(
        reference_ft,
        rotations,
        out_size=out_size,
        ndim=3,
        padding_factor=padding_factor,
        max_radius=max_radius,
        scale=1.0,
    )
    return values.reshape(rotations.shape[0], out_size, out_size, out_size // 2 + 1)
