"""Back-projector: insertion is the adjoint of extraction; grid-aligned and redundant pixels."""

import pytest
import torch
from analytic_objects import random_rotations

from cryorefine.fourier.backprojector import insert_slices, insert_volumes, zero_accumulators
from cryorefine.fourier.conventions import frequency_indices, friedel_redundant
from cryorefine.fourier.projector import extract_slices, rotate_volume
from cryorefine.fourier.symmetrise import symmetrise

U = 2.0**-53


def _complex_normal(shape, gen):
    return torch.complex(
        torch.randn(shape, dtype=torch.float64, generator=gen),
        torch.randn(shape, dtype=torch.float64, generator=gen),
    )


def _real_inner(a, b):
    return (a.conj() * b).real.sum().item()


def _adjoint_atol(points: int, grid: int, scale: float, x, y) -> float:
    # Each side is a sum of at most 8 * points + grid products; with float64 the error of
    # a sum of m terms is <= m u sum|terms| (Higham 3.1), and sum|terms| <= scale max|x| sum|y|
    # because the 8 trilinear weights of a point sum to at most 1.
    return 2 * (8 * points + grid) * U * scale * x.abs().max().item() * y.abs().sum().item()


@pytest.mark.parametrize("padding_factor", [1, 2])
def test_insert_slices_is_the_adjoint_of_extract_slices(device, padding_factor):
    gen = torch.Generator().manual_seed(10)
    ori_size, n, b = 12, 10, 5
    p = padding_factor * ori_size
    x = _complex_normal((p, p, p // 2 + 1), gen)
    y = _complex_normal((b, n, n // 2 + 1), gen)
    rotations = random_rotations(b, gen)
    ex = extract_slices(
        x.to(device), rotations.to(device), out_size=n, padding_factor=padding_factor
    )
    data, weight = zero_accumulators(ori_size, padding_factor=padding_factor, device=device)
    insert_slices(
        y.to(device),
        torch.zeros(y.shape, dtype=torch.float64, device=device),
        rotations.to(device),
        padding_factor=padding_factor,
        accumulator_data=data,
        accumulator_weight=weight,
        skip_redundant=False,
    )
    lhs = _real_inner(ex, y.to(device))
    rhs = ori_size * _real_inner(x.to(device), data)
    assert abs(lhs - rhs) <= _adjoint_atol(b * n * n, x.numel(), ori_size, x, y)
    assert torch.all(weight == 0)


def test_weight_insertion_is_the_adjoint_of_interpolating_a_real_grid(device):
    gen = torch.Generator().manual_seed(11)
    ori_size, n, b = 10, 10, 4
    p = 2 * ori_size
    grid = torch.rand((p, p, p // 2 + 1), dtype=torch.float64, generator=gen)
    weights = torch.rand((b, n, n // 2 + 1), dtype=torch.float64, generator=gen)
    rotations = random_rotations(b, gen).to(device)
    # A real grid is its own conjugate, so extract_slices interpolates it without sign flips.
    sampled = extract_slices(grid.to(device, torch.complex128), rotations, out_size=n).real
    data, weight = zero_accumulators(ori_size, device=device)
    insert_slices(
        torch.zeros(weights.shape, dtype=torch.complex128, device=device),
        weights.to(device),
        rotations,
        accumulator_data=data,
        accumulator_weight=weight,
        skip_redundant=False,
    )
    lhs = (sampled * weights.to(device)).sum().item()
    rhs = ori_size * (grid.to(device) * weight).sum().item()
    assert abs(lhs - rhs) <= _adjoint_atol(b * n * n, grid.numel(), ori_size, grid, weights)
    assert torch.all(data == 0)


def test_insert_volumes_is_the_adjoint_of_rotate_volume(device):
    gen = torch.Generator().manual_seed(12)
    ori_size, n, b = 8, 8, 3
    p = 2 * ori_size
    x = _complex_normal((p, p, p // 2 + 1), gen)
    y = _complex_normal((b, n, n, n // 2 + 1), gen)
    rotations = random_rotations(b, gen).to(device)
    ex = rotate_volume(x.to(device), rotations, out_size=n)
    data, weight = zero_accumulators(ori_size, device=device)
    insert_volumes(
        y.to(device),
        torch.zeros(y.shape, dtype=torch.float64, device=device),
        rotations,
        accumulator_data=data,
        accumulator_weight=weight,
        skip_redundant=False,
    )
    lhs = _real_inner(ex, y.to(device))
    rhs = _real_inner(x.to(device), data)
    assert abs(lhs - rhs) <= _adjoint_atol(b * n**3, x.numel(), 1.0, x, y)


def _redundant_3d(n: int) -> torch.Tensor:
    k = frequency_indices(n, 3)
    kx, ky, kz = k.unbind(-1)
    return (kx == 0) & ((kz < 0) | ((kz == 0) & (ky < 0)))


@pytest.mark.parametrize("ndim", [2, 3])
def test_skipping_redundant_pixels_equals_inserting_them_as_zeros(device, ndim):
    gen = torch.Generator().manual_seed(13)
    ori_size, b = 8, 3
    shape = (b, *frequency_indices(ori_size, ndim).shape[:-1])
    y = _complex_normal(shape, gen).to(device)
    w = torch.rand(shape, dtype=torch.float64, generator=gen).to(device)
    rotations = random_rotations(b, gen).to(device)
    redundant = friedel_redundant(ori_size, 2) if ndim == 2 else _redundant_3d(ori_size)
    redundant = redundant.to(device)
    insert = insert_slices if ndim == 2 else insert_volumes
    skipped = zero_accumulators(ori_size, device=device)
    insert(y, w, rotations, accumulator_data=skipped[0], accumulator_weight=skipped[1])
    zeroed = zero_accumulators(ori_size, device=device)
    insert(
        y.masked_fill(redundant, 0),
        w.masked_fill(redundant, 0),
        rotations,
        accumulator_data=zeroed[0],
        accumulator_weight=zeroed[1],
        skip_redundant=False,
    )
    # Same terms, same order of summation except for added zeros: equal to rounding.
    torch.testing.assert_close(skipped[0], zeroed[0], rtol=0.0, atol=64 * U * y.abs().sum().item())
    torch.testing.assert_close(skipped[1], zeroed[1], rtol=0.0, atol=64 * U * w.sum().item())


def test_grid_aligned_real_image_lands_on_the_central_plane_with_unit_weight(device):
    gen = torch.Generator().manual_seed(14)
    n = 10
    image = torch.randn(n, n, dtype=torch.float64, generator=gen).to(device)
    image_ft = torch.fft.rfftn(torch.fft.ifftshift(image), norm="forward")
    identity = torch.eye(3, dtype=torch.float64, device=device)[None]
    data, weight = zero_accumulators(n, padding_factor=1, device=device)
    insert_slices(
        image_ft[None],
        torch.ones((1, n, n // 2 + 1), dtype=torch.float64, device=device),
        identity,
        padding_factor=1,
        accumulator_data=data,
        accumulator_weight=weight,
    )
    data, weight = symmetrise(data, weight, identity)
    k = frequency_indices(n, 2, device=device)
    inside = (k * k).sum(dim=-1) <= (n // 2) ** 2
    # Centred layout: the kz = 0 plane is index n // 2; ky rows are fftshifted.
    plane = torch.fft.ifftshift(data[n // 2], dim=0)
    plane_weight = torch.fft.ifftshift(weight[n // 2], dim=0)
    # Only ky >= 0 of kx = 0 was inserted; the Friedel sum restores ky < 0 as the
    # conjugate, which for a real image is its own value. Sums of 1 or 2 terms.
    atol = 4 * U * image_ft.abs().max().item()
    torch.testing.assert_close(plane, image_ft * inside, rtol=0.0, atol=atol)
    torch.testing.assert_close(plane_weight, inside.to(torch.float64), rtol=0.0, atol=0.0)
    off_plane = torch.ones(n, dtype=torch.bool, device=device)
    off_plane[n // 2] = False
    assert torch.all(data[off_plane] == 0)
    assert torch.all(weight[off_plane] == 0)


def test_float32_accumulators_receive_the_float64_values_rounded(device):
    gen = torch.Generator().manual_seed(15)
    ori_size, b = 8, 6
    y = _complex_normal((b, ori_size, ori_size // 2 + 1), gen).to(device)
    w = torch.rand((b, ori_size, ori_size // 2 + 1), dtype=torch.float64, generator=gen)
    rotations = random_rotations(b, gen).to(device)
    double = zero_accumulators(ori_size, device=device)
    single = zero_accumulators(ori_size, device=device, dtype=torch.float32)
    for data, weight in (double, single):
        insert_slices(y, w.to(device), rotations, accumulator_data=data, accumulator_weight=weight)
    assert single[0].dtype == torch.complex64
    assert single[1].dtype == torch.float32
    # Float32 coordinates q = 2 k A (|q| <= 8, 3-term dot products): |dq| <= 3 * 8 * sqrt(3)
    # * 2**-24 per axis, which moves the 8 weights of a point by <= 2 * 3 * |dq| in all;
    # each voxel collects <= 8 b contributions of size <= max|y| (one per slice that
    # passes near it, b of them), summed in float32 ((8 b) 2**-24 relative).
    per_value = (2 * 3 * 3 * 8 * 3**0.5 + 8 * b + 8) * 2.0**-24
    atol = b * per_value * y.abs().max().item()
    torch.testing.assert_close(single[0].to(torch.complex128), double[0], rtol=0, atol=atol)
    torch.testing.assert_close(single[1].double(), double[1], rtol=0, atol=b * per_value)
