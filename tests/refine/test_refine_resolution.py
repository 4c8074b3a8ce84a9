"""Current resolution, image sizes, low-resolution join, gold-standard FSC (REFINE_SPEC §4.6-8)."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from cryorefine.fourier import (
    downsampled_average,
    from_fourier,
    fsc,
    fsc_to_ssnr,
    low_pass,
    radius_from_centre,
    to_fourier,
)
from cryorefine.refine.model import initial_refine_state
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.resolution import (
    gold_standard_fsc,
    image_sizes,
    join_halves_at_low_resolution,
    low_resolution_join_radius,
    resolution_shell_of,
    solvent_corrected_fsc,
    update_current_resolution,
    update_size_increment,
)

N, PIXEL = 64, 2.0  # box and pixel: shell r is r / 128 1/Angstrom


def _state(**changes):
    options = RefineOptions(ini_high=32.0, particle_diameter=100.0)
    return dataclasses.replace(
        initial_refine_state(options, ori_size=N, pixel_size_angst=PIXEL), **changes
    )


def _fsc_crossing_half_at(shell: int) -> torch.Tensor:
    """A smooth FSC: 0.9 up to ``shell - 1``, exactly 0.4 at ``shell``, falling to 0 beyond."""
    r = torch.arange(N // 2 + 1, dtype=torch.float64)
    return torch.where(r < shell, 0.9, 0.4 * torch.exp(-(r - shell) / 3.0))


def test_fsc_crossing_half_gives_the_shell_before_and_the_size_beyond_it():
    ssnr = fsc_to_ssnr(_fsc_crossing_half_at(20))  # SSNR < 1 exactly where FSC < 0.5
    options = RefineOptions(particle_diameter=100.0)
    state = update_current_resolution(
        _state(), ssnr, options=options, ori_size=N, pixel_size_angst=PIXEL, iteration=3
    )
    assert state.current_resolution_inv_angst == pytest.approx(19 / (N * PIXEL), rel=1e-15)
    assert (
        resolution_shell_of(state.current_resolution_inv_angst, ori_size=N, pixel_size_angst=PIXEL)
        == 19
    )
    current, _ = image_sizes(
        state, options=options, ori_size=N, pixel_size_angst=PIXEL, average_pmax=0.05
    )
    assert current == 2 * (19 + 10)  # incr_size 10


def test_iteration_zero_uses_ini_high_and_firstiter_cc_keeps_it_in_iteration_one():
    ssnr = fsc_to_ssnr(_fsc_crossing_half_at(25))
    options = RefineOptions(ini_high=32.0)
    start = update_current_resolution(
        _state(current_resolution_inv_angst=0.0),
        ssnr,
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        iteration=0,
    )
    assert start.current_resolution_inv_angst == pytest.approx(4 / 128)  # ROUND(128 / 32) = 4
    cc = dataclasses.replace(options, firstiter_cc=True)
    first = update_current_resolution(
        start, ssnr, options=cc, ori_size=N, pixel_size_angst=PIXEL, iteration=1
    )
    assert first.current_resolution_inv_angst == pytest.approx(4 / 128)
    plain = update_current_resolution(
        start, ssnr, options=options, ori_size=N, pixel_size_angst=PIXEL, iteration=1
    )
    assert plain.current_resolution_inv_angst == pytest.approx(24 / 128)


def test_initial_state_agrees_with_the_iteration_zero_rule():
    options = RefineOptions(ini_high=32.0)
    state = initial_refine_state(options, ori_size=N, pixel_size_angst=PIXEL)
    again = update_current_resolution(
        dataclasses.replace(state, current_resolution_inv_angst=0.0),
        torch.zeros(33, dtype=torch.float64),
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        iteration=0,
    )
    assert again.current_resolution_inv_angst == state.current_resolution_inv_angst
    assert state.current_size == 2 * (4 + 10)


@pytest.mark.parametrize(("rise_to", "want"), [(18, 18), (13, 13), (12, 9)])
def test_fsc_that_dips_and_rises_again_uses_the_higher_shell_only_beyond_three_shells(
    rise_to, want
):
    ssnr = torch.full((N // 2 + 1,), 0.2, dtype=torch.float64)
    ssnr[:10] = 5.0  # first SSNR < 1 at shell 10 -> shell 9
    ssnr[12 : rise_to + 1] = 2.0  # last SSNR > 1 at rise_to: used if rise_to > 9 + 3
    state = update_current_resolution(
        _state(), ssnr, options=RefineOptions(), ori_size=N, pixel_size_angst=PIXEL, iteration=4
    )
    assert round(state.current_resolution_inv_angst * N * PIXEL) == want


def test_resolution_never_drops_below_minres_map():
    ssnr = torch.zeros(N // 2 + 1, dtype=torch.float64)
    state = update_current_resolution(
        _state(),
        ssnr,
        options=RefineOptions(minres_map=5),
        ori_size=N,
        pixel_size_angst=PIXEL,
        iteration=2,
    )
    assert state.current_resolution_inv_angst == pytest.approx(5 / 128)


def test_no_gain_counter_counts_up_and_resets_and_best_resolution_keeps_the_maximum():
    state = _state(current_resolution_inv_angst=19 / 128, best_resolution_inv_angst=19 / 128)
    options = RefineOptions()
    same = update_current_resolution(
        state,
        fsc_to_ssnr(_fsc_crossing_half_at(20)),
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        iteration=5,
    )
    assert same.nr_iter_wo_resol_gain == 1
    worse = update_current_resolution(
        same,
        fsc_to_ssnr(_fsc_crossing_half_at(15)),
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        iteration=6,
    )
    assert worse.nr_iter_wo_resol_gain == 2
    assert worse.best_resolution_inv_angst == pytest.approx(19 / 128)
    better = update_current_resolution(
        worse,
        fsc_to_ssnr(_fsc_crossing_half_at(25)),
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        iteration=7,
    )
    assert better.nr_iter_wo_resol_gain == 0
    assert better.best_resolution_inv_angst == pytest.approx(24 / 128)


def test_size_grows_by_a_quarter_box_with_high_pmax_and_high_fsc_at_the_limit():
    options = RefineOptions(particle_diameter=100.0)
    state = _state(current_resolution_inv_angst=10 / 128, has_high_fsc_at_limit=True)
    grow, _ = image_sizes(
        state, options=options, ori_size=N, pixel_size_angst=PIXEL, average_pmax=0.2
    )
    assert grow == 2 * (10 + 8)  # ROUND(0.25 * 64 / 2) = 8
    low_pmax, _ = image_sizes(
        state, options=options, ori_size=N, pixel_size_angst=PIXEL, average_pmax=0.1
    )
    assert low_pmax == 2 * (10 + 10)
    capped, _ = image_sizes(
        _state(current_resolution_inv_angst=30 / 128),
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        average_pmax=0.0,
    )
    assert capped == N
    final, _ = image_sizes(
        _state(current_resolution_inv_angst=5 / 128, has_converged=True),
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        average_pmax=0.0,
    )
    assert final == N


def test_coarse_size_follows_the_rotated_distance_of_the_coarse_step():
    # Order 2: 15 degrees; d_rot = 15 / 360 pi 300 = 39.27 A; / 1.2 = 32.72 A;
    # n p / 32.72 = 128 / 32.72 = 3.91 -> 2 * 4.
    options = RefineOptions(particle_diameter=300.0)
    state = _state(current_resolution_inv_angst=20 / 128)
    current, coarse = image_sizes(
        state, options=options, ori_size=N, pixel_size_angst=PIXEL, average_pmax=0.0
    )
    assert (current, coarse) == (60, 8)
    capped = dataclasses.replace(options, coarse_size=6)
    assert (
        image_sizes(state, options=capped, ori_size=N, pixel_size_angst=PIXEL, average_pmax=0.0)[1]
        == 6
    )
    no_oversampling = dataclasses.replace(options, oversampling=0)
    assert (
        image_sizes(
            state, options=no_oversampling, ori_size=N, pixel_size_angst=PIXEL, average_pmax=0.0
        )[1]
        == 60
    )


def test_optics_group_sizes_scale_by_remap_and_stay_even_and_inside_the_box():
    options = RefineOptions(particle_diameter=300.0, oversampling=0)
    state = _state(current_resolution_inv_angst=20 / 128)
    current, _ = image_sizes(
        state,
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        average_pmax=0.0,
        remap=0.75,
        image_size=48,
    )
    assert current == 2 * math.ceil(0.5 * 0.75 * 60)  # 46
    current, _ = image_sizes(
        state,
        options=options,
        ori_size=N,
        pixel_size_angst=PIXEL,
        average_pmax=0.0,
        remap=1.5,
        image_size=80,
    )
    assert current == 80


def test_size_increment_follows_the_distance_between_the_fsc_crossings():
    fsc = torch.ones(N // 2 + 1, dtype=torch.float64)
    fsc[20:] = 0.3  # first below 0.5 at 20
    fsc[30:] = 0.1  # first below 0.143 at 30
    state = update_size_increment(_state(current_size=40), fsc)
    assert state.incr_size == 30 - 20 + 5
    assert state.has_high_fsc_at_limit  # FSC at shell 40 / 2 - 1 = 19 is 1 > 0.2
    kept = update_size_increment(dataclasses.replace(state, incr_size=30, current_size=64), fsc)
    assert kept.incr_size == 30
    assert kept.has_high_fsc_at_limit  # once true, stays true
    low = update_size_increment(_state(current_size=64), fsc)
    assert not low.has_high_fsc_at_limit  # FSC at shell 31 is 0.1
    never = update_size_increment(_state(incr_size=1), torch.full((33,), 0.3, dtype=torch.float64))
    assert never.incr_size == 4  # below 0.5 at 0, never below 0.143 (-1): -1 - 0 + 5 = 4 > 1


def test_join_radius_takes_the_coarser_of_the_option_and_the_current_resolution():
    assert (
        low_resolution_join_radius(
            1 / 10.0, ori_size=N, pixel_size_angst=PIXEL, low_resol_join_halves=40.0
        )
        == 4
    )
    assert (
        low_resolution_join_radius(
            1 / 50.0, ori_size=N, pixel_size_angst=PIXEL, low_resol_join_halves=40.0
        )
        == 3
    )
    assert (
        low_resolution_join_radius(
            0.1, ori_size=N, pixel_size_angst=PIXEL, low_resol_join_halves=-1.0
        )
        is None
    )


def test_join_averages_inside_the_padded_sphere_only(device):
    gen = torch.Generator().manual_seed(21)
    p, pad, radius = 16, 2, 3
    shape = (p, p, p // 2 + 1)
    data = [torch.randn(shape, generator=gen, dtype=torch.complex128).to(device) for _ in range(2)]
    weight = [torch.rand(shape, generator=gen, dtype=torch.float64).to(device) for _ in range(2)]
    d1, w1, d2, w2 = join_halves_at_low_resolution(
        data[0], weight[0], data[1], weight[1], radius=radius, padding_factor=pad
    )
    for iz, iy, ix in itertools.product(range(p), range(p), range(p // 2 + 1)):
        inside = ix * ix + (iy - p // 2) ** 2 + (iz - p // 2) ** 2 <= (pad * radius) ** 2
        index = (iz, iy, ix)
        if inside:
            mean = (data[0][index] + data[1][index]) / 2
            assert d1[index] == mean
            assert d2[index] == mean
            assert w1[index] == w2[index] == (weight[0][index] + weight[1][index]) / 2
        else:
            assert d1[index] == data[0][index]
            assert w2[index] == weight[1][index]


def _slow_fsc(a: np.ndarray, b: np.ndarray, n: int, radius: int) -> np.ndarray:
    num, da, db = np.zeros(n // 2 + 1), np.zeros(n // 2 + 1), np.zeros(n // 2 + 1)
    full = [i if i <= n // 2 else i - n for i in range(n)]
    for iz, iy, ix in itertools.product(range(n), range(n), range(n // 2 + 1)):
        r = math.sqrt(ix * ix + full[iy] ** 2 + full[iz] ** 2)
        if r > radius:
            continue
        shell = math.floor(r + 0.5)
        x, y = a[iz, iy, ix], b[iz, iy, ix]
        num[shell] += (np.conj(x) * y).real
        da[shell] += abs(x) ** 2
        db[shell] += abs(y) ** 2
    out = np.where(da * db > 0, num / np.sqrt(np.maximum(da * db, 1e-300)), 0.0)
    out[0] = 1.0
    return out


def test_gold_standard_fsc_matches_a_slow_loop_and_is_zero_beyond_current_size(device):
    gen = torch.Generator().manual_seed(22)
    p, pad = 16, 2
    shape = (p, p, p // 2 + 1)
    signal = torch.randn(shape, generator=gen, dtype=torch.complex128)
    data = [
        signal + 0.7 * torch.randn(shape, generator=gen, dtype=torch.complex128) for _ in range(2)
    ]
    weight = [torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5 for _ in range(2)]
    got = gold_standard_fsc(
        data[0].to(device),
        weight[0].to(device),
        data[1].to(device),
        weight[1].to(device),
        padding_factor=pad,
        current_size=6,
    )
    averages = [
        downsampled_average(d, w, padding_factor=pad).numpy()
        for d, w in zip(data, weight, strict=True)
    ]
    want = _slow_fsc(averages[0], averages[1], 8, 3)
    # Shell sums of <= 8**2 * 5 float64 products of O(1) numbers.
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-12, atol=1e-14)
    assert float(got[0]) == 1.0
    assert torch.all(got[4:] == 0)


def test_solvent_corrected_fsc_of_identical_maps_is_one_without_randomisation(device):
    volume = torch.randn(
        16, 16, 16, generator=torch.Generator().manual_seed(23), dtype=torch.float64
    ).to(device)
    mask = torch.ones_like(volume)
    curve, shell = solvent_corrected_fsc(
        volume, volume, mask, current_size=10, generator=torch.Generator()
    )
    assert shell is None  # never below 0.8
    torch.testing.assert_close(
        curve[:6], torch.ones(6, dtype=torch.float64, device=device), rtol=1e-12, atol=0
    )
    assert torch.all(curve[6:] == 0)


def test_solvent_corrected_fsc_keeps_the_masked_fsc_below_the_randomisation_shell_plus_two(device):
    gen = torch.Generator().manual_seed(24)
    n = 16
    signal = torch.randn(n, n, n, generator=gen, dtype=torch.float64)
    smooth = from_fourier(low_pass(to_fourier(signal, 3), cutoff_shells=4.0, ndim=3), n, 3)
    maps = [
        smooth + 0.3 * torch.randn(n, n, n, generator=gen, dtype=torch.float64) for _ in range(2)
    ]
    mask = (radius_from_centre(n, 3, device=None) < 6).double()
    curve, shell = solvent_corrected_fsc(
        maps[0].to(device),
        maps[1].to(device),
        mask.to(device),
        current_size=14,
        generator=torch.Generator().manual_seed(0),
    )
    assert shell is not None
    assert 1 <= shell < 8
    masked = fsc(to_fourier(maps[0] * mask, 3), to_fourier(maps[1] * mask, 3), ndim=3)
    torch.testing.assert_close(
        curve[: shell + 2].cpu(), masked[: shell + 2], rtol=1e-12, atol=1e-14
    )
    assert torch.all(curve <= 1.0 + 1e-12)
    assert torch.all(curve[shell + 2 :] >= 0)
    assert torch.all(curve[8:] == 0)
