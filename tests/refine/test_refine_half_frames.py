"""Half set 2 turned about the symmetry axis (C_n), or rotated (C1), onto half set 1's frame
before the join."""

import numpy as np
import pytest
import torch

from cryorefine.fourier import from_fourier, prepare_reference, rotate_volume
from cryorefine.geometry import euler_to_matrix, point_group
from cryorefine.refine import half_frames
from cryorefine.refine.half_frames import (
    axial_gauge,
    axis_rotations,
    best_axial_turn_deg,
    best_rotation_deg,
    full_gauge,
    rotated_angles,
    rotated_map,
    turned_angles,
    turned_map,
    z_turns,
)

BOX = 24


def _blobs(seed: int, count: int = 6, sigma_px: float = 2.0, spread: float = 1 / 3) -> torch.Tensor:
    """Gaussian blobs of ``sigma_px`` at random places within ``spread`` of the box about its
    centre: a smooth map, whose power beyond shell BOX / 4 is below 1e-4 of the total."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.arange(BOX, dtype=torch.float64) - BOX // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    grid = torch.stack([x, y, z], dim=-1)
    volume = torch.zeros(BOX, BOX, BOX, dtype=torch.float64)
    offsets = torch.rand(count, 3, generator=generator, dtype=torch.float64) - 0.5
    for centre in offsets * BOX * spread:
        volume += torch.exp(-((grid - centre) ** 2).sum(-1) / (2 * sigma_px**2))
    return volume


def _views_miss(
    old_map: torch.Tensor, old_poses: np.ndarray, new_map: torch.Tensor, new_poses: np.ndarray,
    padding: int,
) -> float:  # fmt: skip
    """Relative difference between what ``new_poses`` see of ``new_map`` and ``old_poses`` of
    ``old_map`` (the projector's rotated volumes)."""

    def seen(volume: torch.Tensor, poses: np.ndarray) -> torch.Tensor:
        reference = prepare_reference(volume, padding_factor=padding)
        matrices = euler_to_matrix(torch.from_numpy(poses))
        return rotate_volume(reference, matrices, out_size=BOX, padding_factor=padding)

    old = seen(old_map, old_poses)
    return float((seen(new_map, new_poses) - old).norm() / old.norm())


@pytest.mark.parametrize(("sym", "gauge"), [("C6", True), ("C2", True), ("C1", False),
                                            ("D6", False), ("T", False), ("O", False)])  # fmt: skip
def test_only_cyclic_groups_of_order_two_or_more_turn_freely_about_their_axis(sym, gauge) -> None:
    assert axial_gauge(point_group(sym, device="cpu")) is gauge


def test_a_map_turns_the_way_the_projector_turns_it() -> None:
    """The shears against the projector's turn: the projector's trilinear sampling misses by
    an error that falls as its padding grows (about as p^-2); the other sense, 60 degrees
    away, misses by about the map's norm."""
    volume = _blobs(4)
    turn = torch.tensor([30.0], dtype=torch.float64)

    def miss(turn_deg: float, padding: int) -> float:
        reference = prepare_reference(
            volume, padding_factor=padding, gridding_correction="separable"
        )
        turned = rotate_volume(reference, z_turns(turn), out_size=BOX, padding_factor=padding)
        expected = from_fourier(turned[0], BOX, 3)
        return float((turned_map(volume, turn_deg) - expected).norm() / expected.norm())

    assert miss(30.0, 4) < miss(30.0, 2) / 3
    assert miss(30.0, 4) < 0.05
    assert miss(-30.0, 4) > 0.5
    assert float((turned_map(volume, 0.0) - volume).norm()) < 1e-12 * float(volume.norm())


def test_a_pose_of_the_turned_map_sees_what_the_old_pose_saw_of_the_old_map() -> None:
    """Projected at ``A R^T``, the map turned by 5 degrees matches the old map at ``A`` up to
    the projector's interpolation, which falls as its padding grows; ignoring the turn, or
    taking it the other way, leaves far more."""
    volume = _blobs(1)
    angles = np.array([[30.0, 50.0, 70.0], [-120.0, 100.0, 10.0], [170.0, 20.0, -80.0]])
    turn = 5.0
    new = turned_angles(angles, turn)
    np.testing.assert_allclose(new[:, 1:], angles[:, 1:])  # tilt and psi kept

    def miss(poses: np.ndarray, padding: int) -> float:
        return _views_miss(volume, angles, turned_map(volume, turn), poses, padding)

    unturned = miss(angles, 2)
    assert miss(new, 2) < unturned / 4
    assert miss(new, 4) < miss(new, 2) / 2
    assert miss(turned_angles(angles, -turn), 2) > unturned


def test_the_turn_that_matches_half_two_to_half_one_is_found_to_a_hundredth_of_a_degree() -> None:
    half_1 = _blobs(2)
    half_2 = turned_map(half_1, -2.37)  # half 2 sits 2.37 degrees behind half 1
    found = best_axial_turn_deg(half_1, half_2, shells=BOX // 4)
    # the search's finest step is 0.01 degree; the resampling moves the optimum far less
    assert abs(found - 2.37) <= 0.011


def test_maps_in_one_frame_need_no_turn() -> None:
    volume = _blobs(3)
    assert abs(best_axial_turn_deg(volume, volume.clone(), shells=BOX // 4)) <= 0.005


def test_the_search_in_chunks_of_one_map_finds_the_same_turn(monkeypatch) -> None:
    """Large boxes turn one candidate map at a time; the scores, and so the turn, are the
    same as with every candidate at once."""
    half_1 = _blobs(5)
    half_2 = turned_map(half_1, 1.23)
    whole = best_axial_turn_deg(half_1, half_2, shells=BOX // 4)
    monkeypatch.setattr(half_frames, "_CHUNK_BYTES", 1)  # one map per chunk
    assert best_axial_turn_deg(half_1, half_2, shells=BOX // 4) == whole


@pytest.mark.parametrize("sym", ["C1", "C2", "C6", "D2", "O"])
def test_only_c1_rotates_freely_about_every_axis(sym) -> None:
    assert full_gauge(point_group(sym, device="cpu")) is (sym == "C1")


def test_axis_rotations_are_right_handed_turns_about_x_then_y_then_z() -> None:
    x, y, z = torch.eye(3, dtype=torch.float64)
    quarter = axis_rotations(torch.tensor([[90.0, 0, 0], [0, 90.0, 0], [0, 0, 90.0]]))
    torch.testing.assert_close(quarter[0] @ y, z, rtol=0, atol=1e-15)  # x: y -> z
    torch.testing.assert_close(quarter[1] @ z, x, rtol=0, atol=1e-15)  # y: z -> x
    torch.testing.assert_close(quarter[2] @ x, y, rtol=0, atol=1e-15)  # z: x -> y
    angles = torch.tensor([[2.0, -3.0, 1.5]], dtype=torch.float64)
    one = axis_rotations(angles)[0]
    each = axis_rotations(torch.diag(angles[0]))
    torch.testing.assert_close(one, each[2] @ each[1] @ each[0], rtol=0, atol=1e-15)


def test_a_map_rotates_the_way_the_projector_rotates_it() -> None:
    """Nine shears against the projector's rotation of the map: the projector's trilinear
    sampling misses by an error that falls as its padding grows; the inverse rotation
    misses by far more."""
    volume = _blobs(6)
    angles = (4.0, -3.0, 2.5)
    rotation = axis_rotations(torch.tensor([angles], dtype=torch.float64))

    def miss(matrix: torch.Tensor, padding: int) -> float:
        reference = prepare_reference(
            volume, padding_factor=padding, gridding_correction="separable"
        )
        rotated = rotate_volume(reference, matrix, out_size=BOX, padding_factor=padding)
        expected = from_fourier(rotated[0], BOX, 3)
        return float((rotated_map(volume, angles) - expected).norm() / expected.norm())

    assert miss(rotation, 4) < miss(rotation, 2) / 3
    assert miss(rotation, 4) < 0.01
    assert miss(rotation.transpose(-1, -2), 4) > 20 * miss(rotation, 4)
    assert float((rotated_map(volume, (0.0, 0.0, 0.0)) - volume).norm()) < 1e-12


def test_a_pose_of_the_rotated_map_sees_what_the_old_pose_saw_of_the_old_map() -> None:
    volume = _blobs(7)
    angles = np.array([[30.0, 50.0, 70.0], [-120.0, 100.0, 10.0], [170.0, 20.0, -80.0]])
    rotation = (3.0, -2.0, 4.0)
    new = rotated_angles(angles, rotation)

    def miss(poses: np.ndarray, padding: int) -> float:
        return _views_miss(volume, angles, rotated_map(volume, rotation), poses, padding)

    unrotated = miss(angles, 2)
    assert miss(new, 2) < unrotated / 4
    assert miss(new, 4) < miss(new, 2) / 2
    # about z alone, the rotation is the turn of the opposite sense (z_turns is a frame turn)
    np.testing.assert_allclose(
        rotated_angles(angles, (0.0, 0.0, 5.0)), turned_angles(angles, -5.0), atol=1e-9
    )


def test_the_rotation_that_matches_half_two_to_half_one_is_found_to_a_hundredth_of_a_degree():
    half_2 = _blobs(8, count=8)
    angles = (1.37, -2.61, 0.83)
    half_1 = rotated_map(half_2, angles)  # half 1 sits rotated from half 2
    found = best_rotation_deg(half_1, half_2, shells=BOX // 4)  # a box of 16 is searched
    # the finest step is 0.01 degree; the resampling moves the optimum far less
    np.testing.assert_allclose(found, angles, rtol=0, atol=0.011)
    same = best_rotation_deg(half_2, half_2.clone(), shells=BOX // 4)
    np.testing.assert_allclose(same, (0.0, 0.0, 0.0), rtol=0, atol=0.005)
