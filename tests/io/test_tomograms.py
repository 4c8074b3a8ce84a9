"""Tomogram sets (RELION 4 and 5), their per-tilt tables, and trajectories."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import N_TILTS, PIXEL, build_tomograms_relion4, build_tomograms_relion5

from cryorefine.errors import InputError
from cryorefine.io import (
    check_particles_against_tomograms,
    load_particles,
    load_tomograms,
    load_trajectories,
)

TUTORIAL_TILTS = {"TS_01": 40, "TS_03": 40, "TS_43": 41, "TS_45": 41, "TS_54": 41}


def test_real_relion5_tomograms_find_their_tilt_series_files(
    hiv_tutorial: Path, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # not the project folder: found from the file's own folders
    tomograms = load_tomograms(hiv_tutorial / "Tomograms" / "job006" / "tomograms.star")
    assert tomograms.names() == list(TUTORIAL_TILTS)
    assert {name: len(tomograms[name]) for name in tomograms.names()} == TUTORIAL_TILTS
    series = tomograms["TS_01"]
    assert series.source == hiv_tutorial.resolve() / "Tomograms/job006/tilt_series/TS_01.star"
    assert series.pixel_size_angst == 1.35
    assert series.hand == -1.0
    assert series.size_px == (4000, 4000, 2000)
    assert not series.has_projection_matrices


def test_real_per_tilt_values_are_the_columns(hiv_tutorial: Path) -> None:
    tomograms = load_tomograms(hiv_tutorial / "Tomograms" / "job006" / "tomograms.star")
    raw = starfile.read(hiv_tutorial / "Tomograms/job006/tilt_series/TS_43.star")
    series = tomograms["TS_43"]
    alignment = series.alignment()
    np.testing.assert_array_equal(alignment.y_tilt_deg, raw["rlnTomoYTilt"].to_numpy())
    np.testing.assert_array_equal(alignment.z_rot_deg, raw["rlnTomoZRot"].to_numpy())
    np.testing.assert_array_equal(alignment.x_shift_angst, raw["rlnTomoXShiftAngst"].to_numpy())
    np.testing.assert_array_equal(
        series.pre_exposure_e_per_angst2(), raw["rlnMicrographPreExposure"]
    )
    ctf = series.ctf_parameters()
    np.testing.assert_array_equal(ctf.defocus_v_angst, raw["rlnDefocusV"].to_numpy())
    np.testing.assert_array_equal(ctf.voltage_kv, np.full(41, 300.0))
    np.testing.assert_array_equal(ctf.bfactor_angst2, np.zeros(41))  # no rlnCtfBfactor: 0


def test_real_refine_output_matches_its_tomograms(hiv_tutorial: Path) -> None:
    particles = load_particles(hiv_tutorial / "Refine3D/job074/run_data.star", check_images=False)
    tomograms = load_tomograms(hiv_tutorial / "Tomograms" / "job006" / "tomograms.star")
    check_particles_against_tomograms(particles, tomograms)  # raises on any mismatch


def test_relion4_projection_rows_parse_to_matrices(tmp_path: Path) -> None:
    path, matrices = build_tomograms_relion4(tmp_path, np.random.default_rng(0))
    series = load_tomograms(path)["TS_01"]
    assert series.source == path
    assert series.has_projection_matrices
    # written with 17 significant digits: float64 round trip is exact
    np.testing.assert_array_equal(series.projection_matrices(), matrices)
    assert series.pixel_size_angst == PIXEL


def test_relion5_synthetic_tilt_table(tmp_path: Path) -> None:
    path = build_tomograms_relion5(tmp_path, np.random.default_rng(1))
    series = load_tomograms(path)["TS_01"]
    assert len(series) == N_TILTS
    np.testing.assert_array_equal(series.nominal_tilt_angles_deg(), np.linspace(-6, 6, N_TILTS))
    with pytest.raises(InputError, match="rlnTomoProjX"):
        series.projection_matrices()


def test_unknown_tomogram_name_is_refused(tmp_path: Path) -> None:
    path = build_tomograms_relion5(tmp_path, np.random.default_rng(1))
    with pytest.raises(InputError, match=r"no tomogram called 'TS_99'.*TS_01"):
        load_tomograms(path)["TS_99"]


def test_trajectories_are_one_table_per_particle(tmp_path: Path) -> None:
    shifts = np.random.default_rng(2).uniform(-2, 2, (N_TILTS, 3))
    per_particle = pd.DataFrame(shifts, columns=[f"rlnOrigin{a}Angst" for a in "XYZ"])
    blocks = {
        "general": {"rlnParticleNumber": 2},
        "TS_01/0": per_particle,
        "TS_01/1": per_particle * 2,
    }
    starfile.write(blocks, tmp_path / "motion.star")
    trajectories = load_trajectories(tmp_path / "motion.star")
    assert list(trajectories.per_particle) == ["TS_01/0", "TS_01/1"]
    # starfile writes 6 decimals: absolute error <= 0.5e-6
    np.testing.assert_allclose(trajectories.shifts_angst("TS_01/1"), 2 * shifts, rtol=0, atol=5e-7)
    with pytest.raises(InputError, match="no trajectory for particle 'TS_02/5'"):
        trajectories.shifts_angst("TS_02/5")
