"""Long E-steps say how far they are: particles done, particles per second, time left."""

import logging
import re

import pytest

from cryorefine.refine import e_step


def test_progress_lines_give_particles_rate_and_time_left(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(e_step, "PROGRESS_INTERVAL_S", 0.0)
    clock = iter([10.0, 12.0])  # 2 s after the start at 8 s: 40 of 100 particles done
    monkeypatch.setattr(e_step.time, "perf_counter", lambda: next(clock))
    progress = e_step._progress_lines(3, 2, start=8.0)
    with caplog.at_level(logging.INFO, logger=e_step.logger.name):
        progress(40, 100)  # at 10 s: 20 particles/s, 60 left -> 3 s
        progress(100, 100)  # done: the half set's own summary line says the rest
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert re.fullmatch(
        r"iter=003 half_set=2 phase=e_step particles=40/100 particles_per_second=20\.0 "
        r"eta_seconds=3",
        lines[0],
    )


def test_progress_lines_are_spaced_by_the_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = iter([1.0, 2.0, 12.0])
    monkeypatch.setattr(e_step.time, "perf_counter", lambda: next(clock))
    progress = e_step._progress_lines(1, 1, start=0.0)
    with caplog.at_level(logging.INFO, logger=e_step.logger.name):
        for done in (10, 20, 30):
            progress(done, 100)
    assert len(caplog.records) == 1  # only the call 12 s after the start
    assert "particles=30/100" in caplog.records[0].getMessage()
