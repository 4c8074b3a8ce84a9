"""Post-processing: resolution and B-factor of simulated half maps, RELION's own outputs, files.

Half maps are made here: the embedded map (a known smooth map with a protein's
structure-factor fall-off), blurred by a known B-factor, plus independent white
Gaussian noise per half whose level puts the FSC = 0.143 crossing at a chosen shell.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import i0e, i1e

from cryorefine.errors import InputError
from cryorefine.fourier import (
    bfactor_envelope,
    first_shell_below,
    frequency_indices,
    from_fourier,
    fsc,
    fsc_true,
    power_spectrum,
    resolution_at,
    resolution_shell,
    shell_counts,
    soft_sphere_mask,
    to_fourier,
)
from cryorefine.io import FLOAT_DIGITS, read_mrc, read_star, write_mrc, write_star
from cryorefine.refine.postprocess import PostprocessOptions, postprocess_maps
from cryorefine.refine.postprocess_files import PostprocessFiles, run_postprocess
from cryorefine.refine.sharpening import (
    NO_AMPLITUDE,
    fit_guinier_line,
    fsc_weighting_curve,
    particle_fraction_fsc,
)
from cryorefine.simulate import embedded_map

F64 = torch.float64
ROUNDING = 5e-6  # RELION prints 6 decimals, fewer (5) for negative numbers in its columns


def blurred_truth(box: int, pixel: float, bfactor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded map centred in a box of ``box``, and the same blurred by ``bfactor``."""
    volume, _ = embedded_map()
    truth = torch.zeros(box, box, box, dtype=F64)
    start = (box - volume.shape[0]) // 2
    stop = start + volume.shape[0]
    truth[start:stop, start:stop, start:stop] = torch.from_numpy(volume).to(F64)
    envelope = bfactor_envelope(
        box, 3, bfactor_angst2=bfactor, pixel_size_angst=pixel, device=None, dtype=F64
    )
    return truth, from_fourier(to_fourier(truth, 3) * envelope, box, 3)


def noisy_halves(signal, *, crossing_shell, noise_kept=1.0, seed=1):
    """Signal plus white noise such that FSC = S / (S + N) = 0.143 at ``crossing_shell``.

    ``noise_kept``: mean square of the mask, the share of the noise power left in the
    masked maps that set the final resolution. A white real-space variance v gives
    E|F|^2 = v / n^3 per coefficient (forward-normalised transform).
    """
    box = signal.shape[-1]
    signal_power = float(power_spectrum(to_fourier(signal, 3), ndim=3)[crossing_shell])
    noise_power = signal_power * (1 - 0.143) / 0.143 / noise_kept
    std = math.sqrt(noise_power * box**3)
    gen = torch.Generator().manual_seed(seed)
    return [signal + std * torch.randn(signal.shape, generator=gen, dtype=F64) for _ in range(2)]


def _run(half1, half2, mask, pixel, **options):
    return postprocess_maps(
        half1,
        half2,
        mask,
        pixel_size_angst=pixel,
        options=PostprocessOptions(**options),
        generator=torch.Generator().manual_seed(0),
    )


def test_corrected_fsc_resolution_matches_the_sharpened_map_against_the_truth():
    box, pixel = 128, 2.7
    _, signal = blurred_truth(box, pixel, 100.0)
    mask = soft_sphere_mask(box, 3, radius_px=34, edge_width_px=6, device=None, dtype=F64)
    half1, half2 = noisy_halves(signal, crossing_shell=36, noise_kept=float((mask**2).mean()))
    result = _run(half1, half2, mask, pixel, auto_bfactor=True, low_pass_angst=0.0)
    against_truth = fsc(to_fourier(result.sharpened_masked, 3), to_fourier(signal * mask, 3))
    # Rosenthal & Henderson (2003): the full map's correlation with the truth is
    # sqrt(2 FSC / (1 + FSC)) of the half-map FSC, so FSC_half = 0.143 is where the
    # sharpened map against the truth crosses 0.5 (sharpening scales whole shells).
    reference = float(resolution_at(against_truth, 0.5, pixel_size_angst=pixel, box_size=box))
    assert box * pixel / reference < 0.8 * box / 2  # well inside Nyquist (shell ~36 of 64)
    # 5%: RELION's rule reports the last shell before the drop (up to 1 shell of 36 coarser,
    # 2.8%) and each shell's FSC scatters by ~(1 - F^2)/sqrt(2 pi i^2) = 0.01, ~0.5 shell.
    assert result.final_resolution_angst == pytest.approx(reference, rel=0.05)
    shell = result.randomise_from_shell
    assert shell == int(first_shell_below(result.fsc_unmasked, 0.8))
    corrected = fsc_true(
        result.fsc_masked, result.fsc_random_masked, randomise_from_shell=shell, clip_negative=False
    )
    torch.testing.assert_close(result.fsc_corrected, corrected, rtol=0, atol=0)


def test_guinier_fit_of_a_blurred_noise_free_map_moves_by_the_applied_bfactor(device):
    box, pixel, applied = 64, 1.0, 100.0
    truth, blurred = blurred_truth(box, pixel, applied)
    fits = {}
    for name, volume in (("truth", truth), ("blurred", blurred)):
        volume = volume.to(device)
        fits[name] = _run(volume, volume, None, pixel, auto_bfactor=True, autob_highres_angst=3.2)
    difference = fits["blurred"].bfactor_angst2 - fits["truth"].bfactor_angst2
    # ln <|F| e^{-B s^2/4}>_shell = -B <s^2>/4 + (B/4)^2 var(s^2)/2 + ...: <s^2> is off the
    # shell's s_i^2 by a near-constant (intercept only); var(s^2) ~ i^2/(3 (n p)^4) adds a
    # slope of relative size B / (24 (n p)^2) = 0.1%. Allow 1%.
    assert difference == pytest.approx(-applied, rel=0.01)
    assert fits["truth"].bfactor_angst2 < -20  # the map's own fall-off is not flat


def _rice_log_bias(snr: np.ndarray) -> np.ndarray:
    """ln(E|A + N| / sqrt(A^2 + s^2)) for a fixed amplitude A and complex Gaussian N.

    Rice mean sqrt(pi)/2 s L_{1/2}(-K), K = A^2 / s^2; between -0.121 (K = 0) and 0.
    """
    half = snr / 2
    laguerre = (1 + snr) * i0e(half) + snr * i1e(half)
    return np.log(math.sqrt(math.pi) / 2 * laguerre / np.sqrt(1 + snr))


def test_fitted_bfactor_recovers_the_applied_blur_beyond_the_maps_own_falloff():
    box, pixel, applied = 64, 1.0, 100.0
    truth, signal = blurred_truth(box, pixel, applied)
    half1, half2 = noisy_halves(signal, crossing_shell=20)
    first = _run(half1, half2, None, pixel, auto_bfactor=True)
    top = first.final_resolution_angst
    noisy = _run(half1, half2, None, pixel, auto_bfactor=True, autob_highres_angst=top)
    clean = _run(truth, truth, None, pixel, auto_bfactor=True, autob_highres_angst=top)
    # The map's own fall-off (clean.bfactor_angst2) is measured on the noise-free map over
    # the same shells, 10 A to the final resolution (FSC >= 0.143 there).
    error = noisy.bfactor_angst2 - clean.bfactor_angst2 + applied
    # Per shell, ln(w <|S + N|>) - ln <|S|> with w = sqrt(2 F / (1 + F)) is 0 for Gaussian
    # signal amplitudes (Rosenthal & Henderson). Bound on what remains, shell by shell:
    # a fixed amplitude (Rice, |bias| <= 0.121) plus 4 sigma of the FSC estimate
    # ((1 - F^2) / sqrt(M / 2) through d ln w / dF = 1 / (2 F (1 + F))) and of the mean
    # amplitude (0.52 / sqrt(M / 2) of the noise share), M stored coefficients per shell.
    x = noisy.guinier_resolution_squared.numpy()
    resolution = 1 / np.sqrt(np.where(x > 0, x, np.nan))
    used = (resolution <= 10.0) & (resolution >= top)
    f = noisy.fsc_corrected.numpy()[used]
    independent = shell_counts(box, 3, exclude_redundant=False).numpy()[used] / 2
    snr = 2 * f / (1 - f)
    sigma = np.hypot(
        (1 - f**2) / np.sqrt(independent) / (2 * f * (1 + f)),
        0.52 / np.sqrt(independent) / np.sqrt(1 + snr),
    )
    per_shell = np.abs(_rice_log_bias(snr)) + 4 * sigma
    # A least-squares slope moves by sum (x - mean x) e / sum (x - mean x)^2; B = 4 slope.
    centred = x[used] - x[used].mean()
    bound = 4 * np.sum(np.abs(centred) * per_shell) / np.sum(centred**2)
    assert used.sum() >= 8  # the check is not vacuous
    assert bound < 0.25 * applied
    assert abs(error) <= bound


@pytest.fixture(scope="module")
def job079(hiv_tutorial: Path) -> dict:
    path = hiv_tutorial / "PostProcess" / "job079" / "postprocess.star"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_star(path)


def test_guinier_fit_reproduces_relion5_job079(job079):
    general, guinier, table = job079["general"], job079["guinier"], job079["fsc"]
    box_angst = float(table["rlnAngstromResolution"][1])  # n p: shell 1
    shells = np.arange(len(guinier))
    x = torch.tensor((shells / box_angst) ** 2)  # exact, unlike the printed column
    y = torch.tensor(guinier["rlnLogAmplitudesWeighted"].to_numpy())
    slope, intercept, correlation = fit_guinier_line(x, y, lowres_angst=10.0, highres_angst=0.0)
    # The file's y are rounded to 5e-6: the slope moves by <= 5e-6 sum|x - mean| / sum (x - mean)^2.
    used = (x > 0) & (1 / torch.sqrt(x) <= 10.0) & (y > NO_AMPLITUDE)
    centred = x[used] - x[used].mean()
    slope_error = ROUNDING * float(centred.abs().sum() / (centred**2).sum()) + ROUNDING
    assert slope == pytest.approx(general["rlnFittedSlopeGuinierPlot"], abs=slope_error)
    intercept_error = ROUNDING + float(x[used].mean()) * slope_error + ROUNDING
    assert intercept == pytest.approx(general["rlnFittedInterceptGuinierPlot"], abs=intercept_error)
    assert correlation == pytest.approx(general["rlnCorrelationFitGuinierPlot"], abs=1e-5)
    assert 4 * slope == pytest.approx(general["rlnBfactorUsedForSharpening"], abs=4 * slope_error)


def test_weighting_and_sharpening_columns_of_relion5_job079(job079):
    guinier, table = job079["guinier"], job079["fsc"]
    corrected = torch.tensor(table["rlnFourierShellCorrelationCorrected"].to_numpy())
    weight = fsc_weighting_curve(corrected).numpy()
    original = guinier["rlnLogAmplitudesOriginal"].to_numpy()
    weighted = guinier["rlnLogAmplitudesWeighted"].to_numpy()
    sharpened = guinier["rlnLogAmplitudesSharpened"].to_numpy()
    # Weight zero exactly where RELION wrote -99 (from the first FSC < 1e-4 on).
    assert np.array_equal(weight == 0, weighted == NO_AMPLITUDE)
    kept = weight > 0
    # ln(w <|F|>) - ln <|F|> = ln w: two values rounded to 5e-6, and w from FSCs rounded
    # to 5e-7 (6 decimals), which moves ln w by 5e-7 / (2 F (1 + F)).
    f = corrected.numpy()[kept]
    tolerance = 2 * ROUNDING + 5e-7 / (2 * f * (1 + f))
    assert np.all(np.abs(weighted[kept] - original[kept] - np.log(weight[kept])) <= tolerance)
    # Sharpening multiplies each coefficient by exp(-B |k|^2 / (4 (n p)^2)); |k| of shell i
    # lies in [i - 1/2, i + 1/2), so the log of the shell's mean moves by an amount between
    # the factor's values at the two edges (plus the rounding of two printed values).
    bfactor = job079["general"]["rlnBfactorUsedForSharpening"]
    c = -bfactor / 4 / float(table["rlnAngstromResolution"][1]) ** 2
    shells = np.arange(len(guinier))[kept]
    moved = sharpened[kept] - weighted[kept]
    assert np.all(moved >= c * np.maximum(shells - 0.5, 0) ** 2 - 2 * ROUNDING)
    assert np.all(moved <= c * (shells + 0.5) ** 2 + 2 * ROUNDING)


@pytest.mark.parametrize("source", ["relion3", "relion5"])
def test_randomisation_shell_corrected_fsc_and_resolution_of_relion_files(
    source, job079, relion_testdata
):
    blocks = job079 if source == "relion5" else read_star(relion_testdata / "postprocess.star")
    general, table = blocks["general"], blocks["fsc"]
    box_angst = float(table["rlnAngstromResolution"][1])
    curve = {label: torch.tensor(table[label].to_numpy()) for label in table.columns}
    unmasked = curve["rlnFourierShellCorrelationUnmaskedMaps"]
    shell = int(first_shell_below(unmasked, 0.8, start=1))
    assert box_angst / shell == pytest.approx(general["rlnRandomiseFrom"], abs=1e-5)
    masked = curve["rlnFourierShellCorrelationMaskedMaps"]
    random = curve["rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"]
    got = fsc_true(masked, random, randomise_from_shell=shell, clip_negative=False)
    want = curve["rlnFourierShellCorrelationCorrected"]
    below = torch.arange(len(want)) < shell + 2
    assert torch.equal(got[below], want[below])  # the masked FSC itself, as printed
    # Inputs rounded to 5e-6: (m - r) / (1 - r) moves by 5e-6 (1 + |1 - m| / (1 - r)) / (1 - r).
    m, r = masked[~below], random[~below]
    tolerance = ROUNDING * (1 + (1 - m).abs() / (1 - r)) / (1 - r) + ROUNDING
    assert torch.all((got[~below] - want[~below]).abs() <= tolerance)
    final = box_angst / int(resolution_shell(want, 0.143))
    assert final == pytest.approx(general["rlnFinalResolution"], abs=1e-5)
    if source == "relion5":
        fraction = general["rlnParticleBoxFractionSolventMask"]
        part = particle_fraction_fsc(unmasked, particle_box_fraction=fraction)
        # f U / (1 + (f - 1) U) has slope f / (1 + (f - 1) U)^2 in U, which is rounded to 5e-6.
        slope = fraction / (1 + (fraction - 1) * unmasked) ** 2
        error = (part - curve["rlnFourierShellCorrelationParticleMaskFraction"]).abs()
        assert torch.all(error <= slope * ROUNDING + ROUNDING)


def _write_inputs(folder: Path, *, mask_values: float = 1.0, mask_box: int = 64) -> dict:
    """Half maps of the embedded map with noise, a soft mask, as RELION would name them."""
    volume, pixel = embedded_map()
    gen = np.random.default_rng(3)
    paths = {"half1": folder / "run_half1_class001_unfil.mrc"}
    paths["half2"] = folder / "run_half2_class001_unfil.mrc"
    for name in ("half1", "half2"):
        noisy = volume + 0.01 * gen.standard_normal(volume.shape).astype(np.float32)
        write_mrc(paths[name], noisy, voxel_size_angst=pixel)
    mask = soft_sphere_mask(mask_box, 3, radius_px=28, edge_width_px=4, device=None)
    paths["mask"] = folder / "mask.mrc"
    write_mrc(paths["mask"], mask_values * mask.numpy(), voxel_size_angst=pixel)
    return paths


def test_star_output_parses_back_with_relions_labels_in_relions_order(tmp_path, job079):
    paths = _write_inputs(tmp_path)
    root = tmp_path / "PostProcess" / "postprocess"
    files = PostprocessFiles(half1=paths["half1"], mask=paths["mask"], output_root=root)
    result = run_postprocess(files, PostprocessOptions(auto_bfactor=True))
    blocks = read_star(f"{root}.star")
    assert list(blocks) == ["general", "fsc", "guinier"]
    assert list(blocks["general"]) == list(job079["general"])
    for name in ("fsc", "guinier"):
        assert list(blocks[name].columns) == list(job079[name].columns)
    general = blocks["general"]
    assert general["rlnUnfilteredMapHalf2"] == str(paths["half2"])
    assert general["rlnFinalResolution"] == pytest.approx(result.final_resolution_angst)
    table = blocks["fsc"]
    assert len(table) == 33
    assert table["rlnAngstromResolution"][0] == 999.0
    assert table["rlnSpectralIndex"].tolist() == list(range(33))
    sharpened, voxel = read_mrc(f"{root}.mrc")
    masked, _ = read_mrc(f"{root}_masked.mrc")
    mask, _ = read_mrc(paths["mask"])
    assert voxel == pytest.approx(2.7, rel=1e-6)
    np.testing.assert_allclose(masked, sharpened * mask, rtol=1e-6, atol=1e-9)
    assert Path(f"{root}_fsc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mtf_division_adds_its_log_to_the_guinier_plot(tmp_path):
    paths = _write_inputs(tmp_path)
    mtf = tmp_path / "mtf.star"
    frequency = np.linspace(0.0, 0.5, 11)
    table = pd.DataFrame({"rlnResolutionInversePixel": frequency, "rlnMtfValue": np.full(11, 0.5)})
    write_star({"": table}, mtf)
    root = tmp_path / "pp"
    files = PostprocessFiles(half1=paths["half1"], mask=paths["mask"], mtf=mtf, output_root=root)
    result = run_postprocess(files, PostprocessOptions(adhoc_bfactor_angst2=-100.0))
    guinier = read_star(f"{root}.star")["guinier"]
    below_nyquist = np.arange(len(guinier)) < len(guinier) - 1
    difference = guinier["rlnLogAmplitudesMTFCorrected"] - guinier["rlnLogAmplitudesOriginal"]
    # ln(2 <|F|>) - ln <|F|> below Nyquist; both logs are written with FLOAT_DIGITS digits.
    rounding = 10.0 ** (1 - FLOAT_DIGITS) * guinier["rlnLogAmplitudesOriginal"].abs().max()
    np.testing.assert_allclose(difference[below_nyquist], math.log(2.0), rtol=0, atol=rounding)
    assert result.bfactor_angst2 == -100.0
    assert "rlnLogAmplitudesIntercept" not in guinier


def test_low_pass_at_the_final_resolution_empties_the_shells_beyond_its_edge(tmp_path):
    box, pixel = 64, 2.7
    _, signal = blurred_truth(box, pixel, 50.0)
    half1, half2 = noisy_halves(signal, crossing_shell=18)
    result = _run(half1, half2, None, pixel, filter_edge_width_shells=2)
    k = torch.linalg.vector_norm(frequency_indices(box, 3).to(F64), dim=-1)
    amplitude = to_fourier(result.sharpened, 3).abs()
    cutoff = round(box * pixel / result.final_resolution_angst)
    # Raised cosine from cutoff - 1 to cutoff + 1 shells: nothing beyond, all inside.
    assert float(amplitude[k > cutoff + 1].max()) < 1e-12 * float(amplitude.max())
    unfiltered = _run(half1, half2, None, pixel, low_pass_angst=0.0)
    inside = k < cutoff - 1
    torch.testing.assert_close(
        to_fourier(unfiltered.sharpened, 3)[inside], to_fourier(result.sharpened, 3)[inside]
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("missing_half2", "run_half2_class001_unfil.mrc"),
        ("other_box", "run_half2_class001_unfil.mrc"),
        ("mask_box", "mask.mrc"),
        ("mask_values", "mask.mrc"),
        ("no_half_in_name", "map.mrc"),
    ],
)
def test_bad_inputs_raise_input_error_naming_the_file(tmp_path, change, named):
    paths = _write_inputs(
        tmp_path,
        mask_values=1.5 if change == "mask_values" else 1.0,
        mask_box=48 if change == "mask_box" else 64,
    )
    if change == "missing_half2":
        paths["half2"].unlink()
    if change == "other_box":
        write_mrc(paths["half2"], np.zeros((48, 48, 48), np.float32), voxel_size_angst=2.7)
    if change == "no_half_in_name":
        paths["half1"] = paths["half1"].rename(tmp_path / "map.mrc")
    files = PostprocessFiles(half1=paths["half1"], mask=paths["mask"], output_root=tmp_path / "o")
    with pytest.raises(InputError, match=named):
        run_postprocess(files, PostprocessOptions())
    assert not (tmp_path / "o.mrc").exists()


def test_auto_and_adhoc_bfactor_together_are_refused():
    with pytest.raises(InputError, match="--auto_bfac and --adhoc_bfac"):
        PostprocessOptions(auto_bfactor=True, adhoc_bfactor_angst2=-50.0)


def test_mask_on_solvent_only_falls_back_to_the_unmasked_fsc_unless_forced():
    box, pixel = 64, 2.7
    _, signal = blurred_truth(box, pixel, 50.0)
    half1, half2 = noisy_halves(signal, crossing_shell=18)
    # A sphere of radius 8 around the box corner (periodic): solvent only, FSC ~ 0 there.
    centred = soft_sphere_mask(box, 3, radius_px=8, edge_width_px=2, device=None, dtype=F64)
    corner = torch.roll(centred, shifts=(box // 2,) * 3, dims=(0, 1, 2))
    fallback = _run(half1, half2, corner, pixel)
    forced = _run(half1, half2, corner, pixel, force_mask=True)
    assert torch.equal(fallback.fsc_corrected, fallback.fsc_unmasked)
    assert fallback.resolution_shell == int(resolution_shell(fallback.fsc_unmasked, 0.143))
    assert forced.resolution_shell < fallback.resolution_shell
    assert not torch.equal(forced.fsc_corrected, forced.fsc_unmasked)


def test_without_a_mask_only_the_unmasked_fsc_is_written(tmp_path):
    paths = _write_inputs(tmp_path)
    root = tmp_path / "pp"
    run_postprocess(PostprocessFiles(half1=paths["half1"], output_root=root), PostprocessOptions())
    blocks = read_star(f"{root}.star")
    assert list(blocks["fsc"].columns) == [
        "rlnSpectralIndex",
        "rlnResolution",
        "rlnAngstromResolution",
        "rlnFourierShellCorrelationUnmaskedMaps",
    ]
    assert "rlnMaskName" not in blocks["general"]
    assert list(blocks["guinier"].columns) == [
        "rlnResolutionSquared",
        "rlnLogAmplitudesOriginal",
        "rlnLogAmplitudesWeighted",
    ]
    assert not Path(f"{root}_masked.mrc").exists()
