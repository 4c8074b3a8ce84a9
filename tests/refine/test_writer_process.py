"""Writes in a process of their own (``refine.writer_process``, ``FileWriter(in_process=True)``).

What the driver hands over (models with tensors, the particle table, the grid) arrives
whole: an iteration written through the process is byte for byte the one written here.
The process is a fresh interpreter, so a user's script without a ``__main__`` guard can
use it; its errors and log records come back to this process.
"""

import dataclasses
import logging
import os
import pickle
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import writer_tasks

from cryorefine.io import load_particles
from cryorefine.likelihood import OrientationGrid
from cryorefine.refine.file_writer import FileWriter, on_host
from cryorefine.refine.iteration_files import particle_statistics, write_iteration
from cryorefine.refine.model import HalfSetModel, initial_refine_state
from cryorefine.refine.model_star import half_model_from_star
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.writer_process import WriterProcess


def test_each_write_runs_in_another_process_after_the_previous_one_has_finished(tmp_path):
    events = tmp_path / "events.txt"
    with FileWriter(in_process=True) as writer:
        for number in range(3):
            writer.submit(writer_tasks.slow_write, str(events), number)
    lines = [line.split() for line in events.read_text().splitlines()]
    assert [(kind, int(number)) for kind, number, _ in lines] == [
        ("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("end", 2),
    ]  # fmt: skip
    assert {int(pid) for *_, pid in lines} != {os.getpid()}
    assert len({pid for *_, pid in lines}) == 1  # one process for the whole run


def _failing_run(where: str) -> None:
    with FileWriter(in_process=True) as writer:
        writer.submit(writer_tasks.failing_write)
        if where == "submit":
            writer.submit(writer_tasks.log_line, os.devnull, "not reached")
        elif where == "wait":
            writer.wait()


@pytest.mark.parametrize("where", ["submit", "wait", "exit"])
def test_a_failed_write_raises_its_own_error_here_naming_the_process(where):
    with pytest.raises(OSError, match="No space left on device") as raised:
        _failing_run(where)
    assert raised.value.errno == 28
    assert any("file-writing process" in note for note in raised.value.__notes__)


def _write_through_a_process(write) -> None:
    with FileWriter(in_process=True) as writer:
        writer.submit(write)


def test_an_error_that_cannot_come_back_as_itself_comes_back_as_its_text():
    with pytest.raises(RuntimeError, match=r"Unrebuildable: run_it004_half1_model\.star: a col"):
        _write_through_a_process(writer_tasks.unrebuildable_write)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_its_log_records_reach_this_process_loggers(caplog, level):
    with caplog.at_level(logging.INFO, logger="cryorefine"):
        with FileWriter(in_process=True) as writer:
            writer.submit(writer_tasks.logging_write, "a partial file was left", level)
    [record] = [r for r in caplog.records if "a partial file was left" in r.getMessage()]
    assert record.name == "cryorefine.refine.run_files"
    assert record.levelno == level
    assert int(record.getMessage().split()[-1]) != os.getpid()


def _failing_iteration(events: Path) -> None:
    with FileWriter(in_process=True) as writer:
        writer.submit(writer_tasks.slow_write, str(events), 7)
        raise KeyError("the iteration failed")


def test_the_runs_own_error_is_kept_and_the_write_on_its_way_finishes(tmp_path):
    events = tmp_path / "events.txt"
    with pytest.raises(KeyError, match="the iteration failed"):
        _failing_iteration(events)
    assert [line.split()[:2] for line in events.read_text().splitlines()] == [
        ["start", "7"], ["end", "7"],
    ]  # fmt: skip


def test_a_ctrl_c_reaching_the_process_lets_its_write_finish(tmp_path):
    with FileWriter(in_process=True) as writer:
        writer.submit(writer_tasks.interrupted_write, str(tmp_path / "written.txt"))
    assert (tmp_path / "written.txt").read_text() == "whole"


def test_prints_do_not_break_the_channel_and_the_process_sees_no_gpu(tmp_path, capfd):
    writer = WriterProcess()
    seen = (str(tmp_path / "seen.txt"),)
    writer.run(writer_tasks.printing_write, seen, {})
    writer.run(writer_tasks.printing_write, seen, {})  # the channel still reads
    writer.close()
    assert writer.exit_code == 0
    assert (tmp_path / "seen.txt").read_text() == ""
    assert "a stray line" in capfd.readouterr().err


def test_a_task_that_cannot_be_sent_or_read_is_an_error_and_the_process_goes_on(tmp_path):
    # a module that exists only here: the task pickles, but the process cannot import it
    only_here = types.ModuleType("cryorefine_module_only_here")
    exec("def write():\n    pass\n", only_here.__dict__)
    sys.modules[only_here.__name__] = only_here
    writer = WriterProcess()
    try:
        with pytest.raises(ModuleNotFoundError, match="cryorefine_module_only_here"):
            writer.run(only_here.write, (), {})
        with pytest.raises((AttributeError, pickle.PicklingError)):  # a local function: no pickle
            writer.run(lambda: None, (), {})
        writer.run(writer_tasks.slow_write, (str(tmp_path / "events.txt"), 1), {})
    finally:
        del sys.modules[only_here.__name__]
        writer.close()
    assert len((tmp_path / "events.txt").read_text().splitlines()) == 2
    assert writer.exit_code == 0


def test_relative_paths_resolve_against_the_callers_folder_at_the_time(tmp_path, monkeypatch):
    writer = WriterProcess()  # started in one folder, told to write from another
    try:
        monkeypatch.chdir(tmp_path)
        writer.run(writer_tasks.relative_write, ("values.txt", "written here"), {})
    finally:
        writer.close()
    assert (tmp_path / "values.txt").read_text() == "written here"


def test_a_process_that_dies_is_an_error_with_its_exit_code():
    writer = WriterProcess()
    try:
        with pytest.raises(RuntimeError, match=r"ended unexpectedly \(exit code 3\)"):
            writer.run(writer_tasks.dying_write, (), {})
    finally:
        writer.close()


def test_a_script_without_a_main_guard_can_write_through_it(tmp_path):
    # a multiprocessing child would import this script again and fail in its FileWriter
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from cryorefine.refine.file_writer import FileWriter

            with FileWriter(in_process=True) as writer:
                writer.submit(Path.write_text, Path("written.txt"), "whole")
            print("done")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["done"]
    assert (tmp_path / "written.txt").read_text() == "whole"


def _tutorial_model(hiv_tutorial: Path, half_set: int) -> HalfSetModel:
    """RELION's model of the tutorial's refinement, with a random map and a pdf on 48 pixels."""
    gen = torch.Generator().manual_seed(half_set)
    model, _ = half_model_from_star(
        hiv_tutorial / "Refine3D/job012/run_model.star",
        half_set=half_set,
        reference=torch.randn(96, 96, 96, generator=gen),
    )
    pdf = torch.rand(48, generator=gen, dtype=torch.float64)
    return dataclasses.replace(model, orientation_pdf=pdf / pdf.sum())


def _write_iteration_here(folder: Path, in_process: bool, hiv_tutorial: Path) -> dict[str, bytes]:
    particles = load_particles(hiv_tutorial / "Refine3D/job074/run_data.star", check_images=False)
    options = RefineOptions(
        reference=Path("ref.mrc"), output_root=Path("Refine3D/job013/run"), sym="C6"
    )
    state = dataclasses.replace(
        initial_refine_state(options, ori_size=96, pixel_size_angst=8.1), iteration=3
    )
    grid = OrientationGrid(1, torch.arange(48), torch.arange(12.0) * 30)
    rng = np.random.default_rng(3)
    b = len(particles)
    statistics = particle_statistics(
        particles, rng.integers(1, 3, b), rng.random(b), rng.integers(1, 99, b), rng.random(b)
    )
    (folder / "Refine3D/job013").mkdir(parents=True)
    models = (_tutorial_model(hiv_tutorial, 1), _tutorial_model(hiv_tutorial, 2))
    args = (on_host(state), options, models, particles, statistics, grid)
    kwargs = {"optimisation_set": None, "unfiltered": None, "ndim": 3}
    with FileWriter(in_process=in_process) as writer:
        writer.submit(write_iteration, *args, **kwargs)
    return {
        str(path.relative_to(folder)): _without_time_stamps(path.read_bytes(), path.suffix)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _without_time_stamps(content: bytes, suffix: str) -> bytes:
    """A file's bytes less what says when it was written: starfile's line, an MRC
    header's ten text labels (bytes 224-1023, where mrcfile notes the time)."""
    if suffix == ".mrc":
        return content[:224] + content[1024:]
    return re.sub(rb"(?m)^# Created by the starfile .*\n", b"", content)


def test_an_iteration_written_through_the_process_equals_one_written_by_a_thread(
    tmp_path, monkeypatch, hiv_tutorial
):
    files = {}
    for in_process in (False, True):
        folder = tmp_path / str(in_process)
        folder.mkdir()
        monkeypatch.chdir(folder)
        files[in_process] = _write_iteration_here(folder, in_process, hiv_tutorial)
    assert "Refine3D/job013/run_it003_data.star" in files[True]
    assert "Refine3D/job013/run_it003_optimiser.star" in files[True]
    assert files[True].keys() == files[False].keys()
    for name, content in files[False].items():
        assert files[True][name] == content, name
