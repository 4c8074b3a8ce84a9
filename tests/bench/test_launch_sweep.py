"""bench/launch_sweep: every combination of a kernel's launch constants, timed and compared."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import launch_sweep


class _Event:
    """A CUDA event stand-in: each timed launch takes the milliseconds ``_Event.next``."""

    next = 0.0

    def __init__(self, enable_timing: bool = False):
        self.at = 0.0

    def record(self):
        self.at = _Event.next

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return end.at


def test_each_combination_is_timed_alone_and_compared_with_the_first(monkeypatch):
    monkeypatch.setattr(launch_sweep.torch.cuda, "Event", _Event)
    monkeypatch.setattr(launch_sweep.torch.cuda, "synchronize", lambda: None)
    out = torch.zeros(3)
    calls = []

    def launch(block, warps):
        if block == 64 and warps == 8:
            raise RuntimeError("out of resources")
        out.add_(torch.tensor([1.0, 2.0, 4.0]) * (1 + 1e-3 * (block == 64)))
        _Event.next = block / warps  # the time this launch "takes"
        calls.append(("launch", block, warps))

    def reset():
        out.zero_()
        calls.append(("reset",))

    grid = {"BLOCK": (32, 64), "num_warps": (4, 8)}
    rows = launch_sweep.sweep(grid, launch, lambda: out, 3, reset)
    assert [(r["BLOCK"], r["num_warps"]) for r in rows] == [(32, 4), (32, 8), (64, 4), (64, 8)]
    assert [r["ms"] for r in rows[:3]] == [8.0, 4.0, 16.0]
    assert rows[3]["error"] == "RuntimeError: out of resources"
    # the first combination is the reference; results read after one launch from a reset
    assert rows[0]["bitwise_same"]
    assert rows[1]["bitwise_same"]
    assert not rows[2]["bitwise_same"]
    assert abs(rows[2]["rel_diff"] - 1e-3) < 1e-6
    # every launch, the compiling one and each of the 3 timed, comes after its own reset
    launches = [i for i, c in enumerate(calls) if c[0] == "launch"]
    assert len(launches) == 3 * 4
    assert all(calls[i - 1] == ("reset",) for i in launches)
