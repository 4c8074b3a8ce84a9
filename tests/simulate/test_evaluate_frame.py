"""The global frame between refined and true poses is found despite misassigned particles."""

import torch

from cryorefine.geometry import euler_to_matrix, point_group
from cryorefine.simulate.evaluate import global_frame


def _random_rotations(count: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(count, 4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=1,
    )


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    cosine = ((torch.trace(a.T @ b) - 1) / 2).clamp(-1, 1)
    return float(torch.rad2deg(torch.arccos(cosine)))


def test_the_frame_ignores_a_fifth_of_particles_in_random_poses() -> None:
    generator = torch.Generator().manual_seed(11)
    group = point_group("C6", device="cpu")
    true = _random_rotations(400, generator)
    frame = euler_to_matrix(torch.tensor([[20.0, 35.0, -50.0]], dtype=torch.float64))[0]
    mates = group.rotations[torch.randint(0, 6, (400,), generator=generator)]
    # A_refined = A_true R G^T, plus small errors (about 0.5 deg) on every particle...
    small = euler_to_matrix(0.3 * torch.randn(400, 3, generator=generator, dtype=torch.float64))
    refined = small @ true @ mates @ frame.T
    # ...and 80 particles (a fifth) in unrelated poses.
    refined[:80] = _random_rotations(80, generator)
    start = euler_to_matrix(torch.tensor([[25.0, 30.0, -45.0]], dtype=torch.float64))[0]
    found = global_frame(refined, true, group.rotations, start=start)
    # The inliers' small errors average out over 320 particles to ~0.5 / sqrt(320) deg; the
    # outliers, left out, would otherwise pull the mean by degrees.
    assert _angle_deg(found, frame) < 0.1
