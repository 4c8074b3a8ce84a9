"""A run killed with SIGKILL at any moment: finished files stay whole, and --continue catches up.

1. ``write_atomically``, killed in the middle of a write, leaves the previous
   file under the name untouched and only a hidden ``.NAME.partial`` beside it;
   ``last_finished_iteration`` passes over an optimiser file that names a
   missing file (a run stopped while writing its iteration).
2. A small refinement (SPA, box 16, 16 particles, C6, four iterations) is run
   once without interruption, then again in a chain: start, SIGKILL at a random
   (seeded) moment (``killed_chain``), check that every file in the output folder reads whole
   (STAR files parse, MRC files are exactly as long as their header says, hidden
   ``.partial`` files are the only others), ``--continue`` from the last
   finished iteration (``last_finished_iteration``), kill again... until a run
   ends by itself. The chain's last maps must equal the uninterrupted run's.

Tolerance of the comparison: both runs do the same float operations in the
same order (same batches, same seeds), except that the continued iterations
start from values read back from files: float32 maps exactly, float64 spectra,
angles and origins to ``FLOAT_DIGITS`` (12) significant digits, i.e. a relative
change below 1e-12. Such a change moves a float32 result by at most the
rounding of the sums it enters: a voxel of the back-projection sums about
k = 16 particles x 6 symmetry copies x 8 interpolation corners = 768 terms,
bound (k + 3) u = 771 x 2**-24 = 4.6e-5 of the sum of magnitudes (Higham
2002, sec. 4.2); we allow 1e-4 of the map's largest value. A pose whose best
score flipped between runs would move the map far more than that.
"""

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryorefine.cli.main import build_parser
from cryorefine.cli.refine import options_from_arguments
from cryorefine.errors import InputError
from cryorefine.io import read_mrc, read_mrc_header, read_star, write_atomically, write_star
from cryorefine.refine.model import HalfSetModel, initial_refine_state
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.run_continue import continued_options
from cryorefine.refine.run_files import (
    last_finished_iteration,
    read_continue,
    write_iteration_files,
)
from cryorefine.simulate import SimulationOptions, simulate_dataset

SEED = 20261125
N_KILLS = 4
ITERATIONS = 4
MAP_RTOL = 1e-4  # module docstring

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL needs a POSIX system")

REFINE = [
    "--i",
    "sim/particles.star",
    "--ref",
    "sim/reference.mrc",
    "--ini_high",
    "40",
    "--sym",
    "C6",
    "--particle_diameter",
    "120",
    "--healpix_order",
    "0",
    "--auto_local_healpix_order",
    "3",
    "--offset_range",
    "3",
    "--offset_step",
    "1.5",
    "--ctf",
    "--flatten_solvent",
    "--zero_mask",
    "--random_seed",
    "1",
    "--iter",
    str(ITERATIONS),
]


def _cryorefine(arguments: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cryorefine", *arguments],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- 1. one write killed half-way ------------------------------------------------------

_SLOW_WRITER = """
import sys, time
from pathlib import Path
from cryorefine.io import write_atomically

def write(partial: Path) -> None:
    with open(partial, "wb") as stream:
        stream.write(b"new content, first half")
        stream.flush()
        print("writing", flush=True)
        time.sleep(60)
        stream.write(b"second half")

write_atomically(sys.argv[1], write)
"""


def test_a_write_killed_half_way_leaves_the_old_file_and_a_hidden_partial(tmp_path: Path):
    target = tmp_path / "run_it001_half1_model.star"
    target.write_text("old content\n")
    with subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"  # the partial file is half written
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert target.read_text() == "old content\n"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p != target)
    assert leftovers == [".run_it001_half1_model.star.partial"]


def test_a_failed_write_removes_its_partial_and_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "map.mrc"
    target.write_bytes(b"old")

    def fail(partial: Path) -> None:
        partial.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError, match=r"map\.mrc: cannot write \(No space left on device\)"):
        write_atomically(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["map.mrc"]


def _optimiser_file(folder: Path, iteration: int, *, missing: tuple[str, ...] = ()) -> Path:
    """An optimiser file of ``folder/run`` and the files it names, except ``missing``."""
    root = f"run_it{iteration:03d}"
    named = {
        "rlnModelStarFile": f"{root}_half1_model.star",
        "rlnModelStarFile2": f"{root}_half2_model.star",
        "rlnExperimentalDataStarFile": f"{root}_data.star",
        "rlnOrientSamplingStarFile": f"{root}_sampling.star",
    }
    for name in named.values():
        if name not in missing:
            (folder / name).write_text("data_\n_rlnX 1\n")
    block = {"rlnDoSplitRandomHalves": 1, **{k: str(folder / v) for k, v in named.items()}}
    return write_star({"optimiser_general": block}, folder / f"{root}_optimiser.star")


def test_the_last_finished_iteration_is_the_newest_with_all_its_files(tmp_path: Path) -> None:
    first = _optimiser_file(tmp_path, 1)
    _optimiser_file(tmp_path, 2, missing=("run_it002_data.star",))  # stopped before its data
    third = _optimiser_file(tmp_path, 3, missing=("run_it003_half2_model.star",))
    (tmp_path / ".run_it004_optimiser.star.partial").write_text("data_\n")
    assert last_finished_iteration(tmp_path / "run") == first
    with pytest.raises(InputError, match=r"rlnModelStarFile2 names .*_it003_half2_model\.star"):
        read_continue(third)


def _small_model(half_set: int, n: int = 8) -> HalfSetModel:
    gen = torch.Generator().manual_seed(half_set)
    shells = torch.rand(n // 2 + 1, generator=gen, dtype=torch.float64) + 0.1
    return HalfSetModel(
        half_set=half_set,
        reference=torch.randn(n, n, n, generator=gen),
        pixel_size_angst=3.0,
        data_dimensionality=2,
        sigma2_noise=shells[None] * 1e-3,
        tau2=shells,
        ssnr=shells * 10,
        fsc=shells / 2,
        sigma2_reconstruction=shells,
        fourier_completeness=shells / 2,
        orientability=shells / shells.sum(),
        orientation_pdf=torch.full((12,), 1 / 12, dtype=torch.float64),
        sigma2_offset_angst2=9.0,
        norm_correction_average=1.0,
        average_pmax=0.5,
        log_likelihood=-1e4,
        acc_rot_deg=5.0,
        acc_trans_angst=2.0,
        scale_correction=torch.ones(1, dtype=torch.float64),
        group_names=("group",),
        group_particle_counts=(10,),
    )


class RunFiles(dict):
    """Path -> text of the STAR files of one iteration (a short repr for hypothesis' reports)."""

    def __repr__(self) -> str:
        return f"RunFiles({sorted(p.name for p in self)})"


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> RunFiles:
    """The files of one small iteration (optimiser, sampling, models, maps): path -> text."""
    folder = tmp_path_factory.mktemp("continue_files")
    options = RefineOptions(output_root=folder / "run", particle_diameter=100.0, sym="C6")
    state = dataclasses.replace(
        initial_refine_state(options, ori_size=8, pixel_size_angst=3.0), iteration=2
    )
    written = write_iteration_files(
        state,
        options,
        (_small_model(1), _small_model(2)),
        rot_tilt_deg=torch.zeros(12, 2, dtype=torch.float64),
        translations_3d=False,
    )
    return RunFiles({path: path.read_text() for path in written if path.suffix == ".star"})


_EDIT_TOKEN = st.sampled_from(
    ["nan", "inf", "-inf", "1e300", "-1", "0", "0.5", "7", "abc", '""', "None", "1e-300"]
)


@settings(
    max_examples=int(os.environ.get("CRYOREFINE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(choice=st.integers(0, 10**6), line=st.integers(0, 10**6), token=_EDIT_TOKEN)
def test_continue_from_edited_run_files_reads_or_raises_input_error(
    run_files: RunFiles, choice: int, line: int, token: str
) -> None:
    """One value of one run file replaced: ``read_continue`` answers or raises InputError."""
    paths = sorted(run_files)
    path = paths[choice % len(paths)]
    lines = run_files[path].splitlines()
    values = [i for i, text in enumerate(lines) if text and not text.startswith(("#", "data_"))]
    index = values[line % len(values)]
    words = lines[index].split()
    words[(line // len(values)) % len(words)] = token
    lines[index] = " ".join(words)
    path.write_text("\n".join(lines) + "\n")
    optimiser = next(p for p in paths if p.name.endswith("_optimiser.star"))
    try:
        read_continue(optimiser)
    except InputError:
        pass
    finally:
        path.write_text(run_files[path])


# --- 2. a refinement killed at random moments -------------------------------------------


def assert_every_file_is_whole(folder: Path) -> list[str]:
    """Every output parses whole; returns the hidden partial files found (never outputs)."""
    partials = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") and path.name.endswith(".partial"):
            partials.append(path.name)
        elif path.suffix == ".star":
            assert read_star(path), path
        elif path.suffix in (".mrc", ".mrcs"):
            header = read_mrc_header(path)  # raises for a truncated file
            n_voxels = int(np.prod(header.shape))
            assert path.stat().st_size == 1024 + 4 * n_voxels, f"{path}: not whole"
        elif path.suffix == ".bild":  # whole lines of BILD commands
            text = path.read_text()
            assert text == "" or text.endswith("\n"), f"{path}: not whole"
            assert all(line.startswith((".color ", ".cylinder ")) for line in text.splitlines())
        else:  # the log, and the report of a converged run
            assert path.suffix in (".log", ".html", ".png"), f"unexpected file {path}"
    return partials


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kill_continue")
    simulate_dataset(
        SimulationOptions(
            output_dir=folder / "sim",
            symmetry="C6",
            n_particles=16,
            box_size=16,
            pixel_size_angst=9.0,
            data_format="spa",
            seed=3,
        )
    )
    return folder


@pytest.fixture(scope="module")
def uninterrupted(project: Path) -> tuple[list[str], float]:
    """Run once to the end in ``project/whole``: its outputs in the order written, and the
    seconds of its fastest iteration (from the optimiser files' times)."""
    child = _cryorefine(["refine", *REFINE, "--o", "whole/run"], project)
    _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err
    outputs = sorted(
        (p for p in (project / "whole").iterdir() if p.name != "run.log"),
        key=lambda p: p.stat().st_mtime_ns,
    )
    times = [p.stat().st_mtime for p in sorted((project / "whole").glob("run_it*_optimiser.star"))]
    return [p.name for p in outputs], float(np.diff(times).min())


FINAL = 1000  # the "iteration" of the final files (run_class001.mrc...) of a converged run


def _iteration(name: str) -> int:
    """3 of ``run_it003_half1_model.star``; ``FINAL`` for a name without ``_itNNN``."""
    return int(name.split("_it")[1][:3]) if "_it" in name else FINAL


def final_files(folder: Path) -> tuple[list[str], str]:
    """The last maps of a run and its data file: the final ones if it converged (within
    ``ITERATIONS``), else those of its last iteration."""
    if (folder / "run_class001.mrc").exists():
        return ["run_class001.mrc"], "run_data.star"
    root = f"run_it{ITERATIONS:03d}"
    return [f"{root}_half1_class001.mrc", f"{root}_half2_class001.mrc"], f"{root}_data.star"


def _kill_at_random_moment(
    child: subprocess.Popen, target: Path, extra_s: float, started: float
) -> bool:
    """SIGKILL ``child`` ``extra_s`` seconds after it wrote ``target``; False if it ended first."""
    while child.poll() is None:
        if target.exists() and target.stat().st_mtime >= started:
            try:
                child.wait(timeout=extra_s)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                return True
            return False
        time.sleep(0.005)
    return False


@pytest.fixture(scope="module")
def killed_chain(project: Path, uninterrupted: tuple[list[str], float]) -> list[dict]:
    """Run in ``project/killed``, SIGKILL at random moments, continue; returns one row per run.

    A random moment: a random output of the next iteration (as the uninterrupted
    run wrote them; not its very last file), plus a random delay of up to half
    an iteration's time after it appears: during the next writes or the next
    computation. Each kill comes about one iteration further, so the chain
    continues from several iterations. The second kill comes as soon as an
    iteration >= 1 is whole, so that the chain surely continues from an
    iteration after which the random draws of the run matter.
    """
    order, iteration_s = uninterrupted
    rng = random.Random(SEED)
    folder = project / "killed"
    command = ["refine", *REFINE, "--o", "killed/run"]
    runs: list[dict] = []
    last: Path | None = None
    for attempt in range(N_KILLS + 1):
        done = _iteration(last.name) if last else -1
        later = [name for name in order[:-1] if _iteration(name) == done + 1]
        extra_s = rng.uniform(0.0, 0.5 * iteration_s)
        if attempt == 1:  # just after an iteration >= 1 is whole: continued draws must match
            wanted = max(done + 1, 1)
            later = [n for n in order if _iteration(n) == wanted and n.endswith("_data.star")]
            extra_s = 0.0
        target = rng.choice(later) if later and attempt < N_KILLS else None
        started = time.time() - 1.0  # file times may be rounded down to a second
        child = _cryorefine(command, project)
        killed = target is not None and _kill_at_random_moment(
            child, folder / target, extra_s, started
        )
        _, err = child.communicate(timeout=600)
        partials = assert_every_file_is_whole(folder) if folder.is_dir() else []
        last = last_finished_iteration(folder / "run")
        runs.append(
            {
                "command": command,
                "after": target,
                "extra_s": extra_s,
                "killed": killed,
                "partials": partials,
                "continue_from": last,
                "returncode": child.returncode,
                "stderr": err,
            }
        )
        if not killed:
            break
        command = ["refine", "--continue", str(last.relative_to(project))] if last else command
    return runs


def test_every_file_left_by_a_killed_run_is_whole(killed_chain: list[dict]) -> None:
    # assert_every_file_is_whole ran after each kill; here: the kills happened and the
    # chain ended by itself, and a hidden partial file was never taken for an iteration
    assert sum(run["killed"] for run in killed_chain) >= 1, killed_chain
    assert killed_chain[-1]["returncode"] == 0, killed_chain[-1]["stderr"]
    for run in killed_chain:
        if run["continue_from"] is not None:
            assert not run["continue_from"].name.startswith(".")
            read_continue(run["continue_from"])  # what --continue reads is all there


def test_the_chain_writes_the_files_of_the_uninterrupted_run(
    project: Path, killed_chain: list[dict]
) -> None:
    assert killed_chain[-1]["returncode"] == 0, killed_chain[-1]["stderr"]
    whole = {p.name for p in (project / "whole").iterdir() if not p.name.startswith(".")}
    killed = {p.name for p in (project / "killed").iterdir() if not p.name.startswith(".")}
    assert killed == whole
    maps, data = final_files(project / "whole")
    assert {*maps, data} <= whole


def test_continue_after_kills_reaches_the_uninterrupted_map(
    project: Path, killed_chain: list[dict]
) -> None:
    assert killed_chain[-1]["returncode"] == 0, killed_chain[-1]["stderr"]
    maps, data = final_files(project / "whole")
    for name in maps:
        want, _ = read_mrc(project / "whole" / name)
        got, _ = read_mrc(project / "killed" / name)
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=MAP_RTOL * scale, err_msg=name)
    want_data = read_star(project / "whole" / data)["particles"]
    got_data = read_star(project / "killed" / data)["particles"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        # the same sampling points chosen: equal to the 12 digits written
        np.testing.assert_allclose(got_data[label], want_data[label], rtol=1e-11, atol=1e-9)


def test_iter_given_with_continue_replaces_the_runs_iteration_limit(
    project: Path, uninterrupted: tuple[list[str], float]
) -> None:
    # the uninterrupted run (fixed seeds) stops at its limit, which a new --iter raises
    assert not (project / "whole" / "run_class001.mrc").exists()
    shutil.copytree(project / "whole", project / "more")
    last = last_finished_iteration(project / "more" / "run")
    assert last is not None
    assert _iteration(last.name) == ITERATIONS
    more = ["refine", "--continue", str(last.relative_to(project)), "--iter", str(ITERATIONS + 1)]
    child = _cryorefine(more, project)
    _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err
    assert (project / "more" / f"run_it{ITERATIONS + 1:03d}_optimiser.star").exists()
    assert not (project / "more" / f"run_it{ITERATIONS + 2:03d}_optimiser.star").exists()


def test_continue_takes_the_options_relion_lets_a_continuation_change(
    project: Path, uninterrupted: tuple[list[str], float]
) -> None:
    last = last_finished_iteration(project / "whole" / "run")
    assert last is not None
    run = read_continue(last)
    unchanged = continued_options(run, RefineOptions())
    assert unchanged == dataclasses.replace(
        run.options, input_particles=Path(run.data_file), output_root=project / "whole" / "run"
    )
    given = RefineOptions(
        tau2_fudge=2.0, particle_diameter=99.0, iter=7, sym="D2", healpix_order=5,
        output_root=project / "elsewhere" / "run",
    )  # fmt: skip
    changed = continued_options(run, given)
    assert (changed.tau2_fudge, changed.particle_diameter, changed.iter) == (2.0, 99.0, 7)
    assert changed.auto_iter_max == RefineOptions().auto_iter_max
    assert changed.output_root == project / "elsewhere" / "run"
    # not among RELION's continuation options: the run's own
    assert (changed.sym, changed.healpix_order) == (run.options.sym, run.options.healpix_order)


def test_continue_with_a_new_output_root_writes_there(
    project: Path, uninterrupted: tuple[list[str], float]
) -> None:
    # the uninterrupted run (fixed seeds) stops at its limit, which a new --iter raises
    assert not (project / "whole" / "run_class001.mrc").exists()
    last = last_finished_iteration(project / "whole" / "run")
    assert last is not None
    arguments = ["refine", "--continue", str(last.relative_to(project)),
                 "--iter", str(ITERATIONS + 1), "--o", "moved/run"]  # fmt: skip
    child = _cryorefine(arguments, project)
    _, err = child.communicate(timeout=600)
    assert child.returncode == 0, err
    assert (project / "moved" / f"run_it{ITERATIONS + 1:03d}_optimiser.star").exists()
    assert (project / "moved" / "run.log").exists()
    assert not (project / "whole" / f"run_it{ITERATIONS + 1:03d}_optimiser.star").exists()


def test_continue_takes_what_the_command_line_gave_even_a_default_value(
    project: Path, uninterrupted: tuple[list[str], float], caplog: pytest.LogCaptureFixture
) -> None:
    last = last_finished_iteration(project / "whole" / "run")
    assert last is not None
    run = read_continue(last)
    run = dataclasses.replace(
        run,
        options=dataclasses.replace(run.options, tau2_fudge=3.0, auto_ignore_angles=True),
    )
    args = build_parser().parse_args(
        ["refine", "--continue", str(last), "--tau2_fudge", "1", "--sym", "D2"]
    )
    assert args.given_options == {"tau2_fudge", "sym"}
    changed = continued_options(run, options_from_arguments(args), args.given_options)
    assert changed.tau2_fudge == 1.0  # given, although it is the default
    assert changed.auto_ignore_angles is False  # RELION: on only if given again
    assert "--auto_ignore_angles was on in the run and is off now" in caplog.text
    assert changed.sym == run.options.sym
    assert "--sym kept from the run" in caplog.text
    caplog.clear()
    again = build_parser().parse_args(["refine", "--continue", str(last), "--auto_ignore_angles"])
    kept = continued_options(run, options_from_arguments(again), again.given_options)
    assert kept.auto_ignore_angles
    assert "is off now" not in caplog.text


def test_an_offset_sigma_whose_square_overflows_is_named(run_files: RunFiles) -> None:
    """A value that is finite but squares to infinity (hypothesis found 1e300)."""
    path = next(p for p in sorted(run_files) if p.name.endswith("_half1_model.star"))
    lines = [
        "_rlnSigmaOffsetsAngst 1e300" if text.startswith("_rlnSigmaOffsetsAngst") else text
        for text in run_files[path].splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    optimiser = next(p for p in sorted(run_files) if p.name.endswith("_optimiser.star"))
    try:
        with pytest.raises(InputError, match=r"rlnSigmaOffsetsAngst is 1e\+300.*square is finite"):
            read_continue(optimiser)
    finally:
        path.write_text(run_files[path])
