"""Progress on a terminal is one redrawn line per bar; everywhere else plain log lines."""

import io
import logging
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cryorefine.refine.e_step as e_step
from cryorefine.cli.main import main
from cryorefine.cli.progress import (
    ERASE_LINE,
    TerminalHandler,
    bar_text,
    duration_text,
    log_file,
)
from cryorefine.errors import InputError


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough for every bar here (the width test sets its own)."""
    monkeypatch.setenv("COLUMNS", "200")


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """The lines a terminal shows after ``text``: ERASE_LINE empties the current line."""
    lines, current = [], ""
    for index, piece in enumerate(text.split(ERASE_LINE)):
        if index > 0:
            current = ""
        *finished, current_tail = (current + piece).split("\n")
        lines.extend(finished)
        current = current_tail
    assert "\r" not in "".join(lines) + current, "a carriage return outside ERASE_LINE"
    return [*lines, current] if current else lines


def progress_record(done: int, total: int, *, half_set: int = 1) -> logging.LogRecord:
    progress = {
        "iteration": 3,
        "half_set": half_set,
        "phase": "E-step",
        "done": done,
        "total": total,
        "particles_per_second": 85.2,
        "eta_seconds": (total - done) / 85.2,
    }
    message = f"iter=003 half_set={half_set} phase=e_step particles={done}/{total}"
    return logging.makeLogRecord(
        {"name": "cryorefine.refine.e_step", "levelno": logging.INFO, "levelname": "INFO",
         "msg": message, "progress": progress}
    )  # fmt: skip


def plain_record(message: str) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "cryorefine", "levelno": logging.INFO, "levelname": "INFO", "msg": message}
    )


#: Two bars (halves 1 and 2 of iteration 3) with an ordinary line between them.
RECORDS = [
    progress_record(100, 1000),
    progress_record(512, 1000),
    progress_record(900, 1000),
    plain_record("iter=003 half_set=1 particles=1000 e_step_seconds=11.7"),
    progress_record(300, 1000, half_set=2),
    progress_record(700, 1000, half_set=2),
]


def handled(stream: io.StringIO, records: list[logging.LogRecord]) -> str:
    handler = TerminalHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for record in records:
        handler.handle(record)
    handler.close()
    return stream.getvalue()


def test_bar_text_of_the_example() -> None:
    # 512/1000 of 20 characters is 10.24: 10 filled; 488 / 85.2 = 5.7 s left, shown as 6 s.
    got = bar_text(progress_record(512, 1000).progress)  # type: ignore[attr-defined]
    assert got == "iteration 3 half 1 E-step [##########..........] 512/1000 particles 85/s ETA 6 s"


@given(total=st.integers(1, 10**6), share=st.floats(0.0, 1.0), width=st.integers(1, 60))
def test_bar_fills_its_share_of_the_width(total: int, share: float, width: int) -> None:
    done = round(share * total)
    text = bar_text({"done": done, "total": total}, width=width)
    inside = text[text.index("[") + 1 : text.index("]")]
    assert len(inside) == width
    assert inside == "#" * inside.count("#") + "." * inside.count(".")
    # round() of the exact share; |error| <= 1/2 character
    assert abs(inside.count("#") - done / total * width) <= 0.5
    assert text.endswith(f"] {done}/{total} particles")


def test_bar_of_no_particles_is_empty_not_a_division_by_zero() -> None:
    assert bar_text({"done": 0, "total": 0}, width=4) == "[....] 0/0 particles"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (5.7, "6 s"), (59.4, "59 s"), (125.0, "2 min 05 s"), (3720.0, "1 h 02 min"),
     (float("inf"), "?"), (float("nan"), "?"), (-1.0, "?")],
)  # fmt: skip
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_on_a_terminal_each_bar_is_redrawn_and_leaves_exactly_one_line() -> None:
    out = handled(FakeTerminal(), RECORDS)
    assert out.count(ERASE_LINE) == 5  # one redraw per progress record
    assert out.count("\r") == 5  # and no other carriage return
    assert screen(out) == [
        bar_text(RECORDS[2].progress),  # type: ignore[attr-defined]
        "iter=003 half_set=1 particles=1000 e_step_seconds=11.7",
        bar_text(RECORDS[5].progress),  # type: ignore[attr-defined]
    ]
    assert out.endswith("\n")  # closing the handler ends the last bar's line


def test_a_new_bar_ends_the_line_of_the_previous_one() -> None:
    out = handled(FakeTerminal(), [progress_record(1, 4), progress_record(2, 4, half_set=2)])
    assert screen(out) == [
        bar_text(progress_record(1, 4).progress),  # type: ignore[attr-defined]
        bar_text(progress_record(2, 4, half_set=2).progress),  # type: ignore[attr-defined]
    ]


def test_not_a_terminal_gives_one_plain_line_per_record() -> None:
    out = handled(io.StringIO(), RECORDS)
    assert "\r" not in out
    assert "\x1b" not in out
    assert out.splitlines() == [record.getMessage() for record in RECORDS]


def test_bar_is_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # A line longer than the terminal wraps, and '\r' then redraws only its last part.
    monkeypatch.setenv("COLUMNS", "30")
    out = handled(FakeTerminal(), RECORDS[:2])
    assert screen(out) == [bar_text(RECORDS[1].progress)[:29]]  # type: ignore[attr-defined]


def test_run_log_keeps_plain_lines_while_the_terminal_shows_the_bar(tmp_path: Path) -> None:
    logger = logging.getLogger("test_progress.run_log")  # not under "cryorefine": no stderr
    terminal = FakeTerminal()
    handler = TerminalHandler(terminal)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with log_file(tmp_path / "run.log", logger_name="test_progress.run_log"):
            for record in RECORDS:
                logger.handle(record)
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = (tmp_path / "run.log").read_text().splitlines()
    # "YYYY-MM-DD HH:MM:SS " then the message, one line per record
    assert [line[20:] for line in lines] == [record.getMessage() for record in RECORDS]
    assert ERASE_LINE in terminal.getvalue()
    assert not logger.handlers  # log_file removed its handler


def test_the_e_step_progress_record_carries_what_the_bar_draws(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(e_step, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(e_step.time, "perf_counter", lambda: 10.0)
    caplog.set_level(logging.INFO, logger="cryorefine.refine.e_step")
    progress = e_step._progress_lines(3, 2, start=8.0)
    progress(40, 100)  # 2 s after the start: 20 particles/s, 60 left -> 3 s
    (record,) = caplog.records
    assert record.progress == {  # type: ignore[attr-defined]
        "iteration": 3, "half_set": 2, "phase": "E-step", "done": 40, "total": 100,
        "particles_per_second": 20.0, "eta_seconds": 3.0,
    }  # fmt: skip
    assert bar_text(record.progress) == (  # type: ignore[attr-defined]
        "iteration 3 half 2 E-step [########............] 40/100 particles 20/s ETA 3 s"
    )


def test_an_error_after_an_unfinished_bar_starts_a_line_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def bar_then_error(folder: Path, **options: object) -> None:
        logging.getLogger("cryorefine.refine.e_step").handle(progress_record(5, 10))
        raise InputError("particles.star: row 3: rlnImageName is empty")

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr("cryorefine.cli.demo.run_demo", bar_then_error)
    assert main(["demo", "--o", str(tmp_path)]) == 2
    assert screen(terminal.getvalue()) == [
        bar_text(progress_record(5, 10).progress),  # type: ignore[attr-defined]
        "cryorefine demo: error: particles.star: row 3: rlnImageName is empty",
    ]
