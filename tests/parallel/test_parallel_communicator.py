"""How rows are shared between ranks, and the single-process communicator."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from cryorefine.parallel import (
    DistributedCommunicator,
    LaunchEnvironment,
    ProcessGroups,
    RankMonitor,
    half_sets_of_rank,
)
from cryorefine.refine.communicator import Communicator, SingleProcess, share_of_rows
from cryorefine.refine.half_pass import PoseUpdate
from cryorefine.refine.half_sums import HalfSetSums


@given(
    n=st.integers(0, 200),
    count=st.integers(1, 9),
    block=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_shares_are_whole_blocks_that_partition_the_rows_in_order(n, count, block, seed):
    rows = np.sort(np.random.default_rng(seed).choice(10 * n + 1, size=n, replace=False))
    shares = [share_of_rows(rows, index=i, count=count, block_size=block) for i in range(count)]
    together = np.concatenate(shares)
    assert sorted(together.tolist()) == rows.tolist()  # disjoint and complete
    position = {row: i for i, row in enumerate(rows.tolist())}
    for index, share in enumerate(shares):
        places = [position[row] for row in share.tolist()]
        assert places == sorted(places)  # the half set's order is kept
        # Every batch of the single-process run (a block) lies whole in one share.
        assert all((p // block) % count == index for p in places)
    blocks = [-(-len(share) // block) for share in shares]
    assert max(blocks) - min(blocks) <= 1


def test_one_share_is_all_rows():
    rows = np.arange(5, 17)
    np.testing.assert_array_equal(share_of_rows(rows, index=0, count=1, block_size=4), rows)


def _update(rows: list[int]) -> PoseUpdate:
    k = len(rows)
    return PoseUpdate(
        rows=np.array(rows),
        angles_deg=np.zeros((k, 3)),
        origins_angst=np.zeros((k, 3)),
        pmax=np.zeros(k),
        significant_samples=np.zeros(k, dtype=np.int64),
        log_likelihood=np.zeros(k),
    )


def test_single_process_scores_both_halves_on_all_rows_and_writes():
    single = SingleProcess()
    assert single.is_writer
    assert single.halves_here() == (1, 2)
    rows = np.array([4, 8, 15])
    assert single.local_rows(2, rows, block_size=2) is rows
    assert single.same_everywhere("state") == "state"
    single.barrier()


def _sums(count: int) -> HalfSetSums:
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    return HalfSetSums(
        data=torch.zeros(4, 4, 3, dtype=torch.complex128),
        weight=torch.zeros(4, 4, 3, dtype=torch.float64),
        noise=zeros,
        multiplicity=None,
        weight_per_group=zeros[:, 0],
        offset_moments_angst2=0.0,
        direction_mass=torch.zeros(5, dtype=torch.float64),
        pmax_sum=0.0,
        count=count,
        scale_sums=torch.zeros(2, 1, zeros.shape[1], dtype=torch.float64),
    )


def test_single_process_combine_returns_its_sums_and_updates_in_half_set_order():
    single = SingleProcess()
    first, second = _update([0, 2]), _update([1])
    sums = {1: _sums(2), 2: _sums(1)}
    totals, updates = single.combine(sums, {2: second, 1: first}, iteration=1)
    assert totals == sums
    assert updates == [first, second]


def test_both_communicators_follow_the_protocol():
    assert isinstance(SingleProcess(), Communicator)
    environment = LaunchEnvironment(1, 3, 1, "node1", 29400, "torchrun", host="node1")
    groups = ProcessGroups(
        environment=environment,
        device=torch.device("cpu"),
        backend="gloo",
        half_groups={},
        control=None,
        timeout_s=60.0,
        monitor=RankMonitor(None, rank=1, world_size=3, host="node1", half_sets_of=lambda r: (1,)),
    )
    distributed = DistributedCommunicator(groups)
    assert isinstance(distributed, Communicator)
    assert not distributed.is_writer
    assert distributed.halves_here() == half_sets_of_rank(1, 3) == (1,)
    # Rank 1 is the second of half set 1's two ranks: every other block of rows.
    rows = np.arange(10)
    np.testing.assert_array_equal(distributed.local_rows(1, rows, block_size=2), [2, 3, 6, 7])
