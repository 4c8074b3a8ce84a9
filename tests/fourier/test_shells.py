"""Shell sums, spectra, FSC and resolution against slow loops, statistics and RELION's files."""

import itertools
import math

import pytest
import torch

from cryorefine.fourier.conventions import to_fourier
from cryorefine.fourier.shells import (
    first_shell_below,
    fsc,
    fsc_to_ssnr,
    fsc_true,
    power_spectrum,
    radial_average,
    resolution_at,
    resolution_shell,
    shell_counts,
    shell_sums,
    shell_values_to_grid,
)

F64 = torch.float64


def _coefficients(n: int, ndim: int):
    """(tensor index, integer frequency (x, y, z)) of every half-complex coefficient."""
    axes = [range(n)] * (ndim - 1) + [range(n // 2 + 1)]
    for index in itertools.product(*axes):
        k = [i if i <= n // 2 else i - n for i in index[:-1]] + [index[-1]]
        yield index, tuple(reversed(k))


def _shell(k) -> int:
    return math.floor(math.sqrt(sum(c * c for c in k)) + 0.5)  # RELION's ROUND


def _redundant(k) -> bool:
    return k[0] == 0 and k[1] < 0


def _slow_shell_sums(values, n, ndim, exclude_redundant):
    out = [0.0] * (n // 2 + 1)
    for index, k in _coefficients(n, ndim):
        s = _shell(k)
        if s <= n // 2 and not (exclude_redundant and _redundant(k)):
            out[s] += float(values[index])
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize(("n", "ndim"), [(16, 2), (15, 2), (10, 3)])
@pytest.mark.parametrize("exclude_redundant", [True, False])
def test_shell_sums_match_a_loop_over_coefficients(device, n, ndim, exclude_redundant):
    gen = torch.Generator().manual_seed(n + ndim)
    shape = (n,) * (ndim - 1) + (n // 2 + 1,)
    values = torch.randn(shape, generator=gen, dtype=F64)
    got = shell_sums(values.to(device), n, ndim, exclude_redundant=exclude_redundant)
    want = _slow_shell_sums(values, n, ndim, exclude_redundant)
    # Sums of at most n**ndim terms of size <~ 4 in float64, in different orders.
    torch.testing.assert_close(got.cpu(), want, rtol=0.0, atol=n**ndim * 4 * 2.0**-52)
    counts = shell_counts(n, ndim, device=device, exclude_redundant=exclude_redundant)
    want_counts = _slow_shell_sums(torch.ones(shape), n, ndim, exclude_redundant)
    torch.testing.assert_close(counts.cpu(), want_counts, rtol=0.0, atol=0.0)
    average = radial_average(values.to(device), n, ndim, exclude_redundant=exclude_redundant)
    torch.testing.assert_close(average.cpu(), want / want_counts, rtol=1e-12, atol=1e-13)


def test_counts_exclude_only_the_stored_friedel_mates(device):
    n = 16
    full = shell_counts(n, 2, device=device, exclude_redundant=False)
    kept = shell_counts(n, 2, device=device)
    # On kx = 0 the mates ky = -1 .. -7 sit in shells 1 .. 7; ky = -8 is stored as +8.
    diff = full - kept
    assert diff.tolist() == [0.0] + [1.0] * 7 + [0.0] * 1
    assert kept[0] == 1.0


def test_batched_sums_equal_separate_sums(device):
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(3, 2, 12, 7, generator=gen, dtype=F64).to(device)
    got = shell_sums(values, 12, 2)
    for i, j in itertools.product(range(3), range(2)):
        torch.testing.assert_close(got[i, j], shell_sums(values[i, j], 12, 2))


def _slow_fsc(a, b, n, ndim):
    num, da, db = ([0.0] * (n // 2 + 1) for _ in range(3))
    for index, k in _coefficients(n, ndim):
        s = _shell(k)
        if s <= n // 2:
            x, y = complex(a[index]), complex(b[index])
            num[s] += (x.conjugate() * y).real
            da[s] += abs(x) ** 2
            db[s] += abs(y) ** 2
    ratios = [u / math.sqrt(v * w) for u, v, w in zip(num, da, db, strict=True)]
    return torch.tensor(ratios, dtype=F64)


@pytest.mark.parametrize(("n", "ndim"), [(16, 2), (8, 3)])
def test_fsc_matches_a_loop_over_every_stored_coefficient(device, n, ndim):
    gen = torch.Generator().manual_seed(5)
    a = torch.randn((n,) * ndim, generator=gen, dtype=F64)
    b = a + 2.0 * torch.randn((n,) * ndim, generator=gen, dtype=F64)
    fa, fb = to_fourier(a, ndim), to_fourier(b, ndim)
    got = fsc(fa.to(device), fb.to(device), ndim=ndim)
    # Ratios of float64 sums of <= n**ndim terms: relative error ~ n**ndim u.
    torch.testing.assert_close(got.cpu(), _slow_fsc(fa, fb, n, ndim).to(F64), rtol=0, atol=1e-12)


def test_fsc_of_a_map_with_itself_is_one_in_every_shell(device):
    gen = torch.Generator().manual_seed(1)
    volume = torch.randn(2, 16, 16, 16, generator=gen).to(device)  # batched, float32 in
    curve = fsc(to_fourier(volume, 3), to_fourier(volume, 3))
    assert curve.shape == (2, 9)
    assert curve.dtype == F64
    # Numerator re^2 + im^2 and denominator |z|^2 round differently: a few ulps.
    torch.testing.assert_close(curve, torch.ones_like(curve), rtol=0.0, atol=1e-12)


def test_fsc_is_invariant_under_scaling_one_map(device):
    gen = torch.Generator().manual_seed(4)
    a = to_fourier(torch.randn(12, 12, 12, generator=gen, dtype=F64), 3).to(device)
    b = a + to_fourier(torch.randn(12, 12, 12, generator=gen, dtype=F64), 3).to(device)
    base = fsc(a, b)
    torch.testing.assert_close(fsc(a, 7.5 * b), base, rtol=0.0, atol=1e-13)
    torch.testing.assert_close(fsc(a, -0.3 * b), -base, rtol=0.0, atol=1e-13)


def _noise_fsc_std(n: int, ndim: int) -> torch.Tensor:
    """Standard deviation per shell of the FSC of two independent white-noise maps.

    Groups of stored copies of one coefficient: a Friedel pair stored twice (planes
    kx = 0 and kx = n/2) counts with size 2. For independent maps the numerator is
    a sum over groups of size * Re(conj(a) b), whose variance per group is size^2 *
    c * sigma^4 with c = 1/2 for complex and c = 1 for self-conjugate (real)
    coefficients; the denominator is ~ (number stored) * sigma^2. So
    std = sqrt(sum over stored of size * c) / (number stored).
    """
    num = [0.0] * (n // 2 + 1)
    count = [0.0] * (n // 2 + 1)
    for _, k in _coefficients(n, ndim):
        s = _shell(k)
        if s > n // 2:
            continue
        self_conjugate = all(c % n == (-c) % n for c in k)
        size = 2 if (k[0] in (0, n // 2) and not self_conjugate) else 1
        num[s] += size * (1.0 if self_conjugate else 0.5)
        count[s] += 1
    return torch.tensor([math.sqrt(u) / v for u, v in zip(num, count, strict=True)])


def test_fsc_of_independent_noise_maps_is_zero_within_four_sigma(device):
    n = 24
    gen = torch.Generator().manual_seed(8)
    maps = torch.randn(2, 3, n, n, n, generator=gen, dtype=F64).to(device)
    curves = fsc(to_fourier(maps[0], 3), to_fourier(maps[1], 3))
    std = _noise_fsc_std(n, 3).to(device)
    # Shells >= 2 hold >= 30 coefficients, where the ratio is near-Gaussian; 4 sigma
    # over 3 x 11 shells fails with probability ~ 33 * 6e-5 = 2e-3 (seeded anyway).
    assert torch.all(curves[:, 2:].abs() < 4 * std[2:])
    assert float(std[-1]) < 0.03  # the bound is tight enough to mean something


def test_fsc_is_zero_where_a_shell_has_no_power(device):
    a = torch.zeros(8, 8, 5, dtype=torch.complex128, device=device)
    a[0, 0, 1] = 1.0
    curve = fsc(a, a).cpu()
    assert float(curve[1]) == pytest.approx(1.0, abs=1e-15)
    assert float(curve[3]) == 0.0  # RELION's 0 / 0 would be NaN


def test_power_spectrum_matches_a_loop(device):
    gen = torch.Generator().manual_seed(9)
    image = torch.randn(16, 16, generator=gen, dtype=F64)
    ft = to_fourier(image, 2)
    power = (ft.abs() ** 2).to(F64)
    for exclude in (True, False):
        got = power_spectrum(ft.to(device), ndim=2, exclude_redundant=exclude).cpu()
        counts = _slow_shell_sums(torch.ones(16, 9), 16, 2, exclude)
        want = _slow_shell_sums(power, 16, 2, exclude) / counts
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)


def test_shell_values_are_put_on_the_grid_by_rounded_radius(device):
    curve = torch.arange(1.0, 8.0, dtype=F64, device=device)  # shells 0..6 of n = 16
    grid = shell_values_to_grid(curve, 16, 2).cpu()
    for index, k in _coefficients(16, 2):
        s = _shell(k)
        assert float(grid[index]) == (s + 1.0 if s < 7 else 0.0)


def test_resolution_is_interpolated_at_the_known_crossing(device):
    n, p = 64, 1.25
    shells = torch.arange(n // 2 + 1, dtype=F64, device=device)
    curve = torch.stack([1.0 - shells / 20.0, 1.0 - shells / 40.0])  # crossings 17.14, 34.28
    curve[1] = curve[1].clamp(min=0.2)  # never below 0.143 within Nyquist
    got = resolution_at(curve, 0.143, pixel_size_angst=p, box_size=n)
    crossing = 20.0 * (1 - 0.143)  # exact for a straight line
    # Linear interpolation of a linear curve is exact up to float64 rounding.
    assert float(got[0]) == pytest.approx(n * p / crossing, rel=1e-12)
    assert float(got[1]) == pytest.approx(2 * p, rel=1e-15)  # Nyquist
    assert resolution_shell(curve, 0.143).tolist() == [17, 32]
    relion = resolution_at(curve, 0.143, pixel_size_angst=p, box_size=n, interpolate=False)
    assert float(relion[0]) == pytest.approx(n * p / 17, rel=1e-15)
    dropped = torch.full((5,), 0.1, dtype=F64, device=device)
    assert math.isinf(float(resolution_at(dropped, 0.143, pixel_size_angst=p, box_size=n)))


def test_first_shell_below_skips_shell_zero_by_default(device):
    curve = torch.tensor([[0.5, 0.9, 0.85, 0.7, 0.2], [0.9] * 5], device=device)
    assert first_shell_below(curve, 0.8).tolist() == [3, 5]
    assert first_shell_below(curve, 0.8, start=0).tolist() == [0, 5]


def test_relion_postprocess_file_is_reproduced(relion_testdata):
    starfile = pytest.importorskip("starfile")
    blocks = starfile.read(relion_testdata / "postprocess.star", always_dict=True)
    general, table = blocks["general"], blocks["fsc"]
    col = {
        k: torch.tensor(table[f"rln{k}"].to_numpy(), dtype=F64)
        for k in (
            "FourierShellCorrelationCorrected",
            "FourierShellCorrelationUnmaskedMaps",
            "FourierShellCorrelationMaskedMaps",
            "CorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps",
        )
    }
    box, pixel = 96, 7.5  # 49 shells, 720 A box (--angpix 7.5 in the file's command line)
    randomise_at = int(first_shell_below(col["FourierShellCorrelationUnmaskedMaps"], 0.8))
    assert box * pixel / randomise_at == pytest.approx(general["rlnRandomiseFrom"], abs=1e-6)
    masked = col["FourierShellCorrelationMaskedMaps"]
    random = col["CorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"]
    got = fsc_true(masked, random, randomise_from_shell=randomise_at, clip_negative=False)
    corrected = col["FourierShellCorrelationCorrected"]
    low = slice(0, randomise_at + 2)  # copied from the masked FSC: the same printed numbers
    torch.testing.assert_close(got[low], corrected[low], rtol=0.0, atol=0.0)
    high = slice(randomise_at + 2, None)
    # Every value in the file is rounded to 5e-7; propagate through (a - b) / (1 - b).
    a, b = masked[high], random[high]
    bound = 5e-7 * (1 + 1 / (1 - b) + (1 - a).abs() / (1 - b) ** 2)
    assert torch.all((got[high] - corrected[high]).abs() <= bound)
    final = resolution_at(got, 0.143, pixel_size_angst=pixel, box_size=box, interpolate=False)
    assert float(final) == pytest.approx(general["rlnFinalResolution"], abs=1e-6)


def test_fsc_true_clips_where_the_random_fsc_is_higher():
    masked = torch.tensor([1.0, 0.9, 0.6, 0.3, 0.1], dtype=F64)
    random = torch.tensor([1.0, 0.8, 0.2, 0.1, 0.2], dtype=F64)
    got = fsc_true(masked, random, randomise_from_shell=1)
    want = [1.0, 0.9, 0.6, (0.3 - 0.1) / 0.9, 0.0]
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-15, atol=0.0)
    unclipped = fsc_true(masked, random, randomise_from_shell=1, clip_negative=False)
    assert float(unclipped[4]) == pytest.approx((0.1 - 0.2) / 0.8, rel=1e-15)


def test_ssnr_from_fsc_follows_relion_transform():
    curve = torch.tensor([-0.2, 0.0, 0.5, 1.0 / 3.0, 1.0], dtype=F64)
    got = fsc_to_ssnr(curve)
    want = [0.001 / 0.999, 0.001 / 0.999, 1.0, 0.5, 999.0]
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-12, atol=0.0)
    joined = fsc_to_ssnr(curve, joined_halves=True, tau2_fudge=2.0)
    f = math.sqrt(0.5)  # sqrt(2 F / (F + 1)) at F = 1/3
    assert float(joined[3]) == pytest.approx(2.0 * f / (1 - f), rel=1e-12)
