"""Seconds spent per phase of an iteration, without a host sync inside it.

On a GPU each phase is bracketed by CUDA events on the current stream and the
elapsed times are read once, at the end (``seconds``); on the CPU the host
clock is used. A phase's time on a GPU is its kernels and the gaps between
them, where the device waits for the host. The batch reader works on a stream
of its own (``tomo.prefetched``), so its copies and FFTs are in no phase; its
host work runs beside the phases' and shares the interpreter with them.
"""

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

__all__ = ["PhaseTimes", "phase_of"]


class PhaseTimes:
    """Accumulated seconds per named phase on one device, and counts of the work done."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {}
        self._host: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time of the block (its device work, on a GPU) towards ``name``."""
        if not self._cuda:
            start = time.perf_counter()
            try:
                with torch.profiler.record_function(name):  # a range in torch.profiler's tables
                    yield
            finally:
                self._host[name] = self._host.get(name, 0.0) + time.perf_counter() - start
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        try:
            with torch.profiler.record_function(name):  # a range in torch.profiler's tables
                yield
        finally:
            end.record()
            self._events.setdefault(name, []).append((begin, end))

    def add_host_seconds(self, name: str, seconds: float) -> None:
        """Count host wall time (e.g. waiting for the next batch) towards ``name``."""
        self._host[name] = self._host.get(name, 0.0) + seconds

    def add_count(self, name: str, count: int) -> None:
        """Count work done (samples scored, orientations projected, ...) towards ``name``."""
        self._counts[name] = self._counts.get(name, 0) + int(count)

    def counts(self) -> dict[str, int]:
        """The work counted per name, in the order names first appeared."""
        return dict(self._counts)

    def seconds(self) -> dict[str, float]:
        """Seconds per phase, in the order phases first appeared (waits for the phases'
        last events only: not for other streams' work)."""
        out = dict(self._host)
        if self._events:
            for pairs in self._events.values():
                pairs[-1][1].synchronize()
            for name, pairs in self._events.items():
                total = sum(begin.elapsed_time(end) for begin, end in pairs) / 1000.0
                out[name] = out.get(name, 0.0) + total
        return out


def phase_of(times: PhaseTimes | None, name: str) -> AbstractContextManager[None]:
    """``times.phase(name)``, or nothing where no times are kept (``times`` None)."""
    return nullcontext() if times is None else times.phase(name)
