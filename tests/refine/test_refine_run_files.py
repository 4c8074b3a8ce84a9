"""A run's output files against RELION 5's real files, and ``--continue`` (REFINE_SPEC §3)."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryorefine.errors import InputError
from cryorefine.io import FLOAT_DIGITS, load_optimisation_set, load_particles, read_mrc, read_star
from cryorefine.refine.model import HalfSetModel, RefineState, initial_refine_state
from cryorefine.refine.model_star import half_model_from_star, model_star_blocks
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.run_files import (
    ParticleStatistics,
    iteration_root,
    read_continue,
    write_data_star,
    write_final_files,
    write_iteration_files,
    write_model_star,
    write_optimiser_star,
    write_run_optimisation_set,
    write_sampling_star,
)
from cryorefine.refine.run_state import (
    options_from_optimiser,
    state_from_optimiser,
    state_from_sampling,
)

# io.write_star keeps FLOAT_DIGITS significant digits: a float read back is within half a unit
# of the last digit, relatively 5 * 10**-FLOAT_DIGITS.
WRITTEN = 5 * 10.0**-FLOAT_DIGITS


def _labels(path: Path) -> dict[str, list[str]]:
    return {
        name: list(block.columns if isinstance(block, pd.DataFrame) else block)
        for name, block in read_star(path).items()
    }


def _model(half_set: int, n: int = 16, *, seed: int = 0, groups: int = 2) -> HalfSetModel:
    gen = torch.Generator().manual_seed(seed)
    s = n // 2 + 1

    def spectrum() -> torch.Tensor:
        return torch.rand(s, generator=gen, dtype=torch.float64) + 0.01

    noise = torch.rand(2, s, generator=gen, dtype=torch.float64) * 1e-3
    noise[1, -1] = 0.0  # not written (RELION writes sigma2 > 0 only), read back as 0
    return HalfSetModel(
        half_set=half_set,
        reference=torch.randn(n, n, n, generator=gen),
        pixel_size_angst=2.7,
        data_dimensionality=3,
        sigma2_noise=noise,
        tau2=spectrum(),
        ssnr=spectrum() * 10,
        fsc=spectrum(),
        sigma2_reconstruction=spectrum(),
        fourier_completeness=spectrum(),
        orientability=spectrum(),
        orientation_pdf=torch.rand(40, generator=gen, dtype=torch.float64),
        sigma2_offset_angst2=12.3,
        norm_correction_average=0.97,
        average_pmax=0.31,
        log_likelihood=1.23e10,
        acc_rot_deg=1.4,
        acc_trans_angst=0.8,
        scale_correction=torch.rand(groups, generator=gen, dtype=torch.float64) + 0.5,
        group_names=tuple(f"TS_{g:02d}" for g in range(groups)),
        group_particle_counts=tuple(range(10, 10 + groups)),
    )


def _options(root: str = "Refine3D/job009/run") -> RefineOptions:
    return RefineOptions(
        optimisation_set=Path("Extract/job007/optimisation_set.star"),
        reference=Path("ref.mrc"),
        output_root=Path(root),
        tomograms=Path("Tomograms/job006/tomograms.star"),
        ini_high=47.0,
        sym="C6",
        ctf=True,
        particle_diameter=230.0,
        zero_mask=True,
        flatten_solvent=True,
        norm=True,
        scale=True,
        low_resol_join_halves=40.0,
        offset_range=5.0,
        auto_ignore_angles=True,
        random_seed=1234,
        pool=3,
        j=2,
        gpu="",
    )


def _state(options: RefineOptions) -> RefineState:
    state = initial_refine_state(options, ori_size=16, pixel_size_angst=2.7)
    return dataclasses.replace(
        state,
        iteration=7,
        healpix_order=4,
        psi_step_deg=3.75,
        offset_range_angst=4.2 / 3,
        offset_step_angst=0.7 / 3,
        perturbation=-0.3141592653589,
        local_searches=True,
        sigma_rot_deg=3.75,
        sigma_tilt_deg=3.75,
        sigma_psi_deg=3.75,
        current_resolution_inv_angst=1 / 7.3,
        best_resolution_inv_angst=1 / 7.1,
        current_size=14,
        coarse_size=10,
        incr_size=13,
        has_high_fsc_at_limit=True,
        acc_rot_deg=1.7,
        acc_trans_angst=0.9,
        changes_orientations_deg=2.1,
        changes_offsets_angst=0.6,
        changes_classes=0.0,
        smallest_changes_orientations_deg=1.9,
        smallest_changes_offsets_angst=0.55,
        smallest_changes_classes=0,
        nr_iter_wo_resol_gain=1,
        nr_iter_wo_large_hidden_variable_changes=2,
        has_fine_enough_angular_sampling=True,
    )


def test_model_file_has_relion5_blocks_and_labels_in_order(tmp_path, hiv_tutorial):
    options = _options()
    blocks = model_star_blocks(
        _model(1, groups=5), _state(options), options, reference_image="run_class001.mrc"
    )
    got = {
        name: list(b.columns if isinstance(b, pd.DataFrame) else b) for name, b in blocks.items()
    }
    del got["model_optics_group_2"]  # RELION's run has one optics group
    assert got == _labels(hiv_tutorial / "Refine3D/job012/run_model.star")


def test_relions_model_reads_and_writes_back_its_values(tmp_path, hiv_tutorial):
    source = hiv_tutorial / "Refine3D/job012/run_model.star"
    model, general = half_model_from_star(source, half_set=1, reference=torch.zeros(96, 96, 96))
    assert general.current_resolution_inv_angst == pytest.approx(1 / 16.544682)
    assert (model.ori_size, model.pixel_size_angst, general.current_size) == (96, 8.1, 96)
    assert model.group_names[:2] == ("TS_01", "TS_03")
    assert len(model.orientation_pdf) == 32810
    state = dataclasses.replace(
        initial_refine_state(RefineOptions(), ori_size=96, pixel_size_angst=8.1),
        current_resolution_inv_angst=general.current_resolution_inv_angst,
        current_size=general.current_size,
        local_searches=general.local_searches,
        sigma_rot_deg=general.sigma_rot_deg,
        sigma_tilt_deg=general.sigma_tilt_deg,
        sigma_psi_deg=general.sigma_psi_deg,
    )
    options = RefineOptions(tau2_fudge=general.tau2_fudge, pad=general.padding_factor)
    written = write_model_star(
        tmp_path / "run_model.star", model, state, options, reference_image=general.reference_image
    )
    want, got = read_star(source), read_star(written)
    assert list(got) == list(want)
    for name, block in want.items():
        if isinstance(block, dict):
            for label, value in block.items():
                # RELION prints 6 decimals (or 7 significant digits): our value comes from its text
                assert got[name][label] == pytest.approx(value, rel=1e-6, abs=1e-6), (name, label)
            continue
        for label in block.columns:
            a, b = block[label].to_numpy(), got[name][label].to_numpy()
            if a.dtype.kind in "OU":
                assert list(a) == list(b), (name, label)
            else:  # derived columns (resolutions) were printed with 6 decimals by RELION
                np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=f"{name} {label}")


def test_optimiser_file_has_relion5_labels_in_order(tmp_path, hiv_tutorial):
    options = _options(str(tmp_path / "run"))
    state = _state(options)
    relion = _labels(hiv_tutorial / "Refine3D/job012/run_optimiser.star")["optimiser_general"]
    final = write_optimiser_star(
        tmp_path / "run_optimiser.star",
        state,
        options,
        model_files=("run_model.star",),
        data_file="run_data.star",
        sampling_file="run_sampling.star",
        final=True,
    )
    assert _labels(final)["optimiser_general"] == relion
    split = write_optimiser_star(
        tmp_path / "run_it007_optimiser.star",
        state,
        options,
        model_files=("a", "b"),
        data_file="d",
        sampling_file="s",
    )
    labels = _labels(split)["optimiser_general"]
    assert labels == [*relion[:2], "rlnModelStarFile2", *relion[2:]]
    text = split.read_text().splitlines()
    assert text[0].startswith("# RELION optimiser; version")
    assert text[1].startswith("# --o ")


def test_optimiser_values_of_features_we_do_not_have_are_relions_off_values(tmp_path, hiv_tutorial):
    relion = read_star(hiv_tutorial / "Refine3D/job012/run_optimiser.star")["optimiser_general"]
    options = _options()
    written = write_optimiser_star(
        tmp_path / "o.star",
        _state(options),
        options,
        model_files=("m",),
        data_file="d",
        sampling_file="s",
        final=True,
    )
    ours = read_star(written)["optimiser_general"]
    constant = [
        label
        for label in relion
        if label.startswith(("rlnSgd", "rlnGrad", "rlnHelical", "rlnDoBlush"))
    ]
    constant += [
        "rlnBodyStarFile",
        "rlnTauSpectrumName",
        "rlnDoMapEstimation",
        "rlnDoAutoSampling",
        "rlnFourierMask",
        "rlnLocalSymmetryFile",
        "rlnOffsetRangeX",
        "rlnRefsAreCtfCorrected",
    ]
    assert len(constant) > 30
    for label in constant:
        assert ours[label] == relion[label], label


def test_relions_optimiser_file_gives_its_state_and_options(hiv_tutorial):
    path = hiv_tutorial / "Refine3D/job012/run_optimiser.star"
    block = read_star(path)["optimiser_general"]
    comments = [line for line in path.read_text().splitlines() if line.startswith("#")]
    options = options_from_optimiser(block, comments, path=path)
    state = state_from_optimiser(block, comments, path=path)
    assert options.output_root == Path("Refine3D/job012/run")
    assert (options.particle_diameter, options.low_resol_join_halves, options.random_seed) == (
        500.0,
        40.0,
        1710533435,
    )
    assert options.norm is False  # rlnDoCorrectNorm 0 wins over --norm on the command line
    assert options.scale
    assert options.ctf
    assert options.zero_mask
    assert options.flatten_solvent
    assert options.tomograms == Path("Denoise/job008/tomograms.star")
    assert options.trajectories is None
    assert (options.sym, options.ini_high, options.auto_iter_max) == ("C6", 60.0, 999)
    assert (state["iteration"], state["incr_size"], state["nr_iter_wo_resol_gain"]) == (-1, 13, 4)
    assert state["best_resolution_inv_angst"] == 0.060442
    assert (state["acc_rot_deg"], state["acc_trans_angst"]) == (0.552, 1.8549)
    assert state["has_converged"]
    assert state["has_high_fsc_at_limit"]
    assert "has_fine_enough_angular_sampling" not in state  # RELION does not write it


def test_sampling_file_has_relions_labels_and_relions_file_reads(tmp_path, relion_testdata):
    source = relion_testdata / "run_it025_sampling_3D.star"
    options = _options()
    directions = torch.tensor([[45.0, 80.4], [56.25, 70.5]], dtype=torch.float64)
    written = write_sampling_star(
        tmp_path / "run_sampling.star",
        _state(options),
        options,
        rot_tilt_deg=directions,
        pixel_size_angst=2.7,
        translations_3d=True,
    )
    assert _labels(written) == _labels(source)
    blocks = read_star(written)
    assert blocks["sampling_general"]["rlnOffsetRangeOriginal"] == pytest.approx(5.0 * 2.7)
    np.testing.assert_array_equal(
        blocks["sampling_directions"]["rlnAngleTilt"].to_numpy(), [80.4, 70.5]
    )
    fields = state_from_sampling(read_star(source), path=source)
    assert fields == {
        "healpix_order": 2,
        "psi_step_deg": 15.0,
        "offset_range_angst": 4.425,
        "offset_step_angst": 1.77,
        "perturbation": -0.36408,
    }


def test_data_file_has_relion5_columns_in_relion5_order(tmp_path, hiv_tutorial):
    source = hiv_tutorial / "Refine3D/job074/run_data.star"
    relion = load_particles(source, check_images=False)
    ours_only = [
        "rlnGroupNumber",
        "rlnClassNumber",
        "rlnNormCorrection",
        "rlnRandomSubset",
        "rlnLogLikeliContribution",
        "rlnMaxValueProbDistribution",
        "rlnNrOfSignificantSamples",
    ]
    table = relion.particles.drop(columns=ours_only)
    stripped = dataclasses.replace(
        relion, particles=table, blocks=relion.blocks | {"particles": table}
    )
    b = len(relion)
    gen = np.random.default_rng(0)
    angles = gen.uniform(-180, 180, (b, 3))
    origins = gen.normal(0, 3, (b, 3))
    statistics = ParticleStatistics(
        group_number=np.ones(b, dtype=np.int64),
        class_number=np.ones(b, dtype=np.int64),
        norm_correction=np.ones(b),
        half_set=torch.as_tensor(relion.half_sets()),  # tensors are accepted too
        log_likelihood_contribution=gen.normal(1.7e6, 1e3, b),
        max_probability=gen.uniform(0, 1, b),
        significant_samples=gen.integers(1, 200, b),
    )
    written = write_data_star(
        stripped,
        tmp_path / "run_data.star",
        angles_deg=angles,
        origins_angst=origins,
        statistics=statistics,
    )
    assert _labels(written) == _labels(source)
    back = read_star(written)["particles"]
    np.testing.assert_allclose(back["rlnAnglePsi"].to_numpy(), angles[:, 2], rtol=WRITTEN)
    np.testing.assert_allclose(
        back["rlnOriginZAngst"].to_numpy(), origins[:, 2], rtol=WRITTEN, atol=1e-300
    )
    np.testing.assert_array_equal(back["rlnRandomSubset"].to_numpy(), relion.half_sets())
    np.testing.assert_allclose(
        back["rlnMaxValueProbDistribution"].to_numpy(), statistics.max_probability, rtol=WRITTEN
    )


def test_optimisation_set_points_at_the_data_file_and_keeps_the_rest(tmp_path, hiv_tutorial):
    source = load_optimisation_set(
        hiv_tutorial / "Refine3D/job012/run_optimisation_set.star", check_files=False
    )
    written = write_run_optimisation_set(
        source,
        tmp_path / "run_it003_optimisation_set.star",
        data_file="Refine3D/job013/run_it003_data.star",
        options=_options(),
    )
    block = read_star(written)[""]
    assert block["rlnTomoParticlesFile"] == "Refine3D/job013/run_it003_data.star"
    assert block["rlnTomoTomogramsFile"] == "Denoise/job008/tomograms.star"
    new = write_run_optimisation_set(
        None, tmp_path / "new.star", data_file="run_data.star", options=_options()
    )
    assert read_star(new)[""] == {
        "rlnTomoParticlesFile": "run_data.star",
        "rlnTomoTomogramsFile": "Tomograms/job006/tomograms.star",
    }


def _assert_models_equal(got: HalfSetModel, want: HalfSetModel) -> None:
    for field in dataclasses.fields(HalfSetModel):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, torch.Tensor):
            # float32 map written as float32 exactly; float64 spectra with FLOAT_DIGITS digits
            torch.testing.assert_close(a.to(b.dtype), b, rtol=WRITTEN, atol=0, msg=field.name)
        elif isinstance(b, float):
            assert a == pytest.approx(b, rel=WRITTEN), field.name
        else:
            assert a == b, field.name


def test_continue_recovers_options_state_and_both_half_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Refine3D/job009").mkdir(parents=True)
    options = _options()
    state = _state(options)
    models = (_model(1, seed=1), _model(2, seed=2))
    directions = torch.tensor([[0.0, 90.0], [30.0, 45.0]], dtype=torch.float64)
    unfiltered = (torch.ones(16, 16, 16), torch.zeros(16, 16, 16))
    written = write_iteration_files(
        state, options, models, rot_tilt_deg=directions, translations_3d=True, unfiltered=unfiltered
    )
    root = iteration_root(options.output_root, 7)
    assert {str(p) for p in written} == {
        f"{root}_half1_class001.mrc",
        f"{root}_half1_class001_unfil.mrc",
        f"{root}_half1_model.star",
        f"{root}_half2_class001.mrc",
        f"{root}_half2_class001_unfil.mrc",
        f"{root}_half2_model.star",
        f"{root}_optimiser.star",
        f"{root}_sampling.star",
    }
    volume, voxel = read_mrc(f"{root}_half2_class001.mrc")
    assert voxel == pytest.approx(2.7, rel=1e-6)  # float32 header
    np.testing.assert_array_equal(volume, models[1].reference.numpy())

    run = read_continue(tmp_path / f"{root}_optimiser.star")
    assert run.options == options
    assert run.data_file.resolve() == (tmp_path / f"{root}_data.star").resolve()
    for field in dataclasses.fields(RefineState):
        got, want = getattr(run.state, field.name), getattr(state, field.name)
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=WRITTEN, abs=1e-300), field.name
        else:
            assert got == want, field.name
    for got_model, want_model in zip(run.half_models, models, strict=True):
        _assert_models_equal(got_model, want_model)


def test_final_files_are_named_without_iteration_and_cannot_be_continued(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = _options("run")
    state = dataclasses.replace(_state(options), has_converged=True)
    model = dataclasses.replace(_model(1), half_set=0)
    written = write_final_files(
        state,
        options,
        model,
        unfiltered=(model.reference, model.reference),
        rot_tilt_deg=torch.zeros(1, 2, dtype=torch.float64),
        translations_3d=False,
    )
    assert sorted(str(p) for p in written) == sorted(
        [
            "run_class001.mrc",
            "run_half1_class001_unfil.mrc",
            "run_half2_class001_unfil.mrc",
            "run_model.star",
            "run_optimiser.star",
            "run_sampling.star",
        ]
    )
    block = read_star("run_optimiser.star")["optimiser_general"]
    assert (block["rlnCurrentIteration"], block["rlnDoSplitRandomHalves"]) == (-1, 0)
    assert (
        read_star("run_model.star")["model_classes"]["rlnReferenceImage"].iloc[0]
        == "run_class001.mrc"
    )
    with pytest.raises(InputError, match="rlnDoSplitRandomHalves is 0"):
        read_continue("run_optimiser.star")


def test_iteration_root_has_three_digits():
    assert iteration_root(Path("Refine3D/job009/run"), 3) == "Refine3D/job009/run_it003"
    assert iteration_root("run", None) == "run"
