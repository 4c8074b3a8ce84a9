"""Geometric conventions of cryorefine, stated once (RELION's, REFINE_SPEC.md §1.1, §5, §6).

Axes
    Tensors index ``(z, y, x)`` (2D: ``(y, x)``); coordinate vectors, directions,
    offsets and rotation matrices are ``(x, y, z)``. ``zyx_to_xyz`` and
    ``xyz_to_zyx`` convert the last axis of a coordinate tensor between the two.
Euler angles
    RELION's ZYZ angles ``(rot, tilt, psi)`` in degrees (``rlnAngleRot``,
    ``rlnAngleTilt``, ``rlnAnglePsi``), last axis of an ``(..., 3)`` tensor.
    ``geometry.euler_to_matrix`` builds RELION's matrix
    ``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` with the *frame* rotations
    ``Rz(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` and
    ``Ry(t) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``; ``A.T`` is the product of the
    usual counter-clockwise (active) rotations ``Rz(rot) Ry(tilt) Rz(psi)``.
What A does
    ``A`` maps reference (map) coordinates to particle-frame coordinates: a
    reference point ``r`` lands at ``A @ r`` in the particle frame, and an image
    is the projection of the rotated reference along the particle frame's z, so
    image pixel ``(x, y)`` samples the reference along ``A.T @ (x, y, z)``. In
    Fourier space the central slice of an image samples the reference at
    ``A.T @ (kx, ky, 0)``.
Projection direction
    The viewing direction of a pose, in reference coordinates, is row 2 of ``A``:
    ``(sin tilt cos rot, sin tilt sin rot, cos tilt)``; it depends on ``rot`` and
    ``tilt`` only, ``psi`` is the in-plane angle. Canonical ranges (RELION's):
    ``tilt`` in [0, 180], ``rot`` and ``psi`` in (-180, 180]; at ``tilt`` 0 or
    180 (gimbal lock) ``rot`` is set to 0 and ``psi`` carries the rotation.
Composition
    Poses compose on the right with operators of the map: if the map is
    unchanged by ``R`` (``map(R x) = map(x)``), poses ``A`` and ``A @ R`` give the
    same image. Symmetry operators (``geometry.point_group``) are such ``R``.
Directions and symmetry
    A symmetry operator ``R`` takes the viewing direction ``d`` to ``R.T @ d``
    (the direction of ``A @ R``); HEALPix directions, the asymmetric unit and
    local-search neighbourhoods use this.
Units
    Angles in degrees unless the name ends in ``_rad``; HEALPix's ``theta`` and
    ``phi`` are radians, ``rot = phi`` and ``tilt = theta`` in degrees.
"""

from jaxtyping import Shaped
from torch import Tensor

__all__ = ["xyz_to_zyx", "zyx_to_xyz"]


def zyx_to_xyz(coordinates: Shaped[Tensor, "... ndim"]) -> Shaped[Tensor, "... ndim"]:
    """Reverse the last axis: tensor-index order ``(z, y, x)`` to vector order ``(x, y, z)``.

    Works for 2D ``(y, x)`` as well. Returns a new tensor (``flip`` copies).
    """
    return coordinates.flip(-1)


def xyz_to_zyx(coordinates: Shaped[Tensor, "... ndim"]) -> Shaped[Tensor, "... ndim"]:
    """Reverse the last axis: vector order ``(x, y, z)`` to tensor-index order ``(z, y, x)``."""
    return coordinates.flip(-1)
