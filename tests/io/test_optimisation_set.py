"""Optimisation sets: both layouts RELION uses, path resolution, writing keeps the rest."""

from pathlib import Path

import pytest

from cryorefine.errors import InputError
from cryorefine.io import load_optimisation_set, read_star, write_optimisation_set, write_star


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "Refine3D" / "job012").mkdir(parents=True)
    (project / "Tomograms" / "job006").mkdir(parents=True)
    (project / "Refine3D" / "job012" / "run_data.star").write_text("data_\n_rlnVoltage 300\n")
    (project / "Tomograms" / "job006" / "tomograms.star").write_text("data_\n_rlnVoltage 300\n")
    (project / "Refine3D" / "job012" / "run_optimisation_set.star").write_text(
        "\n# version 50001\n\ndata_\n\n"
        "_rlnTomoParticlesFile      Refine3D/job012/run_data.star\n"
        "_rlnTomoTomogramsFile      Tomograms/job006/tomograms.star\n"
        '_rlnTomoTrajectoriesFile   ""\n'
        "_rlnTomoSomethingNew       keep/me.star\n"
    )
    return project


def test_real_list_and_loop_layouts_both_load(hiv_tutorial: Path) -> None:
    for relative, particles in [
        ("Extract/job010/optimisation_set.star", "Extract/job010/particles.star"),
        ("Refine3D/job012/run_optimisation_set.star", "Refine3D/job012/run_data.star"),
        ("Picks/job019/optimisation_set.star", "Picks/job019/particles.star"),
    ]:
        opt = load_optimisation_set(hiv_tutorial / relative, check_files=False)
        assert opt.particles_file is not None
        assert opt.particles_file.as_posix().endswith(particles)
        assert opt.tomograms_file is not None
        assert opt.tomograms_file.as_posix().endswith("Denoise/job008/tomograms.star")
        assert opt.trajectories_file is None  # absent or ""
        assert opt.reference_map1 is None


def test_real_picks_set_finds_its_particles_in_the_project(
    hiv_tutorial: Path, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    opt = load_optimisation_set(
        hiv_tutorial / "Picks/job019/optimisation_set.star", check_files=False
    )
    assert opt.particles_file == hiv_tutorial.resolve() / "Picks/job019/particles.star"


def test_missing_file_is_named_with_its_label(hiv_tutorial: Path) -> None:
    # the tutorial metadata lacks Denoise/job008/tomograms.star
    with pytest.raises(
        InputError, match=r"optimisation_set\.star: rlnTomoTomogramsFile 'Denoise/job008"
    ):
        load_optimisation_set(hiv_tutorial / "Picks/job019/optimisation_set.star")


def test_paths_resolve_from_cwd_else_from_the_project(tmp_path: Path, monkeypatch) -> None:
    project = _project(tmp_path)
    star = project / "Refine3D" / "job012" / "run_optimisation_set.star"
    monkeypatch.chdir(tmp_path)  # not the project: found two levels above the set
    opt = load_optimisation_set(star)
    assert opt.particles_file == project.resolve() / "Refine3D/job012/run_data.star"
    monkeypatch.chdir(project)
    opt = load_optimisation_set(Path("Refine3D/job012/run_optimisation_set.star"))
    assert opt.tomograms_file == project / "Tomograms/job006/tomograms.star"


def test_writing_keeps_other_entries_and_how_paths_were_written(tmp_path: Path, monkeypatch):
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    opt = load_optimisation_set(Path("Refine3D/job012/run_optimisation_set.star"))
    new = opt.replace(particles_file=Path("Refine3D/job013/run_data.star"))
    write_optimisation_set(new, project / "out.star")
    entries = read_star(project / "out.star")[""]
    assert entries == {
        "rlnTomoParticlesFile": "Refine3D/job013/run_data.star",
        "rlnTomoTomogramsFile": "Tomograms/job006/tomograms.star",
        "rlnTomoTrajectoriesFile": "",
        "rlnTomoSomethingNew": "keep/me.star",
    }


def test_a_set_written_elsewhere_still_finds_its_files(tmp_path: Path, monkeypatch):
    # a set beside its files, names relative to its folder, copied to an unrelated folder
    folder = tmp_path / "sim"
    folder.mkdir()
    (folder / "tomograms.star").write_text("data_\n")
    (folder / "particles.star").write_text("data_\n")
    write_star(
        {"": {"rlnTomoParticlesFile": "particles.star", "rlnTomoTomogramsFile": "tomograms.star"}},
        folder / "optimisation_set.star",
    )
    monkeypatch.chdir(tmp_path / "sim")
    opt = load_optimisation_set(folder / "optimisation_set.star")
    elsewhere = tmp_path / "other" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    write_optimisation_set(opt, elsewhere / "copy.star")
    copy = load_optimisation_set(elsewhere / "copy.star")
    assert copy.tomograms_file.resolve() == (folder / "tomograms.star").resolve()
    assert copy.particles_file.resolve() == (folder / "particles.star").resolve()


def test_unknown_field_is_a_bug_not_an_input_error(tmp_path: Path, monkeypatch) -> None:
    project = _project(tmp_path)
    opt = load_optimisation_set(project / "Refine3D" / "job012" / "run_optimisation_set.star")
    with pytest.raises(ValueError, match="unknown optimisation set fields"):
        opt.replace(particle_file=Path("x.star"))
