"""Particle sets: flavours from content, accessors equal the file, writing keeps the rest."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import BOX, N_PARTICLES, PIXEL, Dataset

from cryorefine.io import (
    FLAVOURS,
    load_particles,
    mrc,
    read_star,
    stored_image_layout,
    write_particles,
)

# Values pass through text with 6 decimals (starfile writes the inputs with %.6f):
# absolute error <= 0.5e-6 per value.
TEXT_ATOL = 0.5e-6 + 1e-12


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_flavour_is_detected_from_content(make_dataset: Callable[[str], Dataset], flavour: str):
    dataset = make_dataset(flavour)
    renamed = dataset.star.with_name("anything.star")  # the name says nothing
    dataset.star.rename(renamed)
    particle_set = load_particles(renamed)
    assert particle_set.flavour == flavour
    assert len(particle_set) == N_PARTICLES


@pytest.mark.parametrize("flavour", ["spa", "subtomo3d", "relion4", "relion5_stack2d"])
def test_accessors_return_the_file_values(make_dataset: Callable[[str], Dataset], flavour: str):
    dataset = make_dataset(flavour)
    particle_set = load_particles(dataset.star)
    table = dataset.blocks["particles"]
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(particle_set.angles_deg(), angles, rtol=0, atol=TEXT_ATOL)
    origins = particle_set.origins_angst()
    np.testing.assert_allclose(origins[:, 0], table["rlnOriginXAngst"], rtol=0, atol=TEXT_ATOL)
    np.testing.assert_allclose(origins[:, 1], table["rlnOriginYAngst"], rtol=0, atol=TEXT_ATOL)
    want_z = table["rlnOriginZAngst"] if "rlnOriginZAngst" in table else np.zeros(N_PARTICLES)
    np.testing.assert_allclose(origins[:, 2], want_z, rtol=0, atol=TEXT_ATOL)
    np.testing.assert_array_equal(particle_set.half_sets(), [1, 2, 1, 2])
    np.testing.assert_array_equal(particle_set.pixel_size_angst, np.full(N_PARTICLES, PIXEL))
    np.testing.assert_array_equal(particle_set.box_size_px, np.full(N_PARTICLES, BOX))
    assert particle_set.angles_deg().dtype == np.float64
    paths = particle_set.image_paths()
    assert {p.resolve() for p in paths} == {p.resolve() for p in dataset.images}


def test_spa_ctf_parameters_combine_particles_and_optics(make_dataset: Callable[[str], Dataset]):
    dataset = make_dataset("spa")
    ctf = load_particles(dataset.star).ctf_parameters()
    table = dataset.blocks["particles"]
    np.testing.assert_allclose(ctf.defocus_u_angst, table["rlnDefocusU"], rtol=0, atol=TEXT_ATOL)
    np.testing.assert_allclose(
        ctf.defocus_angle_deg, table["rlnDefocusAngle"], rtol=0, atol=TEXT_ATOL
    )
    np.testing.assert_array_equal(ctf.voltage_kv, np.full(N_PARTICLES, 300.0))
    np.testing.assert_array_equal(ctf.spherical_aberration_mm, np.full(N_PARTICLES, 2.7))
    np.testing.assert_array_equal(ctf.amplitude_contrast, np.full(N_PARTICLES, 0.1))
    np.testing.assert_array_equal(ctf.scale, np.ones(N_PARTICLES))


def test_missing_optional_ctf_labels_take_relions_defaults(make_dataset: Callable[[str], Dataset]):
    dataset = make_dataset("spa")
    dataset.blocks["particles"] = dataset.blocks["particles"].drop(
        columns=["rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift"]
    )
    dataset.rewrite()
    ctf = load_particles(dataset.star).ctf_parameters()
    np.testing.assert_array_equal(ctf.bfactor_angst2, np.zeros(N_PARTICLES))
    np.testing.assert_array_equal(ctf.phase_shift_deg, np.zeros(N_PARTICLES))
    np.testing.assert_array_equal(ctf.scale, np.ones(N_PARTICLES))


def test_pixel_origins_become_angstrom_in_place(make_dataset: Callable[[str], Dataset]):
    dataset = make_dataset("spa")
    table = dataset.blocks["particles"].drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"])
    table.insert(1, "rlnOriginX", [2.0, -1.0, 0.5, 0.0])
    table.insert(2, "rlnOriginY", [1.0, 1.0, -3.0, 4.0])
    dataset.blocks["particles"] = table
    dataset.rewrite()
    particle_set = load_particles(dataset.star)
    # pixels times rlnImagePixelSize (1.5 A): exact in binary for these values
    np.testing.assert_array_equal(particle_set.origins_angst()[:, 0], [3.0, -1.5, 0.75, 0.0])
    np.testing.assert_array_equal(particle_set.origins_angst()[:, 1], [1.5, 1.5, -4.5, 6.0])
    assert list(particle_set.particles.columns[1:3]) == ["rlnOriginXAngst", "rlnOriginYAngst"]
    assert "rlnOriginX" not in particle_set.particles.columns


def test_optics_groups_map_each_particle_to_its_pixel_size(make_dataset: Callable[[str], Dataset]):
    dataset = make_dataset("spa")
    optics = pd.concat([dataset.blocks["optics"]] * 2, ignore_index=True)
    optics["rlnOpticsGroup"] = [7, 3]
    optics["rlnImagePixelSize"] = [PIXEL, 1.5001]  # within the header tolerance
    dataset.blocks["optics"] = optics
    dataset.blocks["particles"]["rlnOpticsGroup"] = [3, 7, 7, 3]
    dataset.rewrite()
    particle_set = load_particles(dataset.star)
    np.testing.assert_array_equal(particle_set.optics_row, [1, 0, 0, 1])
    np.testing.assert_array_equal(particle_set.pixel_size_angst, [1.5001, PIXEL, PIXEL, 1.5001])


def test_relative_images_resolve_from_cwd_first(make_dataset, tmp_path: Path, monkeypatch):
    dataset = make_dataset("spa")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(dataset.project / "Extract", elsewhere / "Extract")
    monkeypatch.chdir(elsewhere)
    assert load_particles(dataset.star).image_folder == elsewhere
    monkeypatch.chdir(dataset.project)
    assert load_particles(dataset.star).image_folder == dataset.project


def test_relative_images_fall_back_to_folders_above_the_star_file(
    make_dataset, tmp_path, monkeypatch
):
    dataset = make_dataset("relion5_stack2d")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    particle_set = load_particles(dataset.star)
    assert particle_set.image_folder == dataset.project.resolve()
    assert all(path.is_file() for path in particle_set.image_paths())


def test_write_keeps_blocks_unknown_columns_and_new_poses(make_dataset, tmp_path: Path):
    dataset = make_dataset("relion5_stack2d")
    particle_set = load_particles(dataset.star)
    angles = np.random.default_rng(5).uniform(-180, 180, (N_PARTICLES, 3))
    origins = np.random.default_rng(6).uniform(-3, 3, (N_PARTICLES, 3))
    moved = particle_set.with_poses(angles_deg=angles, origins_angst=origins)
    out = dataset.star.with_name("run_data.star")
    write_particles(moved, out)
    blocks = read_star(out)
    assert list(blocks) == ["general", "optics", "particles"]
    assert blocks["general"] == {"rlnTomoSubTomosAre2DStacks": 1}
    written = blocks["particles"]
    assert list(written.columns) == list(dataset.blocks["particles"].columns)
    assert written["rlnMyOwnLabel"].tolist() == ["a", "b", "c", "d"]
    assert (
        written["rlnTomoVisibleFrames"].tolist()
        == dataset.blocks["particles"]["rlnTomoVisibleFrames"].tolist()
    )
    again = load_particles(out)
    # 12 significant digits on writing: relative error <= 0.5e-11
    np.testing.assert_allclose(again.angles_deg(), angles, rtol=1e-11, atol=0)
    np.testing.assert_allclose(again.origins_angst(), origins, rtol=1e-11, atol=0)


def test_with_columns_sets_refine_statistics_by_field_word(make_dataset):
    particle_set = load_particles(make_dataset("spa").star)
    updated = particle_set.with_columns(
        {"half_set": np.array([2, 1, 2, 1]), "max_probability": np.full(N_PARTICLES, 0.25)}
    )
    np.testing.assert_array_equal(updated.half_sets(), [2, 1, 2, 1])
    assert updated.particles["rlnMaxValueProbDistribution"].tolist() == [0.25] * N_PARTICLES
    np.testing.assert_array_equal(particle_set.half_sets(), [1, 2, 1, 2])  # original untouched
    with pytest.raises(ValueError, match="unknown particle field"):
        particle_set.with_columns({"rlnAngleRot": np.zeros(N_PARTICLES)})


def test_subset_keeps_rows_and_per_particle_arrays_together(make_dataset):
    particle_set = load_particles(make_dataset("spa").star)
    part = particle_set.subset(np.array([3, 0]))
    np.testing.assert_array_equal(part.angles_deg(), particle_set.angles_deg()[[3, 0]])
    assert part.image_names() == [particle_set.image_names()[i] for i in (3, 0)]
    halves = particle_set.subset(particle_set.half_sets() == 2)
    np.testing.assert_array_equal(halves.half_sets(), [2, 2])


def test_stack2d_visible_frames_are_bool_per_tilt(make_dataset):
    particle_set = load_particles(make_dataset("relion5_stack2d").star)
    frames = particle_set.visible_frames()
    assert len(frames) == N_PARTICLES
    np.testing.assert_array_equal(frames[0], [False, True, True, True, False])
    assert particle_set.ctf_premultiplied


def test_real_relion5_refine_output_loads_without_images(hiv_tutorial: Path):
    path = hiv_tutorial / "Refine3D" / "job074" / "run_data.star"
    particle_set = load_particles(path, check_images=False)
    raw = starfile.read(path, always_dict=True)["particles"]
    assert particle_set.flavour == "relion5_stack2d"
    assert len(particle_set) == len(raw) == 9053
    np.testing.assert_array_equal(particle_set.pixel_size_angst, np.full(9053, 1.35))
    np.testing.assert_array_equal(particle_set.box_size_px, np.full(9053, 192))
    np.testing.assert_array_equal(
        particle_set.angles_deg(), raw[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    )
    np.testing.assert_array_equal(
        particle_set.centered_coordinates_angst(),
        raw[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy(),
    )
    assert set(particle_set.half_sets().tolist()) == {1, 2}
    priors = particle_set.angle_priors_deg()
    assert np.isnan(priors[:, 0]).all()
    np.testing.assert_array_equal(priors[:, 1], raw["rlnAngleTiltPrior"].to_numpy())


def test_real_relion5_picks_load_as_positions_only(hiv_tutorial: Path):
    particle_set = load_particles(hiv_tutorial / "Picks" / "job019" / "particles.star")
    assert particle_set.flavour == "relion5_picks"
    assert len(particle_set) == 9442
    assert particle_set.optics is None
    assert set(particle_set.tomo_names()) == {"TS_01", "TS_03", "TS_43", "TS_45", "TS_54"}
    assert np.isfinite(particle_set.centered_coordinates_angst()).all()


def test_loading_needs_no_particular_working_directory(make_dataset, tmp_path, monkeypatch):
    dataset = make_dataset("relion4")
    monkeypatch.chdir(tmp_path)
    relative = Path(os.path.relpath(dataset.star, tmp_path))
    assert load_particles(relative).flavour == "relion4"


def test_the_load_checks_leave_every_header_parsed_for_the_reader(make_dataset, monkeypatch):
    """RELION-4 writes a file per particle: the E-step's reader must not parse them again."""
    dataset = make_dataset("relion4")
    parsed: list[Path] = []
    original = mrc.read_mrc_header
    monkeypatch.setattr(mrc, "read_mrc_header", lambda path: parsed.append(path) or original(path))
    mrc._header_of_version.cache_clear()
    particle_set = load_particles(dataset.star)
    checked = len(parsed)
    assert checked == len(set(particle_set.image_paths()) | set(particle_set.ctf_image_paths()))
    for path in [*particle_set.image_paths(), *particle_set.ctf_image_paths()]:
        stored_image_layout(path, 0)
    assert len(parsed) == checked
