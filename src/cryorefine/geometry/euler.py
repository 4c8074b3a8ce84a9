"""RELION's ZYZ Euler angles, rotation matrices, directions and angular distances.

Conventions (which way ``A`` maps, ranges, gimbal lock): ``geometry.conventions``.
Facts from RELION's ``euler.cpp`` (REFINE_SPEC.md §1.1) and
``healpix_sampling.cpp calculateAngularDistance``; all functions are batched over
leading axes and follow the input's device and dtype.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "GIMBAL_LOCK_SIN_TILT",
    "angular_distance_deg",
    "axis_angle_to_matrix",
    "direction_to_euler",
    "euler_to_direction",
    "euler_to_matrix",
    "matrix_to_euler",
    "orientation_change_deg",
    "symmetric_angular_distance_deg",
]

GIMBAL_LOCK_SIN_TILT = 16 * 2.0**-23
"""``|sin tilt|`` at or below which ``matrix_to_euler`` treats a matrix as gimbal-locked.

RELION's threshold in ``Euler_matrix2angles``: 16 times single precision's epsilon.
"""

_DIRECTION_POLE_DEG = 0.001  # RELION's Euler_direction2angles: rot = 0 this close to a pole


def _deg2rad(angles_deg: Tensor) -> Tensor:
    return angles_deg * math.pi / 180  # RELION's DEG2RAD, same order of operations


def _rad2deg(angles_rad: Tensor) -> Tensor:
    return angles_rad * 180 / math.pi  # RELION's RAD2DEG


def euler_to_matrix(angles_deg: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3 3"]:
    """RELION's rotation matrix ``A`` of Euler angles ``(rot, tilt, psi)`` in degrees.

    Exactly the element formula of RELION's ``Euler_angles2matrix``
    (REFINE_SPEC.md §1.1): ``A = Rz(psi) Ry(tilt) Rz(rot)`` with frame rotations.
    ``A`` maps reference coordinates to particle-frame coordinates
    (``geometry.conventions``).
    """
    a, b, g = _deg2rad(angles_deg).unbind(-1)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = (
        (cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb),
        (-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb),
        (sc, ss, cb),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def _sign(x: Tensor) -> Tensor:
    """RELION's SGN: +1 for x >= 0, -1 otherwise (never 0)."""
    one = torch.ones_like(x)
    return torch.where(x >= 0, one, -one)


def matrix_to_euler(matrices: Float[Tensor, "... 3 3"]) -> Float[Tensor, "... 3"]:
    """Euler angles ``(rot, tilt, psi)`` in degrees of RELION matrices, as RELION recovers them.

    Follows RELION's ``Euler_matrix2angles``: ``tilt`` in [0, 180], ``rot`` and
    ``psi`` from ``atan2``, so in [-180, 180]. When ``sqrt(A02**2 + A12**2)``
    (``|sin tilt|``) is at most ``GIMBAL_LOCK_SIN_TILT``, the matrix is a rotation
    about z: RELION then sets ``rot = 0`` and puts the whole angle in ``psi``,
    with ``tilt = 0`` if ``A22 >= 0`` and ``tilt = 180`` otherwise.
    """
    a = matrices
    a02, a12, a22 = a[..., 0, 2], a[..., 1, 2], a[..., 2, 2]
    abs_sb = torch.sqrt(a02 * a02 + a12 * a12)
    gamma = torch.atan2(a12, -a02)
    alpha = torch.atan2(a[..., 2, 1], a[..., 2, 0])
    sin_g = torch.sin(gamma)
    # RELION's choice of the sign of sin(tilt); +1 for every proper rotation matrix.
    sign_sb = torch.where(
        sin_g.abs() < 2.0**-23,
        _sign(-a02 / torch.cos(gamma)),
        torch.where(sin_g > 0, _sign(a12), -_sign(a12)),
    )
    beta = torch.atan2(sign_sb * abs_sb, a22)
    # Gimbal lock: a rotation about z only.
    up = a22 >= 0
    gamma_lock = torch.where(
        up, torch.atan2(-a[..., 1, 0], a[..., 0, 0]), torch.atan2(a[..., 1, 0], -a[..., 0, 0])
    )
    beta_lock = torch.where(up, torch.zeros_like(a22), torch.full_like(a22, math.pi))
    locked = abs_sb <= GIMBAL_LOCK_SIN_TILT
    alpha = torch.where(locked, torch.zeros_like(alpha), alpha)
    beta = torch.where(locked, beta_lock, beta)
    gamma = torch.where(locked, gamma_lock, gamma)
    return _rad2deg(torch.stack([alpha, beta, gamma], dim=-1))


def euler_to_direction(rot_tilt_deg: Float[Tensor, "... 2"]) -> Float[Tensor, "... 3"]:
    """Unit viewing direction ``(sin tilt cos rot, sin tilt sin rot, cos tilt)``: row 2 of ``A``.

    As RELION's ``Euler_angles2direction``; pass ``angles[..., :2]`` for full poses.
    """
    a, b = _deg2rad(rot_tilt_deg).unbind(-1)
    sb = b.sin()
    return torch.stack([sb * a.cos(), sb * a.sin(), b.cos()], dim=-1)


def direction_to_euler(directions: Float[Tensor, "... 3"]) -> Float[Tensor, "... 2"]:
    """``(rot, tilt)`` in degrees of directions (normalised here), as ``Euler_direction2angles``.

    ``rot = atan2(y, x)`` in [-180, 180], ``tilt = acos(z)`` in [0, 180]; within
    0.001 degrees of a pole ``rot`` is set to 0.
    """
    v = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
    rot = _rad2deg(torch.atan2(v[..., 1], v[..., 0]))
    tilt = torch.acos(v[..., 2].clamp(-1.0, 1.0)) * 180.0 / math.pi
    pole = (tilt.abs() < _DIRECTION_POLE_DEG) | ((tilt - 180.0).abs() < _DIRECTION_POLE_DEG)
    rot = torch.where(pole, torch.zeros_like(rot), rot)
    return torch.stack([rot, tilt], dim=-1)


def axis_angle_to_matrix(
    axes: Float[Tensor, "... 3"], angles_deg: Float[Tensor, "..."]
) -> Float[Tensor, "... 3 3"]:
    """Active, right-handed rotation by ``angles_deg`` about ``axes`` (normalised here).

    Rodrigues' formula ``I + sin(t) K + (1 - cos(t)) K @ K`` with ``K`` the
    cross-product matrix of the unit axis: counter-clockwise seen from the tip
    of the axis. ``axes`` and ``angles_deg`` broadcast against each other.
    """
    u = axes / torch.linalg.vector_norm(axes, dim=-1, keepdim=True)
    t = _deg2rad(angles_deg)
    u = u + torch.zeros_like(t)[..., None]  # broadcast axes against angles
    t = t + torch.zeros_like(u[..., 0])
    x, y, z = u.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack(
        [
            torch.stack([zero, -z, y], dim=-1),
            torch.stack([z, zero, -x], dim=-1),
            torch.stack([-y, x, zero], dim=-1),
        ],
        dim=-2,
    )
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    s, c = t.sin()[..., None, None], t.cos()[..., None, None]
    rotation: Tensor = eye + s * k + (1 - c) * (k @ k)
    return rotation


def _rotation_angle_deg(r: Tensor) -> Tensor:
    """Rotation angle of proper rotation matrices, by atan2 (accurate near 0 and 180)."""
    cos = (r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]],
        dim=-1,
    )
    sin = torch.linalg.vector_norm(skew, dim=-1) / 2
    return _rad2deg(torch.atan2(sin, cos))


def angular_distance_deg(
    a: Float[Tensor, "... 3 3"], b: Float[Tensor, "... 3 3"]
) -> Float[Tensor, "..."]:
    """Rotation angle in degrees, in [0, 180], of ``a @ b.T``: the geodesic distance on SO(3).

    ``a`` and ``b`` are proper rotation matrices; leading axes broadcast.
    """
    return _rotation_angle_deg(a @ b.transpose(-1, -2))


def symmetric_angular_distance_deg(
    a: Float[Tensor, "... 3 3"], b: Float[Tensor, "... 3 3"], operators: Float[Tensor, "g 3 3"]
) -> Float[Tensor, "..."]:
    """Smallest ``angular_distance_deg(a, b @ R)`` over symmetry operators ``R``.

    ``operators`` must be proper rotations including the identity
    (``SymmetryGroup.rotations``): poses ``b`` and ``b @ R`` give the same image of
    a map with that symmetry (``geometry.conventions``).
    """
    mates = b[..., None, :, :] @ operators  # (..., g, 3, 3)
    return angular_distance_deg(a[..., None, :, :], mates).amin(dim=-1)


def orientation_change_deg(
    a: Float[Tensor, "... 3 3"], b: Float[Tensor, "... 3 3"], operators: Float[Tensor, "g 3 3"]
) -> Float[Tensor, "..."]:
    """RELION's change of orientation between poses, degrees (``rlnChangesOptimalOrientations``).

    As ``HealpixSampling::calculateAngularDistance``: for each operator ``R``
    the mean over ``i = 0, 1, 2`` of the angle between row ``i`` of ``a`` and row
    ``i`` of ``b @ R``; the smallest mean over operators. This is not the
    geodesic distance (``angular_distance_deg``): a rotation by ``t`` about the
    viewing axis scores ``2 t / 3``. ``operators`` must be proper rotations
    including the identity; RELION also passes improper operators through an
    Euler-angle round trip, which is not reproduced here.
    """
    mates = b[..., None, :, :] @ operators  # (..., g, 3, 3)
    cos = (a[..., None, :, :] * mates).sum(-1).clamp(-1.0, 1.0)  # (..., g, 3): row dots
    return _rad2deg(torch.acos(cos)).mean(-1).amin(dim=-1)
