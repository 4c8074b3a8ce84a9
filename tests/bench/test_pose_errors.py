"""bench/pose_errors.py: the residual rotation of each pose in the particle's frame."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from pose_errors import residual_vectors_deg

from cryorefine.geometry import axis_angle_to_matrix, point_group


def _random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.nn.functional.normalize(
        torch.randn(n, 4, generator=generator, dtype=torch.float64), dim=1
    )
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], 1).reshape(n, 3, 3)  # fmt: skip


def test_a_turn_in_the_particle_frame_is_recovered_as_its_rotation_vector() -> None:
    generator = torch.Generator().manual_seed(5)
    true = _random_rotations(50, generator)
    vectors = torch.randn(50, 3, generator=generator, dtype=torch.float64) * torch.tensor(
        [0.3, 0.5, 2.0]
    )
    turn = axis_angle_to_matrix(vectors, vectors.norm(dim=1))
    refined = true @ turn
    found = residual_vectors_deg(refined, true, torch.eye(3, dtype=torch.float64)[None])
    torch.testing.assert_close(found, vectors, atol=1e-9, rtol=0)


def test_a_symmetry_mate_counts_as_no_error() -> None:
    generator = torch.Generator().manual_seed(6)
    true = _random_rotations(12, generator)
    group = point_group("C6", device="cpu").rotations.double()
    refined = true @ group[torch.arange(12) % 6]  # each particle at one of its six mates
    found = residual_vectors_deg(refined, true, group)
    assert float(found.norm(dim=1).max()) < 1e-6
    # a 10-degree turn about z on top of a mate is 10 degrees about z, not 50 or 70
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    turn = axis_angle_to_matrix(z, torch.tensor(10.0, dtype=torch.float64))
    found = residual_vectors_deg(refined @ turn, true, group)
    torch.testing.assert_close(found[:, 2].abs(), torch.full((12,), 10.0, dtype=torch.float64))


def test_a_half_turn_keeps_its_axis() -> None:
    """At 180 degrees the rotation's antisymmetric part vanishes; the axis is then the
    symmetric part's (an upside-down C_n particle: a half turn about a perpendicular axis)."""
    generator = torch.Generator().manual_seed(7)
    true = _random_rotations(4, generator)
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    flip = axis_angle_to_matrix(x, torch.tensor(180.0, dtype=torch.float64))
    found = residual_vectors_deg(true @ flip, true, torch.eye(3, dtype=torch.float64)[None])
    torch.testing.assert_close(
        found.abs(), torch.tensor([[180.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    )
