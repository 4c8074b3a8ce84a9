"""cryorefine.timing: seconds per phase, summed over the phase's blocks."""

import time

import pytest
import torch

from cryorefine.timing import PhaseTimes


def test_host_phases_sum_their_blocks_and_keep_their_first_order():
    times = PhaseTimes(torch.device("cpu"))
    for _ in range(3):
        with times.phase("coarse"):
            time.sleep(0.02)
    with times.phase("fine"):
        time.sleep(0.01)
    times.add_host_seconds("wait_for_data", 0.5)
    times.add_host_seconds("wait_for_data", 0.25)
    seconds = times.seconds()
    assert list(seconds) == ["coarse", "fine", "wait_for_data"]
    # sleep lasts at least what was asked; the scheduler may add, bounded loosely here
    assert 0.06 <= seconds["coarse"] < 0.06 + 0.5
    assert 0.01 <= seconds["fine"] < 0.01 + 0.5
    assert seconds["wait_for_data"] == pytest.approx(0.75, abs=0)


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
