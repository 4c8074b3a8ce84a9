"""Iteration files written on a thread of their own, in order (``refine.file_writer``)."""

import dataclasses
import threading
import time

import pytest
import torch

from cryorefine.likelihood import OrientationGrid
from cryorefine.refine.file_writer import FileWriter, on_host


def test_each_write_starts_after_the_previous_one_has_finished_and_off_the_main_thread():
    events: list[tuple[str, int, str]] = []

    def write(number: int) -> None:
        events.append(("start", number, threading.current_thread().name))
        time.sleep(0.05)
        events.append(("end", number, threading.current_thread().name))

    with FileWriter() as writer:
        for number in range(3):
            writer.submit(write, number)
    assert [(kind, number) for kind, number, _ in events] == [
        ("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("end", 2),
    ]  # fmt: skip
    assert all(name != threading.current_thread().name for *_, name in events)


def test_a_queued_write_starts_when_started_not_when_submitted():
    started = threading.Event()
    with FileWriter() as writer:
        writer.submit(started.set)
        assert not started.wait(0.1)
        writer.start()
        assert started.wait(5.0)


def test_leaving_the_block_waits_for_the_last_write():
    done, release = [], threading.Event()
    with FileWriter() as writer:
        writer.submit(lambda: (release.wait(5.0), time.sleep(0.1), done.append(True)))
        writer.start()
        assert not done  # the main thread went on: the write waits for the release
        release.set()
    assert done == [True]


def _failing_run(where: str) -> None:
    def fail() -> None:
        raise OSError("disk full")

    with FileWriter() as writer:
        writer.submit(fail)
        if where == "submit":
            writer.submit(lambda: None)
        elif where == "wait":
            writer.wait()


@pytest.mark.parametrize("where", ["submit", "wait", "exit"])
def test_a_failed_write_raises_its_error_at_the_next_call_or_on_leaving(where):
    with pytest.raises(OSError, match="disk full"):
        _failing_run(where)


def test_the_runs_own_error_is_kept_and_the_write_on_its_way_finishes():
    done = []

    def failing_iteration() -> None:
        with FileWriter() as writer:
            writer.submit(lambda: (time.sleep(0.1), done.append(True)))
            raise KeyError("the iteration failed")

    with pytest.raises(KeyError):
        failing_iteration()
    assert done == [True]


@dataclasses.dataclass(frozen=True)
class _Model:
    name: str
    reference: torch.Tensor
    spectrum: torch.Tensor | None


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_on_host_copies_tensors_of_dataclasses_grids_and_tuples_to_the_host():
    device = _device()
    model = _Model("half1", torch.arange(4.0, device=device), None)
    grid = OrientationGrid(
        healpix_order=1,
        pixels=torch.arange(5, device=device),
        psi_deg=torch.tensor([0.0, 30.0], device=device),
        perturbation=0.25,
    )
    host_model, host_grid = on_host((model, grid))
    assert host_model.name == "half1"
    assert host_model.spectrum is None
    assert host_model.reference.device.type == "cpu"
    assert torch.equal(host_model.reference, model.reference.cpu())
    assert host_grid.pixels.device.type == host_grid.psi_deg.device.type == "cpu"
    assert torch.equal(host_grid.pixels, grid.pixels.cpu())
    assert (host_grid.healpix_order, host_grid.perturbation) == (1, 0.25)
    assert on_host(None) is None
    assert on_host("text") == "text"
