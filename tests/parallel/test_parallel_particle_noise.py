"""Background noise drawn from (seed, particle row): the same on every rank, in every batch."""

import math

import pytest
import torch
from scipy import stats

from cryorefine.fourier import shell_sums, to_fourier
from cryorefine.refine.particle_noise import (
    counter_normals,
    counter_uniforms,
    iteration_noise_seed,
    particle_noise_images,
)

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def _splitmix_finaliser(z: int) -> int:
    """SplitMix64's output function on Python integers (mod 2**64), as published."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _slow_uniforms(keys: list[int], count: int, seed: int) -> list[list[float]]:
    rows = []
    for key in keys:
        stream = _splitmix_finaliser((key * GAMMA + seed * 0x2545F4914F6CDD1D) & MASK64)
        words = [_splitmix_finaliser((stream + j * GAMMA) & MASK64) for j in range(1, count + 1)]
        rows.append([((w >> 11) + 0.5) * 2.0**-53 for w in words])
    return rows


@pytest.mark.parametrize("seed", [0, 7, 2**62 + 3, -5])
def test_uniforms_are_splitmix64_words_bit_for_bit(seed):
    gen = torch.Generator().manual_seed(1)
    keys = torch.randint(0, 2**40, (6,), generator=gen)
    got = counter_uniforms(keys, 9, seed=seed)
    want = torch.tensor(_slow_uniforms(keys.tolist(), 9, seed), dtype=torch.float64)
    # Integer arithmetic mod 2**64, then an exact 53-bit conversion: no rounding anywhere.
    torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
    assert float(got.min()) > 0.0
    assert float(got.max()) < 1.0


def test_a_particles_draws_do_not_depend_on_the_other_particles_or_their_order(device):
    keys = torch.tensor([5, 900, 17, 3, 44], device=device)
    together = counter_normals(keys, 101, seed=3)
    for i in range(len(keys)):
        alone = counter_normals(keys[i : i + 1], 101, seed=3)
        torch.testing.assert_close(alone[0], together[i], rtol=0.0, atol=0.0)
    order = torch.tensor([4, 2, 0, 3, 1], device=device)
    shuffled = counter_normals(keys[order], 101, seed=3)
    torch.testing.assert_close(shuffled, together[order], rtol=0.0, atol=0.0)
    assert together.device == keys.device


def test_normals_are_standard_normal_and_uncorrelated():
    draws = counter_normals(torch.arange(50), 4000, seed=11).flatten()  # n = 200000
    n = draws.numel()
    # 5 sigma bounds of the sample mean (1/sqrt(n)) and variance (sqrt(2/n)) of N(0, 1).
    assert abs(float(draws.mean())) < 5 / math.sqrt(n)
    assert abs(float(draws.var()) - 1.0) < 5 * math.sqrt(2 / n)
    # Neighbours (within a Box-Muller pair and across pairs): correlation ~ N(0, 1/n).
    lag = torch.corrcoef(torch.stack([draws[:-1], draws[1:]]))[0, 1]
    assert abs(float(lag)) < 5 / math.sqrt(n)
    # Kolmogorov-Smirnov against N(0, 1); a 1e-6 false-alarm level.
    assert stats.kstest(draws.numpy(), "norm").pvalue > 1e-6


def test_seeds_and_rows_give_different_streams():
    a = counter_normals(torch.tensor([1, 2]), 64, seed=1)
    b = counter_normals(torch.tensor([1, 2]), 64, seed=2)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, b)


def test_noise_images_have_each_particles_requested_spectrum():
    n, images = 16, 400
    sigma2 = torch.linspace(2.0, 0.5, 6, dtype=torch.float64)  # shells 0..5, then 0
    rows = torch.arange(images) * 7 + 3
    noise = particle_noise_images(sigma2.expand(images, 6), rows, n, 2, seed=5)
    assert noise.shape == (images, n, n)
    power = to_fourier(noise, 2).abs() ** 2
    free = torch.ones(n, n // 2 + 1, dtype=torch.float64)
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


def test_a_particles_noise_image_is_the_same_in_any_batch():
    sigma2 = torch.rand(6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rows = torch.tensor([10, 11, 12, 40, 41, 42])
    batch = particle_noise_images(sigma2, rows, 16, 3, seed=8)
    parts = [
        particle_noise_images(sigma2[i : i + 2], rows[i : i + 2], 16, 3, seed=8) for i in (0, 2, 4)
    ]
    # Same draws, and a batched FFT transforms each image on its own: the same bits.
    torch.testing.assert_close(torch.cat(parts), batch, rtol=0.0, atol=0.0)


def test_iteration_seeds_differ_per_iteration_and_random_seed():
    seeds = {iteration_noise_seed(s, it) for s in (0, 1, 2) for it in range(1, 30)}
    assert len(seeds) == 3 * 29
    assert iteration_noise_seed(-1, 4) == iteration_noise_seed(0, 4)  # RELION's -1: seed 0
