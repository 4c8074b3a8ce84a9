"""Reconstruct: maps from noise-free data, Wiener term, weight floor, noise, downsampled average."""

import math

import pytest
import torch
from analytic_objects import (
    blob_projections,
    blob_volume,
    centred_k,
    random_accumulators,
    random_blobs,
    random_rotations,
    rotated_blob_volumes,
    trilinear_error_bound,
)

from cryorefine.fourier.backprojector import insert_slices, insert_volumes, zero_accumulators
from cryorefine.fourier.conventions import (
    frequency_indices,
    friedel_redundant,
    shell_index,
    to_fourier,
)
from cryorefine.fourier.reconstruction import (
    downsampled_average,
    reconstruct,
    reconstruction_sigma2,
    regularised_average,
)
from cryorefine.fourier.symmetrise import enforce_hermitian_symmetry, symmetrise

U = 2.0**-53
IDENTITY = torch.eye(3, dtype=torch.float64)


def _shell_correlation(volume: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    n = volume.shape[-1]
    a, b = to_fourier(volume, 3), to_fourier(truth, 3)
    shell = shell_index(n, 3, device=volume.device)
    keep = ~friedel_redundant(n, 3, device=volume.device) & (shell <= n // 2)

    def per_shell(values):
        out = torch.zeros(n // 2 + 1, dtype=torch.float64, device=volume.device)
        return out.index_add_(0, shell[keep], values[keep])

    cross = per_shell((a.conj() * b).real)
    return cross / torch.sqrt(per_shell(a.abs() ** 2) * per_shell(b.abs() ** 2))


def _check_against_truth(volume: torch.Tensor, truth: torch.Tensor):
    n = truth.shape[-1]
    correlation = _shell_correlation(volume, truth.to(volume.device))
    assert torch.all(correlation[1 : int(0.8 * n / 2) + 1] > 0.99)
    # Correlation ignores scale. Each inserted value is off by at most the projector's
    # trilinear bound (relative to the image's DC); the reconstruction (an average, then
    # the same gridding division) adds at most as much again.
    relative = trilinear_error_bound(truth, padding_factor=2, kind="radial") / truth.sum().item()
    scale = (volume.cpu() * truth).sum() / (truth * truth).sum()
    assert abs(scale.item() - 1) <= 2 * relative


@pytest.mark.parametrize("iterative_gridding", [False, True])
def test_map_from_noise_free_projections_matches_the_truth(device, iterative_gridding):
    gen = torch.Generator().manual_seed(24)
    n = 24
    # Narrow blobs (1-1.4 px) keep signal up to Nyquist, so the shell test is not vacuous.
    centres, sigma, amplitude = random_blobs(12, n, gen, sigma_px=(1.0, 1.4))
    rotations = random_rotations(300, gen)
    images = to_fourier(blob_projections(centres, sigma, amplitude, rotations, n), 2)
    data, weight = zero_accumulators(n, device=device)
    insert_slices(
        images.to(device),
        torch.ones(images.shape, dtype=torch.float64, device=device),
        rotations.to(device),
        accumulator_data=data,
        accumulator_weight=weight,
    )
    data, weight = symmetrise(data, weight, IDENTITY[None].to(device))
    volume = reconstruct(
        data, weight, ori_size=n, data_dim=2, iterative_gridding=iterative_gridding
    )
    assert volume.device == data.device
    assert volume.dtype == torch.float64
    _check_against_truth(volume, blob_volume(centres, sigma, amplitude, n))


def test_map_from_noise_free_rotated_volumes_matches_the_truth(device):
    gen = torch.Generator().manual_seed(25)
    n = 24
    centres, sigma, amplitude = random_blobs(12, n, gen, sigma_px=(1.0, 1.4))
    rotations = random_rotations(20, gen)
    volumes = to_fourier(rotated_blob_volumes(centres, sigma, amplitude, rotations, n), 3)
    data, weight = zero_accumulators(n, device=device)
    insert_volumes(
        volumes.to(device),
        torch.ones(volumes.shape, dtype=torch.float64, device=device),
        rotations.to(device),
        accumulator_data=data,
        accumulator_weight=weight,
    )
    data, weight = symmetrise(data, weight, IDENTITY[None].to(device))
    volume = reconstruct(data, weight, ori_size=n, data_dim=3)
    _check_against_truth(volume, blob_volume(centres, sigma, amplitude, n))


def test_tau2_adds_the_inverse_signal_power_of_each_unpadded_shell(device):
    gen = torch.Generator().manual_seed(26)
    ori_size, pad, fudge, min_shell = 8, 2, 1.7, 2
    p = pad * ori_size
    data, weight = random_accumulators(p, gen, radius=p)
    weight = weight + 0.5  # well above the 1/1000 floor everywhere
    tau2 = torch.rand(ori_size // 2 + 1, dtype=torch.float64, generator=gen)
    tau2[3] = 0.0  # RELION's rule for an empty shell: add 1 / (0.001 W)
    got = regularised_average(
        data.to(device),
        weight.to(device),
        ori_size=ori_size,
        tau2=tau2.to(device),
        tau2_fudge=fudge,
        tau2_min_shell=min_shell,
    ).cpu()
    regularised = torch.zeros_like(weight)
    ring_sum, ring_count = [0.0] * (ori_size // 2), [0] * (ori_size // 2)
    for iz in range(p):
        for iy in range(p):
            for ix in range(p // 2 + 1):
                r = math.sqrt(ix**2 + (iy - p // 2) ** 2 + (iz - p // 2) ** 2)
                if r >= (ori_size // 2) * pad:
                    continue
                shell = math.floor(r / pad + 0.5)
                w = weight[iz, iy, ix].item()
                if shell >= min_shell:
                    t = tau2[shell].item()
                    w += 1 / (pad**3 * fudge * t) if t > 0 else 1 / (0.001 * w)
                regularised[iz, iy, ix] = w
                ring_sum[math.floor(r / pad)] += w
                ring_count[math.floor(r / pad)] += 1
    # The floor (1/1000 of the mean W' with the same floor(|K| / pad)) matters here:
    # the empty shell's 1 / (0.001 W) raises the mean of its neighbours' ring.
    want = torch.zeros_like(data)
    for iz in range(p):
        for iy in range(p):
            for ix in range(p // 2 + 1):
                r = math.sqrt(ix**2 + (iy - p // 2) ** 2 + (iz - p // 2) ** 2)
                if r < (ori_size // 2) * pad:
                    ring = math.floor(r / pad)
                    floor = ring_sum[ring] / ring_count[ring] / 1000
                    want[iz, iy, ix] = data[iz, iy, ix] / max(regularised[iz, iy, ix], floor)
    # W' takes <= 4 roundings on each side; a complex-by-real division (CPU or CUDA) a few
    # more: 16 u relative in all.
    torch.testing.assert_close(got, want, rtol=16 * U, atol=0.0)


def test_constant_tau2_shrinks_the_map_by_the_wiener_factor(device):
    gen = torch.Generator().manual_seed(27)
    ori_size, pad, level, tau = 10, 2, 3.0, 0.05
    p = pad * ori_size
    data, _ = random_accumulators(p, gen, radius=p)
    data, _ = enforce_hermitian_symmetry(data, torch.zeros(data.shape, dtype=torch.float64))
    data, weight = (
        data.to(device),
        torch.full(data.shape, level, dtype=torch.float64, device=device),
    )
    plain = reconstruct(data, weight, ori_size=ori_size, data_dim=3)
    tau2 = torch.full((ori_size // 2 + 1,), tau, dtype=torch.float64, device=device)
    shrunk = reconstruct(data, weight, ori_size=ori_size, data_dim=3, tau2=tau2, tau2_min_shell=0)
    factor = level / (level + 1 / (pad**3 * tau))
    # Uniform W' = W + const: the whole (linear) reconstruction scales by W / W'.
    torch.testing.assert_close(
        shrunk, factor * plain, rtol=0.0, atol=64 * U * plain.abs().max().item()
    )


def test_weight_floor_is_a_thousandth_of_the_shell_mean(device):
    gen = torch.Generator().manual_seed(28)
    ori_size, pad = 8, 2
    p = pad * ori_size
    data, weight = random_accumulators(p, gen, radius=p)
    weight = weight + 0.5
    weight[p // 2, p // 2 + 5, 3] = 1e-9  # |K| = sqrt(34): floor shell 2
    got = regularised_average(data.to(device), weight.to(device), ori_size=ori_size).cpu()
    k = centred_k(p)
    r = torch.sqrt((k * k).sum(dim=-1).double())
    ring = (torch.floor(r / pad) == 2) & (r < (ori_size // 2) * pad)
    floor = weight[ring].mean() / 1000
    want = data[p // 2, p // 2 + 5, 3] / floor
    # A mean of ~100 terms and one division.
    torch.testing.assert_close(got[p // 2, p // 2 + 5, 3], want, rtol=200 * U, atol=0.0)
    others = torch.ones_like(ring)
    others[p // 2, p // 2 + 5, 3] = False
    inside = r < (ori_size // 2) * pad
    torch.testing.assert_close(
        got[others & inside], (data / weight)[others & inside], rtol=8 * U, atol=0.0
    )
    assert torch.all(got[~inside] == 0)


def test_reconstruction_noise_of_a_uniform_weight_is_its_inverse(device):
    ori_size, pad, level = 8, 2, 4.0
    p = pad * ori_size
    weight = torch.full((p, p, p // 2 + 1), level, dtype=torch.float64, device=device)
    sigma2 = reconstruction_sigma2(weight, ori_size=ori_size)
    want = torch.full((ori_size // 2 + 1,), 1 / (pad**3 * level), dtype=torch.float64)
    torch.testing.assert_close(sigma2.cpu(), want, rtol=64 * U, atol=0.0)


def test_downsampled_average_of_a_grid_aligned_volume_is_the_volume(device):
    gen = torch.Generator().manual_seed(31)
    n = 10
    volume = torch.randn(n, n, n, dtype=torch.float64, generator=gen)
    volume_ft = to_fourier(volume, 3).to(device)
    data, weight = zero_accumulators(n, device=device)
    # Identity at pad 2: coefficient k lands on the even voxel 2k alone, weight 1; the
    # odd voxels that round to k get nothing, so the average is the coefficient itself.
    insert_volumes(
        volume_ft[None],
        torch.ones((1, *volume_ft.shape), dtype=torch.float64, device=device),
        IDENTITY[None].to(device),
        accumulator_data=data,
        accumulator_weight=weight,
    )
    data, weight = symmetrise(data, weight, IDENTITY[None].to(device))
    got = downsampled_average(data, weight)
    k = frequency_indices(n, 3, device=device)
    r2 = (k * k).sum(dim=-1)
    inside = r2 <= (n // 2) ** 2
    # Each value is one inserted coefficient plus zeros (the Friedel sum on kx = 0 adds
    # the mate's zero), divided by weight 1: a rounding or two.
    atol = 4 * U * volume_ft.abs().max().item()
    torch.testing.assert_close(got[inside], volume_ft[inside], rtol=0.0, atol=atol)
    assert torch.all(got[r2 > (n // 2 + 2) ** 2] == 0)  # beyond the inserted sphere


def test_downsampled_average_bins_padded_voxels_by_rounding_half_away_from_zero(device):
    gen = torch.Generator().manual_seed(32)
    pad, n = 2, 6
    p = pad * n
    data, weight = random_accumulators(p, gen, radius=p)
    got = downsampled_average(data.to(device), weight.to(device)).cpu()
    sums = torch.zeros((n, n, n // 2 + 1), dtype=torch.complex128)
    counts = torch.zeros((n, n, n // 2 + 1), dtype=torch.float64)
    for iz in range(p):
        for iy in range(p):
            for ix in range(p // 2 + 1):
                kx, ky, kz = (
                    int(math.copysign(math.floor(abs(v) / pad + 0.5), v))
                    for v in (ix, iy - p // 2, iz - p // 2)
                )
                sums[kz % n, ky % n, kx] += data[iz, iy, ix]
                counts[kz % n, ky % n, kx] += weight[iz, iy, ix]
    want = sums / counts
    # A bin sums <= 3**3 voxels (per axis 2, or 3 where the Nyquist rows merge), then one
    # division: error <= 27 u * 27 max|B| / min(sum W), doubled for the division.
    atol = 2 * 27 * 27 * U * data.abs().max().item() / counts.min().item()
    torch.testing.assert_close(got, want, rtol=0.0, atol=atol)
