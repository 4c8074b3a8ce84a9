"""Reading a run's per-iteration files: what was written is what the report reads."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from report_fake_run import BOX, PIXEL, close, expected, fsc_values, write_fake_run

from cryorefine.errors import InputError
from cryorefine.report import (
    command_line_option,
    find_run_files,
    read_run_history,
    read_run_log,
    solvent_mask_name,
)

FIELDS = list(expected(0))


def test_every_iteration_reads_back_the_values_written(tmp_path):
    run = write_fake_run(tmp_path, iterations=4)
    history = read_run_history(run.root)
    assert [r.iteration for r in history.iterations] == [0, 1, 2, 3, 4]
    assert [r.is_final for r in history.iterations] == [False] * 4 + [True]
    for record in history.iterations:
        want = expected(record.iteration)
        for name in FIELDS:
            got = getattr(record, name)
            if record.iteration == 0 and name.startswith(("acc_", "changes_")):
                assert math.isnan(got), f"{name}: RELION's 999 must read as not measured"
            else:
                assert close(got, want[name]), (record.iteration, name, got, want[name])
    assert history.pixel_size_angst == PIXEL
    assert history.ori_size_px == BOX
    assert history.symmetry == "C2"
    assert history.notes == ()


def test_fsc_curves_read_back_and_the_all_zero_curve_of_iteration_0_is_none(tmp_path):
    run = write_fake_run(tmp_path, iterations=3)
    history = read_run_history(run.root)
    assert history.iterations[0].fsc is None
    for record in history.iterations[1:]:
        assert record.fsc is not None
        np.testing.assert_allclose(record.fsc.fsc, fsc_values(record.iteration), rtol=1e-11)
        shells = np.arange(BOX // 2 + 1)
        np.testing.assert_allclose(record.fsc.resolution_inv_angst, shells / (BOX * PIXEL))


def test_a_folder_stands_for_its_run_root(tmp_path):
    run = write_fake_run(tmp_path, iterations=2)
    assert find_run_files(run.root.parent).root == run.root
    assert len(read_run_history(run.root.parent).iterations) == 3


def test_a_root_without_files_is_an_input_error_naming_it(tmp_path):
    with pytest.raises(InputError, match=r"nowhere/run: no refinement run found"):
        read_run_history(tmp_path / "nowhere" / "run")


def test_missing_files_give_nan_and_a_note_not_an_error(tmp_path):
    run = write_fake_run(
        tmp_path, iterations=4, skip={"sampling": [1, 2], "optimiser": [3], "model": ["final"]}
    )
    history = read_run_history(run.root)
    by_number = {r.iteration: r for r in history.iterations}
    assert math.isnan(by_number[1].healpix_order)
    assert math.isnan(by_number[2].offset_range_px)
    assert math.isnan(by_number[3].acc_rot_deg)
    assert close(by_number[3].resolution_angst, expected(3)["resolution_angst"])
    assert math.isnan(by_number[4].resolution_angst)
    assert by_number[4].fsc is None
    text = " ".join(history.notes)
    assert "sampling" in text
    assert "iteration(s) 1, 2" in text
    assert "optimiser" in text
    assert "iteration(s) 3" in text
    assert "no final run_model.star" in text


def test_an_unreadable_file_is_skipped_with_a_note(tmp_path):
    run = write_fake_run(tmp_path, iterations=3)
    broken = Path(f"{run.root}_it001_sampling.star")
    broken.write_text("data_sampling_general\n_rlnHealpixOrder\n")  # label without a value
    history = read_run_history(run.root)
    assert math.isnan(history.iterations[1].healpix_order)
    assert any(str(broken) in note for note in history.notes)


def test_run_log_fills_what_the_files_lack_and_half_set_lines_are_ignored(tmp_path):
    run = write_fake_run(tmp_path, iterations=3, skip={"sampling": [2]})
    (run.root.parent / "run.log").write_text(
        "2026-01-01 10:00:00 iter=002 half_set=1 particles=20 e_step_seconds=3.0\n"
        "2026-01-01 10:00:01 iter=002 resolution_angst=99.00 healpix_order=3 "
        "offset_range_px=0.75 offset_step_px=0.25 acc_rot_deg=999.00 seconds=5.0\n"
        "2026-01-01 10:00:09 iter=007 resolution_angst=5.00 current_size=24\n"
    )
    history = read_run_history(run.root)
    second = {r.iteration: r for r in history.iterations}[2]
    assert second.healpix_order == 3.0
    assert second.offset_range_px == 0.75
    assert second.angular_step_deg == 7.5  # RELION's 360 / (6 * 2**3)
    # The model file's resolution wins over the log's; the log's 999 stays "not measured".
    assert close(second.resolution_angst, expected(2)["resolution_angst"])
    assert close(second.acc_rot_deg, expected(2)["acc_rot_deg"])
    only_in_log = {r.iteration: r for r in history.iterations}[7]
    assert only_in_log.resolution_angst == 5.0
    assert only_in_log.current_size_px == 24.0


def test_read_run_log_keeps_the_last_line_of_an_iteration(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "iter=001 resolution_angst=20.00 acc_rot_deg=3.00\n"
        "continuing from run_it001_optimiser.star (iteration 1)\n"
        "iter=001 resolution_angst=18.00 acc_rot_deg=nan\n"
    )
    assert read_run_log(log) == {1: {"resolution_angst": 18.0}}
    assert read_run_log(tmp_path / "absent.log") == {}


def test_solvent_mask_comes_from_the_label_or_else_the_command_line(tmp_path):
    run = write_fake_run(tmp_path, iterations=1, mask_name="MaskCreate/job002/mask.mrc")
    (tmp_path / "MaskCreate" / "job002").mkdir(parents=True)
    (tmp_path / "MaskCreate" / "job002" / "mask.mrc").write_bytes(b"")
    name, path = solvent_mask_name(Path(f"{run.root}_optimiser.star"))
    assert name == "MaskCreate/job002/mask.mrc"
    assert path == tmp_path / "MaskCreate" / "job002" / "mask.mrc"  # found from the project
    optimiser = tmp_path / "opt.star"
    optimiser.write_text(
        "# RELION optimiser\n# --o run --solvent_mask m2.mrc --sym D2\n\n"
        "data_optimiser_general\n\n_rlnSolventMaskName None\n"
    )
    assert solvent_mask_name(optimiser)[0] is None  # the label says None: no mask
    optimiser.write_text(
        "# RELION optimiser\n# --o run --solvent_mask m2.mrc --sym D2\n\n"
        "data_optimiser_general\n\n_rlnCurrentIteration 3\n"
    )
    assert solvent_mask_name(optimiser)[0] == "m2.mrc"
    assert command_line_option(optimiser, "--sym") == "D2"
    assert command_line_option(optimiser, "--ini_high") is None


def test_relions_own_files_read_without_error(relion_testdata, tmp_path):
    """RELION 3.1 optimiser and sampling files (shared/testdata) renamed into a run."""
    for kind in ("optimiser", "sampling"):
        shutil.copy(
            relion_testdata / f"run_it025_{kind}_3D.star", tmp_path / f"run_it025_{kind}.star"
        )
    history = read_run_history(tmp_path / "run")
    (record,) = history.iterations
    assert record.iteration == 25
    assert record.healpix_order == 2.0
    assert record.angular_step_deg == 15.0
    assert record.acc_rot_deg == 3.18
    assert record.changes_orientations_deg == 10.079832
    # Offsets are in Angstrom in the file; without a model file there is no pixel size.
    assert math.isnan(record.offset_range_px)
    assert any("no model file" in note for note in history.notes)


def test_the_hiv_tutorial_refinements_read_without_error(hiv_tutorial):
    job074 = hiv_tutorial / "Refine3D" / "job074"
    if not job074.is_dir():
        pytest.skip(f"{job074} not present")
    history = read_run_history(job074)
    (final,) = history.iterations
    assert final.is_final
    assert final.resolution_angst == 3.550685
    assert final.acc_rot_deg == 0.341
    assert final.current_size_px == 192.0
    assert final.fsc is not None
    assert final.fsc.fsc[0] == 1.0
    assert history.symmetry == "C6"  # from the command line: RELION wrote no sampling file here
    assert history.solvent_mask_name == "mask_align.mrc"
    assert history.pixel_size_angst == 1.35
    job012 = read_run_history(hiv_tutorial / "Refine3D" / "job012")
    assert job012.solvent_mask_name is None
    assert job012.iterations[-1].is_final
