"""RELION's translational sampling: the offset grid, its oversampling and perturbation.

Facts from ``HealpixSampling::setTranslations`` and ``getTranslationsInPixel``
(REFINE_SPEC.md §5.2): offsets ``(ix, iy[, iz]) * step`` with
``|i| <= ceil(range / step)`` on each axis, kept inside the disc (2D:
``x**2 + y**2 < range**2 + 0.001``) or the ball (3D: ``x**2 + y**2 + z**2 <=
range**2``), listed with x slowest and the last axis fastest. Offsets are
relative to the particle's current origin. RELION builds the grid in Angstrom
and divides by each optics group's pixel size; the functions here take one
unit throughout (the names say pixels, what the E-step uses), so the 0.001
margin of the 2D test is in that unit squared. Vectors are ``(x, y[, z])``.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["oversampled_translations", "perturb_translations", "translation_grid"]

_DISC_MARGIN = 0.001  # RELION's 2D margin on range**2 against rounding


def translation_grid(
    offset_range_px: float,
    offset_step_px: float,
    *,
    ndim: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float64,
) -> Float[Tensor, "t ndim"]:
    """All grid offsets within ``offset_range_px`` of the origin: ``(t, ndim)`` in ``(x, y[, z])``.

    Parameters
    ----------
    offset_range_px
        Search radius (``--offset_range``), >= 0. A range of 0 gives the origin only.
    offset_step_px
        Grid spacing (``--offset_step``), > 0.
    ndim
        2 for images (disc), 3 for 3D translations of subtomograms (ball).
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if not offset_step_px > 0 or not offset_range_px >= 0:
        raise ValueError(f"need step > 0 and range >= 0, got {offset_step_px}, {offset_range_px}")
    half = math.ceil(offset_range_px / offset_step_px)
    axis = torch.arange(-half, half + 1, device=device, dtype=torch.float64) * offset_step_px
    grids = torch.meshgrid(*([axis] * ndim), indexing="ij")  # x slowest, last axis fastest
    offsets = torch.stack([g.reshape(-1) for g in grids], dim=-1)
    length2 = offsets[:, 0] * offsets[:, 0] + offsets[:, 1] * offsets[:, 1]  # RELION's order
    if ndim == 3:
        length2 = length2 + offsets[:, 2] * offsets[:, 2]
    limit = offset_range_px * offset_range_px
    inside = length2 < limit + _DISC_MARGIN if ndim == 2 else length2 <= limit
    return offsets[inside].to(dtype)


def oversampled_translations(
    translations: Float[Tensor, "... ndim"], *, offset_step_px: float, oversampling: int
) -> Float[Tensor, "... s ndim"]:
    """The ``s = 2**(oversampling * ndim)`` fine offsets of each coarse offset.

    Per axis ``t - step / 2 + (j + 1/2) * step / 2**oversampling`` (for
    ``oversampling = 1``: ``t -+ step / 4``); x slowest, last axis fastest, as RELION.
    """
    if oversampling == 0:
        return translations[..., None, :]
    n = 1 << oversampling
    ndim = translations.shape[-1]
    j = torch.arange(n, device=translations.device, dtype=translations.dtype)
    deltas = -0.5 * offset_step_px + (0.5 + j) * offset_step_px / n
    grids = torch.meshgrid(*([deltas] * ndim), indexing="ij")
    fine = torch.stack([g.reshape(-1) for g in grids], dim=-1)  # (s, ndim)
    return translations[..., None, :] + fine


def perturb_translations(
    translations: Float[Tensor, "... ndim"], *, perturbation: float, offset_step_px: float
) -> Float[Tensor, "... ndim"]:
    """Offsets moved by ``perturbation * offset_step_px`` along every axis (RELION's perturbation).

    ``perturbation`` is the instance of ``sampling.next_perturbation``;
    ``offset_step_px`` the coarse step (not the oversampled one).
    """
    return translations + perturbation * offset_step_px
