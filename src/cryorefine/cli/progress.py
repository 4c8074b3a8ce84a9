"""Log lines on the terminal, with progress records drawn as one redrawn bar.

The layers report progress as ordinary INFO records whose ``extra`` holds a
``progress`` mapping (``refine.e_step`` logs one every few seconds of an
E-step)::

    logger.info("iter=003 half_set=1 phase=e_step particles=512/1000 ...",
                extra={"progress": {"iteration": 3, "half_set": 1, "phase": "E-step",
                                    "done": 512, "total": 1000,
                                    "particles_per_second": 85.2, "eta_seconds": 5.7}})

``TerminalHandler`` writes every record to the current ``sys.stderr`` (or the
stream it was given). When that stream is a terminal, a progress record is drawn
as one line that the next record of the same bar redraws in place (``'\\r'`` and
ANSI erase-line), e.g.
``iteration 3 half 1 E-step [##########..........] 512/1000 particles 85/s ETA 6 s``;
any other record first ends the bar's line, so each bar leaves exactly one line
on the screen. When the stream is not a terminal (a batch job, a pipe, a file),
every record, progress included, is its plain ``key=value`` line, as in
``run.log``: the file handlers never see the bar.
"""

import io
import logging
import math
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ERASE_LINE", "TerminalHandler", "bar_text", "duration_text", "log_file"]

#: Carriage return, then ANSI "erase the whole line": the start of every redraw.
ERASE_LINE = "\r\x1b[2K"

#: Characters of the bar between its brackets.
BAR_WIDTH = 20


def duration_text(seconds: float) -> str:
    """A time as a person reads it: ``6 s``, ``2 min 05 s``, ``1 h 02 min``; ``?`` if unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _rate_text(per_second: float) -> str:
    if not math.isfinite(per_second) or per_second < 0:
        return "?/s"
    return f"{per_second:.0f}/s" if per_second >= 10 else f"{per_second:.1f}/s"


def bar_text(progress: Mapping[str, Any], *, width: int = BAR_WIDTH) -> str:
    """The one-line picture of a progress record (module docstring).

    Parameters
    ----------
    progress
        ``done`` and ``total`` (particles), and optionally ``iteration``,
        ``half_set``, ``phase``, ``particles_per_second`` and ``eta_seconds``.
    width
        Characters between the brackets; ``#`` for the share done, ``.`` for the rest.
    """
    done, total = int(progress["done"]), int(progress["total"])
    fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    filled = round(fraction * width)
    words = []
    if "iteration" in progress:
        words.append(f"iteration {progress['iteration']}")
    if "half_set" in progress:
        words.append(f"half {progress['half_set']}")
    if "phase" in progress:
        words.append(str(progress["phase"]))
    words.append(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} particles")
    if "particles_per_second" in progress:
        words.append(_rate_text(float(progress["particles_per_second"])))
    if "eta_seconds" in progress:
        words.append(f"ETA {duration_text(float(progress['eta_seconds']))}")
    return " ".join(words)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _bar_identity(progress: Mapping[str, Any]) -> tuple[Any, ...]:
    """Records with the same identity redraw one bar; a new identity starts a new line."""
    return (progress.get("iteration"), progress.get("half_set"), progress.get("phase"))


class TerminalHandler(logging.Handler):
    """Write log records to a stream, drawing progress records as a redrawn bar on a terminal.

    Parameters
    ----------
    stream
        Where the lines go; ``None`` (the default): whatever ``sys.stderr`` is at
        each record, so that one handler serves every call of ``cli.main.main`` in
        a process (tests, notebooks), each with its own ``sys.stderr``.
    """

    def __init__(self, stream: io.TextIOBase | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._bar_stream: Any = None  # the stream an unfinished bar line is on
        self._bar: tuple[Any, ...] | None = None

    @property
    def stream(self) -> Any:
        """The stream records are written to now."""
        return sys.stderr if self._stream is None else self._stream

    def emit(self, record: logging.LogRecord) -> None:
        """Draw a progress record as the bar (on a terminal), anything else as a line."""
        try:
            stream = self.stream
            progress = getattr(record, "progress", None)
            if isinstance(progress, Mapping) and _is_terminal(stream):
                identity = _bar_identity(progress)
                if self._bar is not None and (
                    self._bar != identity or self._bar_stream is not stream
                ):
                    self.end_bar()
                stream.write(ERASE_LINE + self._fitted(bar_text(progress)))
                stream.flush()
                self._bar, self._bar_stream = identity, stream
                return
            self.end_bar()
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)

    def end_bar(self) -> None:
        """End the line of an unfinished bar (nothing if there is none)."""
        self.acquire()  # re-entrant: emit holds it already
        try:
            if self._bar is None:
                return
            stream, self._bar, self._bar_stream = self._bar_stream, None, None
            if stream is self.stream:  # a stream given up since (an old sys.stderr): left alone
                stream.write("\n")
                stream.flush()
        finally:
            self.release()

    def close(self) -> None:
        """End an unfinished bar, then close as any handler does."""
        self.end_bar()
        super().close()

    @staticmethod
    def _fitted(text: str) -> str:
        """``text`` cut to the terminal's width: a wrapped line cannot be redrawn by ``'\\r'``."""
        columns = shutil.get_terminal_size(fallback=(80, 24)).columns
        return text if len(text) < columns else text[: max(columns - 1, 1)]


@contextmanager
def log_file(path: Path, *, logger_name: str = "cryorefine") -> Iterator[logging.Handler]:
    """Copy INFO records of ``logger_name`` as plain lines into ``path`` while the block runs.

    Each line is ``YYYY-MM-DD HH:MM:SS MESSAGE``, as ``cryorefine refine`` writes
    ``run.log`` (which ``report.read_run_log`` reads); progress records are plain
    lines there too. The file is appended to; its folder must exist.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()
