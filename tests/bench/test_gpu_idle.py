"""bench/gpu_idle: the device's idle time charged to the host's innermost range and phase."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_idle


def test_busy_intervals_merge_where_they_touch_or_overlap():
    got = gpu_idle.busy_intervals([(5, 7), (0, 2), (1, 3), (3, 4), (10, 11)])
    assert got == [(0, 4), (5, 7), (10, 11)]


def test_idle_gaps_are_the_span_less_the_busy_intervals():
    busy = [(0, 4), (5, 7), (10, 11)]
    assert gpu_idle.idle_gaps(busy, 2, 12) == [(4, 5), (7, 10), (11, 12)]
    assert gpu_idle.idle_gaps(busy, -3, 1) == [(-3, 0)]
    assert gpu_idle.idle_gaps([], 0, 3) == [(0, 3)]


def test_each_point_goes_to_the_innermost_range_that_holds_it():
    ranges = [(0, 100, "fine"), (10, 40, "fine_sum"), (20, 30, "aten::nonzero"), (50, 60, "x")]
    points = [5, 15, 25, 35, 45, 55, 150]
    got = gpu_idle.innermost(ranges, points)
    assert got == ["fine", "fine_sum", "aten::nonzero", "fine_sum", "fine", "x", None]


def test_idle_time_is_charged_where_the_host_was_and_adds_up():
    # the device works 0-10 and 40-50 us; between, the host sits 10-30 in a sync and
    # 30-40 in Python inside fine_sum; 50-60 is idle between phases' ends
    device = [(0, 10), (40, 50)]
    phases = [(0, 40, "fine_sum"), (40, 60, "insert")]
    host = [*phases, (10, 30, "cudaStreamSynchronize")]
    got = gpu_idle.charge_idle(device, host, phases, step_us=1.0)
    assert got["span_seconds"] == pytest.approx(60e-6)
    assert got["busy_seconds"] == pytest.approx(20e-6)
    assert got["idle_seconds"] == pytest.approx(40e-6)
    assert got["idle_by_host"] == pytest.approx(
        {"cudaStreamSynchronize": 20e-6, "fine_sum": 10e-6, "insert": 10e-6}
    )
    assert got["idle_by_phase"] == pytest.approx({"fine_sum": 30e-6, "insert": 10e-6})
    assert sum(got["idle_by_host"].values()) == pytest.approx(got["idle_seconds"])


def test_gaps_shorter_than_the_step_are_charged_whole():
    # a thousand launch gaps of 15 us with 20 us steps: every microsecond is charged
    device = [(20.0 * i, 20.0 * i + 5.0) for i in range(1000)]
    phases = [(0.0, 20_000.0, "fine_score")]
    # the host is in an operator at each gap's middle
    host = [*phases, *((20.0 * i + 5.0, 20.0 * i + 14.0, "aten::mul") for i in range(1000))]
    got = gpu_idle.charge_idle(device, host, phases, step_us=20.0)
    assert got["idle_seconds"] == pytest.approx(15e-3)
    assert got["idle_by_phase"] == pytest.approx({"fine_score": 15e-3})
    assert got["idle_by_host"] == pytest.approx({"aten::mul": 15e-3})


def test_of_ranges_starting_together_the_shorter_is_innermost():
    ranges = [(0, 10, "inner"), (0, 100, "outer")]
    assert gpu_idle.innermost(ranges, [5, 50]) == ["inner", "outer"]


def test_no_phases_is_refused():
    with pytest.raises(ValueError, match="no phase ranges"):
        gpu_idle.charge_idle([(0, 1)], [], [])


def test_each_kernel_is_charged_whole_to_the_innermost_phase_around_its_middle():
    # fine 0-100 holds fine_sum 10-50; a kernel straddling fine_sum's end goes where its
    # middle is; one outside every phase is charged between phases
    phases = [(0, 100, "fine"), (10, 50, "fine_sum")]
    kernels = [(12, 20, "gemm"), (30, 34, "abs"), (45, 65, "gemm"), (60, 70, "abs")]
    kernels.append((200, 201, "x"))
    got = gpu_idle.charge_busy(kernels, phases)
    assert list(got) == ["fine", "fine_sum", "(between phases)"]  # largest first
    assert got["fine_sum"] == pytest.approx({"gemm": 8e-6, "abs": 4e-6})
    assert got["fine"] == pytest.approx({"gemm": 20e-6, "abs": 10e-6})
    assert got["(between phases)"] == pytest.approx({"x": 1e-6})
    lines = gpu_idle.busy_table(got, kernels=1).splitlines()
    assert lines[1:4] == ["     0.000  fine", "         0.000  gemm", "     0.000  fine_sum"]
