"""tomo.prefetch: items made ahead on a thread arrive in order; errors and early stops."""

import threading
import time

import pytest

from cryorefine.tomo.prefetch import prefetched


def test_items_arrive_in_order_and_all_of_them():
    assert list(prefetched(iter(range(100)), depth=3)) == list(range(100))


def test_items_are_made_ahead_on_another_thread():
    made_on: list[str] = []
    second_made = threading.Event()

    def items():
        for i in range(3):
            made_on.append(threading.current_thread().name)
            if i == 1:
                second_made.set()
            yield i

    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    # item 1 is made while the consumer holds item 0, without asking for it
    assert second_made.wait(timeout=5)
    assert list(stream) == [1, 2]
    assert set(made_on) == {"cryorefine-prefetch"}


def test_an_error_is_raised_where_it_happened():
    def items():
        yield 1
        yield 2
        raise ValueError("bad particle file")

    stream = prefetched(items())
    assert next(stream) == 1
    assert next(stream) == 2
    with pytest.raises(ValueError, match="bad particle file"):
        next(stream)


def test_stopping_early_stops_the_thread():
    made: list[int] = []

    def items():
        for i in range(10_000):
            made.append(i)
            yield i

    stream = prefetched(items(), depth=2)
    for i in stream:
        if i == 5:
            break
    stream.close()
    count = len(made)
    time.sleep(0.3)
    assert len(made) == count  # nothing made after the stop
    assert count <= 5 + 1 + 2 + 1  # at most depth ahead, plus the one being made
    assert not any(t.name == "cryorefine-prefetch" for t in threading.enumerate())


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="depth"):
        list(prefetched(iter([1]), depth=0))
