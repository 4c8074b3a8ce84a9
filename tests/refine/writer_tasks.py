"""Writes run by the writing process in ``test_writer_process`` (``refine.writer_process``).

The process imports this module to unpickle a task: it holds what the tasks need and
imports the standard library only, so that a test's process starts in a fraction of a
second instead of importing torch.
"""

import logging
import os
import signal
import time
from pathlib import Path


def log_line(path: str, text: str) -> None:
    with open(path, "a") as lines:
        lines.write(f"{text} {os.getpid()}\n")


def slow_write(path: str, number: int) -> None:
    log_line(path, f"start {number}")
    time.sleep(0.05)
    log_line(path, f"end {number}")


def failing_write() -> None:
    raise OSError(28, "No space left on device", "run_it004_data.star")


def logging_write(text: str, level: int) -> None:
    logging.getLogger("cryorefine.refine.run_files").log(level, "%s, in %d", text, os.getpid())


def relative_write(name: str, text: str) -> None:
    Path(name).write_text(text)


class Unrebuildable(Exception):
    def __init__(self, path: str, *, reason: str) -> None:
        super().__init__(f"{path}: {reason}")  # pickle calls the class with the message only


def unrebuildable_write() -> None:
    raise Unrebuildable("run_it004_half1_model.star", reason="a column is missing")


def interrupted_write(path: str) -> None:
    os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C in the terminal reaches the writer too
    time.sleep(0.1)
    Path(path).write_text("whole")


def printing_write(path: str) -> None:
    print("a stray line")  # noqa: T201 (what is tested)
    os.write(1, b"bytes from C\n")
    Path(path).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))


def dying_write() -> None:
    os._exit(3)
