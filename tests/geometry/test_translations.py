import math

import pytest
import torch

from cryorefine.geometry import oversampled_translations, perturb_translations, translation_grid


def _relion_loop(offset_range: float, step: float, ndim: int) -> list[tuple[float, ...]]:
    """RELION's setTranslations as a plain loop: x slowest, disc (2D) or ball (3D)."""
    half = math.ceil(offset_range / step)
    out = []
    for ix in range(-half, half + 1):
        for iy in range(-half, half + 1):
            x, y = ix * step, iy * step
            if ndim == 2:
                if x * x + y * y < offset_range * offset_range + 0.001:
                    out.append((x, y))
                continue
            for iz in range(-half, half + 1):
                z = iz * step
                if x * x + y * y + z * z <= offset_range * offset_range:
                    out.append((x, y, z))
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_grid_matches_relions_loop_on_random_ranges_and_steps(ndim):
    gen = torch.Generator().manual_seed(ndim)
    for _ in range(20):
        step = 0.3 + 2.0 * torch.rand((), generator=gen, dtype=torch.float64).item()
        rng = 6.0 * torch.rand((), generator=gen, dtype=torch.float64).item()
        got = translation_grid(rng, step, ndim=ndim, device="cpu")
        want = torch.tensor(_relion_loop(rng, step, ndim), dtype=torch.float64).reshape(-1, ndim)
        assert torch.equal(got, want)


def test_counts_of_whole_number_ranges():
    # lattice points with x**2 + y**2 <= 25: 81; in the ball of radius 5: 515
    assert translation_grid(5.0, 1.0, ndim=2, device="cpu").shape == (81, 2)
    assert translation_grid(5.0, 1.0, ndim=3, device="cpu").shape == (515, 3)
    # range 3, step 2: the 3 x 3 square fits (corner at 2.83 < 3)
    assert translation_grid(3.0, 2.0, ndim=2, device="cpu").shape == (9, 2)
    origin = translation_grid(0.0, 1.0, ndim=3, device="cpu")
    assert torch.equal(origin, torch.zeros(1, 3, dtype=torch.float64))


@pytest.mark.parametrize("ndim", [2, 3])
def test_offsets_lie_on_the_grid_inside_the_range_and_are_symmetric(ndim, device):
    grid = translation_grid(4.5, 1.5, ndim=ndim, device=device)
    assert grid.device.type == device.type
    assert torch.all(grid.norm(dim=-1) <= 4.5 + 1e-12)
    torch.testing.assert_close(grid / 1.5, torch.round(grid / 1.5))
    assert torch.equal(grid.flip(0), -grid)  # the listing is point-symmetric
    assert torch.all(grid[:, 0].diff() >= 0)  # x varies slowest


@pytest.mark.parametrize(("ndim", "oversampling"), [(2, 1), (3, 1), (2, 2)])
def test_oversampled_offsets_split_each_cell_evenly(ndim, oversampling):
    coarse = translation_grid(2.0, 1.0, ndim=ndim, device="cpu")
    fine = oversampled_translations(coarse, offset_step_px=1.0, oversampling=oversampling)
    n = 2**oversampling
    assert fine.shape == (coarse.shape[0], n**ndim, ndim)
    torch.testing.assert_close(fine.mean(dim=1), coarse)  # centred on the coarse offset
    spacing = 1.0 / n
    offsets = (fine - coarse[:, None]) / spacing + (n - 1) / 2  # integer cell positions
    torch.testing.assert_close(offsets, torch.round(offsets))
    assert offsets.min() == 0
    assert offsets.max() == n - 1
    if oversampling == 1:
        assert torch.equal((fine - coarse[:, None]).abs(), torch.full_like(fine, 0.25))
    same = oversampled_translations(coarse, offset_step_px=1.0, oversampling=0)
    assert torch.equal(same[:, 0], coarse)


def test_perturbation_moves_every_axis_by_the_instance_times_the_step():
    grid = translation_grid(3.0, 1.0, ndim=3, device="cpu")
    moved = perturb_translations(grid, perturbation=-0.25, offset_step_px=2.0)
    torch.testing.assert_close(moved - grid, torch.full_like(grid, -0.5))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="ndim"):
        translation_grid(1.0, 1.0, ndim=4, device="cpu")
    with pytest.raises(ValueError, match="step"):
        translation_grid(1.0, 0.0, ndim=2, device="cpu")
