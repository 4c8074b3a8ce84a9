"""Noise model: initial estimate from the particles, M-step update (REFINE_SPEC §4.2, §4.5)."""

import itertools
import math

import numpy as np
import pytest
import torch

from cryorefine.fourier import shell_counts, to_fourier
from cryorefine.refine.noise import initial_noise_sums, initial_sigma2_noise, update_sigma2_noise


def _frequencies(n: int, ndim: int):
    """Every stored coefficient of the half-complex layout: (index tuple, |k|), the obvious way."""
    full = [i if i <= n // 2 else i - n for i in range(n)]
    half = list(range(n // 2 + 1))
    axes = [range(n)] * (ndim - 1) + [range(n // 2 + 1)]
    for index in itertools.product(*axes):
        k = [full[i] for i in index[:-1]] + [half[index[-1]]]
        yield index, math.sqrt(sum(v * v for v in k)), k


def _slow_mean_power(ft: np.ndarray, n: int, ndim: int) -> np.ndarray:
    sums, counts = np.zeros(n // 2 + 1), np.zeros(n // 2 + 1)
    for index, radius, _ in _frequencies(n, ndim):
        shell = math.floor(radius + 0.5)
        if shell <= n // 2:
            sums[shell] += abs(ft[index]) ** 2
            counts[shell] += 1
    return sums / counts


@pytest.mark.parametrize(("n", "ndim"), [(8, 2), (6, 3)])
def test_initial_sigma2_is_half_mean_power_minus_half_power_of_the_average(n, ndim, device):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(7, *(n,) * ndim, generator=gen, dtype=torch.float64).to(device)
    groups = torch.tensor([0, 1, 0, 1, 1, 0, 0], device=device)
    ft = to_fourier(images, ndim)
    sums, counts, total = initial_noise_sums(ft, groups, nr_optics_groups=2, ndim=ndim)
    got = initial_sigma2_noise(sums, counts, total, ndim=ndim).cpu().numpy()

    ft_np = ft.cpu().numpy()
    average = _slow_mean_power(ft_np.mean(axis=0), n, ndim) / 2
    for group in (0, 1):
        members = [b for b in range(7) if int(groups[b]) == group]
        want = np.mean([_slow_mean_power(ft_np[b], n, ndim) for b in members], axis=0) / 2 - average
        # White noise: every value is positive here, so no repair applies (checked).
        assert (want > 0).all()
        # float64 sums of at most n**ndim terms of size ~1: relative error << 1e-12
        np.testing.assert_allclose(got[group], want, rtol=1e-12, atol=0)


def test_initial_sums_add_over_batches(device):
    gen = torch.Generator().manual_seed(2)
    ft = to_fourier(torch.randn(6, 8, 8, generator=gen, dtype=torch.float64).to(device), 2)
    groups = torch.tensor([0, 0, 1, 1, 0, 1], device=device)
    whole = initial_noise_sums(ft, groups, nr_optics_groups=2, ndim=2)
    parts = [
        initial_noise_sums(ft[i : i + 3], groups[i : i + 3], nr_optics_groups=2, ndim=2)
        for i in (0, 3)
    ]
    added = [parts[0][j] + parts[1][j] for j in range(3)]
    for a, b in zip(whole, added, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)  # the same sums in another order


def test_opposite_images_have_no_average_so_sigma2_is_half_their_power():
    image = torch.randn(8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ft = to_fourier(torch.stack([image, -image]), 2)
    sums, counts, total = initial_noise_sums(ft, torch.tensor([0, 0]), nr_optics_groups=1, ndim=2)
    got = initial_sigma2_noise(sums, counts, total, ndim=2)[0].numpy()
    want = _slow_mean_power(ft[0].numpy(), 8, 2) / 2
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_negative_values_take_the_previous_positive_value_else_the_next_one():
    # Spectrum 2*P with P = [-1, 3, -2, -5, 4] per shell (s = 5 for n = 8), no average image.
    power = torch.tensor([[-2.0, 6.0, -4.0, -10.0, 8.0]], dtype=torch.float64)
    zero = torch.zeros(8, 5, dtype=torch.complex128)
    got = initial_sigma2_noise(power, torch.tensor([1.0]), zero, ndim=2)
    # shell 0: nothing before, next positive is 3; shells 2 and 3 copy the repaired shell 1.
    torch.testing.assert_close(got, torch.tensor([[3.0, 3.0, 3.0, 3.0, 4.0]], dtype=torch.float64))


def test_empty_optics_group_gets_zeros():
    ft = to_fourier(
        torch.randn(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), 2
    )
    sums, counts, total = initial_noise_sums(ft, torch.tensor([0, 0]), nr_optics_groups=2, ndim=2)
    got = initial_sigma2_noise(sums, counts, total, ndim=2)
    assert torch.all(got[1] == 0)


def _slow_update(previous, noise, weights, npix, multiplicity, premultiplied):
    out = previous.copy()
    for g in range(noise.shape[0]):
        if noise[g].sum() == 0:
            continue
        use_multiplicity = multiplicity is not None and (multiplicity > 0).any()
        for r in range(noise.shape[1]):
            if use_multiplicity and multiplicity[g, r] > 0:
                value = noise[g, r] / (2 * multiplicity[g, r])
            else:
                denominator = 2 * weights[g] * npix[r]
                value = noise[g, r] / denominator if denominator > 0 else 0.0
            if premultiplied:
                value = max(value, 1e-15)
            if value < 1e-14 and r > 0:
                value = out[g, r - 1]
            out[g, r] = value
    return out


@pytest.mark.parametrize("premultiplied", [False, True])
@pytest.mark.parametrize("with_multiplicity", [False, True])
def test_noise_update_matches_a_slow_loop(premultiplied, with_multiplicity, device):
    gen = torch.Generator().manual_seed(5)
    s = 9
    previous = torch.rand(3, s, generator=gen, dtype=torch.float64)
    noise = torch.rand(3, s, generator=gen, dtype=torch.float64) * 50
    noise[0, 6:] = 0.0  # beyond the data: take the previous shell's value
    noise[2] = 0.0  # no particle of this group: keep the old spectrum
    weights = torch.tensor([4.0, 7.0, 0.0], dtype=torch.float64)
    npix = shell_counts(16, 2)[:s]
    multiplicity = None
    if with_multiplicity:
        multiplicity = torch.rand(3, s, generator=gen, dtype=torch.float64) * 30
        multiplicity[1, 3] = 0.0  # falls back to the pixel count
    got = update_sigma2_noise(
        previous.to(device),
        noise.to(device),
        weights.to(device),
        npix.to(device),
        multiplicity_sums=None if multiplicity is None else multiplicity.to(device),
        ctf_premultiplied=premultiplied,
    )
    want = _slow_update(
        previous.numpy(),
        noise.numpy(),
        weights.numpy(),
        npix.numpy(),
        None if multiplicity is None else multiplicity.numpy(),
        premultiplied,
    )
    # One division per value in float64 on both sides.
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-15, atol=0)
    assert torch.equal(got[2].cpu(), previous[2])


def test_noise_update_of_a_uniform_residual_is_its_variance_per_component():
    # 10 particles of weight 1, |diff|^2 = 2 v on each of N(r) coefficients: sigma2 = v.
    npix = shell_counts(8, 2)
    v = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    noise = (10 * 2 * v * npix)[None]
    got = update_sigma2_noise(
        torch.zeros(1, 5, dtype=torch.float64), noise, torch.tensor([10.0]), npix
    )
    torch.testing.assert_close(got[0], v, rtol=1e-15, atol=0)
