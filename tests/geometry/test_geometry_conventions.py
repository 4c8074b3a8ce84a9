import torch

from cryorefine.geometry import euler_to_matrix, xyz_to_zyx, zyx_to_xyz


def test_zyx_and_xyz_swap_the_last_axis_and_are_inverse(device):
    gen = torch.Generator().manual_seed(0)
    zyx = torch.randn(4, 5, 3, generator=gen).to(device)
    xyz = zyx_to_xyz(zyx)
    assert torch.equal(xyz[..., 0], zyx[..., 2])
    assert torch.equal(xyz[..., 2], zyx[..., 0])
    assert torch.equal(xyz_to_zyx(xyz), zyx)
    yx = torch.tensor([[1, 2]])
    assert torch.equal(zyx_to_xyz(yx), torch.tensor([[2, 1]]))


def test_tensor_index_of_a_voxel_is_its_reversed_coordinate_vector():
    volume = torch.zeros(4, 5, 6)  # (z, y, x)
    xyz = torch.tensor([5, 1, 3])  # x = 5, y = 1, z = 3
    volume[tuple(xyz_to_zyx(xyz).tolist())] = 1.0
    assert volume[3, 1, 5] == 1.0


def test_a_reference_point_lands_at_a_times_it_in_the_particle_frame():
    # rot = 90 only: A = Rz_frame(90); the reference x axis lands on the particle's -y
    a = euler_to_matrix(torch.tensor([90.0, 0.0, 0.0], dtype=torch.float64))
    landed = a @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(landed, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
