"""Tasks run at once, each in a thread of its own on a CUDA stream of its own.

Where the host sets the pace (each fine group dispatches hundreds of small
operators), one half set's Python work can run while the other's kernels run:
torch releases the interpreter's lock while it dispatches, launches and waits.
A CUDA stream is current per thread, so each task's kernels, events and waits
are on its own stream; the caller's stream waits for both before it goes on.
"""

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from cryorefine.likelihood import matmul_precision

__all__ = ["on_own_streams"]

T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def _streams(index: int, count: int) -> tuple[torch.cuda.Stream, ...]:
    # the same streams every iteration: the caching allocator keeps freed memory per
    # stream, and memory cached for streams no longer used would not be reused
    return tuple(torch.cuda.Stream(device=index) for _ in range(count))


def on_own_streams(
    tasks: Sequence[Callable[[], T]], device: torch.device, *, precision: str
) -> list[T]:
    """Each task's result, in order; the tasks run at once on ``device`` (CUDA).

    ``precision``: the E-step's (``likelihood.matmul_precision``). The float32 matrix
    product precision is one setting of the process, which each task's own
    ``matmul_precision`` blocks set and restore; it is held here for both tasks, so
    that one task's restoring it cannot change the other's products.
    An exception of a task is raised here once both have ended.
    """
    index = torch.cuda.current_device() if device.index is None else device.index
    caller = torch.cuda.current_stream(index)
    streams = _streams(index, len(tasks))
    for stream in streams:  # what the caller queued (the references) comes first
        stream.wait_stream(caller)

    def run(task: Callable[[], T], stream: torch.cuda.Stream) -> T:
        torch.cuda.set_device(index)
        with torch.cuda.stream(stream):
            return task()

    with (
        matmul_precision(precision),
        ThreadPoolExecutor(len(tasks), thread_name_prefix="cryorefine-half-set") as pool,
    ):
        futures = [pool.submit(run, task, s) for task, s in zip(tasks, streams, strict=True)]
        errors = [future.exception() for future in futures]
    for stream in streams:
        caller.wait_stream(stream)
    for error in errors:
        if error is not None:
            raise error
    return [future.result() for future in futures]
