"""Projector: prepare_reference, extract_slices, rotate_volume."""

import math

import pytest
import torch
from analytic_objects import (
    blob_projections,
    blob_volume,
    random_blobs,
    random_rotations,
    rotated_blob_volumes,
    trilinear_error_bound,
    truth_error_bound,
)

from cryorefine.fourier.conventions import frequency_indices, to_fourier
from cryorefine.fourier.projector import extract_slices, prepare_reference, rotate_volume

U = 2.0**-53  # float64 unit roundoff

# RELION's A for (rot, tilt, psi) = (90, 0, 0): REFINE_SPEC §1.1 with ca = 0, sa = 1.
QUARTER_TURN_Z = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _inside(n: int, ndim: int, device: torch.device) -> torch.Tensor:
    k = frequency_indices(n, ndim, device=device)
    return (k * k).sum(dim=-1) <= (n // 2) ** 2


def _slow_trilinear(volume: torch.Tensor, points: torch.Tensor, padding_factor: int):
    """Trilinear interpolation of the padded DFT at ``points`` (padded units), by direct sums.

    Every corner ``m`` is evaluated as ``p**-3 sum_x v(x) exp(-2 pi i m.x / p)`` over the
    unpadded voxels ``x`` (offsets from the centre): no FFT, no Friedel fold, no wrap.
    """
    n = volume.shape[-1]
    p = padding_factor * n
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    positions = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    values = volume.reshape(-1).to(torch.complex128)
    base = torch.floor(points)
    frac = points - base
    total = torch.zeros(points.shape[:-1], dtype=torch.complex128)
    for corner in torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 3):
        m = base + corner
        weight = torch.where(corner == 1, frac, 1 - frac).prod(dim=-1)
        phase = torch.exp(-2j * math.pi * (m.reshape(-1, 3) @ positions.T) / p)
        dft = (phase @ values).reshape(points.shape[:-1]) / p**3
        total += weight * dft
    return total


def test_identity_slice_at_pad_1_equals_dft_of_projection_along_z(device):
    gen = torch.Generator().manual_seed(0)
    n = 16
    volume = torch.randn(n, n, n, dtype=torch.float64, generator=gen).to(device)
    reference = prepare_reference(volume, padding_factor=1, gridding_correction="none")
    identity = torch.eye(3, dtype=torch.float64, device=device)[None]
    got = extract_slices(reference, identity, out_size=n, padding_factor=1)[0]
    want = to_fourier(volume.sum(dim=0), 2) * _inside(n, 2, device)
    # Grid-aligned: no interpolation, Nyquist row included. Left: rounding of
    # n**3-term sums of |v| / n**2 each (naive summation bound).
    atol = n**3 * U * volume.abs().sum().item() / n**2
    torch.testing.assert_close(got, want, rtol=0.0, atol=atol)
    assert got.device == volume.device


@pytest.mark.parametrize("padding_factor", [1, 2])
def test_slices_equal_slow_trilinear_interpolation_of_the_padded_dft(device, padding_factor):
    gen = torch.Generator().manual_seed(1)
    n = 8
    volume = torch.randn(n, n, n, dtype=torch.float64, generator=gen)
    rotations = random_rotations(4, gen)
    reference = prepare_reference(
        volume.to(device), padding_factor=padding_factor, gridding_correction="none"
    )
    got = extract_slices(
        reference, rotations.to(device), out_size=n, padding_factor=padding_factor
    ).cpu()
    k = frequency_indices(n, 2).to(torch.float64)
    k = torch.cat([k, torch.zeros_like(k[..., :1])], dim=-1)  # (n, nh, 3)
    points = padding_factor * torch.einsum("yxj,rji->ryxi", k, rotations)  # A.T k
    want = n * padding_factor**3 * _slow_trilinear(volume, points, padding_factor)
    want = want * _inside(n, 2, torch.device("cpu"))
    # Both sides sum n**3 terms of size <= |v| / n**2 (after the factor n pad**3 / p**3).
    atol = 4 * n**3 * U * volume.abs().sum().item() / n**2
    torch.testing.assert_close(got, want, rtol=0.0, atol=atol)


def test_rotated_volumes_equal_slow_trilinear_interpolation_of_the_padded_dft(device):
    gen = torch.Generator().manual_seed(2)
    n, padding_factor = 8, 2
    volume = torch.randn(n, n, n, dtype=torch.float64, generator=gen)
    rotations = random_rotations(2, gen)
    reference = prepare_reference(volume.to(device), gridding_correction="none")
    got = rotate_volume(reference, rotations.to(device), out_size=n).cpu()
    k = frequency_indices(n, 3).to(torch.float64)
    points = padding_factor * torch.einsum("zyxj,rji->rzyxi", k, rotations)
    want = padding_factor**3 * _slow_trilinear(volume, points, padding_factor)
    want = want * _inside(n, 3, torch.device("cpu"))
    atol = 4 * n**3 * U * volume.abs().sum().item() / n**3
    torch.testing.assert_close(got, want, rtol=0.0, atol=atol)


@pytest.mark.parametrize("kind", ["radial", "separable"])
def test_blob_slices_match_analytic_projections_within_the_trilinear_bound(device, kind):
    gen = torch.Generator().manual_seed(3)
    n = 32
    centres, sigma, amplitude = random_blobs(5, n, gen)
    rotations = torch.cat([torch.eye(3, dtype=torch.float64)[None], random_rotations(6, gen)])
    volume = blob_volume(centres, sigma, amplitude, n)
    reference = prepare_reference(volume.to(device), gridding_correction=kind)
    got = extract_slices(reference, rotations.to(device), out_size=n).cpu()
    images = blob_projections(centres, sigma, amplitude, rotations, n)
    want = to_fourier(images, 2) * _inside(n, 2, torch.device("cpu"))
    # Trilinear error at pad 2 (blob_volumes.trilinear_error_bound, / n**2 for slices),
    # plus tails beyond the box and aliasing of the sampled blobs.
    bound = trilinear_error_bound(volume, padding_factor=2, kind=kind) / n**2
    bound += truth_error_bound(sigma, amplitude, n) / n**2
    assert bound < 0.05 * want.abs().max().item()  # the check is not vacuous
    assert (got - want).abs().max().item() <= bound


def test_blob_rotated_volumes_match_analytic_rotations_within_the_trilinear_bound(device):
    gen = torch.Generator().manual_seed(4)
    n = 24
    centres, sigma, amplitude = random_blobs(4, n, gen)
    rotations = random_rotations(3, gen)
    volume = blob_volume(centres, sigma, amplitude, n)
    reference = prepare_reference(volume.to(device), gridding_correction="separable")
    got = rotate_volume(reference, rotations.to(device), out_size=n).cpu()
    rotated = rotated_blob_volumes(centres, sigma, amplitude, rotations, n)
    want = to_fourier(rotated, 3) * _inside(n, 3, torch.device("cpu"))
    bound = trilinear_error_bound(volume, padding_factor=2, kind="separable") / n**3
    bound += truth_error_bound(sigma, amplitude, n) / n**3
    assert bound < 0.05 * want.abs().max().item()
    assert (got - want).abs().max().item() <= bound


def test_quarter_turn_about_z_rotates_a_grid_aligned_volume_by_a_permutation(device):
    gen = torch.Generator().manual_seed(5)
    n = 12
    volume = torch.randn(n, n, n, dtype=torch.float64, generator=gen)
    volume[:, :, 0] = 0  # the x = -n/2 plane would turn to y = +n/2, outside the box
    # Particle frame: w(x) = v(A.T x); A.T (x, y, z) = (-y, x, z). Voxel index of -y is n - iy.
    iy = torch.arange(n)
    rotated = volume[:, :, torch.remainder(n - iy, n)].transpose(1, 2)  # w[z, y, x] = v[z, x, -y]
    reference = prepare_reference(volume.to(device), gridding_correction="none")
    a = QUARTER_TURN_Z.to(device=device, dtype=torch.float64)[None]
    got = rotate_volume(reference, a, out_size=n)[0].cpu()
    want = to_fourier(rotated, 3) * _inside(n, 3, torch.device("cpu"))
    # A.T k * 2 is an even grid point: the padded DFT there is the unpadded one exactly.
    atol = 4 * n**3 * U * volume.abs().sum().item() / n**3
    torch.testing.assert_close(got, want, rtol=0.0, atol=atol)


def test_reference_follows_input_dtype_and_max_radius_zeroes_high_frequencies(device):
    gen = torch.Generator().manual_seed(6)
    n = 8
    volume = torch.randn(n, n, n, generator=gen).to(device)  # float32
    reference = prepare_reference(volume, max_radius=2)
    assert reference.dtype == torch.complex64
    assert reference.shape == (16, 16, 9)
    assert reference.device == volume.device
    k = torch.stack(
        torch.meshgrid(torch.arange(16) - 8, torch.arange(16) - 8, torch.arange(9), indexing="ij"),
        dim=-1,
    )
    beyond = (k * k).sum(dim=-1) > 16
    assert torch.all(reference.cpu()[beyond] == 0)
    assert torch.all(reference.cpu()[~beyond] != 0)
    slices = extract_slices(reference, torch.eye(3, device=device)[None], out_size=6)
    assert slices.shape == (1, 6, 4)
    assert slices.dtype == torch.complex64
