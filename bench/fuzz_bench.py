"""A longer fuzz of the readers and of every command's options, with counts per outcome.

    python3 bench/fuzz_bench.py [--examples 2000] [--option_examples 300] \\
        [--seed 0] [--out bench_fuzz.json]

Runs the strategies and targets of ``tests/io/test_fuzz_readers.py`` (STAR text
from the grammar, an edited particles file, arbitrary bytes as STAR; an edited
MRC header, arbitrary bytes as MRC) and of ``tests/cli/test_fuzz_options.py``
(command lines of each command, engines stubbed) for many more examples than
CI does, and counts the outcomes: ``result``/``ok``, ``input_error``,
``reached_the_engine``, ``known_defect`` (command lines left out, as in the
test) and ``crash`` (any other exception, a hang included: the watchdogs
raise). Reader counts are per reader call (three readers per STAR input, four
per MRC input); option counts are per command line. A crash is printed with its
input and the script exits with status 1. One table row per target, then the
same as JSON.
"""

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "io"), str(REPO / "tests" / "cli")]

readers = importlib.import_module("test_fuzz_readers")
options = importlib.import_module("test_fuzz_options")
bad_commands = importlib.import_module("test_bad_commands")

Crashes = list[dict[str, str]]


def _settings(examples: int, seed: int) -> Callable:
    """Hypothesis settings of a long run: ``examples``, no deadline, no database, ``seed``."""
    configured = settings(
        max_examples=examples,
        deadline=None,  # the targets' watchdogs catch hangs
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    return lambda test: hypothesis_seed(seed)(configured(test))


def _count(counts: Counter, crashes: Crashes, what: str, run: Callable[[], object]) -> None:
    try:
        result = run()
    except Exception as error:  # a crash: counted and reported, the fuzz goes on
        counts["crash"] += 1
        where = traceback.extract_tb(error.__traceback__)[-3:]
        crashes.append(
            {
                "input": what,
                "error": "".join(traceback.format_exception_only(error)).strip(),
                "where": " <- ".join(f"{f.filename}:{f.lineno}" for f in reversed(where)),
            }
        )
        return
    for item in result if isinstance(result, tuple) else (result,):
        counts[str(item)] += 1


def _fuzz(
    strategy: st.SearchStrategy, target: Callable[[object], object], examples: int, seed: int
) -> tuple[Counter, Crashes]:
    """Draw ``examples`` inputs from ``strategy``; count the outcomes of ``target(input)``."""
    counts: Counter = Counter()
    crashes: Crashes = []

    @_settings(examples, seed)
    @given(value=strategy)
    def run(value: object) -> None:
        _count(counts, crashes, repr(value)[:300], lambda: target(value))

    run()
    return counts, crashes


def fuzz_star(examples: int, seed: int, folder: Path) -> dict[str, tuple[Counter, Crashes]]:
    """The STAR readers on grammar text, edited particles files and arbitrary bytes."""
    project = folder / "star"
    (project / "Extract").mkdir(parents=True)
    stack = readers.valid_mrc_bytes()  # 3 images of 8 x 8 at 1.5 A, as VALID_STAR names
    (project / "Extract" / "particles.mrcs").write_bytes(stack)

    def target(content: object) -> tuple[str, ...]:
        assert isinstance(content, str | bytes)
        return readers.star_outcomes(readers.write_star_input(project, content))

    return {
        name: _fuzz(strategy, target, examples, seed)
        for name, strategy in (
            ("star: grammar text", readers._GRAMMAR_STAR),
            ("star: edited particles file", readers._MUTATED_STAR),
            ("star: arbitrary bytes", st.binary(max_size=2048)),
        )
    }


def fuzz_mrc(examples: int, seed: int, folder: Path) -> dict[str, tuple[Counter, Crashes]]:
    """The MRC readers on edited headers and arbitrary bytes."""
    path = folder / "fuzz.mrc"

    def target(value: object) -> tuple[str, ...]:
        content, index = value  # type: ignore[misc]
        path.write_bytes(content)
        return readers.mrc_outcomes(path, index)

    edited = readers._MRC_EDITS.map(lambda e: readers.edit_mrc(readers.valid_mrc_bytes(), e))
    return {
        name: _fuzz(st.tuples(strategy, st.integers(1, 4)), target, examples, seed)
        for name, strategy in (
            ("mrc: edited header", edited),
            ("mrc: arbitrary bytes", st.binary(max_size=4096)),
        )
    }


def fuzz_options(examples: int, seed: int, folder: Path) -> dict[str, tuple[Counter, Crashes]]:
    """Every command's options, engines stubbed (tests/cli/test_fuzz_options.py)."""
    project = bad_commands.build_project(folder / "project")
    (project.folder / "not_star.txt").write_text("hello\n")
    (project.folder / "fuzz").mkdir()
    stderr = io.StringIO()

    def read_stderr() -> str:
        text = stderr.getvalue()
        stderr.seek(0)
        stderr.truncate()
        return text

    def target(argv: object) -> str:
        assert isinstance(argv, list)
        if options.known_defect(argv):
            return "known_defect"
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            return options.outcome(argv, read_stderr)

    saved = []
    for module, name, stub in options.ENGINE_STUBS:
        where = importlib.import_module(module)
        saved.append((where, name, getattr(where, name)))
        setattr(where, name, stub)
    cwd = Path.cwd()
    os.chdir(project.folder / "fuzz")
    try:
        return {
            f"options: {command}": _fuzz(
                options.command_lines(command, project), target, examples, seed
            )
            for command in sorted(options.COMMANDS)
        }
    finally:
        os.chdir(cwd)
        for where, name, value in saved:
            setattr(where, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per reader target")
    parser.add_argument("--option_examples", type=int, default=300, help="examples per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", default=["star", "mrc", "options"])
    parser.add_argument("--out", default="bench_fuzz.json")
    args = parser.parse_args()
    logging.getLogger("cryorefine.io").setLevel(logging.ERROR)  # oversize-MRC warnings: noise here
    rows = []
    all_crashes: Crashes = []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        for fuzz, examples in (
            (fuzz_star, args.examples),
            (fuzz_mrc, args.examples),
            (fuzz_options, args.option_examples),
        ):
            if fuzz.__name__.removeprefix("fuzz_") not in args.targets:
                continue
            start = time.perf_counter()
            results = fuzz(examples, args.seed, folder)
            seconds = time.perf_counter() - start
            for name, (counts, crashes) in results.items():
                rows.append({"target": name, "seconds": seconds / len(results), **counts})
                all_crashes += crashes
    columns = [
        "target",
        "result",
        "ok",
        "input_error",
        "reached_the_engine",
        "known_defect",
        "crash",
        "seconds",
    ]
    lines = [" | ".join(columns)]
    for row in rows:
        cells = [row.get(c, 0) for c in columns]
        lines.append(" | ".join(f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells))
    sys.stdout.write("\n".join(lines) + "\n")
    for crash in all_crashes[:20]:
        sys.stdout.write(f"CRASH {crash['input']}: {crash['error']} at {crash['where']}\n")
    Path(args.out).write_text(json.dumps({"rows": rows, "crashes": all_crashes}, indent=1))
    raise SystemExit(1 if all_crashes else 0)


if __name__ == "__main__":
    main()
