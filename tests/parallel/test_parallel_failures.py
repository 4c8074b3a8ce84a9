"""The message of a failed collective names the ranks that failed or did not arrive."""

import torch.distributed as dist

from cryorefine.parallel import RankMonitor, half_sets_of_rank


def _monitor(store, rank: int, world: int = 4) -> RankMonitor:
    return RankMonitor(
        store,
        rank=rank,
        world_size=world,
        host=f"node{rank}",
        half_sets_of=lambda r: half_sets_of_rank(r, world),
    )


def test_the_message_names_failed_and_missing_ranks_with_host_and_half_set():
    store = dist.HashStore()
    monitors = [_monitor(store, rank) for rank in range(4)]
    for monitor in monitors:
        monitor.mark("the E-step of iteration 3")
    monitors[0].mark("the reduction of iteration 3")
    monitors[1].mark("the reduction of iteration 3")
    monitors[3].record_failure(MemoryError("CUDA out of memory\ntraceback lines"))
    message = monitors[0].explain(RuntimeError("Connection closed by peer"))
    assert message.startswith(
        "rank 0 (host node0, half set 1) of 4 ranks could not finish the reduction of "
        "iteration 3: RuntimeError: Connection closed by peer."
    )
    assert "rank 1" not in message  # it reached the same point
    assert "rank 2 (host node2, half set 2) did not arrive" in message
    assert "last seen at the E-step of iteration 3" in message
    assert (
        "rank 3 (host node3, half set 2) failed: MemoryError: CUDA out of memory "
        "(at the E-step of iteration 3)" in message
    )
    assert "traceback lines" not in message


def test_a_rank_that_never_reported_is_named():
    store = dist.HashStore()
    monitor = _monitor(store, 0, world=2)
    monitor.mark("start-up")
    assert "rank 1 (half set 2) never reported in" in monitor.explain(RuntimeError("timeout"))


def test_when_every_rank_arrived_the_message_says_where_to_look():
    store = dist.HashStore()
    monitors = [_monitor(store, rank, world=2) for rank in range(2)]
    for monitor in monitors:
        monitor.mark("the barrier after iteration 5")
    message = monitors[1].explain(RuntimeError("boom"))
    assert "Every other rank reached the same point" in message


class _DeadStore(dist.Store):
    """A store whose host has gone: every call raises."""

    def set(self, key, value):
        raise RuntimeError("Connection refused")

    def check(self, keys):
        raise RuntimeError("Connection refused")


def test_a_store_that_does_not_answer_points_at_rank_zero():
    monitor = _monitor(_DeadStore(), 2)
    monitor.mark("the reduction of iteration 1")  # a dead store is not an error here
    monitor.record_failure(RuntimeError("x"))
    message = monitor.explain(RuntimeError("Connection closed by peer"))
    assert "does not answer" in message
    assert "rank 0 has stopped" in message


def test_without_a_store_the_message_still_names_this_rank():
    message = _monitor(None, 1).explain(RuntimeError("timeout"))
    assert message.startswith("rank 1 (host node1, half set 1) of 4 ranks")
