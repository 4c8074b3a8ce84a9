"""Picks on a surface (a membrane, a capsid): their frames and their poses in those frames.

Particles picked on a surface carry the surface's frame, as RELION's tools for
picking on spheres and membranes write it (``get_particle_poses``):

Frame
    ``S`` (``rlnTomoSubtomogramRot/Tilt/Psi``) is ``O Ry(90)``: ``O`` has the
    surface normal ``n`` as its z column and a random in-plane x, and ``Ry(90)``
    the active rotation by 90 degrees about y. So a particle at the pose
    ``(rot, tilt, psi) = (0, 90, 0)`` in that frame has ``S A e_z = n``: the
    reference's z axis (a Cn axis) along the normal. Pseudo-subtomograms are
    built in the frame, and refined angles are relative to it.
Normals
    Where the picks file has no frame: the picks of a tomogram are split into
    surfaces (chains of picks less than ``LINK_SPACINGS`` median spacings
    apart). A pick's normal is the direction of least spread of the
    ``NORMAL_NEIGHBOURS`` nearest picks of its surface (their covariance's
    smallest eigenvector), turned away from the centre of a sphere fitted to the
    surface (a capsid's, even from a small patch of it), or from the surface's
    centroid where no sphere fits (a flat patch: either side). Any point ``q``
    inside the sphere turns the normal outward: for ``p`` on a sphere of centre
    ``c`` and radius ``R``, ``n . (p - q) = R - n . (q - c) >= 0``.
Poses
    The true pose in the frame: ``rot`` uniform, ``tilt = 90 + spread g1`` and
    ``psi = spread g2`` (``g`` standard normal), as the tutorial's refined
    particles spread about their priors (``rlnAngleTiltPrior`` 90,
    ``rlnAnglePsiPrior`` 0).
"""

import math

import numpy as np
import torch
from jaxtyping import Float64
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from torch import Tensor

from cryorefine.geometry import matrix_to_euler

__all__ = [
    "LINK_SPACINGS",
    "MAX_SPHERE_RADII",
    "MIN_SPHERE_PICKS",
    "NORMAL_NEIGHBOURS",
    "PRIOR_ANGLES_DEG",
    "frame_angles_deg",
    "poses_in_frames",
    "surface_normals",
]

#: Picks whose spread gives a pick's normal (itself included).
NORMAL_NEIGHBOURS = 12

#: Picks closer than this many median nearest-pick distances are on one surface.
LINK_SPACINGS = 1.5

#: Fewest picks of a surface to which a sphere is fitted (its centre orients the normals).
MIN_SPHERE_PICKS = 6

#: A fitted sphere larger than this many times its surface's extent: a flat patch.
MAX_SPHERE_RADII = 20.0

#: ``(rot, tilt, psi)`` of a particle along its frame's normal, and the priors written.
PRIOR_ANGLES_DEG = (0.0, 90.0, 0.0)

#: Active rotation by 90 degrees about y.
_RY90 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


def surface_normals(positions_angst: Float64[np.ndarray, "b 3"]) -> Float64[np.ndarray, "b 3"]:
    """Unit normals of the picks of one tomogram (module docstring).

    Surfaces: picks linked when closer than ``LINK_SPACINGS`` times the median
    distance to the nearest pick. Surfaces of fewer than 3 picks get ``+z``.
    """
    count = positions_angst.shape[0]
    normals = np.zeros((count, 3))
    normals[:, 2] = 1.0
    if count < 3:
        return normals
    tree = cKDTree(positions_angst)
    spacing = float(np.median(tree.query(positions_angst, k=2)[0][:, 1]))
    links = tree.sparse_distance_matrix(tree, LINK_SPACINGS * spacing)
    _, surface = connected_components(links, directed=False)
    for label in np.unique(surface):
        rows = np.flatnonzero(surface == label)
        if len(rows) >= 3:
            normals[rows] = _normals_of_one_surface(positions_angst[rows])
    return normals


def _normals_of_one_surface(points: Float64[np.ndarray, "b 3"]) -> Float64[np.ndarray, "b 3"]:
    """Smallest principal axis of each point's neighbours, away from the surface's centroid."""
    _, near = cKDTree(points).query(points, k=min(NORMAL_NEIGHBOURS, len(points)))
    spread = points[near] - points[near].mean(axis=1, keepdims=True)
    covariance = np.einsum("bki,bkj->bij", spread, spread)
    normals = np.linalg.eigh(covariance)[1][:, :, 0]  # eigenvalues ascend
    outward = points - _inside_point(points)
    sign = np.where(np.einsum("bi,bi->b", normals, outward) < 0, -1.0, 1.0)
    out: np.ndarray = normals * sign[:, None]
    return out


def _inside_point(points: Float64[np.ndarray, "b 3"]) -> Float64[np.ndarray, " 3"]:
    """The centre of the sphere fitted to ``points``, or their centroid where none fits.

    Algebraic least squares, ``|x|^2 = 2 c . x + (r^2 - |c|^2)``; no sphere fits
    with fewer than ``MIN_SPHERE_PICKS`` points, a rank-deficient system, or a
    radius beyond ``MAX_SPHERE_RADII`` times the points' extent (a flat patch,
    whose side is arbitrary).
    """
    centroid: np.ndarray = points.mean(axis=0)
    if len(points) < MIN_SPHERE_PICKS:
        return centroid
    shifted = points - centroid
    design = np.concatenate([2 * shifted, np.ones((len(points), 1))], axis=1)
    solution, _, rank, _ = np.linalg.lstsq(design, (shifted**2).sum(axis=1), rcond=None)
    radius2 = solution[3] + (solution[:3] ** 2).sum()
    extent = np.linalg.norm(shifted, axis=1).max()
    if rank < 4 or not 0 < radius2 <= (MAX_SPHERE_RADII * extent) ** 2:
        return centroid
    centre: np.ndarray = centroid + solution[:3]
    return centre


def frame_angles_deg(
    normals: Float64[np.ndarray, "b 3"], *, generator: torch.Generator
) -> Float64[np.ndarray, "b 3"]:
    """``rlnTomoSubtomogramRot/Tilt/Psi`` of ``S = O Ry(90)`` for ``normals`` (module docstring).

    ``O``'s in-plane axes are turned by a uniform angle drawn from ``generator``.
    """
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    first = helper - np.einsum("bi,bi->b", helper, n)[:, None] * n
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    second = np.cross(n, first)
    turn = torch.rand(len(n), generator=generator, dtype=torch.float64).numpy() * 2 * math.pi
    x = np.cos(turn)[:, None] * first + np.sin(turn)[:, None] * second
    frames = np.stack([x, np.cross(n, x), n], axis=-1)  # columns x, y, n
    angles: np.ndarray = matrix_to_euler(torch.as_tensor(frames @ _RY90)).numpy()
    return angles


def poses_in_frames(
    count: int, *, spread_deg: float, generator: torch.Generator
) -> Float64[Tensor, "b 3"]:
    """True ``(rot, tilt, psi)`` of ``count`` particles in their frames (module docstring)."""
    rot = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * 180
    deviations = torch.randn(count, 2, generator=generator, dtype=torch.float64) * spread_deg
    tilt = PRIOR_ANGLES_DEG[1] + deviations[:, 0]
    psi = PRIOR_ANGLES_DEG[2] + deviations[:, 1]
    return torch.stack([rot, tilt, psi], dim=1)
