"""Gridding: trilinear correction, RELION's blob kernel, iterative weights, soft corner mask."""

import math

import torch
from analytic_objects import random_accumulators

from cryorefine.fourier.gridding import (
    _blob_multiplier,
    mask_outside_sphere,
    trilinear_gridding_correction,
)
from cryorefine.fourier.reconstruction import regularised_average

U = 2.0**-53


def test_iterative_gridding_of_a_uniform_weight_divides_by_it(device):
    gen = torch.Generator().manual_seed(29)
    ori_size, pad, level = 8, 2, 2.5
    p = pad * ori_size
    data, _ = random_accumulators(p, gen, radius=p)
    weight = torch.full(data.shape, level, dtype=torch.float64)
    # max_radius = ori_size puts the whole cube inside; the blob kernel sums to its value
    # at the real-space origin, 1, so w = 1 / level after one iteration and stays there.
    got = regularised_average(
        data.to(device),
        weight.to(device),
        ori_size=ori_size,
        max_radius=ori_size,
        iterative_gridding=True,
    ).cpu()
    # Ten rounds of two FFTs of p**3 values: ~10 * 2 * log2(p**3) u relative.
    torch.testing.assert_close(got, data / level, rtol=10 * 2 * 12 * 4 * U, atol=0.0)


def test_blob_kernel_transform_matches_numerical_integration():
    from scipy import integrate, special

    a, alpha = 3.8, 15.0  # RELION's blob (radius 1.9 * 2 padded voxels)

    def blob_ft(frequency):  # 3D radial transform: int b(r) 4 pi r^2 sinc(2 f r) dr
        def integrand(r):
            b = special.i0(alpha * math.sqrt(max(0.0, 1 - (r / a) ** 2))) / special.i0(alpha)
            t = 2 * math.pi * frequency * r
            return b * 4 * math.pi * r * r * (math.sin(t) / t if t > 0 else 1.0)

        # The integral at frequency 0 is ~15 (a Gaussian of variance a^2 / alpha):
        # an absolute accuracy of 1e-11 is ~1e-12 of it.
        return integrate.quad(integrand, 0, a, epsabs=1e-11, epsrel=0, limit=200)[0]

    p = 32
    multiplier = _blob_multiplier(p, device=torch.device("cpu"))
    for index in (1, 5, 11, 16):  # along x: frequency index / p cycles per voxel
        want = blob_ft(index / p) / blob_ft(0.0)
        # quad's requested accuracy, ~1e-12 of the normalising integral, on both.
        assert abs(multiplier[0, 0, index].item() - want) <= 1e-10
    corner = multiplier[16, 16, 16].item()  # |x| / p = 0.866: the sin/cos branch
    assert abs(corner - blob_ft(math.sqrt(3) / 2) / blob_ft(0.0)) <= 1e-10


def test_gridding_correction_is_one_at_the_centre_and_sinc_squared_along_axes(device):
    n, pad = 10, 2
    radial = trilinear_gridding_correction(n, padding_factor=pad, kind="radial", device=device)
    separable = trilinear_gridding_correction(
        n, padding_factor=pad, kind="separable", device=device
    )
    axis = (torch.arange(n, dtype=torch.float64, device=device) - n // 2) / (pad * n)
    want = (torch.sin(math.pi * axis) / (math.pi * axis)) ** 2
    want[n // 2] = 1.0
    for grid in (radial, separable):
        torch.testing.assert_close(grid[n // 2, n // 2], want, rtol=4 * U, atol=0.0)
        torch.testing.assert_close(grid[:, n // 2, n // 2], want, rtol=4 * U, atol=0.0)
    torch.testing.assert_close(
        separable, want[:, None, None] * want[None, :, None] * want[None, None, :], rtol=8 * U,
        atol=0.0,
    )  # fmt: skip


def test_mask_outside_sphere_blends_into_the_mean_of_the_outside(device):
    gen = torch.Generator().manual_seed(30)
    n, width = 16, 3.0
    volume = torch.randn(n, n, n, dtype=torch.float64, generator=gen).to(device)
    masked = mask_outside_sphere(volume, width_px=width)
    axis = torch.arange(n, dtype=torch.float64, device=device) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = torch.sqrt(x * x + y * y + z * z)
    blend = 0.5 + 0.5 * torch.cos(math.pi * (n / 2 + width - r) / width)
    blend = torch.where(r < n / 2, 0.0, torch.where(r > n / 2 + width, 1.0, blend))
    background = (blend * volume).sum() / blend.sum()
    torch.testing.assert_close(masked[r < n / 2], volume[r < n / 2], rtol=0.0, atol=0.0)
    atol = 8 * n**3 * U * volume.abs().max().item()  # the mean of n**3 terms
    torch.testing.assert_close(
        masked[r > n / 2 + width], background.expand(int((r > n / 2 + width).sum())),
        rtol=0.0, atol=atol,
    )  # fmt: skip
    constant = mask_outside_sphere(torch.full_like(volume, 2.0), width_px=width)
    torch.testing.assert_close(constant, torch.full_like(volume, 2.0), rtol=4 * U, atol=0.0)
