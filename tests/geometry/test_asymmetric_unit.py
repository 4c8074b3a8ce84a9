import math

import pytest
import torch

from cryorefine.geometry import (
    asymmetric_unit_pixels,
    direction_to_euler,
    euler_to_direction,
    healpix_max_pixel_radius_rad,
    healpix_npix,
    in_asymmetric_region,
    pixel_rot_tilt_deg,
    point_group,
    symmetry_mate_directions,
)

GROUPS = [
    "C1",
    "C2",
    "C6",
    "C7",
    "D1",
    "D2",
    "D7",
    "T",
    "Td",
    "Th",
    "O",
    "Oh",
    "I",
    "I1",
    "I3",
    "I4",
    "Ih",
    "I1h",
    "I3h",
    "I4h",
    "Ci",
    "Cs",
    "C3v",
    "C4h",
    "S4",
    "S6",
    "D3v",
    "D4h",
]


def _directions(order: int, pixels: torch.Tensor) -> torch.Tensor:
    return euler_to_direction(pixel_rot_tilt_deg(order, pixels))


def _mate_cos(a: torch.Tensor, b: torch.Tensor, operators: torch.Tensor) -> torch.Tensor:
    """[i, k]: largest cosine between a[i] and an operator image of b[k]."""
    return torch.einsum("ix,kgx->ikg", a, symmetry_mate_directions(b, operators)).amax(-1)


@pytest.mark.parametrize("name", GROUPS)
def test_region_holds_exactly_one_image_of_every_direction(name):
    group = point_group(name, device="cpu")
    gen = torch.Generator().manual_seed(len(name))
    x = torch.randn(20000, 3, dtype=torch.float64, generator=gen)
    images = symmetry_mate_directions(x / x.norm(dim=-1, keepdim=True), group.operators)
    inside = in_asymmetric_region(group, direction_to_euler(images))  # (n, g)
    # RELION's region is a fundamental domain; random directions miss its boundary
    assert torch.all(inside.sum(-1) == 1)


def _sequential_reference(order: int, name: str) -> list[int]:
    """RELION's two steps with a plain loop over directions (the slow, obvious version)."""
    group = point_group(name, device="cpu")
    pixels = torch.arange(healpix_npix(order))
    region = pixels[in_asymmetric_region(group, pixel_rot_tilt_deg(order, pixels))]
    d = _directions(order, region)
    cos_tol = math.cos(0.5 * healpix_max_pixel_radius_rad(order))
    kept: list[int] = []
    for i in range(region.shape[0]):
        mates = [
            float((group.operators[g].T @ d[k]) @ d[i]) for k in kept for g in range(group.order)
        ]
        if not any(c > cos_tol for c in mates):
            kept.append(i)
    return region[kept].tolist()


@pytest.mark.parametrize(
    ("name", "order"), [("C6", 2), ("D7", 2), ("O", 2), ("I", 3), ("Td", 2), ("C3v", 2), ("I4h", 3)]
)
def test_reduction_matches_a_sequential_reference(name, order):
    got = asymmetric_unit_pixels(order, point_group(name, device="cpu"))
    assert got.tolist() == _sequential_reference(order, name)


@pytest.mark.parametrize("name", GROUPS)
@pytest.mark.parametrize("order", [2, 3])
def test_kept_directions_are_no_symmetry_mates_and_removed_ones_are(name, order):
    group = point_group(name, device="cpu")
    kept = asymmetric_unit_pixels(order, group)
    half_r = 0.5 * healpix_max_pixel_radius_rad(order)
    dk = _directions(order, kept)
    cos = _mate_cos(dk, dk, group.operators)
    cos.fill_diagonal_(-2.0)
    # RELION's seam rule: no kept direction has a kept mate closer than r / 2
    assert torch.all(cos <= math.cos(half_r))
    pixels = torch.arange(healpix_npix(order))
    region = pixels[in_asymmetric_region(group, pixel_rot_tilt_deg(order, pixels))]
    removed = region[~torch.isin(region, kept)]
    if removed.numel():
        # ... and each region direction it dropped has a kept mate within r / 2
        worst = _mate_cos(_directions(order, removed), dk, group.operators).amax(-1).min()
        assert worst > math.cos(half_r)
    assert torch.all(torch.isin(kept, region))


@pytest.mark.parametrize("name", ["C2", "C4", "D2", "D4", "Ci"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_groups_that_permute_the_grid_keep_one_direction_per_orbit(name, order):
    # Quarter and half turns about z, the 2-fold about x and the inversion map HEALPix
    # centres onto centres and fix none, so every orbit has |G| members.
    group = point_group(name, device="cpu")
    kept = asymmetric_unit_pixels(order, group)
    assert kept.shape[0] * group.order == healpix_npix(order)
    all_d = _directions(order, torch.arange(healpix_npix(order)))
    best = _mate_cos(all_d, _directions(order, kept), group.operators).amax(-1)
    torch.testing.assert_close(best, torch.ones_like(best), rtol=0.0, atol=1e-12)


@pytest.mark.parametrize(("name", "order"), [("C6", 2), ("O", 3), ("I", 3), ("D7", 3), ("C1", 2)])
def test_count_is_the_full_sphere_divided_by_about_the_group_order(name, order):
    group = point_group(name, device="cpu")
    n = asymmetric_unit_pixels(order, group).shape[0]
    # Seams move the count by boundary pixels only: a factor 2 either way rules out
    # "no reduction" and "half the unit missing" (C6 at order 2: 28 of 192 / 6 = 32).
    assert healpix_npix(order) / 2 <= n * group.order <= 2 * healpix_npix(order)


def test_seam_check_off_keeps_the_whole_region_and_relion_skips_it_for_large_sets():
    group = point_group("C2", device="cpu")
    pixels = torch.arange(healpix_npix(5))
    region = pixels[in_asymmetric_region(group, pixel_rot_tilt_deg(5, pixels))]
    assert region.shape[0] >= 4000  # 6144 + seam: RELION skips step 2 here
    assert torch.equal(asymmetric_unit_pixels(5, group), region)
    forced = asymmetric_unit_pixels(2, group, seam_check=False)
    assert forced.shape[0] > asymmetric_unit_pixels(2, group).shape[0]


def test_follows_the_operators_device(device):
    kept = asymmetric_unit_pixels(2, point_group("C6", device=device))
    assert kept.device.type == device.type
    assert kept.dtype == torch.int64
