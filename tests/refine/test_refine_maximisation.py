"""M-step pieces: tau2 and SSNR from the FSC, completeness, priors, scales (REFINE_SPEC §4.5)."""

import itertools
import math

import numpy as np
import pytest
import torch

from cryorefine.fourier import (
    frequency_indices,
    radius_from_centre,
    reconstruction_sigma2,
    to_fourier,
)
from cryorefine.refine.maximisation import (
    attenuate_beyond_ini_high,
    flattening_mask,
    fourier_completeness,
    initial_data_versus_prior,
    initial_half_model,
    initial_low_pass,
    norm_correction_average,
    overall_fourier_completeness,
    reconstruction_statistics,
    scale_groups,
    uniform_orientation_pdf,
    update_orientation_pdf,
    update_scale_correction,
    update_sigma2_offset,
)
from cryorefine.refine.options import RefineOptions


def _slow_ssnr(fsc: float, tau2_fudge: float, joined: bool) -> float:
    f = max(0.001, fsc)
    if joined:
        f = math.sqrt(2 * f / (f + 1))
    f = min(0.999, f)
    return tau2_fudge * f / (1 - f)


@pytest.mark.parametrize("joined", [False, True])
def test_tau2_and_ssnr_follow_relions_formula_on_random_fsc_curves(joined, device):
    gen = torch.Generator().manual_seed(11)
    ori, pad = 8, 2
    weight = torch.rand(16, 16, 9, generator=gen, dtype=torch.float64).to(device) * 5
    fsc_curve = torch.rand(5, generator=gen, dtype=torch.float64) * 1.3 - 0.2  # some < 0, some > 1
    sigma2, tau2, ssnr, _ = reconstruction_statistics(
        weight,
        fsc_curve.to(device),
        ori_size=ori,
        padding_factor=pad,
        current_size=8,
        tau2_fudge=1.7,
        joined_halves=joined,
    )
    want_sigma2 = reconstruction_sigma2(weight, ori_size=ori, padding_factor=pad, max_radius=4)
    want_ssnr = torch.tensor(
        [_slow_ssnr(float(f), 1.7, joined) for f in fsc_curve], dtype=torch.float64
    )
    # A handful of float64 operations per value.
    torch.testing.assert_close(sigma2, want_sigma2, rtol=1e-15, atol=0)
    torch.testing.assert_close(ssnr.cpu(), want_ssnr, rtol=1e-14, atol=0)
    torch.testing.assert_close(tau2, ssnr * sigma2, rtol=0, atol=0)


def test_fsc_half_gives_ssnr_one_and_fsc_one_is_capped_at_999():
    weight = torch.ones(16, 16, 9, dtype=torch.float64)
    _, _, ssnr, _ = reconstruction_statistics(
        weight,
        torch.tensor([1.0, 0.5, 0.0, -0.3, 0.5], dtype=torch.float64),
        ori_size=8,
        padding_factor=2,
        current_size=8,
        tau2_fudge=1.0,
        joined_halves=False,
    )
    torch.testing.assert_close(ssnr[:2], torch.tensor([999.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ssnr[2:4], torch.full((2,), 0.001 / 0.999, dtype=torch.float64))


def _centred_frequencies(p: int):
    for iz, iy, ix in itertools.product(range(p), range(p), range(p // 2 + 1)):
        yield (iz, iy, ix), (ix, iy - p // 2, iz - p // 2)


def test_fourier_completeness_matches_a_slow_loop_over_voxels(device):
    gen = torch.Generator().manual_seed(12)
    p, pad, ori, fudge = 16, 2, 8, 1.5
    weight = torch.rand(p, p, p // 2 + 1, generator=gen, dtype=torch.float64) * 3
    tau2 = torch.rand(ori // 2 + 1, generator=gen, dtype=torch.float64) * 0.2
    tau2[2] = 0.0  # the 0.001 W**2 rule
    got = fourier_completeness(
        weight.to(device),
        tau2.to(device),
        ori_size=ori,
        padding_factor=pad,
        tau2_fudge=fudge,
        max_radius=3,
    )
    covered, counts = np.zeros(ori // 2 + 1), np.zeros(ori // 2 + 1)
    for index, k in _centred_frequencies(p):
        r2 = sum(v * v for v in k)
        if r2 >= (3 * pad) ** 2:
            continue
        shell = math.floor(math.sqrt(r2) / pad + 0.5)
        w = float(weight[index])
        t = float(tau2[shell])
        ratio = w * pad**3 * fudge * t if t > 0 else 0.001 * w * w
        covered[shell] += ratio >= 1
        counts[shell] += 1
    want = np.where(counts > 0, covered / np.maximum(counts, 1), 0.0)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-15, atol=0)


def test_overall_completeness_averages_the_shells_over_relions_cube():
    ssnr = torch.tensor([999, 50, 9, 4, 2, 1.5, 0.5, 3, 0.1], dtype=torch.float64)  # maxres 5
    completeness = torch.linspace(1.0, 0.2, 9, dtype=torch.float64)
    resolution, total = overall_fourier_completeness(
        ssnr, completeness, ori_size=16, pixel_size_angst=2.0
    )
    assert resolution == pytest.approx(16 * 2.0 / 5)
    values, count = 0.0, 0
    for k in itertools.product(range(-4, 5), repeat=3):  # coverwindow 9: -4 .. 4
        r = int(math.sqrt(sum(v * v for v in k)))
        if r <= 5:
            values += float(completeness[r])
            count += 1
    assert total == pytest.approx(values / count, rel=1e-14)


def test_ssnr_below_one_at_shell_zero_has_no_estimate():
    resolution, total = overall_fourier_completeness(
        torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0]), ori_size=2, pixel_size_angst=1.0
    )
    assert resolution == math.inf
    assert math.isnan(total)


def test_attenuation_after_a_cc_iteration_is_the_squared_raised_cosine():
    tau2 = torch.ones(33, dtype=torch.float64)
    # n p / ini_high = 64 * 2 / 8 = 16 shells: 1 below 15, 0 above 17, 0.5**2 at 16.
    got, ssnr = attenuate_beyond_ini_high(
        tau2, 2 * tau2, ini_high_angst=8.0, ori_size=64, pixel_size_angst=2.0
    )
    assert torch.all(got[:15] == 1)
    assert torch.all(got[18:] == 0)
    assert float(got[16]) == pytest.approx(0.25, abs=1e-15)
    assert float(got[15]) == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(ssnr, 2 * got)


def test_initial_data_versus_prior_follows_relions_formula():
    gen = torch.Generator().manual_seed(13)
    reference = torch.randn(8, 8, 8, generator=gen, dtype=torch.float64)
    noise = torch.rand(2, 5, generator=gen, dtype=torch.float64) + 0.5
    tau2, ssnr = initial_data_versus_prior(
        reference, noise, nr_particles=40, tau2_fudge=2.0, data_dimensionality=2
    )
    ft = to_fourier(reference, 3).numpy()
    sums, counts = np.zeros(5), np.zeros(5)
    for index in itertools.product(range(8), range(8), range(5)):
        k = [
            index[2],
            index[1] if index[1] <= 4 else index[1] - 8,
            index[0] if index[0] <= 4 else index[0] - 8,
        ]
        shell = math.floor(math.sqrt(sum(v * v for v in k)) + 0.5)
        if shell <= 4:
            sums[shell] += abs(ft[index]) ** 2
            counts[shell] += 1
    want_tau2 = 2.0 * (sums / counts) * 64 / 2  # n**2 for 2D data against a 3D map
    mean_noise = noise.numpy().mean(axis=0)
    shells = np.arange(5)
    want_ssnr = 40 / mean_noise / np.where(shells > 0, 2 * shells, 1) * want_tau2
    np.testing.assert_allclose(tau2.numpy(), want_tau2, rtol=1e-12)
    np.testing.assert_allclose(ssnr.numpy(), want_ssnr, rtol=1e-12)


def test_initial_half_model_starts_from_relions_values():
    reference = torch.zeros(8, 8, 8)
    reference[4, 4, 4] = 1.0
    noise = torch.ones(1, 5, dtype=torch.float64)
    model = initial_half_model(
        reference,
        noise,
        half_set=2,
        options=RefineOptions(offset=10.0),
        pixel_size_angst=3.0,
        data_dimensionality=2,
        group_names=("a", "b"),
        group_particle_counts=(3, 4),
        nr_directions=10,
    )
    assert model.half_set == 2
    assert model.ori_size == 8
    assert model.sigma2_offset_angst2 == 100.0
    assert (model.acc_rot_deg, model.acc_trans_angst, model.norm_correction_average) == (
        999.0,
        999.0,
        1.0,
    )
    torch.testing.assert_close(model.orientation_pdf, torch.full((10,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(model.scale_correction, torch.ones(2, dtype=torch.float64))
    assert model.orientability is None


def test_offset_prior_divides_by_the_number_of_dimensions_and_is_floored():
    assert update_sigma2_offset(60.0, 10.0, data_is_3d=True) == 2.0  # 60 / 30 = 2 = floor
    assert update_sigma2_offset(90.0, 10.0, data_is_3d=True) == 3.0
    assert update_sigma2_offset(90.0, 10.0, data_is_3d=False) == 4.5
    assert update_sigma2_offset(10.0, 10.0, data_is_3d=False, min_sigma2_offset=2.0) == 2.0


def test_norm_average_and_orientation_pdf_are_sums_over_the_weight():
    assert norm_correction_average(25.0, 20.0) == 1.25
    pdf = update_orientation_pdf(torch.tensor([1.0, 3.0, 0.0, 4.0]), 8.0)
    torch.testing.assert_close(pdf, torch.tensor([0.125, 0.375, 0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(
        uniform_orientation_pdf(4, device=None).sum(), torch.tensor(1.0, dtype=torch.float64)
    )


def test_scale_correction_is_clamped_around_the_median_and_has_weighted_mean_one():
    xa = torch.tensor([1.0, 2.0, 100.0, 0.01, 3.0], dtype=torch.float64)
    aa = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)  # last group: no power -> 1
    counts = torch.tensor([10.0, 20.0, 5.0, 5.0, 10.0], dtype=torch.float64)
    got = update_scale_correction(xa, aa, counts)
    # raw [1, 2, 100, 0.01, 1]; sorted [0.01, 1, 1, 2, 100]: median (index 2) = 1; clamp to [0.2, 5]
    raw = torch.tensor([1.0, 2.0, 5.0, 0.2, 1.0], dtype=torch.float64)
    mean = (counts * raw).sum() / counts.sum()
    torch.testing.assert_close(got, raw / mean, rtol=1e-15, atol=0)
    assert float((counts * got).sum() / counts.sum()) == pytest.approx(1.0, abs=1e-15)


def test_initial_low_pass_keeps_low_shells_and_removes_high_ones(device):
    gen = torch.Generator().manual_seed(14)
    volume = torch.randn(16, 16, 16, generator=gen, dtype=torch.float64).to(device)
    # n p / ini_high = 16 * 2 / 8 = 4 shells: kept below 3, removed above 5
    filtered = initial_low_pass(volume, ini_high_angst=8.0, pixel_size_angst=2.0)
    before, after = to_fourier(volume, 3), to_fourier(filtered, 3)
    radius = torch.linalg.vector_norm(frequency_indices(16, 3, device=device).double(), dim=-1)
    # Two float64 FFTs of 4096 values: error <~ 2 log2(4096) u ~ 5e-15 of the largest coefficient.
    scale = float(before.abs().max())
    torch.testing.assert_close(after[radius < 3], before[radius < 3], rtol=0, atol=1e-13 * scale)
    assert float(after[radius > 5].abs().max()) < 1e-13 * scale
    on_edge = (radius - 4).abs() < 1e-9  # raised cosine is 0.5 at R
    torch.testing.assert_close(after[on_edge], 0.5 * before[on_edge], rtol=0, atol=1e-13 * scale)
    assert initial_low_pass(volume, ini_high_angst=-1.0, pixel_size_angst=2.0) is volume


def test_flattening_mask_is_relions_sphere_with_a_raised_cosine_edge():
    options = RefineOptions(particle_diameter=40.0, maskedge=5)
    mask = flattening_mask(options, ori_size=32, pixel_size_angst=2.0, device=None)  # radius 10 px
    r = radius_from_centre(32, 3, device=None)
    assert torch.all(mask[r < 10] == 1)
    assert torch.all(mask[r > 15] == 0)
    edge = (r >= 10) & (r <= 15)
    want = 0.5 - 0.5 * torch.cos(torch.pi * (15 - r[edge]) / 5)  # RELION's expression
    torch.testing.assert_close(mask[edge], want, rtol=0, atol=1e-15)


def test_scale_groups_follow_first_appearance_without_the_pipeline_prefix():
    names = [
        "MotionCorr/job002/Movies/b.mrc",
        "MotionCorr/job002/Movies/a.mrc",
        "TS_01",
        "MotionCorr/job002/Movies/b.mrc",
    ]
    index, groups, counts = scale_groups(names)
    np.testing.assert_array_equal(index, [0, 1, 2, 0])
    assert groups == ("Movies/b.mrc", "Movies/a.mrc", "TS_01")
    assert counts == (2, 1, 1)
