import math

import numpy as np
import pytest
import torch

from cryorefine.geometry import healpix as healpix_module
from cryorefine.geometry import (
    healpix_children,
    healpix_max_pixel_radius_rad,
    healpix_nest2xyf,
    healpix_npix,
    healpix_pix2ang,
    healpix_pix2vec,
    healpix_pix2z_phi,
    healpix_xyf2nest,
)


def _all_pixels(order: int, device="cpu") -> torch.Tensor:
    return torch.arange(healpix_npix(order), device=device)


def _nearest_neighbour_rad(v: torch.Tensor) -> torch.Tensor:
    cos = v @ v.T
    cos.fill_diagonal_(-2.0)
    return torch.acos(cos.amax(dim=1).clamp(-1.0, 1.0))


@pytest.mark.parametrize("order", range(6))
def test_pixel_count_and_all_directions_distinct(order):
    assert healpix_npix(order) == 12 * 4**order
    v = healpix_pix2vec(order, _all_pixels(order))
    assert v.shape == (12 * 4**order, 3)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(v.shape[0], dtype=torch.float64))
    if order <= 4:  # pairwise check, 3072**2 at most
        assert _nearest_neighbour_rad(v).min() > 0.1 * math.sqrt(4 * math.pi / v.shape[0])


@pytest.mark.parametrize("order", [0, 1, 3, 7, 12])
def test_nest2xyf_and_xyf2nest_are_inverse(order, device):
    gen = torch.Generator().manual_seed(order)
    pix = torch.randint(0, healpix_npix(order), (5000,), generator=gen).to(device)
    ix, iy, face = healpix_nest2xyf(order, pix)
    nside = 2**order
    assert ix.min() >= 0
    assert ix.max() < nside
    assert iy.min() >= 0
    assert iy.max() < nside
    assert face.min() >= 0
    assert face.max() < 12
    assert torch.equal(healpix_xyf2nest(order, ix, iy, face), pix)


@pytest.mark.parametrize("order", [5, 8, 9, 17, 29])
def test_bit_interleave_matches_a_slow_digit_by_digit_reference(order, device):
    """Both directions, across the 8-bit chunks of the lookup tables, up to the largest order."""
    gen = torch.Generator().manual_seed(100 + order)
    npix = healpix_npix(order)
    pix = torch.cat([torch.randint(0, npix, (300,), generator=gen), torch.tensor([0, npix - 1])])
    ix, iy, face = healpix_nest2xyf(order, pix.to(device))
    got = zip(pix.tolist(), ix.tolist(), iy.tolist(), face.tolist(), strict=True)
    for p, x_got, y_got, face_got in got:
        inner, x, y = p % 4**order, 0, 0
        for bit in range(order):  # x on the even bits, y on the odd bits
            x |= ((inner >> (2 * bit)) & 1) << bit
            y |= ((inner >> (2 * bit + 1)) & 1) << bit
        assert (x_got, y_got, face_got) == (x, y, p // 4**order)
    assert torch.equal(healpix_xyf2nest(order, ix, iy, face).cpu(), pix)


def test_face_ring_and_longitude_follow_the_base_face_table():
    """Gorski et al. 2005, Fig. 4: the ring of each face's southern corner and its longitude."""
    face = torch.arange(12)
    ring, phi = healpix_module._face_ring_phi(face)
    assert ring.tolist() == list(healpix_module._FACE_RING)
    assert phi.tolist() == list(healpix_module._FACE_PHI)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ring_counts_and_equal_areas(order):
    nside, npix = 2**order, healpix_npix(order)
    z, _ = healpix_pix2z_phi(order, _all_pixels(order))
    rings, counts = torch.unique(z, sorted=True, return_counts=True)
    rings, counts = rings.flip(0), counts.flip(0)  # from the north pole
    assert rings.shape[0] == 4 * nside - 1
    j = torch.arange(1, 4 * nside)
    want = torch.minimum(torch.minimum(4 * j, 4 * (4 * nside - j)), torch.full_like(j, 4 * nside))
    assert torch.equal(counts, want)
    # Equal area (Archimedes: the cap above height z holds (1 - z) / 2 of the sphere):
    # pixels above a ring plus half of the ring's own pixels fill exactly that share.
    above = torch.cumsum(counts, 0) - counts
    share = (above.double() + counts.double() / 2) / npix
    torch.testing.assert_close(share.double(), (1 - rings) / 2, rtol=0.0, atol=1e-15)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_nearest_neighbour_angle_is_near_the_resolution(order):
    nside, npix = 2**order, healpix_npix(order)
    v = healpix_pix2vec(order, _all_pixels(order))
    nn = _nearest_neighbour_rad(v)
    resolution = math.sqrt(4 * math.pi / npix)  # side of a square of one pixel's area
    # Band from the pixel geometry: neighbouring pixels share a boundary point, so a
    # centre's nearest neighbour is within 2 * max_pixrad; centres lie on rings, so two
    # centres are at least the smallest ring-to-ring angle apart (or the smallest
    # spacing along a ring, sin(theta) * 2 pi / pixels in the ring).
    z, _ = healpix_pix2z_phi(order, _all_pixels(order))
    rings, counts = torch.unique(z, sorted=True, return_counts=True)
    theta = torch.acos(rings)
    along = (torch.sin(theta) * 2 * math.pi / counts).min()
    across = (theta[:-1] - theta[1:]).abs().min()
    low, high = min(along, across).item(), 2 * healpix_max_pixel_radius_rad(order)
    assert low <= nn.min()
    assert nn.max() <= high
    assert low < 0.9 * resolution
    assert 1.1 * resolution < high
    assert low <= nn.mean() <= high
    # On the equator (z = 0) the nearest centres sit one ring away (z = +-2 / (3 nside))
    # and half a pixel along (pi / (4 nside)): spherical law of cosines, exact.
    equator = z == 0
    exact = math.acos(math.sqrt(1 - (2 / (3 * nside)) ** 2) * math.cos(math.pi / (4 * nside)))
    assert int(equator.sum()) == 4 * nside
    torch.testing.assert_close(
        nn[equator], torch.full_like(nn[equator], exact), rtol=0.0, atol=1e-12
    )


@pytest.mark.parametrize("order", [0, 2, 4])
def test_children_at_the_next_order_are_4i_to_4i_plus_3_and_inside_the_parent(order, device):
    parents = _all_pixels(order, device)
    children = healpix_children(order, parents, oversampling=1)
    assert torch.equal(children, 4 * parents[:, None] + torch.arange(4, device=device))
    parent_v = healpix_pix2vec(order, parents)
    child_v = healpix_pix2vec(order + 1, children)
    angle = torch.acos((child_v * parent_v[:, None]).sum(-1).clamp(-1, 1))
    # a child's centre lies inside the parent pixel: within its maximum pixel radius
    assert angle.max() <= healpix_max_pixel_radius_rad(order)


def test_deeper_children_are_the_same_set_listed_row_by_row():
    order, k = 1, 2
    parents = _all_pixels(order)
    children = healpix_children(order, parents, oversampling=k)
    assert torch.equal(children.sort(dim=1).values, 16 * parents[:, None] + torch.arange(16))
    ix, iy, _ = healpix_nest2xyf(order + k, children)
    # RELION lists the fine face grid with iy in the outer loop and ix in the inner loop
    assert torch.equal(iy - iy[:, :1], torch.arange(4).repeat_interleave(4).expand(24 * 2, 16))
    assert torch.equal(ix - ix[:, :1], torch.arange(4).repeat(4).expand(24 * 2, 16))
    assert not torch.equal(children, children.sort(dim=1).values)


def test_max_pixel_radius_bounds_grandchildren_and_shrinks_by_half_per_order():
    for order in range(1, 5):
        parents = _all_pixels(order)
        grand = healpix_pix2vec(order + 3, healpix_children(order, parents, oversampling=3))
        angle = torch.acos((grand * healpix_pix2vec(order, parents)[:, None]).sum(-1).clamp(-1, 1))
        r = healpix_max_pixel_radius_rad(order)
        assert angle.max() <= r
        assert angle.max() > 0.8 * r
        ratio = healpix_max_pixel_radius_rad(order + 1) / r
        assert 0.5 < ratio < 0.56  # self-similar pixels; curvature makes coarse ones smaller


def test_z_and_phi_ranges(device):
    theta, phi = healpix_pix2ang(4, _all_pixels(4, device))
    assert theta.dtype == torch.float64
    assert theta.device.type == device.type
    assert theta.min() > 0
    assert theta.max() < math.pi
    assert phi.min() >= 0
    assert phi.max() < 2 * math.pi


def test_agrees_with_healpy():
    healpy = pytest.importorskip(
        "healpy", reason="healpy (GPL-2.0) is an optional test-only oracle"
    )
    for order in range(8):
        nside = 2**order
        pix = np.arange(12 * 4**order)
        theta_ref, phi_ref = healpy.pix2ang(nside, pix, nest=True)
        theta, phi = healpix_pix2ang(order, torch.from_numpy(pix))
        # two float64 evaluations of acos / ring geometry: a few ulps of pi
        np.testing.assert_allclose(theta.numpy(), theta_ref, rtol=0, atol=1e-13)
        np.testing.assert_allclose(phi.numpy(), phi_ref, rtol=0, atol=1e-13)
        assert healpix_max_pixel_radius_rad(order) == pytest.approx(
            healpy.max_pixrad(nside), abs=1e-15
        )
