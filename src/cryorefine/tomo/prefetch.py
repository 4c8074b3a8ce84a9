"""Batches made ahead of their use by a background thread.

Reading a batch (files, host-to-device copies, FFTs) and scoring the previous
one overlap: file reads release the GIL, and the E-step spends much of its
time waiting on the device.
"""

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")

_DONE = object()


def prefetched(items: Iterator[T], *, depth: int = 2) -> Iterator[T]:
    """The items of ``items``, in order, produced up to ``depth`` ahead on a thread.

    An exception raised by ``items`` is raised here, at the item where it
    happened. Stopping early (``close``, ``break``) stops the thread after the
    item it is making.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

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
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put((None, error))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="cryorefine-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            entry = ready.get()
            if entry is _DONE:
                return
            item, error = entry  # type: ignore[misc]
            if error is not None:
                raise error
            yield item
    finally:
        stop.set()
        thread.join()
