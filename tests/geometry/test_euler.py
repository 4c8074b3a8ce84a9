import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis.strategies import floats

from cryorefine.geometry import (
    GIMBAL_LOCK_SIN_TILT,
    angular_distance_deg,
    axis_angle_to_matrix,
    direction_to_euler,
    euler_to_direction,
    euler_to_matrix,
    matrix_to_euler,
    orientation_change_deg,
    point_group,
    symmetric_angular_distance_deg,
)

U = 2.0**-53  # float64 unit roundoff


def _random_angles(n: int, seed: int, tilt_low: float = 0.0, tilt_high: float = 180.0):
    gen = torch.Generator().manual_seed(seed)
    rot = torch.rand(n, generator=gen, dtype=torch.float64) * 360 - 180
    tilt = tilt_low + torch.rand(n, generator=gen, dtype=torch.float64) * (tilt_high - tilt_low)
    psi = torch.rand(n, generator=gen, dtype=torch.float64) * 360 - 180
    return torch.stack([rot, tilt, psi], dim=-1)


def _relion_table(rot: float, tilt: float, psi: float) -> list[list[float]]:
    """REFINE_SPEC §1.1 table, one element at a time with math (the slow reference)."""
    a, b, g = (math.radians(v) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = (
        math.cos(a),
        math.sin(a),
        math.cos(b),
        math.sin(b),
        math.cos(g),
        math.sin(g),
    )
    return [
        [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
        [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
        [sb * ca, sb * sa, cb],
    ]


def _frame_rz(t: float) -> torch.Tensor:
    c, s = math.cos(math.radians(t)), math.sin(math.radians(t))
    return torch.tensor([[c, s, 0], [-s, c, 0], [0, 0, 1]], dtype=torch.float64)


def _frame_ry(t: float) -> torch.Tensor:
    c, s = math.cos(math.radians(t)), math.sin(math.radians(t))
    return torch.tensor([[c, 0, -s], [0, 1, 0], [s, 0, c]], dtype=torch.float64)


def test_euler_to_matrix_matches_the_relion_element_table(device):
    angles = _random_angles(200, seed=1)
    got = euler_to_matrix(angles.to(device)).cpu()
    want = torch.tensor([_relion_table(*row.tolist()) for row in angles], dtype=torch.float64)
    # Same formula on both sides; sin/cos differ by <= 1 ulp between libraries, each
    # entry is <= 2 products of 3 factors plus one sum: < 20 u absolute (entries <= 1).
    torch.testing.assert_close(got, want, rtol=0.0, atol=20 * U)


def test_matrix_is_psi_tilt_rot_product_of_frame_rotations():
    for rot, tilt, psi in _random_angles(20, seed=2).tolist():
        want = _frame_rz(psi) @ _frame_ry(tilt) @ _frame_rz(rot)
        got = euler_to_matrix(torch.tensor([rot, tilt, psi], dtype=torch.float64))
        torch.testing.assert_close(got, want, rtol=0.0, atol=20 * U)


def test_matrices_are_proper_rotations(device):
    a = euler_to_matrix(_random_angles(500, seed=3).to(device))
    eye = torch.eye(3, dtype=torch.float64, device=device).expand_as(a)
    # orthonormality: sums of 3 products of entries <= 1, each entry off by < 20 u
    torch.testing.assert_close(a @ a.mT, eye, rtol=0.0, atol=200 * U)
    torch.testing.assert_close(
        torch.linalg.det(a), torch.ones(500, dtype=torch.float64, device=device)
    )


def test_projection_direction_is_row_2_of_the_matrix(device):
    angles = _random_angles(300, seed=4).to(device)
    torch.testing.assert_close(euler_to_direction(angles[:, :2]), euler_to_matrix(angles)[:, 2, :])


def test_matrix_maps_the_direction_onto_the_particle_z_axis():
    # A maps reference coordinates to particle-frame ones; the viewing direction d
    # (row 2 of A) is where the particle frame looks along z: A d = (0, 0, 1).
    angles = _random_angles(50, seed=5)
    d = euler_to_direction(angles[:, :2])
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(50, 3)
    torch.testing.assert_close((euler_to_matrix(angles) @ d[:, :, None])[..., 0], z)


@settings(max_examples=200, deadline=None)
@given(rot=floats(-180, 180), tilt=floats(1, 179), psi=floats(-180, 180))
def test_euler_round_trip_keeps_the_rotation(rot, tilt, psi):
    a = euler_to_matrix(torch.tensor([[rot, tilt, psi]], dtype=torch.float64))
    back = matrix_to_euler(a)
    # atan2 with sin(tilt) >= sin(1 deg): error <~ 10 u / 0.017 ~ 1e-13; gimbal lock: own test
    torch.testing.assert_close(euler_to_matrix(back), a, rtol=0.0, atol=5e-13)
    assert 0.0 <= back[0, 1] <= 180.0
    assert back[0, 0].abs() <= 180.0
    assert back[0, 2].abs() <= 180.0


def test_round_trip_returns_the_same_angles_inside_relions_ranges():
    angles = _random_angles(400, seed=6, tilt_low=1.0, tilt_high=179.0)
    back = matrix_to_euler(euler_to_matrix(angles))
    # angles differ by atan2 of entries off by ~20 u, over sin(tilt) >= 0.017: < 1e-11 deg
    torch.testing.assert_close(back, angles, rtol=0.0, atol=1e-11)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_gimbal_lock_sets_rot_to_zero_and_keeps_the_rotation(tilt):
    angles = _random_angles(50, seed=7)
    angles[:, 1] = tilt
    a = euler_to_matrix(angles)
    back = matrix_to_euler(a)
    assert torch.all(back[:, 0] == 0.0)
    assert torch.all(back[:, 1] == tilt)
    # psi carries rot + psi (tilt 0) or psi - rot (tilt 180), wrapped to [-180, 180]
    torch.testing.assert_close(euler_to_matrix(back), a, rtol=0.0, atol=100 * U)


def test_gimbal_lock_threshold_is_relions_single_precision_bound():
    # |sin tilt| <= 16 * 2**-23 counts as locked, just above does not
    locked_deg = math.degrees(0.9 * GIMBAL_LOCK_SIN_TILT)
    free_deg = math.degrees(1.1 * GIMBAL_LOCK_SIN_TILT)
    angles = torch.tensor([[30.0, locked_deg, 10.0], [30.0, free_deg, 10.0]], dtype=torch.float64)
    back = matrix_to_euler(euler_to_matrix(angles))
    assert back[0, 0] == 0.0
    assert back[0, 1] == 0.0
    torch.testing.assert_close(back[1], angles[1], rtol=0.0, atol=1e-6)


def test_float32_stays_float32_on_the_inputs_device(device):
    angles = _random_angles(10, seed=8).to(device=device, dtype=torch.float32)
    a = euler_to_matrix(angles)
    assert a.dtype == torch.float32
    assert a.device.type == device.type
    assert matrix_to_euler(a).dtype == torch.float32


def test_direction_round_trip_and_rot_zero_at_the_poles():
    angles = _random_angles(100, seed=9, tilt_low=1.0, tilt_high=179.0)
    back = direction_to_euler(euler_to_direction(angles[:, :2]))
    torch.testing.assert_close(back, angles[:, :2], rtol=0.0, atol=1e-10)
    poles = direction_to_euler(
        torch.tensor([[0.0, 0.0, 2.0], [1e-9, 0.0, -1.0]], dtype=torch.float64)
    )
    assert torch.equal(poles[:, 0], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(poles[:, 1], torch.tensor([0.0, 180.0], dtype=torch.float64))


def test_axis_angle_is_counter_clockwise_and_relions_rot_is_its_transpose():
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    r = axis_angle_to_matrix(z, torch.tensor(90.0, dtype=torch.float64))
    torch.testing.assert_close(
        r @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
    )
    frame = euler_to_matrix(torch.tensor([37.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        axis_angle_to_matrix(z, torch.tensor(37.0, dtype=torch.float64)), frame.T
    )


def test_angular_distance_is_the_angle_of_the_relative_rotation(device):
    gen = torch.Generator().manual_seed(10)
    b = euler_to_matrix(_random_angles(200, seed=11)).to(device)
    axes = torch.randn(200, 3, generator=gen, dtype=torch.float64).to(device)
    theta = torch.cat([torch.tensor([1e-6, 179.999]), torch.rand(198, generator=gen) * 180])
    theta = theta.to(device=device, dtype=torch.float64)
    a = axis_angle_to_matrix(axes, theta) @ b
    # atan2 of sin and cos of the angle, each off by ~10 u: ~1e-15 rad absolute
    torch.testing.assert_close(angular_distance_deg(a, b), theta, rtol=0.0, atol=1e-12)
    torch.testing.assert_close(angular_distance_deg(b, a), theta, rtol=0.0, atol=1e-12)


def test_symmetric_distance_is_zero_between_symmetry_mates_and_never_above_the_plain_one():
    ops = point_group("D7", device="cpu").rotations
    a = euler_to_matrix(_random_angles(30, seed=12))
    mates = a[:, None] @ ops[None]  # (30, 14, 3, 3)
    zero = symmetric_angular_distance_deg(a[:, None].expand_as(mates), mates, ops)
    torch.testing.assert_close(zero, torch.zeros_like(zero), rtol=0.0, atol=1e-6)
    b = euler_to_matrix(_random_angles(30, seed=13))
    assert torch.all(
        symmetric_angular_distance_deg(a, b, ops) <= angular_distance_deg(a, b) + 1e-12
    )
    slow = torch.tensor(
        [min(angular_distance_deg(a[i], b[i] @ r).item() for r in ops) for i in range(30)]
    )
    torch.testing.assert_close(symmetric_angular_distance_deg(a, b, ops), slow.double())


def test_orientation_change_is_relions_mean_row_angle():
    ops = point_group("C3", device="cpu").rotations
    a = euler_to_matrix(_random_angles(20, seed=14))
    b = euler_to_matrix(_random_angles(20, seed=15))

    def slow(x: torch.Tensor, y: torch.Tensor) -> float:
        best = 3600.0
        for r in ops:
            yr = y @ r
            rows = [
                math.degrees(math.acos(max(-1.0, min(1.0, float(x[i] @ yr[i]))))) for i in range(3)
            ]
            best = min(best, sum(rows) / 3)
        return best

    want = torch.tensor([slow(a[i], b[i]) for i in range(20)], dtype=torch.float64)
    torch.testing.assert_close(orientation_change_deg(a, b, ops), want)
    # an in-plane turn by t moves rows 0 and 1 by t and row 2 not at all: mean 2 t / 3
    turn = euler_to_matrix(torch.tensor([0.0, 0.0, 9.0], dtype=torch.float64)) @ a
    one = torch.eye(3, dtype=torch.float64)[None]
    torch.testing.assert_close(
        orientation_change_deg(turn, a, one), torch.full((20,), 6.0, dtype=torch.float64)
    )
