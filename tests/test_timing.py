"""cryorefine.timing: seconds per phase, summed over the phase's blocks."""

import pytest
import torch

from cryorefine import timing
from cryorefine.timing import PhaseTimes, phase_of


def test_host_phases_sum_their_blocks_and_keep_their_first_order(monkeypatch):
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 4.0])  # a clock read at each block's ends
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(ticks))
    times = PhaseTimes(torch.device("cpu"))
    with times.phase("coarse"):
        pass
    with times.phase("fine"):
        pass
    with times.phase("coarse"):
        pass
    times.add_host_seconds("wait_for_data", 0.5)
    times.add_host_seconds("wait_for_data", 0.25)
    seconds = times.seconds()
    assert list(seconds) == ["coarse", "fine", "wait_for_data"]
    # exact sums of binary fractions: 0.5 + 2.0, 0.25, 0.75
    assert seconds == {"coarse": 2.5, "fine": 0.25, "wait_for_data": 0.75}


def test_a_phase_counts_even_when_its_block_raises():
    times = PhaseTimes(torch.device("cpu"))
    with pytest.raises(ValueError, match="bad batch"), times.phase("fine"):
        raise ValueError("bad batch")
    assert "fine" in times.seconds()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_phases_are_timed_by_events_and_read_once():
    times = PhaseTimes(torch.device("cuda"))
    a = torch.randn(2048, 2048, device="cuda")
    with times.phase("matmul"):
        for _ in range(10):
            a = a @ a / 2048
    seconds = times.seconds()
    assert seconds["matmul"] > 0


def test_work_counts_add_up_per_name_in_first_order():
    times = PhaseTimes(torch.device("cpu"))
    times.add_count("fine_samples", 64)
    times.add_count("coarse_samples", 10)
    times.add_count("fine_samples", 36)
    assert list(times.counts().items()) == [("fine_samples", 100), ("coarse_samples", 10)]


def test_phase_of_times_a_block_only_where_times_are_kept():
    times = PhaseTimes(torch.device("cpu"))
    with phase_of(times, "coarse"):
        pass
    with phase_of(None, "fine"):  # nothing kept, nothing raised
        pass
    assert list(times.seconds()) == ["coarse"]
