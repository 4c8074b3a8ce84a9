"""Fuzzing every command's options: any command line gives a result or a clean error, never a crash.

For each command, hypothesis draws command lines from the command's own options
(``add_arguments``): each option with a value of its kind (whole numbers, numbers
including nan and inf, names from a pool of paths: the valid project of
``test_bad_commands``, missing files, folders, a file that is not STAR or MRC;
outputs only under a scratch folder, so that no example overwrites the
project's inputs), junk values, unknown options and stray words, on top of a
valid command line or alone. ``cryorefine.cli.main.main`` runs it in process;
the outcome is:

``"ok"``
    status 0 (the command did its work, or printed its help);
``"input_error"``
    status 2 with one ``cryorefine ...: error: ...`` line last on stderr;
``"reached_the_engine"``
    the options were accepted and checked, and the command called its engine,
    which is replaced here by a stub (refine: ``refine_run`` after
    ``load_inputs``; simulate, demo, report: their one call) so that an example
    costs milliseconds, not a refinement.

Anything else (an exception, another status, a hang past ``HANG_SECONDS``)
fails. Command lines that hit a defect already listed in ``test_bad_commands.NEEDS``
are left out (``known_defect``) until it is fixed there.

CI runs ``FUZZ_EXAMPLES`` examples per command; ``bench/fuzz_bench.py`` runs the
same strategies longer and counts the outcomes.
"""

import argparse
import importlib
import logging
import os
import shlex
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_bad_commands import Project, build_project, write_map

from cryorefine.cli.main import COMMANDS, main
from cryorefine.errors import InputError
from cryorefine.refine.initialise import load_inputs
from cryorefine.refine.model import initial_refine_state

#: Examples per command in CI; bench/fuzz_bench.py raises it through the environment.
FUZZ_EXAMPLES = int(os.environ.get("CRYOREFINE_FUZZ_EXAMPLES", "25"))

#: An example works on a 16^3 box and 8 particles; anything past this is a hang.
HANG_SECONDS = 60.0

_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # a shared CI machine makes wall-clock deadlines flaky; the watchdog bounds
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class ReachedTheEngine(Exception):
    """The command accepted its options and called its engine (stubbed here)."""


# --- the options of each command, as strategies -----------------------------------------


def command_actions(command: str) -> list[argparse.Action]:
    """The options ``add_arguments`` of ``command`` declares (``--debug`` and help aside)."""
    parser = argparse.ArgumentParser(add_help=False)
    importlib.import_module(f"cryorefine.cli.{COMMANDS[command]}").add_arguments(parser)
    return list(parser._actions)


_JUNK = st.sampled_from(["", "-", "--", "x", "nan", "-inf", "1e999", "0x1f", "1,5", "١", "é", " "])
_INT = st.one_of(st.integers(-3, 6), st.sampled_from(["0", "-1", "2.5", "1e3", "two"]))
_FLOAT = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False).map(repr),
    st.sampled_from(["0", "-0.0", "nan", "inf", "-inf", "1e-300", "1e300", "5", "40", "120"]),
)


def _paths(project: Project) -> st.SearchStrategy[str]:
    folder = project.folder
    return st.sampled_from(
        [
            str(project.star),
            project.path("reference.mrc"),
            project.path("mask.mrc"),
            project.path("run_half1_class001_unfil.mrc"),
            project.path("fuzz/run_it001_optimiser.star"),
            str(folder / "missing.star"),
            str(folder / "missing.mrc"),
            str(folder / "Extract"),
            str(folder / "not_star.txt"),
            "",
            "C6",
        ]
    )


def _outputs(project: Project) -> st.SearchStrategy[str]:
    """Output names: under ``fuzz/``, or a folder or junk file; never an input of the project."""
    return st.sampled_from(
        [
            project.path("fuzz/out"),
            project.path("fuzz/out.mrc"),
            project.path("fuzz/new/out.star"),
            project.path("fuzz"),
            project.path("not_star.txt") + "/out",
            "",
        ]
    )


def _value(action: argparse.Action, project: Project) -> st.SearchStrategy[str]:
    if "--o" in action.option_strings:
        return st.one_of(_outputs(project), _JUNK)
    if action.choices is not None:
        return st.one_of(st.sampled_from([str(c) for c in action.choices]), _JUNK)
    kind = action.type
    if kind is int:  # mostly values of the right kind, so that lines get past argparse
        return st.one_of(_INT.map(str), _INT.map(str), _INT.map(str), _JUNK)
    if kind is float:
        return st.one_of(_FLOAT, _FLOAT, _FLOAT, _JUNK)
    return st.one_of(
        _paths(project), _paths(project), st.sampled_from(["C1", "C6", "D2", "I", "X9"]), _JUNK
    )


def _option(action: argparse.Action, project: Project) -> st.SearchStrategy[list[str]]:
    flag = st.sampled_from(action.option_strings or ["RUN_ROOT"])
    nargs = action.nargs
    if nargs == 0:
        count: st.SearchStrategy[int] = st.just(0)
    elif nargs == "?":
        count = st.integers(0, 1)
    elif isinstance(nargs, int):
        count = st.sampled_from([nargs, nargs, 1, 0])  # mostly right, sometimes short
    else:
        count = st.sampled_from([1, 1, 1, 0, 2])
    values = count.flatmap(lambda n: st.lists(_value(action, project), min_size=n, max_size=n))
    if not action.option_strings:  # a positional argument: its value alone
        return values
    return st.tuples(flag, values).map(lambda fv: [fv[0], *fv[1]])


def valid_command_line(command: str, project: Project) -> list[str]:
    """A command line that does its work (before the engine, for the stubbed commands)."""
    out = project.path(f"fuzz/{command}")
    return {
        "refine": [
            "--i",
            str(project.star),
            "--ref",
            project.path("reference.mrc"),
            "--o",
            f"{out}/run",
            "--particle_diameter",
            "120",
            "--healpix_order",
            "0",
        ],
        "reconstruct": ["--i", str(project.star), "--o", f"{out}.mrc"],
        "postprocess": ["--i", project.path("run_half1_class001_unfil.mrc"), "--o", out],
        "star-handler": ["--i", str(project.star), "--o", f"{out}.star", "--center"],
        "image-handler": [
            *("--i", project.path("reference.mrc"), "--o", f"{out}.mrc", "--new_box", "12")
        ],
        "simulate": ["--o", out, "--box", "16", "--n_particles", "2"],
        "report": [out],
        "demo": ["--o", out],
        "extract": [],
    }[command]


def command_lines(command: str, project: Project) -> st.SearchStrategy[list[str]]:
    """Random command lines of ``command`` (module docstring)."""
    actions = [a for a in command_actions(command) if a.dest not in ("help", "debug")]
    stray = st.one_of(
        st.sampled_from(["--no_such_option", "--i=x", "-x", "--", "--help", "--debug"]).map(
            lambda token: [token]
        ),
        _JUNK.map(lambda token: [token]),
    )
    options = st.sampled_from(actions).flatmap(lambda a: _option(a, project)) if actions else stray
    pieces = st.lists(st.one_of(options, options, options, stray), max_size=6)
    base = st.sampled_from([valid_command_line(command, project)] * 3 + [[]])
    return st.tuples(base, pieces).map(
        lambda bp: [command, *bp[0], *(token for piece in bp[1] for token in piece)]
    )


# --- what counts as a known defect (listed in test_bad_commands.NEEDS) --------------------


def _values_of(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == flag]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def known_defect(argv: list[str]) -> bool:
    """A command line that reaches a defect listed in ``test_bad_commands.NEEDS``."""
    command = argv[0]
    if command == "reconstruct":  # --batch_size <= 0; --maxres <= 0 or coarser than 2 shells
        batch = [_number(v) for v in _values_of(argv, "--batch_size")][-1:]
        maxres = [_number(v) for v in _values_of(argv, "--maxres")][-1:]
        return any(v is not None and v <= 0 for v in batch) or any(
            v is not None and not 0 < v < 72 for v in maxres
        )
    if command == "postprocess":  # --angpix inf or nan
        angpix = [_number(v) for v in _values_of(argv, "--angpix")][-1:]
        return any(v is not None and not np.isfinite(v) for v in angpix)
    if command == "star-handler" and "--combine" in argv:
        for value in _values_of(argv, "--i"):
            try:
                shlex.split(value)
            except ValueError:
                return True
    return False


# --- running one command line ------------------------------------------------------------


@contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stub_refine_run(options, *, device, **kwargs):
    """``refine_run`` up to its first iteration's inputs: options checked, files read."""
    if kwargs.get("continue_from") is None:
        inputs = load_inputs(options, device=device)
        initial_refine_state(
            options, ori_size=inputs.ori_size, pixel_size_angst=inputs.pixel_size_angst
        )
    raise ReachedTheEngine("refine")


def _reached(name: str) -> Callable[..., None]:
    def stub(*args: object, **kwargs: object) -> None:
        raise ReachedTheEngine(name)

    return stub


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    built = build_project(tmp_path_factory.mktemp("fuzz_options"))
    (built.folder / "not_star.txt").write_text("hello\n")
    (built.folder / "fuzz").mkdir()
    write_map(built.folder / "fuzz" / "empty.mrc", np.zeros((2, 2, 2)))
    return built


#: (module, attribute, stub): the engines replaced while fuzzing (module docstring).
ENGINE_STUBS = [
    ("cryorefine.refine.driver", "refine_run", _stub_refine_run),
    ("cryorefine.cli.simulate", "simulate_dataset", _reached("simulate")),
    ("cryorefine.cli.demo", "run_demo", _reached("demo")),
    ("cryorefine.cli.report", "write_report", _reached("report")),
]


@pytest.fixture
def engines_stubbed(monkeypatch: pytest.MonkeyPatch, project: Project) -> None:
    monkeypatch.chdir(project.folder / "fuzz")  # default outputs land here
    for module, name, stub in ENGINE_STUBS:
        monkeypatch.setattr(importlib.import_module(module), name, stub)


def outcome(argv: list[str], read_stderr: Callable[[], str]) -> str:
    """Run ``cryorefine ARGV`` in process and sort the outcome (module docstring).

    ``read_stderr`` returns what was written to stderr since it was last called.
    """
    root = logging.getLogger("cryorefine")
    handlers = list(root.handlers)
    try:
        with watchdog():
            status = main(argv)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 2
    except ReachedTheEngine:
        return "reached_the_engine"
    except InputError:
        assert "--debug" in argv, argv  # --debug raises the input error, with its traceback
        return "input_error"
    finally:
        for handler in set(root.handlers) - set(handlers):  # refine's run.log handler
            root.removeHandler(handler)
            handler.close()
    lines = read_stderr().strip().splitlines()
    if status == 0:
        return "ok"
    assert status == 2, (argv, status, lines[-3:])
    assert lines, (argv, status)
    assert ": error: " in lines[-1], (argv, lines[-3:])
    return "input_error"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_valid_command_line_passes_its_checks(
    command: str, project: Project, engines_stubbed: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # the fuzzed lines build on these: they must get past the checks, to the work
    expected = {"extract": "input_error", "reconstruct": "ok", "postprocess": "ok"}
    expected["star-handler"] = expected["image-handler"] = "ok"  # the others: stubbed engines
    argv = [command, *valid_command_line(command, project)]
    result = outcome(argv, lambda: capsys.readouterr().err)
    assert result == expected.get(command, "reached_the_engine")


@pytest.mark.parametrize("command", sorted(COMMANDS))
@_SETTINGS
@given(data=st.data())
def test_any_command_line_gives_a_result_or_one_error_line(
    command: str,
    project: Project,
    engines_stubbed: None,
    capsys: pytest.CaptureFixture[str],
    data: st.DataObject,
) -> None:
    argv = data.draw(command_lines(command, project), label="argv")
    assume(not known_defect(argv))
    result = outcome(argv, lambda: capsys.readouterr().err)
    assert result in ("ok", "input_error", "reached_the_engine")
