"""Tasks run at once on CUDA streams of their own (``refine.streams.on_own_streams``)."""

import threading

import pytest
import torch

from cryorefine.likelihood import matmul_precision
from cryorefine.refine.streams import on_own_streams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams need a GPU"),
]

DEVICE = torch.device("cuda")


def test_results_come_in_the_tasks_order_each_made_on_its_own_stream() -> None:
    caller = torch.cuda.current_stream()
    seen = []

    def task(value: float):
        def run() -> torch.Tensor:
            seen.append(torch.cuda.current_stream())
            return torch.full((1000,), value, device=DEVICE).cumsum(0)

        return run

    first, second = on_own_streams([task(1.0), task(2.0)], DEVICE, precision="float32")
    assert first[-1].item() == 1000.0
    assert second[-1].item() == 2000.0
    assert len({stream.cuda_stream for stream in seen}) == 2
    assert caller.cuda_stream not in {stream.cuda_stream for stream in seen}


def test_the_tasks_run_at_once() -> None:
    both_started = threading.Barrier(2, timeout=30)  # a serial run would time out here

    def task() -> int:
        both_started.wait()
        return threading.get_ident()

    assert len(set(on_own_streams([task, task], DEVICE, precision="float32"))) == 2


def test_tf32_holds_for_both_tasks_while_either_restores_its_own_block() -> None:
    # the order that loses tf32 without the hold: the first task enters its block, the
    # second enters, the first leaves and restores what it found ("highest")
    before = torch.get_float32_matmul_precision()
    assert before == "highest"
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> str:
        with matmul_precision("tf32"):
            first_in.set()
            assert second_in.wait(timeout=30)
        first_out.set()
        return torch.get_float32_matmul_precision()

    def second() -> str:
        assert first_in.wait(timeout=30)
        with matmul_precision("tf32"):
            second_in.set()
            assert first_out.wait(timeout=30)
            return torch.get_float32_matmul_precision()

    assert on_own_streams([first, second], DEVICE, precision="tf32") == ["high", "high"]
    assert torch.get_float32_matmul_precision() == before


def test_a_task_error_is_raised_after_both_tasks_end() -> None:
    finished = threading.Event()

    def fails() -> None:
        raise ValueError("bad half set")

    def works() -> int:
        finished.set()
        return 1

    with pytest.raises(ValueError, match="bad half set"):
        on_own_streams([fails, works], DEVICE, precision="float32")
    assert finished.is_set()
