"""Filters, Fourier shifts, phase randomisation and windowing."""

import itertools
import math

import pytest
import torch

from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.filters import (
    apply_bfactor,
    bfactor_envelope,
    fourier_crop,
    fourier_pad,
    fourier_window,
    high_pass,
    low_pass,
    phase_shift_grid,
    randomise_phases_beyond,
    shift_fourier,
)
from cryorefine.fourier.shells import fsc

F64 = torch.float64
C128 = torch.complex128
U = 2.0**-52  # float64 unit roundoff (twice)


def _frequencies(n: int, ndim: int):
    """(tensor index, integer frequency (x, y, z)) of every half-complex coefficient."""
    axes = [range(n)] * (ndim - 1) + [range(n // 2 + 1)]
    for index in itertools.product(*axes):
        k = [i if i <= n // 2 else i - n for i in index[:-1]] + [index[-1]]
        yield index, tuple(reversed(k))


def _ones(n: int, ndim: int, device) -> torch.Tensor:
    return torch.ones((n,) * (ndim - 1) + (n // 2 + 1,), dtype=C128, device=device)


def test_initial_low_pass_matches_relion_formula(device):
    n, ndim = 24, 2
    radius = 64 * 2.0 / 30.0  # N p / ini_high, unrounded: 4.27 shells
    got = low_pass(_ones(n, ndim, device), cutoff_shells=float(radius), ndim=ndim).real.cpu()
    lo, hi = radius - 1.0, radius + 1.0
    for index, k in _frequencies(n, ndim):
        r = math.sqrt(sum(c * c for c in k))
        # RELION's initialLowPassFilterReferences, written as in its source's formula.
        want = 1.0 if r < lo else 0.0 if r > hi else 0.5 - 0.5 * math.cos(math.pi * (hi - r) / 2)
        assert float(got[index]) == pytest.approx(want, abs=1e-15)


@pytest.mark.parametrize("ndim", [2, 3])
def test_low_pass_is_one_half_and_zero_at_r_minus_one_r_and_r_plus_one(device, ndim):
    n, radius = 16, 5
    got = low_pass(_ones(n, ndim, device), cutoff_shells=float(radius), ndim=ndim).real
    axis = (0,) * (ndim - 1)  # along kx
    assert float(got[(*axis, radius - 2)]) == 1.0
    assert float(got[(*axis, radius - 1)]) == pytest.approx(1.0, abs=1e-15)
    assert float(got[(*axis, radius)]) == pytest.approx(0.5, abs=1e-15)
    assert float(got[(*axis, radius + 1)]) == pytest.approx(0.0, abs=1e-15)
    assert float(got[(*axis, radius + 2)]) == 0.0


def test_high_pass_complements_low_pass(device):
    gen = torch.Generator().manual_seed(0)
    ft = to_fourier(torch.randn(16, 16, 16, generator=gen, dtype=F64), 3).to(device)
    low = low_pass(ft, cutoff_shells=4.6, ndim=3, edge_width_shells=3.0)
    high = high_pass(ft, cutoff_shells=4.6, ndim=3, edge_width_shells=3.0)
    # f * w + f * (1 - w) = f to one rounding per term.
    torch.testing.assert_close(low + high, ft, rtol=0.0, atol=4 * U * float(ft.abs().max()))


def test_bfactor_envelope_matches_formula_and_zeroes_beyond_nyquist(device):
    n, p, box = 12, 1.7, 20  # a windowed grid of a 20-pixel box
    b = torch.tensor([50.0, -30.0], dtype=F64, device=device)
    got = bfactor_envelope(
        n, 2, bfactor_angst2=b, pixel_size_angst=p, box_size=box, device=device, dtype=F64
    ).cpu()
    assert got.shape == (2, n, n // 2 + 1)
    for (index, k), i in itertools.product(_frequencies(n, 2), range(2)):
        s2 = (k[0] ** 2 + k[1] ** 2) / (box * p) ** 2
        assert float(got[(i, *index)]) == pytest.approx(math.exp(-float(b[i]) * s2 / 4), rel=1e-14)
    gen = torch.Generator().manual_seed(1)
    ft = to_fourier(torch.randn(n, n, generator=gen, dtype=F64), 2).to(device)
    sharp = apply_bfactor(ft, bfactor_angst2=-30.0, pixel_size_angst=p, ndim=2)
    assert sharp[0, 0] == ft[0, 0]
    assert sharp[n // 2, n // 2] == 0  # |k| = 8.5 > n / 2: beyond Nyquist
    assert abs(sharp[0, n // 2]) > abs(ft[0, n // 2])  # negative B sharpens


@pytest.mark.parametrize("shift", [(3, -2), (-5, 4, 7)])
def test_integer_shift_equals_rolling_the_image(device, shift):
    ndim, n = len(shift), 16
    gen = torch.Generator().manual_seed(2)
    image = torch.randn((n,) * ndim, generator=gen, dtype=F64).to(device)
    s = torch.tensor(shift, dtype=F64, device=device)
    got = from_fourier(shift_fourier(to_fourier(image, ndim), s), n, ndim)
    want = torch.roll(image, shifts=shift[::-1], dims=tuple(range(ndim)))  # (z, y, x) axes
    # FFT round trip: error <~ log2(n**ndim) u * sum |x| per value; 1e-12 covers it.
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-12)


def _gaussian(n: int, centre: tuple[float, float], sigma: float, device) -> torch.Tensor:
    y, x = torch.meshgrid(*(torch.arange(n, dtype=F64, device=device),) * 2, indexing="ij")
    return torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


def test_fractional_shift_of_a_gaussian_is_the_shifted_gaussian(device):
    n, sigma, shift = 48, 2.0, (3.25, -5.5)
    image = _gaussian(n, (n // 2, n // 2), sigma, device)
    s = torch.tensor(shift, dtype=F64, device=device)
    got = from_fourier(shift_fourier(to_fourier(image, 2), s), n, 2)
    want = _gaussian(n, (n // 2 + shift[0], n // 2 + shift[1]), sigma, device)
    # Trigonometric interpolation of the samples is exact for a band-limited signal;
    # the Gaussian's spectrum at Nyquist is exp(-2 pi^2 sigma^2 / 4) = 2.7e-9 of its
    # peak (height 1 here), the error scale of the shift; its tails at the periodic
    # box edge are exp(-18.5^2 / 8) ~ 1e-19. Allow twice the aliasing level.
    torch.testing.assert_close(got, want, rtol=0.0, atol=2 * math.exp(-(math.pi**2) * sigma**2 / 2))


def test_phase_grid_is_exp_minus_two_pi_i_k_dot_s_over_n(device):
    n = 8
    gen = torch.Generator().manual_seed(3)
    shifts = (torch.rand(4, 3, generator=gen, dtype=F64) - 0.5) * 10
    grid = phase_shift_grid(shifts.to(device), n).cpu()
    assert grid.shape == (4, n, n, n // 2 + 1)
    assert grid.dtype == C128
    for t, (index, k) in itertools.product(range(4), _frequencies(n, 3)):
        dot = sum(k[d] * float(shifts[t, d]) for d in range(3))
        want = complex(math.cos(-2 * math.pi * dot / n), math.sin(-2 * math.pi * dot / n))
        # |angle| < 2 pi * 3 * 4 * 5 / 8; float64 error ~ 10 u |angle|.
        assert abs(complex(grid[(t, *index)]) - want) < 1e-13


def test_shift_broadcasts_over_a_batch_of_images(device):
    gen = torch.Generator().manual_seed(4)
    ft = to_fourier(torch.randn(3, 12, 12, generator=gen, dtype=F64), 2).to(device)
    shifts = torch.randn(3, 2, generator=gen, dtype=F64).to(device)
    got = shift_fourier(ft, shifts)
    torch.testing.assert_close(got, ft * phase_shift_grid(shifts, 12), rtol=1e-15, atol=1e-16)


def _randomised_fsc_std(ft: torch.Tensor, n: int) -> torch.Tensor:
    """Std per shell of the FSC between a fixed 3D map and its phase-randomised copy.

    Term of a coefficient: |a|^2 cos(phi). cos(phi) of uniform phi has variance 1/2
    (1 for the 0-or-pi phases of self-paired coefficients); a Friedel pair stored
    twice repeats its term (weight 2). Numerator variance: sum over stored of
    size * c * |a|^4; denominator: sum over stored of |a|^2.
    """
    num = [0.0] * (n // 2 + 1)
    den = [0.0] * (n // 2 + 1)
    for index, k in _frequencies(n, 3):
        s = math.floor(math.sqrt(sum(c * c for c in k)) + 0.5)
        if s > n // 2:
            continue
        self_paired = all(c % n == (-c) % n for c in k)
        size = 2 if (k[0] in (0, n // 2) and not self_paired) else 1
        power = abs(complex(ft[index])) ** 2
        num[s] += size * (1.0 if self_paired else 0.5) * power**2
        den[s] += power
    return torch.tensor([math.sqrt(u) / v for u, v in zip(num, den, strict=True)], dtype=F64)


def test_phase_randomisation_keeps_amplitudes_and_low_shells_and_gives_a_real_map(device):
    n, cut = 16, 5
    gen = torch.Generator().manual_seed(5)
    volume = torch.randn(n, n, n, generator=gen, dtype=F64)
    ft = to_fourier(volume, 3).to(device)
    got = randomise_phases_beyond(ft, cut, ndim=3, generator=gen)
    # polar(|a|, phi) has modulus |a| (1 + O(u)).
    torch.testing.assert_close(got.abs(), ft.abs(), rtol=4 * U, atol=0.0)
    full, half = torch.fft.fftfreq(n, dtype=F64) * n, torch.arange(n // 2 + 1, dtype=F64)
    kz, ky, kx = torch.meshgrid(full, full, half, indexing="ij")
    below = (torch.sqrt(kx**2 + ky**2 + kz**2) < cut).to(device)
    assert torch.equal(got[below], ft[below])
    # The transform of a real map survives a round trip through real space.
    round_trip = to_fourier(from_fourier(got, n, 3), 3)
    torch.testing.assert_close(round_trip, got, rtol=0.0, atol=1e-14 * float(ft.abs().max()))
    curve = fsc(ft, got)
    std = _randomised_fsc_std(ft.cpu(), n).to(device)
    # Shells 0 .. cut-1 hold only |k| < cut - 0.5: untouched, FSC 1 to rounding.
    torch.testing.assert_close(curve[:cut], torch.ones(cut, dtype=F64, device=device))
    # Shell cut is mixed; above it every coefficient is randomised: 4 sigma around 0.
    assert torch.all(curve[cut + 1 :].abs() < 4 * std[cut + 1 :])
    # |a|^2 of a random map is ~exponential, so std ~ 1 / sqrt(coefficients in the shell).
    assert float(std[-1]) < 0.1


def test_phase_randomisation_of_2d_images_with_odd_size(device):
    gen = torch.Generator().manual_seed(6)
    ft = to_fourier(torch.randn(2, 15, 15, generator=gen, dtype=F64), 2).to(device)
    got = randomise_phases_beyond(ft, 3, ndim=2, generator=gen)
    round_trip = to_fourier(from_fourier(got, 15, 2), 2)
    torch.testing.assert_close(round_trip, got, rtol=0.0, atol=1e-14 * float(ft.abs().max()))
    assert not torch.allclose(got, ft)


def _band_limited(m: int, ndim: int, keep: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7 + ndim)
    ft = to_fourier(torch.randn((m,) * ndim, generator=gen, dtype=F64), ndim).to(device)
    return low_pass(ft, cutoff_shells=float(keep), ndim=ndim, edge_width_shells=0.0)


@pytest.mark.parametrize(("ndim", "small", "large"), [(2, 16, 32), (3, 8, 16)])
def test_pad_interpolates_and_crop_samples_a_band_limited_image(device, ndim, small, large):
    ft_small = _band_limited(small, ndim, small // 2 - 1, device)  # nothing at Nyquist
    image_small = from_fourier(ft_small, small, ndim)
    ft_large = fourier_pad(ft_small, large, ndim=ndim)
    assert ft_large.shape[-ndim:] == (large,) * (ndim - 1) + (large // 2 + 1,)
    image_large = from_fourier(ft_large, large, ndim)
    # Voxel y of the small box sits at voxel 2 y of the large one (centres n // 2).
    every_other = image_large[(slice(None, None, 2),) * ndim]
    scale = float(image_small.abs().max())
    torch.testing.assert_close(every_other, image_small, rtol=0.0, atol=1e-13 * scale)
    cropped = fourier_crop(to_fourier(image_large, ndim), small, ndim=ndim)
    torch.testing.assert_close(cropped, ft_small, rtol=0.0, atol=1e-15 * scale)
    torch.testing.assert_close(
        from_fourier(cropped, small, ndim), every_other, rtol=0.0, atol=1e-13 * scale
    )
    assert fourier_window(ft_small, small, ndim=ndim) is ft_small


@pytest.mark.parametrize(("n", "m"), [(16, 10), (16, 9), (15, 8)])
def test_crop_keeps_each_frequency_value(device, n, m):
    gen = torch.Generator().manual_seed(n + m)
    ft = torch.randn(n, n, n // 2 + 1, generator=gen, dtype=C128).to(device)
    got = fourier_window(ft, m, ndim=3).cpu()
    assert got.shape == (m, m, m // 2 + 1)
    for index, k in _frequencies(m, 3):
        source = (k[2] % n, k[1] % n, k[0])
        assert complex(got[index]) == complex(ft[source])


def test_pad_leaves_corners_beyond_the_old_nyquist_empty(device):
    n, m = 8, 12
    ft = torch.ones(n, n, n // 2 + 1, dtype=C128, device=device)
    got = fourier_pad(ft, m, ndim=3).cpu()
    for index, k in _frequencies(m, 3):
        inside = all(abs(c) <= n // 2 for c in k) and sum(c * c for c in k) <= (n // 2) ** 2
        stored = k[0] <= n // 2 and all(-(n // 2) < c <= n // 2 for c in k[1:])
        assert complex(got[index]) == (1.0 if inside and stored else 0.0)
    with pytest.raises(ValueError, match="fourier_pad"):
        fourier_crop(ft, 12, ndim=3)
