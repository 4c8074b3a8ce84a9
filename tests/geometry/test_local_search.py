import math

import pytest
import torch

from cryorefine.geometry import (
    asymmetric_unit_pixels,
    euler_to_direction,
    healpix_rot_tilt_deg,
    local_angle_prior,
    local_direction_prior,
    local_psi_prior,
    pixel_rot_tilt_deg,
    point_group,
    psi_angles_deg,
    symmetry_mate_directions,
)


def _symmetric_angle_deg(
    prior: torch.Tensor, dirs: torch.Tensor, operators: torch.Tensor
) -> torch.Tensor:
    """Slow reference: per prior and direction, the smallest angle over operator images."""
    p = euler_to_direction(prior)
    d = euler_to_direction(dirs)
    out = torch.empty(prior.shape[0], dirs.shape[0], dtype=torch.float64)
    for i in range(prior.shape[0]):
        for m in range(dirs.shape[0]):
            cos = max(float(p[i] @ (r.T @ d[m])) for r in operators)
            out[i, m] = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    return out


def test_weights_are_normalised_gaussians_of_the_symmetric_angle():
    group = point_group("C3", device="cpu")
    order = 2
    dirs = pixel_rot_tilt_deg(order, asymmetric_unit_pixels(order, group))
    gen = torch.Generator().manual_seed(1)
    prior = torch.stack(
        [
            torch.rand(6, generator=gen, dtype=torch.float64) * 360 - 180,
            torch.rand(6, generator=gen, dtype=torch.float64) * 180,
        ],
        dim=-1,
    )
    sigma = 12.0
    got = local_direction_prior(prior, dirs, sigma_deg=sigma, operators=group.operators)
    angle = _symmetric_angle_deg(prior, dirs, group.operators)
    want = torch.exp(-0.5 * (angle / sigma) ** 2) * (angle < 3 * sigma)
    want = want / want.sum(-1, keepdim=True)
    # acos near small angles: ~1e-8 deg absolute; the weights follow smoothly
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("name", ["C1", "C6", "O"])
def test_neighbourhood_contains_the_prior_and_nothing_beyond_the_range(name, device):
    group = point_group(name, device=device)
    order = 3
    dirs = pixel_rot_tilt_deg(order, asymmetric_unit_pixels(order, group))
    prior = dirs[::7]  # priors on sampled directions
    sigma = 5.0
    w = local_direction_prior(prior, dirs, sigma_deg=sigma, operators=group.operators)
    rows = torch.arange(prior.shape[0], device=device)
    assert torch.equal(w.argmax(-1), rows * 7)  # the prior's own direction weighs most
    p = euler_to_direction(prior)
    mates = symmetry_mate_directions(euler_to_direction(dirs), group.operators)
    angle = torch.rad2deg(torch.acos(torch.einsum("bk,mgk->bmg", p, mates).amax(-1).clamp(-1, 1)))
    assert torch.equal(w > 0, angle < 3 * sigma)


def test_symmetry_mates_of_the_prior_select_the_same_neighbourhood():
    group = point_group("C6", device="cpu")
    dirs = pixel_rot_tilt_deg(3, asymmetric_unit_pixels(3, group))
    prior = torch.tensor([[10.0, 70.0], [70.0, 70.0], [-110.0, 70.0]], dtype=torch.float64)
    w = local_direction_prior(prior, dirs, sigma_deg=4.0, operators=group.operators)
    # rot + 60 k is the same direction up to the 6-fold: same weights
    torch.testing.assert_close(w[1], w[0], rtol=0.0, atol=1e-12)
    torch.testing.assert_close(w[2], w[0], rtol=0.0, atol=1e-12)


def test_an_empty_range_falls_back_to_the_nearest_direction():
    dirs = healpix_rot_tilt_deg(1, device="cpu")
    ops = point_group("C1", device="cpu").operators
    prior = torch.tensor([[3.0, 41.0]], dtype=torch.float64)
    w = local_direction_prior(prior, dirs, sigma_deg=0.01, operators=ops)
    angle = _symmetric_angle_deg(prior, dirs, ops)
    assert w.sum() == 1.0
    assert w[0, angle[0].argmin()] == 1.0


def test_psi_prior_wraps_around_the_circle():
    psi = psi_angles_deg(15.0, device="cpu")  # 0 .. 345
    prior = torch.tensor([-179.0, 0.0, 352.0], dtype=torch.float64)
    sigma = 10.0
    w = local_psi_prior(prior, psi, sigma_deg=sigma)
    for b, centre in enumerate(prior.tolist()):
        delta = torch.tensor(
            [abs((p - centre + 180.0) % 360.0 - 180.0) for p in psi.tolist()], dtype=torch.float64
        )
        want = torch.exp(-0.5 * (delta / sigma) ** 2) * (delta < 3 * sigma)
        torch.testing.assert_close(w[b], want / want.sum())
    assert w[0, 12] > 0
    assert w[0, 11] > 0
    assert w[2, 0] > 0
    assert w[2, 23] > 0
    narrow = local_psi_prior(prior, psi, sigma_deg=0.1)
    assert torch.equal(narrow.argmax(-1), torch.tensor([12, 0, 23]))  # 352 is 7 from 345
    assert torch.equal(narrow.sum(-1), torch.ones(3, dtype=torch.float64))


def test_sigma_must_be_positive():
    dirs = healpix_rot_tilt_deg(0, device="cpu")
    with pytest.raises(ValueError, match="sigma"):
        local_direction_prior(
            dirs[:1], dirs, sigma_deg=0.0, operators=torch.eye(3, dtype=torch.float64)[None]
        )


@pytest.mark.parametrize("angle", ["rot", "tilt"])
def test_a_prior_on_one_angle_weighs_that_angle_of_the_nearest_symmetry_image(angle):
    group = point_group("D2", device="cpu")
    order = 2
    dirs = pixel_rot_tilt_deg(order, asymmetric_unit_pixels(order, group))
    gen = torch.Generator().manual_seed(7)
    prior = torch.rand(5, generator=gen, dtype=torch.float64) * (360 if angle == "rot" else 180)
    prior = prior - (180 if angle == "rot" else 0)
    sigma = 10.0
    got = local_angle_prior(prior, dirs, angle=angle, sigma_deg=sigma, operators=group.operators)
    # slow reference: every operator image of every direction, its angle from atan2/acos
    d = euler_to_direction(dirs)
    delta = torch.empty(5, dirs.shape[0], dtype=torch.float64)
    for i in range(5):
        for m in range(dirs.shape[0]):
            best = math.inf
            for r in group.operators:
                x, y, z = (r.T @ d[m]).tolist()
                if angle == "tilt":
                    diff = abs(math.degrees(math.acos(max(-1.0, min(1.0, z)))) - float(prior[i]))
                else:
                    diff = abs(math.degrees(math.atan2(y, x)) - float(prior[i])) % 360
                    diff = min(diff, 360 - diff)
                best = min(best, diff)
            delta[i, m] = best
    want = torch.exp(-0.5 * (delta / sigma) ** 2) * (delta < 3 * sigma)
    want = want / want.sum(-1, keepdim=True)
    # the same float64 trigonometry in another order: ~1e-12 deg, weights follow
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("angle", ["rot", "tilt"])
def test_operators_taken_a_block_at_a_time_give_the_same_prior(angle, monkeypatch):
    from cryorefine.geometry import local_search

    group = point_group("O", device="cpu")  # 24 operators
    dirs = pixel_rot_tilt_deg(2, asymmetric_unit_pixels(2, group))
    prior = torch.rand(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 170
    at_once = local_angle_prior(prior, dirs, angle=angle, sigma_deg=12.0, operators=group.operators)
    # room for 5 operators' differences per block (blocks of 5, 5, 5, 5 and 4), and for one
    # (one operator at a time, as the loop before blocks)
    for operators_per_block in (5, 1):
        room = 6 * dirs.shape[0] * 8 * operators_per_block
        monkeypatch.setattr(local_search, "_OPERATOR_BLOCK_BYTES", room)
        blocks = local_angle_prior(
            prior, dirs, angle=angle, sigma_deg=12.0, operators=group.operators
        )
        assert torch.equal(at_once, blocks)  # minima of the same numbers: exact
