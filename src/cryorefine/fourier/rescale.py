"""A map brought to another pixel size and box (relion_image_handler --rescale_angpix, --new_box).

A refinement needs its reference on the particles' grid: after re-extracting at a
finer binning, the previous run's map must be resampled to the new pixel size and
boxed to the new box size. Two steps, as relion_image_handler takes them:

Rescale (``--rescale_angpix``)
    The side becomes ``m = round(n p / p_new)``, made even (one less when odd),
    and the pixel size ``p n / m`` (the closest to ``p_new`` that keeps the
    field of view ``n p``; ``rescaled_size``). The map's transform
    (``fourier.conventions``: forward-normalised, so a coefficient is the
    amplitude of its wave) is cropped or zero-padded to ``m``
    (``fourier.fourier_crop`` / ``fourier.fourier_pad``) and transformed back:
    densities keep their values, a band-limited map sampled at ``p`` becomes the
    same map sampled at ``p n / m``. The coefficients on the Nyquist planes
    (``|k_x|``, ``|k_y|`` or ``|k_z| = s / 2``) of the smaller grid ``s`` are set
    to zero: such a wave is a cosine on the small grid but has no unique
    counterpart on the larger one (it would turn complex, or count twice).
Box (``--new_box``)
    Cropped or padded with zeros in real space about the centre voxel (``n // 2``
    becomes ``new_box // 2``), so the particle stays where rotations and shifts
    expect it.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.fourier.conventions import frequency_indices, from_fourier, to_fourier
from cryorefine.fourier.filters import fourier_crop, fourier_pad

__all__ = ["rescale_map", "rescaled_size", "window_map"]


def rescaled_size(size_px: int, *, pixel_size_angst: float, new_pixel_size_angst: float) -> int:
    """Side of a box of ``size_px`` resampled from ``pixel_size_angst`` to ``new_pixel_size_angst``.

    ``round(size_px * pixel_size_angst / new_pixel_size_angst)``, minus one when
    odd (module docstring); ``size_px`` itself when the pixel sizes are equal. The
    pixel size it gives is ``pixel_size_angst * size_px / rescaled_size(...)``.

    Raises
    ------
    ValueError
        A pixel size that is not positive, or a result below 2 pixels.
    """
    if not (pixel_size_angst > 0 and new_pixel_size_angst > 0):
        raise ValueError(
            f"pixel sizes must be positive, got {pixel_size_angst} and {new_pixel_size_angst}"
        )
    if new_pixel_size_angst == pixel_size_angst:
        return size_px
    size = round(size_px * pixel_size_angst / new_pixel_size_angst)
    size -= size % 2
    if size < 2:
        raise ValueError(
            f"a box of {size_px} px at {pixel_size_angst} A rescaled to {new_pixel_size_angst} A "
            f"would have {size} px"
        )
    return size


def _zero_nyquist_planes(ft: Tensor, size: int) -> Tensor:
    """``ft`` (side ``size``) with every coefficient that has a component ``+-size/2`` zeroed."""
    if size % 2:
        return ft  # an odd side has no Nyquist frequency
    on_nyquist = (frequency_indices(size, 3, device=ft.device).abs() == size // 2).any(dim=-1)
    return torch.where(on_nyquist, torch.zeros_like(ft), ft)


def rescale_map(
    volume: Float[Tensor, "n n n"],
    *,
    pixel_size_angst: float,
    new_pixel_size_angst: float,
    new_box: int | None = None,
) -> Float[Tensor, "m m m"]:
    """Resample a map to a new pixel size by Fourier cropping or padding, then box it.

    Parameters
    ----------
    volume
        The map, indexed ``(z, y, x)``, centre voxel ``n // 2``.
    pixel_size_angst
        Its pixel size.
    new_pixel_size_angst
        The pixel size asked for; the one obtained is
        ``pixel_size_angst * n / rescaled_size(n, ...)`` (module docstring). Equal
        to ``pixel_size_angst``: no resampling.
    new_box
        Side of the output after the rescaled map is cropped or padded about its
        centre (``window_map``); None keeps the rescaled side.

    Returns
    -------
    Tensor
        The map on the new grid, same dtype and device as ``volume``.
    """
    n = volume.shape[-1]
    size = rescaled_size(
        n, pixel_size_angst=pixel_size_angst, new_pixel_size_angst=new_pixel_size_angst
    )
    out = volume
    if size != n:
        ft = to_fourier(volume, 3)
        if size < n:
            ft = _zero_nyquist_planes(fourier_crop(ft, size, ndim=3), size)
        else:
            ft = fourier_pad(_zero_nyquist_planes(ft, n), size, ndim=3)
        out = from_fourier(ft, size, 3).to(volume.dtype)
    return out if new_box is None else window_map(out, new_box=new_box)


def window_map(volume: Float[Tensor, "n n n"], *, new_box: int) -> Float[Tensor, "m m m"]:
    """Crop or zero-pad a map in real space about its centre: voxel ``n // 2`` -> ``new_box // 2``.

    Output voxel ``j`` (on each axis) is input voxel ``j - new_box // 2 + n // 2``
    where that lies in ``0 .. n - 1``, and 0 elsewhere (relion_image_handler
    ``--new_box``).
    """
    if new_box < 1:
        raise ValueError(f"new_box must be at least 1, got {new_box}")
    n = volume.shape[-1]
    start = n // 2 - new_box // 2  # input index of output voxel 0
    lo, hi = max(start, 0), min(start + new_box, n)  # input range that lands in the output
    out = volume.new_zeros((new_box,) * 3)
    a, b = lo - start, hi - start  # where it lands
    out[a:b, a:b, a:b] = volume[lo:hi, lo:hi, lo:hi]
    return out
