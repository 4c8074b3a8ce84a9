"""Batches made ahead of their use by a background thread.

Reading a batch (files, host-to-device copies, FFTs) and scoring the previous
one overlap: file reads release the GIL, and the E-step spends much of its
time waiting on the device.

On a CUDA device the thread works on its own stream: its copies and FFTs do
not queue behind the E-step's kernels, and a host transfer it makes (e.g. a
batch's flags) waits for its own work only. The consumer's stream waits for an
event recorded after each item (no host sync), and every tensor of the item is
marked as used on the consumer's stream, so the allocator does not hand its
memory back to the thread while the E-step still reads it.
"""

import dataclasses
import queue
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from typing import TypeVar

import torch

__all__ = ["prefetched"]

T = TypeVar("T")

_DONE = object()


def _tensors(item: object) -> Iterator[torch.Tensor]:
    """The tensors in ``item``: itself, or inside tuples, lists and dataclasses, recursively."""
    if isinstance(item, torch.Tensor):
        yield item
    elif isinstance(item, (tuple, list)):
        for part in item:
            yield from _tensors(part)
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        for field in dataclasses.fields(item):
            yield from _tensors(getattr(item, field.name))


def prefetched(
    items: Iterator[T], *, depth: int = 2, device: torch.device | None = None
) -> Iterator[T]:
    """The items of ``items``, in order, produced up to ``depth`` ahead on a thread.

    ``device``: where the items' tensors live; on CUDA the thread makes them on
    a stream of its own (module docstring). An exception raised by ``items`` is
    raised here, at the item where it happened. Stopping early (``close``,
    ``break``) stops the thread after the item it is making.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    cuda = device is not None and device.type == "cuda"
    side = torch.cuda.Stream(device=device) if cuda else None

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with torch.cuda.stream(side) if side is not None else nullcontext():
                for item in items:
                    made = None
                    if side is not None:
                        made = torch.cuda.Event()
                        made.record(side)
                    if not put((item, made, None)):
                        return
        except BaseException as error:  # handed to the consumer, raised there
            put((None, None, error))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="cryorefine-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            entry = ready.get()
            if entry is _DONE:
                return
            item, made, error = entry  # type: ignore[misc]
            if error is not None:
                raise error
            if made is not None:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(made)
                for tensor in _tensors(item):
                    if tensor.is_cuda:
                        tensor.record_stream(consumer)
            yield item
    finally:
        stop.set()
        thread.join()
