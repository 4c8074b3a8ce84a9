"""Soft masks, particle masking, solvent flattening and noise images."""

import itertools
import math

import pytest
import torch

from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.masks import (
    check_mask_values,
    mask_transforms,
    mask_with_background,
    noise_images,
    radius_from_centre,
    soft_sphere_mask,
    solvent_flatten,
)
from cryorefine.fourier.shells import shell_sums

F64 = torch.float64


def _relion_mask_value(r: float, radius: float, width: float) -> float:
    """RELION's solvent-flattening sphere, written as in REFINE_SPEC section 4.9."""
    if r < radius:
        return 1.0
    if r > radius + width:
        return 0.0
    return 0.5 - 0.5 * math.cos(math.pi * (radius + width - r) / width)


@pytest.mark.parametrize(("n", "ndim"), [(16, 2), (15, 2), (12, 3)])
def test_soft_sphere_matches_relion_formula_voxel_by_voxel(device, n, ndim):
    radius, width = 3.3, 2.5
    mask = soft_sphere_mask(
        n, ndim, radius_px=radius, edge_width_px=width, device=device, dtype=F64
    ).cpu()
    assert mask.shape == (n,) * ndim
    for index in itertools.product(range(n), repeat=ndim):
        r = math.sqrt(sum((i - n // 2) ** 2 for i in index))
        # One float64 cosine each way: a few ulps.
        assert float(mask[index]) == pytest.approx(_relion_mask_value(r, radius, width), abs=1e-15)


@pytest.mark.parametrize("ndim", [2, 3])
def test_soft_sphere_values_at_centre_inside_edge_midpoint_and_outside(device, ndim):
    n, radius, width = 24, 5.0, 4.0
    mask = soft_sphere_mask(
        n, ndim, radius_px=radius, edge_width_px=width, device=device, dtype=F64
    )
    centre = (n // 2,) * ndim

    def at(dx: int) -> float:  # voxel dx pixels from the centre along x
        return float(mask[(*centre[:-1], n // 2 + dx)])

    assert float(mask[centre]) == 1.0
    assert at(4) == 1.0  # inside
    assert at(5) == 1.0  # at the radius the edge only begins
    assert at(7) == pytest.approx(0.5, abs=1e-15)  # R + w / 2
    assert at(9) == pytest.approx(0.0, abs=1e-15)  # R + w
    assert at(10) == 0.0
    assert at(-7) == at(7)


@pytest.mark.parametrize("ndim", [2, 3])
def test_soft_sphere_falls_monotonically_with_radius(device, ndim):
    n = 20
    mask = soft_sphere_mask(n, ndim, radius_px=4.5, edge_width_px=5.0, device=device).flatten()
    r = radius_from_centre(n, ndim, device=device).flatten()
    order = torch.argsort(r)
    values, radii = mask[order], r[order]
    rising = values[1:] > values[:-1]
    assert not torch.any(rising & (radii[1:] > radii[:-1]))
    assert float(values[0]) == 1.0


def test_hard_sphere_when_edge_width_is_zero(device):
    mask = soft_sphere_mask(11, 2, radius_px=3.0, edge_width_px=0.0, device=device, dtype=F64)
    r = radius_from_centre(11, 2, device=device)
    torch.testing.assert_close(mask, (r <= 3.0).to(F64), rtol=0.0, atol=0.0)


def test_mask_values_outside_zero_one_name_the_file():
    check_mask_values(torch.tensor([0.0, 0.5, 1.0]), name="mask.mrc")  # accepted
    with pytest.raises(InputError, match=r"MaskCreate/job005/mask\.mrc.*1\.2"):
        check_mask_values(torch.tensor([0.0, 1.2]), name="MaskCreate/job005/mask.mrc")
    with pytest.raises(InputError, match=r"mask\.mrc.*-0\.1"):
        check_mask_values(torch.tensor([-0.1, 0.3]), name="mask.mrc")


def test_background_is_the_soft_weighted_average_outside_the_mask(device):
    gen = torch.Generator().manual_seed(6)
    images = torch.randn(3, 16, 16, generator=gen, dtype=F64).to(device)
    mask = soft_sphere_mask(16, 2, radius_px=4.0, edge_width_px=3.0, device=device, dtype=F64)
    got = mask_with_background(images, mask)
    for img, out in zip(images, got, strict=True):
        weight = 1.0 - mask
        mean = float((img * weight).sum() / weight.sum())
        want = mask * img + weight * mean
        torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)
        assert float(out[0, 0]) == pytest.approx(mean, rel=1e-14)  # fully outside
        assert float(out[8, 8]) == float(img[8, 8])  # fully inside


def test_noise_fills_the_background_when_given(device):
    gen = torch.Generator().manual_seed(7)
    images = torch.randn(2, 8, 8, 8, generator=gen, dtype=F64).to(device)
    noise = torch.randn(2, 8, 8, 8, generator=gen, dtype=F64).to(device)
    mask = soft_sphere_mask(8, 3, radius_px=2.0, edge_width_px=1.5, device=device, dtype=F64)
    got = mask_with_background(images, mask, noise=noise)
    torch.testing.assert_close(got, mask * images + (1 - mask) * noise, rtol=0.0, atol=0.0)


def test_solvent_flattening_multiplies_and_levels_the_second_mask(device):
    gen = torch.Generator().manual_seed(10)
    volume = torch.randn(2, 8, 8, 8, generator=gen, dtype=F64).to(device)
    mask = soft_sphere_mask(8, 3, radius_px=2.5, edge_width_px=2.0, device=device, dtype=F64)
    torch.testing.assert_close(solvent_flatten(volume, mask), volume * mask, rtol=0.0, atol=0.0)
    inner = soft_sphere_mask(8, 3, radius_px=1.0, edge_width_px=0.0, device=device, dtype=F64)
    got = solvent_flatten(volume, mask, second_mask=inner)
    for v, out in zip(volume * mask, got, strict=True):
        level = float((v * inner).sum() / inner.sum())
        assert torch.allclose(out[inner == 1], torch.full_like(out[inner == 1], level))
        torch.testing.assert_close(out[inner == 0], v[inner == 0], rtol=0.0, atol=0.0)


def test_noise_images_have_the_requested_spectrum(device):
    n, images = 16, 400
    sigma2 = torch.linspace(2.0, 0.5, 6, dtype=F64, device=device)  # shells 0..5, then 0
    gen = torch.Generator().manual_seed(12)
    noise = noise_images(sigma2.expand(images, 6), n, 2, generator=gen)
    assert noise.shape == (images, n, n)
    power = to_fourier(noise, 2).abs() ** 2
    free = torch.ones(n, n // 2 + 1, dtype=F64, device=device)
    free[:, 0] = 0.0  # kx >= 1 only: the kx = 0 column is made Hermitian by the transform
    count = shell_sums(free, n, 2, exclude_redundant=False)
    mean = shell_sums(power * free, n, 2, exclude_redundant=False).mean(0) / count
    # kx >= 1 coefficients are free complex Gaussians: E |F|^2 = 2 sigma2; |F|^2 is
    # exponential (std = mean), so the mean over m = images * count lies within
    # 4 / sqrt(m) of it (4 sigma).
    for shell in range(1, 6):
        rel = 4 / math.sqrt(images * float(count[shell]))
        assert float(mean[shell]) == pytest.approx(2 * float(sigma2[shell]), rel=rel)
    beyond = shell_sums(power, n, 2, exclude_redundant=False)[:, 6:]
    assert float(beyond.max()) < 1e-20  # nothing beyond the curve (FFT rounding only)


@pytest.mark.parametrize(("n", "ndim"), [(16, 3), (9, 3), (12, 2), (7, 2)])
def test_masked_transforms_are_the_masked_images_transformed_without_moving_them(device, n, ndim):
    # the same voxels meet the same mask values: with noise the result is the composed
    # route's to the bit; the zero mask's average sums the voxels in another order
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    images = torch.randn(3, *(n,) * ndim, generator=gen).to(device)
    noise = torch.randn(3, *(n,) * ndim, generator=gen).to(device)
    mask = soft_sphere_mask(n, ndim, radius_px=n / 4, edge_width_px=2.0, device=device)
    data_ft = to_fourier(images, ndim)

    def composed(data, noise=None):
        images = from_fourier(data, n, ndim)
        return to_fourier(mask_with_background(images, mask, noise=noise), ndim)

    assert torch.equal(mask_transforms(data_ft, mask, noise=noise), composed(data_ft, noise))
    data64 = data_ft.to(torch.complex128)
    mask = mask.to(F64)
    got, want = mask_transforms(data64, mask), composed(data64)
    # the routes differ only in the average m = sum(x (1 - mask)) / sum(1 - mask): each
    # sum of N terms within gamma_N of the exact, so m within 2 gamma_N sum|x (1 - mask)| /
    # sum(1 - mask); it enters as m times the forward transform of 1 - mask, whose
    # coefficients are at most sum(1 - mask) / N <= 1 in modulus
    count = n**ndim
    gamma = count * 2.0**-53 / (1 - count * 2.0**-53)
    background = 1 - mask
    dims = tuple(range(1, ndim + 1))
    sums = (from_fourier(data64, n, ndim).abs() * background).sum(dim=dims)
    bound = 2 * gamma * sums / background.sum()  # per image
    difference = (got - want).abs().flatten(1).amax(dim=1)
    assert (difference <= bound).all()
