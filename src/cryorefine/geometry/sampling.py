"""RELION's orientation sampling: steps, directions, psi, grids, oversampling, perturbation.

Facts from RELION's ``healpix_sampling.cpp`` (REFINE_SPEC.md §4.4, §5.1):

- At HEALPix order ``n`` the angular step is ``360 / (6 * 2**n)`` degrees
  (``getAngularSampling``); with adaptive oversampling ``k`` the fine step is
  that of order ``n + k``. The GUI's choices "30, 15, 7.5, 3.7, 1.8, 0.9, 0.5,
  0.2, 0.1 degrees" are orders 1..9 *after* one oversampling, i.e.
  ``--healpix_order`` 0..8: "7.5 degrees" is ``--healpix_order 2`` (coarse step
  15 degrees, fine 7.5); RELION prints the fine step ("Angular step= 7.5").
- Directions are the centres of the ``12 * 4**n`` NESTED pixels: ``rot = phi``
  wrapped to (-180, 180], ``tilt = theta`` (degrees).
- psi takes ``nr = ceil(360 / psi_step)`` values ``i * 360 / nr``, in [0, 360);
  the default 3D psi step is the angular step.
- Oversampling by ``k``: the ``4**k`` child pixels of a direction at order
  ``n + k`` (``healpix_children``) and ``2**k`` psi values
  ``psi - step / 2 + (j + 1/2) step / 2**k``; fine orientations are listed child
  by child, psi fastest.
- Orientation ``i`` of a grid of ``m`` directions and ``p`` psi values is
  direction ``i // p``, psi ``i % p`` (direction-major).
- Perturbation: each iteration the instance ``u`` grows by a uniform draw in
  ``[f/2, f]`` and is wrapped into ``[-f, f]`` (``f = --perturb``, 0.5 by
  default); every sampled pose ``A`` becomes ``A @ E(u s, u s, u s)`` with ``E``
  the Euler matrix and ``s`` the coarse angular step, and every translation
  moves by ``u`` times the coarse offset step along each axis.
"""

import functools
import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.geometry.euler import euler_to_matrix
from cryorefine.geometry.healpix import healpix_children, healpix_npix, healpix_pix2z_phi

__all__ = [
    "angular_step_deg",
    "healpix_rot_tilt_deg",
    "next_perturbation",
    "orientation_grid_deg",
    "oversampled_orientations_deg",
    "oversampled_psi_deg",
    "perturb_rotations",
    "pixel_rot_tilt_deg",
    "psi_angles_deg",
]


def angular_step_deg(healpix_order: int, *, oversampling: int = 0) -> float:
    """RELION's angular step ``360 / (6 * 2**(healpix_order + oversampling))`` in degrees.

    ``angular_step_deg(2)`` is 15 (the coarse step of ``--healpix_order 2``);
    ``angular_step_deg(2, oversampling=1)`` is 7.5, what RELION prints and the
    GUI calls "7.5 degrees".
    """
    if healpix_order < 0 or oversampling < 0:
        raise ValueError(f"orders must be >= 0, got {healpix_order} and {oversampling}")
    return 360.0 / (6 * round(2.0 ** (healpix_order + oversampling)))


def psi_angles_deg(
    psi_step_deg: float, *, device: torch.device | str, dtype: torch.dtype = torch.float64
) -> Float[Tensor, " p"]:
    """psi values ``i * 360 / p`` for ``i < p = ceil(360 / psi_step_deg)``, in [0, 360).

    The step actually used is ``360 / p`` (equal to ``psi_step_deg`` when it divides 360).
    """
    if not psi_step_deg > 0:
        raise ValueError(f"psi step must be > 0 degrees, got {psi_step_deg}")
    count = math.ceil(360.0 / psi_step_deg)
    step = 360.0 / count
    return torch.arange(count, device=device, dtype=torch.float64).mul(step).to(dtype)


TABLE_MAX_ORDER = 8
"""Up to this order ``pixel_rot_tilt_deg`` picks from a table of every pixel's angles,
made once per order and device (``12 * 4**8`` pixels: 12.6 MB), instead of about 50
operators per call: the E-step asks for them per batch, coarse chunk and fine group."""


def pixel_rot_tilt_deg(order: int, pixels: Int[Tensor, "..."]) -> Float[Tensor, "... 2"]:
    """``(rot, tilt)`` in degrees of NESTED pixel centres, as RELION computes them (float64).

    ``rot = phi * 180 / pi`` wrapped to (-180, 180], ``tilt = acos(z) * 180 / pi``
    (``HealpixSampling::getDirectionFromHealPix``). Up to ``TABLE_MAX_ORDER``,
    picked from a table of all pixels (the same values).
    """
    if 0 <= order <= TABLE_MAX_ORDER:
        return _rot_tilt_table(order, pixels.device)[pixels]
    return _rot_tilt_deg(order, pixels)


@functools.lru_cache(maxsize=8)
def _rot_tilt_table(order: int, device: torch.device) -> Float[Tensor, "n 2"]:
    with torch.inference_mode(False):  # a normal tensor, whatever the caller's mode
        return _rot_tilt_deg(order, torch.arange(healpix_npix(order), device=device))


def _rot_tilt_deg(order: int, pixels: Int[Tensor, "..."]) -> Float[Tensor, "... 2"]:
    z, phi = healpix_pix2z_phi(order, pixels)
    rot = phi * 180 / math.pi
    rot = torch.where(rot > 180.0, rot - 360.0, rot)
    tilt = torch.acos(z) * 180.0 / math.pi
    return torch.stack([rot, tilt], dim=-1)


def healpix_rot_tilt_deg(order: int, *, device: torch.device | str) -> Float[Tensor, "m 2"]:
    """``(rot, tilt)`` in degrees of all ``12 * 4**order`` directions, in pixel order."""
    return pixel_rot_tilt_deg(order, torch.arange(healpix_npix(order), device=device))


def orientation_grid_deg(
    rot_tilt_deg: Float[Tensor, "m 2"], psi_deg: Float[Tensor, " p"]
) -> Float[Tensor, "mp 3"]:
    """Every ``(rot, tilt, psi)``, direction-major.

    Orientation ``i`` is direction ``i // p`` with psi ``i % p`` (RELION's order).
    The matrices of the grid are ``euler_to_matrix(orientation_grid_deg(...))``.
    """
    m, p = rot_tilt_deg.shape[0], psi_deg.shape[0]
    dirs = rot_tilt_deg[:, None, :].expand(m, p, 2)
    psis = psi_deg.to(rot_tilt_deg.dtype)[None, :, None].expand(m, p, 1)
    return torch.cat([dirs, psis], dim=-1).reshape(m * p, 3)


def oversampled_psi_deg(
    psi_deg: Float[Tensor, "..."], *, psi_step_deg: float, oversampling: int
) -> Float[Tensor, "... s"]:
    """The ``s = 2**oversampling`` fine psi values of each coarse psi (degrees).

    ``psi - step / 2 + (j + 1/2) * step / s`` for ``j < s``: for ``oversampling = 1``,
    ``psi -+ step / 4``. Not wrapped (RELION wraps only in 2D). ``psi_step_deg``
    is the coarse step in use (``360 / p``).
    """
    s = 1 << oversampling
    if oversampling == 0:
        return psi_deg[..., None]
    j = torch.arange(s, device=psi_deg.device, dtype=psi_deg.dtype)
    return psi_deg[..., None] - 0.5 * psi_step_deg + (0.5 + j) * psi_step_deg / s


def oversampled_orientations_deg(
    order: int,
    pixels: Int[Tensor, "..."],
    psi_deg: Float[Tensor, "..."],
    *,
    psi_step_deg: float,
    oversampling: int,
) -> Float[Tensor, "... f 3"]:
    """The ``f = 8**oversampling`` fine ``(rot, tilt, psi)`` of coarse orientations (degrees).

    Parameters
    ----------
    order
        Coarse HEALPix order of ``pixels``.
    pixels, psi_deg
        Coarse direction (NESTED pixel) and psi of each orientation; same shape.
    psi_step_deg
        Coarse psi step in use (``360 / p``).
    oversampling
        Adaptive oversampling order ``k``: ``4**k`` child directions at order
        ``order + k`` (RELION's listing order), each with ``2**k`` psi values.

    Returns
    -------
    Float[Tensor, "... f 3"]
        Child-major, psi fastest; with ``oversampling = 0`` the coarse
        orientation itself.
    """
    if oversampling == 0:
        rot_tilt = pixel_rot_tilt_deg(order, pixels).to(psi_deg.dtype)
        return torch.cat([rot_tilt, psi_deg[..., None]], dim=-1)[..., None, :]
    children = healpix_children(order, pixels, oversampling=oversampling)  # (..., c)
    rot_tilt = pixel_rot_tilt_deg(order + oversampling, children).to(psi_deg.dtype)
    psis = oversampled_psi_deg(psi_deg, psi_step_deg=psi_step_deg, oversampling=oversampling)
    c, s = rot_tilt.shape[-2], psis.shape[-1]
    lead = rot_tilt.shape[:-2]
    dirs = rot_tilt[..., :, None, :].expand(*lead, c, s, 2)
    psis = psis[..., None, :, None].expand(*lead, c, s, 1)
    return torch.cat([dirs, psis], dim=-1).reshape(*lead, c * s, 3)


def next_perturbation(previous: float, *, factor: float, generator: torch.Generator) -> float:
    """Next perturbation instance: ``previous + U(f/2, f)`` wrapped to ``[-f, f]``, ``f = factor``.

    RELION's ``resetRandomlyPerturbedSampling`` (``rlnSamplingPerturbInstance``);
    ``factor`` is ``--perturb`` (``rlnSamplingPerturbFactor``, 0.5 by default, in
    [0, 1]). With ``factor = 0`` the instance stays 0 (no perturbation).
    """
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"perturbation factor must be in [0, 1], got {factor}")
    if factor == 0.0:
        return 0.0
    draw = torch.rand((), generator=generator, dtype=torch.float64).item()
    value = previous + factor * (0.5 + 0.5 * draw)
    if -factor <= value <= factor:
        return value
    return value - 2 * factor * math.floor((value + factor) / (2 * factor))


def perturb_rotations(
    rotations: Float[Tensor, "... 3 3"], *, perturbation: float, step_deg: float
) -> Float[Tensor, "... 3 3"]:
    """Sampled poses ``A @ E(u s, u s, u s)``: RELION's random perturbation of the grid.

    ``u`` is the instance (``next_perturbation``), ``s`` the coarse angular step
    (``angular_step_deg(healpix_order)``, not the oversampled one); ``E`` is
    ``euler_to_matrix``. Translations are perturbed by adding ``u`` times the
    coarse offset step to each component (``translations.perturb_translations``).
    """
    return rotations @ _perturbation_matrix(
        perturbation * step_deg, rotations.dtype, rotations.device
    )


@functools.lru_cache(maxsize=8)
def _perturbation_matrix(angle_deg: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``E(a, a, a)``, made once per iteration's angle (about 20 operators) and reused;
    a normal tensor even when first asked for under ``torch.inference_mode``."""
    with torch.inference_mode(False):
        return euler_to_matrix(torch.full((3,), angle_deg, dtype=dtype, device=device))
