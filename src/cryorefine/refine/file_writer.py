"""An iteration's files written beside the next iteration: on a thread, or in a process.

Writing ``run_itNNN_*`` takes 0.5-1 s per iteration of the tutorial-shaped job (its
data.star alone is 9,437 rows formatted by ``starfile``), and nothing in the next
iteration reads them. ``FileWriter.submit`` queues one iteration's writing, after the
previous iteration's writing has finished; ``start`` hands it to a single thread (the
driver starts it with the E-step, whose host mostly waits for the device: the writer's
Python holds the interpreter, and the accuracy estimate before the E-step, all small
operators and waits, took 0.5-1.3 s beside it against 0.2-0.3 s alone in one run on an
H100, docs/performance.md). The files of
iteration ``N`` are whole before those of ``N + 1`` start, and each iteration writes
its optimiser file, the one ``--continue`` reads, last (``iteration_files``). A run
killed while a write is on its way continues from the last iteration whose optimiser
file is there. An error of a write is raised by the next ``submit``, by ``wait`` or on
leaving the ``with`` block, which starts and waits for the last write. What is handed
over must not change afterwards: ``on_host`` makes host copies of the models and the
grid, so that the writer never touches the device.

``FileWriter(in_process=True)`` (the driver's choice on a GPU) hands each write from its
thread to a process of its own (``writer_process``), whose formatting does not hold this
interpreter's lock. In session 34's job (files on a thread) the first half set of
nearly every iteration took longer than the second: 16.9 s over iterations 4-27, against
1.0 s with the process (docs/performance.md; ``bench/write_iteration_bench.py`` measures
what a write takes from a busy Python thread). The process is started when the writer is
made, so that its interpreter is up by the first iteration's end.
"""

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from torch import Tensor

from cryorefine.refine.writer_process import WriterProcess

__all__ = ["FileWriter", "on_host"]

T = TypeVar("T")


def on_host(value: T) -> T:
    """``value`` with its tensors on the host: a tensor, a dataclass's tensor fields
    (an ``OrientationGrid``'s pixels and psi values; fields set by the class itself, as
    its cache of rotations, start empty), or a tuple of those; else itself."""
    if isinstance(value, Tensor):
        return value.detach().cpu()  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(on_host(item) for item in value)  # type: ignore[return-value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        tensors = {
            field.name: on_host(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if field.init and isinstance(getattr(value, field.name), Tensor)
        }
        return dataclasses.replace(value, **tensors)  # type: ignore[type-var]
    return value


class FileWriter:
    """One thread that writes the iterations' files in order, itself or through a process
    (module docstring). For a process, ``write`` and its arguments must pickle: a module's
    function, host tensors, tables."""

    def __init__(self, *, in_process: bool = False) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iteration-files")
        self._process = WriterProcess() if in_process else None
        self._queued: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None
        self._pending: Future[None] | None = None

    def submit(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue a write once the previous one has finished (its error raised here)."""
        self.wait()
        self._queued = (write, args, kwargs)

    def start(self) -> None:
        """Start the queued write on the thread, if any."""
        if self._queued is not None:
            write, args, kwargs = self._queued
            self._queued = None
            if self._process is None:
                self._pending = self._pool.submit(write, *args, **kwargs)
            else:
                self._pending = self._pool.submit(self._process.run, write, args, kwargs)

    def wait(self) -> None:
        """Start the queued write, if any, and wait for it; raise its error."""
        self.start()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "FileWriter":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if error is None:
                self.wait()
            else:  # the run failed: its last iteration's files still, and its own error kept
                self.start()
                if self._pending is not None:
                    self._pending.exception()
        finally:
            self._pool.shutdown(wait=True)
            if self._process is not None:
                self._process.close()
