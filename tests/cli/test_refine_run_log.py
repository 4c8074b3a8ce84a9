"""`refine`'s run.log holds its own run only, even when several runs share a process."""

import logging
from pathlib import Path

from cryorefine.cli.refine import _run_log


def test_the_run_log_stops_with_its_run(tmp_path: Path) -> None:
    package = logging.getLogger("cryorefine")
    level = package.level
    package.setLevel(logging.INFO)
    try:
        engine = logging.getLogger("cryorefine.refine.driver")
        with _run_log(tmp_path / "first" / "run.log"):
            engine.info("iteration of the first run")
        with _run_log(tmp_path / "second" / "run.log"):
            engine.info("iteration of the second run")
    finally:
        package.setLevel(level)
    first = (tmp_path / "first" / "run.log").read_text()
    second = (tmp_path / "second" / "run.log").read_text()
    assert "first run" in first
    assert "second run" not in first
    assert "second run" in second
