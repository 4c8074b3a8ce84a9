import math

import pytest
import torch

from cryorefine.geometry import (
    angular_distance_deg,
    angular_step_deg,
    euler_to_direction,
    euler_to_matrix,
    healpix_children,
    healpix_max_pixel_radius_rad,
    healpix_npix,
    healpix_pix2vec,
    healpix_rot_tilt_deg,
    next_perturbation,
    orientation_grid_deg,
    oversampled_orientations_deg,
    oversampled_psi_deg,
    perturb_rotations,
    pixel_rot_tilt_deg,
    psi_angles_deg,
    sampling,
)
from cryorefine.geometry.sampling import TABLE_MAX_ORDER

# RELION's GUI choices (pipeline_jobs.h), orders 1..9 after one oversampling.
GUI_LABELS_DEG = [30, 15, 7.5, 3.7, 1.8, 0.9, 0.5, 0.2, 0.1]


def test_angular_step_is_what_relion_prints_after_one_oversampling():
    # --healpix_order 2 with --oversampling 1 prints "Angular step= 7.5 degrees"
    assert [angular_step_deg(n, oversampling=1) for n in (2, 3, 4, 5)] == [7.5, 3.75, 1.875, 0.9375]
    assert [angular_step_deg(n) for n in range(4)] == [60.0, 30.0, 15.0, 7.5]
    for command_line_order, label in enumerate(GUI_LABELS_DEG):
        # the GUI shows one decimal (3.75 as "3.7", 0.46875 as "0.5"): within 0.1
        assert abs(angular_step_deg(command_line_order, oversampling=1) - label) < 0.1


def test_psi_angles_cover_the_circle_with_the_step():
    psi = psi_angles_deg(15.0, device="cpu")
    assert psi.shape == (24,)
    assert psi[0] == 0.0
    torch.testing.assert_close(psi.diff(), torch.full((23,), 15.0, dtype=torch.float64))
    odd = psi_angles_deg(7.0, device="cpu")  # 360 / 7 is not whole: ceil gives 52 values
    assert odd.shape == (52,)
    assert odd.max() < 360.0
    torch.testing.assert_close(odd.diff(), torch.full((51,), 360.0 / 52, dtype=torch.float64))


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_directions_of_an_order_are_the_healpix_centres_in_relions_ranges(order, device):
    rot_tilt = healpix_rot_tilt_deg(order, device=device)
    assert rot_tilt.shape == (12 * 4**order, 2)
    assert rot_tilt[:, 0].min() > -180.0
    assert rot_tilt[:, 0].max() <= 180.0
    assert rot_tilt[:, 1].min() >= 0.0
    assert rot_tilt[:, 1].max() <= 180.0
    want = healpix_pix2vec(order, torch.arange(healpix_npix(order), device=device))
    torch.testing.assert_close(euler_to_direction(rot_tilt), want, rtol=0.0, atol=1e-14)


@pytest.mark.parametrize("order", [2, 3])
def test_nearest_neighbour_direction_is_about_the_step(order):
    v = euler_to_direction(healpix_rot_tilt_deg(order, device="cpu"))
    cos = v @ v.T
    cos.fill_diagonal_(-2.0)
    nn_deg = torch.rad2deg(torch.acos(cos.amax(1).clamp(-1, 1)))
    step = angular_step_deg(order)
    # the step 60 / 2**n deg is sqrt(pi / 3) = 1.023 times the HEALPix resolution
    # sqrt(4 pi / npix). Neighbours share a pixel boundary: nn <= 2 max_pixrad. Two
    # centres lie on different rings (the narrowest gap is 2 / (3 nside) rad, at the
    # equator) or on one ring (>= 1.15 / nside rad apart): nn >= 2 / (3 nside).
    resolution = math.sqrt(4 * math.pi / healpix_npix(order))
    assert math.radians(step) == pytest.approx(math.sqrt(math.pi / 3) * resolution)
    assert nn_deg.max() <= 2 * math.degrees(healpix_max_pixel_radius_rad(order))
    assert nn_deg.min() >= math.degrees(2 / (3 * 2**order))


def test_orientation_grid_is_direction_major():
    dirs = healpix_rot_tilt_deg(1, device="cpu")
    psi = psi_angles_deg(30.0, device="cpu")
    grid = orientation_grid_deg(dirs, psi)
    assert grid.shape == (48 * 12, 3)
    i = torch.arange(grid.shape[0])
    assert torch.equal(grid[:, :2], dirs[i // 12])
    assert torch.equal(grid[:, 2], psi[i % 12])
    matrices = euler_to_matrix(grid)
    d = angular_distance_deg(matrices[:, None], matrices[None])
    d.fill_diagonal_(360.0)
    assert d.min() > 1.0  # all orientations distinct


def test_oversampled_psi_splits_each_step_evenly():
    psi = torch.tensor([0.0, 90.0, 345.0], dtype=torch.float64)
    one = oversampled_psi_deg(psi, psi_step_deg=15.0, oversampling=1)
    torch.testing.assert_close(one, psi[:, None] + torch.tensor([-3.75, 3.75], dtype=torch.float64))
    two = oversampled_psi_deg(psi, psi_step_deg=15.0, oversampling=2)
    torch.testing.assert_close(two.mean(-1), psi)
    torch.testing.assert_close(two.diff(dim=-1), torch.full((3, 3), 3.75, dtype=torch.float64))
    assert torch.equal(oversampled_psi_deg(psi, psi_step_deg=15.0, oversampling=0)[:, 0], psi)


def test_oversampled_orientations_are_children_then_psi():
    order = 2
    pixels = torch.tensor([0, 17, 191])
    psi = torch.tensor([0.0, 45.0, 300.0], dtype=torch.float64)
    fine = oversampled_orientations_deg(order, pixels, psi, psi_step_deg=15.0, oversampling=1)
    assert fine.shape == (3, 8, 3)
    child_dirs = pixel_rot_tilt_deg(order + 1, healpix_children(order, pixels, oversampling=1))
    torch.testing.assert_close(fine[:, 0::2, :2], child_dirs)
    torch.testing.assert_close(fine[:, 1::2, :2], child_dirs)
    torch.testing.assert_close(fine[:, 0::2, 2], (psi - 3.75)[:, None].expand(3, 4))
    torch.testing.assert_close(fine[:, 1::2, 2], (psi + 3.75)[:, None].expand(3, 4))
    # each fine pose lies within the coarse pixel radius plus a quarter psi step of its parent
    coarse = euler_to_matrix(torch.cat([pixel_rot_tilt_deg(order, pixels), psi[:, None]], -1))
    spread = angular_distance_deg(euler_to_matrix(fine), coarse[:, None])
    assert spread.max() <= math.degrees(healpix_max_pixel_radius_rad(order)) + 3.75
    same = oversampled_orientations_deg(order, pixels, psi, psi_step_deg=15.0, oversampling=0)
    torch.testing.assert_close(
        same[:, 0], torch.cat([pixel_rot_tilt_deg(order, pixels), psi[:, None]], -1)
    )


def test_perturbation_instance_moves_by_half_to_one_factor_and_stays_in_range():
    gen = torch.Generator().manual_seed(5)
    factor, value, values = 0.5, 0.0, []
    for _ in range(200):
        new = next_perturbation(value, factor=factor, generator=gen)
        assert -factor <= new <= factor
        step = (new - value) % (2 * factor)  # increments wrap with period 2 * factor
        assert factor / 2 - 1e-12 <= step <= factor + 1e-12
        values.append(new)
        value = new
    assert min(values) < -0.4
    assert max(values) > 0.4
    assert next_perturbation(0.3, factor=0.0, generator=gen) == 0.0
    with pytest.raises(ValueError, match="factor"):
        next_perturbation(0.0, factor=1.5, generator=gen)


def test_perturbed_poses_are_right_multiplied_by_one_euler_matrix(device):
    gen = torch.Generator().manual_seed(6)
    angles = torch.rand(50, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [360.0, 180.0, 360.0]
    )
    a = euler_to_matrix(angles).to(device)
    got = perturb_rotations(a, perturbation=0.3, step_deg=15.0)
    e = euler_to_matrix(torch.full((3,), 4.5, dtype=torch.float64, device=device))
    torch.testing.assert_close(got, a @ e)
    # a fixed right factor moves every pose by the same geodesic angle
    moved = angular_distance_deg(got, a)
    torch.testing.assert_close(moved, moved[:1].expand(50))


@pytest.mark.parametrize("order", [0, 3, 6, TABLE_MAX_ORDER])
def test_pixel_angles_from_the_table_are_those_computed_for_the_pixels(order, device):
    # the table is every pixel computed at once; picking from it gives the same numbers as
    # computing the picked pixels alone (float64, elementwise: at most a rounding apart)
    gen = torch.Generator().manual_seed(order)
    pixels = torch.randint(0, healpix_npix(order), (7, 11), generator=gen).to(device)
    got = pixel_rot_tilt_deg(order, pixels)
    want = sampling._rot_tilt_deg(order, pixels)
    assert got.shape == (7, 11, 2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=2 * torch.finfo(torch.float64).eps, atol=0.0)
    all_pixels = healpix_rot_tilt_deg(order, device=device)
    all_pixels.zero_()  # a copy: the table itself is not handed out
    torch.testing.assert_close(pixel_rot_tilt_deg(order, pixels), got, rtol=0.0, atol=0.0)


def test_pixel_angles_beyond_the_tables_orders_are_computed_without_a_table():
    sampling._rot_tilt_table.cache_clear()
    pixels = torch.tensor([0, 5, healpix_npix(TABLE_MAX_ORDER + 1) - 1])
    got = pixel_rot_tilt_deg(TABLE_MAX_ORDER + 1, pixels)
    torch.testing.assert_close(got, sampling._rot_tilt_deg(TABLE_MAX_ORDER + 1, pixels))
    assert sampling._rot_tilt_table.cache_info().currsize == 0
    assert ((got[:, 1] >= 0.0) & (got[:, 1] <= 180.0)).all()  # tilt
    assert ((got[:, 0] > -180.0) & (got[:, 0] <= 180.0)).all()  # rot


def test_each_perturbation_gets_its_own_right_factor():
    a = euler_to_matrix(torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64))
    for perturbation in (0.3, -0.2, 0.3):
        got = perturb_rotations(a, perturbation=perturbation, step_deg=15.0)
        angle = torch.full((3,), perturbation * 15.0, dtype=torch.float64)
        torch.testing.assert_close(got, a @ euler_to_matrix(angle))


def test_the_cached_factors_serve_autograd_after_a_first_call_in_inference_mode():
    sampling._perturbation_matrix.cache_clear()
    sampling._rot_tilt_table.cache_clear()
    a = euler_to_matrix(torch.tensor([[10.0, 20.0, 30.0]], dtype=torch.float64))
    with torch.inference_mode():
        perturb_rotations(a, perturbation=0.4, step_deg=15.0)
        pixel_rot_tilt_deg(2, torch.tensor([3, 4]))
    tracked = a.clone().requires_grad_()
    perturb_rotations(tracked, perturbation=0.4, step_deg=15.0).sum().backward()
    assert tracked.grad is not None
    angles = pixel_rot_tilt_deg(2, torch.tensor([3, 4]))
    assert not angles.is_inference()
