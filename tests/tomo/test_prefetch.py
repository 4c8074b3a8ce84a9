"""tomo.prefetch: items made ahead on a thread arrive in order; errors and early stops."""

import threading
import time

import pytest
import torch

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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_items_are_made_on_a_side_stream_and_safe_to_use_on_the_consumers():
    device = torch.device("cuda")
    made_on: list[int] = []

    def items():
        for i in range(6):
            made_on.append(torch.cuda.current_stream(device).stream_id)
            # a large product keeps the side stream busy; the consumer must wait for it
            a = torch.full((2048, 2048), float(i), device=device)
            yield {"i": i}, (a @ a)[:1, :1]

    main = torch.cuda.current_stream(device).stream_id
    results = [(meta["i"], value.item()) for meta, value in prefetched(items(), device=device)]
    assert results == [(i, 2048.0 * i * i) for i in range(6)]
    assert all(stream != main for stream in made_on)
