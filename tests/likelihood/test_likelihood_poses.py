"""likelihood.poses: the coarse grid's matrices and their oversampled children."""

import torch
from likelihood_cases import U64, whole_grid

from cryorefine.geometry import (
    angular_distance_deg,
    angular_step_deg,
    euler_to_matrix,
    healpix_rot_tilt_deg,
    orientation_grid_deg,
    oversampled_orientations_deg,
    perturb_rotations,
)
from cryorefine.likelihood import coarse_rotations, fine_rotations
from cryorefine.likelihood.fine import fine_row_rotations


def test_coarse_rotations_are_the_perturbed_grid_in_relion_order():
    grid = whole_grid(1, perturbation=0.37)
    angles = orientation_grid_deg(healpix_rot_tilt_deg(1, device="cpu"), grid.psi_deg)
    want = perturb_rotations(
        euler_to_matrix(angles), perturbation=0.37, step_deg=angular_step_deg(1)
    )
    got = coarse_rotations(grid)
    assert got.shape == (grid.count, 3, 3) == (576, 3, 3)
    # same formulas on the same float64 angles
    torch.testing.assert_close(got, want, rtol=0, atol=32 * U64)
    picked = torch.tensor([[5, 0], [575, 100]])
    torch.testing.assert_close(coarse_rotations(grid, picked), want[picked], rtol=0, atol=32 * U64)


def test_fine_children_surround_their_coarse_orientation():
    grid = whole_grid(1, perturbation=-0.2)
    ids = torch.tensor([0, 17, 300, 575])
    children = fine_rotations(grid, ids, oversampling=1)
    assert children.shape == (4, 8, 3, 3)
    p = grid.psi_deg.shape[0]
    angles = oversampled_orientations_deg(
        1,
        grid.pixels[ids // p],
        grid.psi_deg[ids % p],
        psi_step_deg=grid.psi_step_deg,
        oversampling=1,
    )
    want = perturb_rotations(
        euler_to_matrix(angles), perturbation=-0.2, step_deg=angular_step_deg(1)
    )
    torch.testing.assert_close(children, want, rtol=0, atol=32 * U64)
    # children lie within a coarse step of their parent (half-steps in direction and psi)
    distance = angular_distance_deg(children, coarse_rotations(grid, ids)[:, None])
    assert (distance < angular_step_deg(1)).all()
    assert (distance > 0).all()


def test_fine_rows_number_children_after_their_coarse_orientation():
    from likelihood_cases import make_plan

    grid = whole_grid(0, perturbation=0.1)
    plan = make_plan(grid, ndim=2, ori_size=16, current_size=16, coarse_size=12)
    rows = torch.tensor([0, 7, 8, 71 * 8 + 5])
    want = fine_rotations(grid, rows // 8, oversampling=1)[torch.arange(4), rows % 8]
    torch.testing.assert_close(fine_row_rotations(plan, rows), want, rtol=0, atol=0)


def test_a_small_grid_keeps_its_matrices_in_a_table_of_the_same_values(monkeypatch):
    from cryorefine.likelihood import poses

    ids = torch.randint(0, 576, (5, 7), generator=torch.Generator().manual_seed(3))
    grid = whole_grid(1, perturbation=0.29)
    kept_fine = fine_rotations(grid, ids, oversampling=1)
    kept_coarse = coarse_rotations(grid, ids)
    assert set(grid._tables) == {0, 1}  # computed once, on the first ask
    assert grid._tables[1].shape == (576, 8, 3, 3)
    monkeypatch.setattr(poses, "ROTATION_TABLE_BYTES", 0)  # every grid too large to keep
    fresh = whole_grid(1, perturbation=0.29)
    computed_fine = fine_rotations(fresh, ids, oversampling=1)
    computed_coarse = coarse_rotations(fresh, ids)
    assert fresh._tables == {}
    # the same operators on the same float64 angles, element by element: the same bits
    assert torch.equal(kept_fine, computed_fine)
    assert torch.equal(kept_coarse, computed_coarse)
    assert kept_fine.shape == (5, 7, 8, 3, 3)
    assert kept_coarse.shape == (5, 7, 3, 3)


def test_rows_taken_from_the_table_are_copies_in_the_ids_shape():
    grid = whole_grid(1, perturbation=0.1)
    with torch.inference_mode():  # the first ask inside inference mode: a normal table
        first = fine_rotations(grid, torch.tensor([3]), oversampling=1)
    assert not grid._tables[1].is_inference()
    coarse_before = coarse_rotations(grid, torch.tensor([3]))
    one = fine_rotations(grid, torch.tensor(3), oversampling=1)  # a 0-d id
    assert one.shape == (8, 3, 3)
    coarse = coarse_rotations(grid, torch.tensor(3))
    assert coarse.shape == (3, 3)
    one.zero_()
    coarse.zero_()  # writing into results leaves the grid's table as it was
    assert torch.equal(fine_rotations(grid, torch.tensor([3]), oversampling=1), first)
    assert torch.equal(coarse_rotations(grid, torch.tensor([3])), coarse_before)
    assert first.abs().sum() > 0
