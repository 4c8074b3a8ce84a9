"""HEALPix directions reduced to an asymmetric unit, as RELION reduces them (REFINE_SPEC.md §6.3).

RELION (``HealpixSampling::removeSymmetryEquivalentPoints``) works in two steps
on the directions of one HEALPix order, in pixel order:

1. a geometric rule per point group keeps the directions inside a region: a
   wedge of ``rot``, a hemisphere of ``tilt`` and/or the positive side of three
   or four planes through the origin. Each region is a fundamental domain of
   the group (almost every direction has exactly one image ``R.T @ d`` in it);
2. if fewer than 4000 directions remain, a direction is dropped when an
   operator image ``R.T @ d`` of a direction kept before it lies closer than
   half the HEALPix maximum pixel radius (``healpix_max_pixel_radius_rad``),
   which removes the duplicates on the seams of the region.

The result is not a covering with a guaranteed radius: near the region's
boundary the nearest kept image of a direction can be up to ~1.7 maximum pixel
radii away (I4 at order 4), against at most 1 radius for a full-sphere grid.

The constants below are RELION's (numbers are facts, restated). Step 2 is the
sequential rule "keep ``i`` unless a kept ``k < i`` is a mate", solved here with
whole-matrix sweeps (a triangular fixed point) instead of a loop over directions.
RELION pairs operators derived from its inversion generator (``Ci``, ``S<n>``,
``Th``) with a left matrix ``diag(1, 1, -1)`` on the direction image; here every
operator maps ``d`` to ``R.T @ d``, so for those three families the seam step
can keep directions RELION drops.
"""

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from cryorefine.geometry.euler import euler_to_direction, euler_to_matrix
from cryorefine.geometry.healpix import (
    healpix_max_pixel_radius_rad,
    healpix_npix,
    healpix_pix2z_phi,
)
from cryorefine.geometry.symmetry import SymmetryGroup

__all__ = [
    "SEAM_CHECK_MAX_DIRECTIONS",
    "asymmetric_unit_pixels",
    "in_asymmetric_region",
    "symmetry_mate_directions",
]

SEAM_CHECK_MAX_DIRECTIONS = 4000
"""RELION skips step 2 when the geometric rule leaves this many directions or more."""

_Vec = tuple[float, float, float]
_T_PLANES: tuple[_Vec, ...] = ((-0.942809, 0.0, 0.0), (0.471405, 0.272165, 0.7698))
_O_PLANES: tuple[_Vec, ...] = ((0.0, -1.0, 1.0), (1.0, 1.0, 0.0), (-1.0, 1.0, 0.0))
_I_N2: _Vec = (-0.4999999839058737, -0.8090170074556163, 0.3090169861701543)
_I_N3: _Vec = (0.4999999839058737, -0.8090170074556163, 0.3090169861701543)
_I_M2: _Vec = (0.187592467856686, -0.303530987314591, -0.491123477863004)
_I_M3: _Vec = (0.187592467856686, 0.303530987314591, -0.491123477863004)
_I_TILT_DEG = 31.7174745559  # RELION's tilt of the I3/I4 plane sets
_X: _Vec = (1.0, 0.0, 0.0)
_Y: _Vec = (0.0, 1.0, 0.0)
_Z: _Vec = (0.0, 0.0, 1.0)

# Icosahedral families: (tilt of RELION's Euler matrix (0, tilt, 0) applied to the
# normals, those normals, sign: +1 keeps d . n >= 0 for each, -1 keeps d . n <= 0,
# normals used unrotated, always with d . n >= 0).
_ICOSAHEDRAL_PLANES: dict[str, tuple[float, tuple[_Vec, ...], int, tuple[_Vec, ...]]] = {
    "I2": (0.0, (_Y, _I_N2, _I_N3), 1, ()),
    "I1": (90.0, (_Y, _I_N2, _I_N3), 1, ()),
    "I3": (_I_TILT_DEG, (_Y, _I_N2, _I_N3), 1, ()),
    "I4": (-_I_TILT_DEG, (_Z, _I_M2, _I_M3), -1, ()),
    "I2H": (0.0, (_Y, _I_N2, _X), 1, ()),
    "I1H": (90.0, (_Y, _I_N2, _X), 1, ()),
    "I3H": (_I_TILT_DEG, (_Z, _I_M2, _I_M3), 1, (_Y,)),
    "I4H": (-_I_TILT_DEG, (_Z, _I_M2, _I_M3), -1, (_Y,)),
}


def _planes(normals: tuple[_Vec, ...], like: Tensor, rotate_tilt_deg: float = 0.0) -> Tensor:
    """Unit normals ``(q, 3)``, optionally multiplied by RELION's matrix of (0, tilt, 0)."""
    n = torch.tensor(normals, dtype=like.dtype, device=like.device)
    if rotate_tilt_deg != 0.0:
        angles = torch.tensor([0.0, rotate_tilt_deg, 0.0], dtype=like.dtype, device=like.device)
        n = n @ euler_to_matrix(angles).T
    unit: Tensor = n / torch.linalg.vector_norm(n, dim=-1, keepdim=True)
    return unit


def _inside(d: Tensor, normals: Tensor, sign: int = 1) -> Tensor:
    dots = d @ normals.T
    return (dots >= 0).all(-1) if sign > 0 else (dots <= 0).all(-1)


def _icosahedral_rule(family: str, d: Tensor) -> Tensor:
    tilt, rotated, sign, fixed = _ICOSAHEDRAL_PLANES[family]
    keep = _inside(d, _planes(rotated, d, tilt), sign)
    if fixed:
        keep &= _inside(d, _planes(fixed, d), 1)
    return keep


def _geometric_rule(group: SymmetryGroup, rot: Tensor, tilt: Tensor, d: Tensor) -> Tensor:
    """RELION's per-group region (``removeSymmetryEquivalentPointsGeometric``)."""
    family, n = group.family, group.n
    upper = tilt <= 90.0

    def wedge(low: float, high: float) -> Tensor:
        return (rot >= low) & (rot <= high)

    if family == "C":
        return wedge(-180.0 / n, 180.0 / n)
    if family in ("CI", "CS") or (family == "D" and n == 1):
        return upper
    if family == "CV":
        return wedge(0.0 / n, 180.0 / n)
    if family == "CH":
        return wedge(-180.0 / n, 180.0 / n) & upper
    if family == "S":
        return wedge(-180.0 * 2.0 / n, 180.0 * 2.0 / n) & upper
    if family == "D":
        return wedge(-180.0 / n + 90.0, 180.0 / n + 90.0) & upper
    if family in ("DV", "DH"):
        return wedge(90.0, 180.0 / n + 90.0) & upper
    if family == "T":
        planes = _planes((*_T_PLANES, (0.471404, 0.816497, 0.0)), d)
        return (wedge(90.0, 150.0) | (rot == 0)) & _inside(d, planes)
    if family == "TD":
        return _inside(d, _planes((*_T_PLANES, (0.0, 0.471405, -0.666667)), d))
    if family == "TH":
        normals = (
            (-0.816496, 0.0, 0.0),
            (0.707107, 0.408248, -0.57735),
            (-0.408248, -0.707107, 0.0),
        )
        return _inside(d, _planes(normals, d))
    if family == "O":
        return ((wedge(45.0, 135.0) & upper) | (rot == 0)) & _inside(d, _planes(_O_PLANES, d))
    if family == "OH":
        return wedge(90.0, 135.0) & upper & _inside(d, _planes(_O_PLANES, d))
    return _icosahedral_rule(family, d)


def in_asymmetric_region(
    group: SymmetryGroup, rot_tilt_deg: Float[Tensor, "... 2"]
) -> Bool[Tensor, "..."]:
    """RELION's geometric rule (step 1): is each direction inside the group's region?

    Each region is a fundamental domain of ``group``: almost every direction has
    exactly one operator image ``R.T @ d`` inside it. ``rot`` in (-180, 180] and
    ``tilt`` in [0, 180] (RELION's ranges; the wedge tests rely on them).
    """
    rot, tilt = rot_tilt_deg.unbind(-1)
    return _geometric_rule(group, rot, tilt, euler_to_direction(rot_tilt_deg))


def symmetry_mate_directions(
    directions: Float[Tensor, "... 3"], operators: Float[Tensor, "g 3 3"]
) -> Float[Tensor, "... g 3"]:
    """Images ``R.T @ d`` of directions under every operator (the directions of poses ``A @ R``)."""
    return (directions[..., None, None, :] @ operators)[..., 0, :]


def _seam_mates(d: Tensor, operators: Tensor, cos_tol: float) -> Bool[Tensor, "m m"]:
    """``mates[i, k]``: some operator takes ``d[k]`` within the tolerance of ``d[i]``, ``k < i``."""
    best = torch.full((d.shape[0], d.shape[0]), -2.0, dtype=d.dtype, device=d.device)
    for r in operators:  # loop over the g operators, not over directions
        best = torch.maximum(best, d @ (d @ r).T)  # [i, k] = d_i . (R.T d_k)
    earlier = torch.ones_like(best, dtype=torch.bool).tril(diagonal=-1)
    return (best > cos_tol) & earlier


def _keep_first_of_mates(mates: Bool[Tensor, "m m"]) -> Bool[Tensor, " m"]:
    """Solve keep[i] = not any(mates[i, k] and keep[k]): RELION's sequential seam rule.

    The rule is triangular (``k < i``), so its solution is unique and sweeps
    from all-True reach it after at most ``m`` rounds (in practice a few).
    """
    keep = torch.ones(mates.shape[0], dtype=torch.bool, device=mates.device)
    m = mates.to(torch.float32)
    for _ in range(mates.shape[0] + 1):
        new = (m @ keep.to(torch.float32)) == 0
        if torch.equal(new, keep):
            return keep
        keep = new
    raise RuntimeError("seam rule did not converge")  # unreachable: triangular system


def asymmetric_unit_pixels(
    order: int, group: SymmetryGroup, *, seam_check: bool | None = None
) -> Int[Tensor, " m"]:
    """NESTED pixels of ``order`` that RELION keeps for ``group``, in increasing order.

    Parameters
    ----------
    order
        HEALPix order (``12 * 4**order`` directions before reduction).
    group
        Point group; its operators' device is used.
    seam_check
        Force step 2 on or off; by default RELION's choice (on below
        ``SEAM_CHECK_MAX_DIRECTIONS`` directions after step 1).

    Returns
    -------
    Int[Tensor, " m"]
        About ``npix / group.order`` pixel numbers (int64). For ``C1`` all pixels.
    """
    ops = group.operators.to(torch.float64)
    pixels = torch.arange(healpix_npix(order), device=ops.device)
    z, phi = healpix_pix2z_phi(order, pixels)
    rot = phi * 180 / math.pi
    rot = torch.where(rot > 180.0, rot - 360.0, rot)  # RELION: rot in (-180, 180]
    tilt = torch.acos(z) * 180.0 / math.pi
    d = euler_to_direction(torch.stack([rot, tilt], dim=-1))
    keep = _geometric_rule(group, rot, tilt, d)
    pixels, d = pixels[keep], d[keep]
    if seam_check is None:
        seam_check = pixels.shape[0] < SEAM_CHECK_MAX_DIRECTIONS
    if seam_check:
        max_ang_deg = 0.5 * (healpix_max_pixel_radius_rad(order) * 180 / math.pi)
        cos_tol = math.cos(max_ang_deg * math.pi / 180)
        pixels = pixels[_keep_first_of_mates(_seam_mates(d, ops, cos_tol))]
    return pixels
