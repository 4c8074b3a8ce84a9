"""Frames and poses of picks on a surface (``simulate.surface_frames``).

A pick's frame has the surface normal as the z axis of ``S Ry(90)^T``: a particle
at the prior pose (0, 90, 0) in that frame has its reference z axis along the
normal. Normals are estimated from neighbouring picks; on points spread over
spheres they must be the outward radial direction, within the bound a cap of
that size allows.
"""

import math

import numpy as np
import torch

from cryorefine.geometry import euler_to_matrix
from cryorefine.simulate.surface_frames import (
    NORMAL_NEIGHBOURS,
    PRIOR_ANGLES_DEG,
    frame_angles_deg,
    poses_in_frames,
    surface_normals,
)


def _sphere_points(count: int, radius: float, centre: np.ndarray) -> np.ndarray:
    """Fibonacci points: nearly even spacing over the sphere."""
    index = np.arange(count) + 0.5
    z = 1 - 2 * index / count
    phi = math.pi * (1 + 5**0.5) * index
    ring = np.sqrt(1 - z * z)
    return centre + radius * np.stack([ring * np.cos(phi), ring * np.sin(phi), z], axis=1)


def test_normals_of_picks_on_two_spheres_point_outward_along_the_radius() -> None:
    # Two capsid-sized spheres (radius 450 A, picks about 70 A apart) side by side.
    centres = [np.array([0.0, 0.0, 0.0]), np.array([1000.0, 200.0, -100.0])]
    points = [_sphere_points(520, 450.0, c) for c in centres]
    normals = surface_normals(np.concatenate(points))
    radial = np.concatenate([(p - c) / 450.0 for p, c in zip(points, centres, strict=True)])
    cosine = np.einsum("bi,bi->b", normals, radial)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
    assert (cosine > 0).all()  # outward, every one
    # The neighbours lie in a cap of half-angle theta about the pick; their height
    # above its tangent plane is at most R theta^2 / 2 against an in-plane spread
    # of about R theta, so the fitted plane tilts by no more than about theta / 2.
    reach = np.sort(np.linalg.norm(points[0][:, None] - points[0][None], axis=2), axis=1)
    theta = 2 * np.arcsin(reach[:, NORMAL_NEIGHBOURS - 1].max() / (2 * 450.0))
    angle = np.arccos(np.clip(cosine, -1, 1))
    assert angle.max() < theta / 2


def test_a_small_patch_of_a_sphere_still_points_outward() -> None:
    # 12 picks on a 450 A sphere (a fragment of a capsid): its centroid lies almost on
    # the patch, so the normals are turned away from the fitted sphere's centre.
    centre = np.array([30.0, -50.0, 80.0])
    points = _sphere_points(520, 450.0, centre)
    patch = points[np.argsort(np.linalg.norm(points - points[100], axis=1))[:12]]
    normals = surface_normals(patch)
    radial = (patch - centre) / 450.0
    assert (np.einsum("bi,bi->b", normals, radial) > 0.9).all()


def test_fewer_than_three_picks_get_the_z_axis() -> None:
    np.testing.assert_array_equal(surface_normals(np.zeros((2, 3))), [[0, 0, 1], [0, 0, 1]])


def test_a_particle_at_the_prior_pose_has_its_z_axis_along_the_normal() -> None:
    generator = torch.Generator().manual_seed(3)
    normals = torch.randn(200, 3, generator=generator, dtype=torch.float64).numpy()
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    angles = frame_angles_deg(normals, generator=generator)
    frames = euler_to_matrix(torch.as_tensor(angles))
    prior = euler_to_matrix(torch.tensor(PRIOR_ANGLES_DEG, dtype=torch.float64))
    axis = (frames @ prior)[:, :, 2].numpy()  # S A e_z
    np.testing.assert_allclose(axis, normals, atol=1e-12)
    # The in-plane axes are drawn: S A e_x takes many directions about the normal.
    in_plane = (frames @ prior)[:, :, 0].numpy()
    assert np.abs(np.einsum("bi,bi->b", in_plane, normals)).max() < 1e-12
    assert np.linalg.norm(in_plane.mean(axis=0)) < 0.3


def test_poses_spread_about_the_priors_with_the_given_deviation() -> None:
    count, spread = 40_000, 8.0
    angles = poses_in_frames(count, spread_deg=spread, generator=torch.Generator().manual_seed(5))
    rot, tilt, psi = angles.numpy().T
    assert rot.min() >= -180
    assert rot.max() <= 180
    assert abs(rot.mean()) < 4 * 104 / math.sqrt(count)  # uniform: sd 360 / sqrt(12)
    for values, centre in ((tilt, 90.0), (psi, 0.0)):
        assert abs(values.mean() - centre) < 4 * spread / math.sqrt(count)
        # sd of a sample sd of a normal: sigma / sqrt(2 (n - 1)).
        assert abs(values.std() - spread) < 4 * spread / math.sqrt(2 * (count - 1))
