"""DistributedCommunicator on real gloo ranks: each half set's sums, both halves everywhere.

3 ranks (the odd count: ranks 0 and 1 score half set 1, rank 2 half set 2)
and 4 ranks, two of which stop, started as torchrun starts them (the
rendezvous store held by this test process, as torchrun's agent holds it);
3 ranks, one of which fails, started as srun starts them (SLURM's variables,
rank 0 holds the store).
"""

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from parallel_helpers import free_port
from parallel_workers import (
    combine_rank,
    failing_rank,
    failing_srun_rank,
    has_multiplicity,
    rank_sums,
    rank_update,
)

from cryorefine.parallel import ranks_of_half


def _start_ranks(
    target, world: int, out_dir: Path, *, agent_store: bool, timeout_s: float = 120.0
) -> list[int]:
    """Run ``target(rank, world, port, out_dir)`` in ``world`` processes; their exit codes."""
    store = (
        dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        if agent_store
        else None
    )
    port = store.port if store is not None else free_port()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=target, args=(rank, world, port, str(out_dir)))
        for rank in range(world)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout_s)
        return [process.exitcode for process in processes]
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        del store


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("combine")
    codes = _start_ranks(combine_rank, 3, out_dir, agent_store=True)
    assert codes == [0, 0, 0]
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(3)]


def _expected_half(half: int) -> dict:
    """Slow, obvious float64 sums of the half set's ranks, in rank order."""
    ranks = ranks_of_half(half, 3)
    parts = [vars(rank_sums(r, with_multiplicity=has_multiplicity(r))) for r in ranks]
    total = {}
    for key in ("data", "weight", "noise", "weight_per_group", "direction_mass", "scale_sums"):
        total[key] = parts[0][key].clone()
        for part in parts[1:]:
            total[key] = total[key] + part[key]
    for key in ("offset_moments_angst2", "pmax_sum", "count", "norm_sum"):
        total[key] = sum(part[key] for part in parts)
    summed = [part["multiplicity"] for part in parts if part["multiplicity"] is not None]
    total["multiplicity"] = sum(summed[1:], summed[0].clone()) if summed else None
    return total


def test_the_odd_rank_joins_half_set_one(three_ranks) -> None:
    assert [saw["halves"] for saw in three_ranks] == [(1,), (1,), (2,)]
    assert [saw["writer"] for saw in three_ranks] == [True, False, False]


@pytest.mark.parametrize("half", [1, 2])
def test_each_half_sets_total_is_the_sum_of_its_ranks(three_ranks, half: int) -> None:
    want = _expected_half(half)
    got = three_ranks[0]["totals"][half]
    # At most two terms per half set (ranks 0 and 1): one IEEE addition, exact and
    # commutative whatever order the all-reduce takes; half set 2 is one rank's copy.
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key], value, rtol=0.0, atol=0.0, msg=key)
        elif value is None:
            assert got[key] is None, key
        else:
            assert got[key] == value, key
    assert isinstance(got["count"], int)


def test_every_rank_holds_the_same_bits_of_both_halves(three_ranks) -> None:
    for saw in three_ranks[1:]:
        for half in (1, 2):
            for key, value in three_ranks[0]["totals"][half].items():
                other = saw["totals"][half][key]
                if isinstance(value, torch.Tensor):
                    assert torch.equal(other, value), (half, key)
                else:
                    assert other == value, (half, key)


def test_every_rank_receives_every_ranks_pose_update(three_ranks) -> None:
    for saw in three_ranks:
        rows = sorted(np.concatenate([u["rows"] for u in saw["updates"]]).tolist())
        assert rows == sorted(np.concatenate([rank_update(r).rows for r in range(3)]).tolist())
        for update in saw["updates"]:
            rank = int(update["rows"][0]) // 10
            np.testing.assert_array_equal(update["angles_deg"], rank_update(rank).angles_deg)


def test_the_writers_value_reaches_every_rank(three_ranks) -> None:
    assert [saw["agreed"] for saw in three_ranks] == ["state of rank 0"] * 3


def test_ranks_that_stop_are_named_by_the_others(tmp_path: Path) -> None:
    codes = _start_ranks(failing_rank, 4, tmp_path, agent_store=True)
    assert codes == [0, 0, 9, 3]
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith(f"rank {rank} (host"), message
        assert "the reduction of iteration 4" in message
        # Rank 3 recorded its error before it stopped; rank 2 was killed silently.
        assert "rank 3 (host" in message
        assert "failed: RuntimeError: out of memory on purpose" in message
        assert "rank 2 (host" in message
        assert "last seen at start-up" in message


def test_under_srun_rank_zero_names_the_failed_rank(tmp_path: Path) -> None:
    codes = _start_ranks(failing_srun_rank, 3, tmp_path, agent_store=False)
    assert codes == [0, 0, 3]
    first = (tmp_path / "rank0.txt").read_text()
    assert first.startswith("rank 0 (host"), first
    assert "rank 2 (host" in first
    assert "failed: RuntimeError: out of memory on purpose" in first
    # Rank 1 learns of the failure from rank 0, which holds the store: by the time it
    # asks, the store may be gone with rank 0; then its message says so.
    second = (tmp_path / "rank1.txt").read_text()
    assert second.startswith("rank 1 (host"), second
    assert "out of memory on purpose" in second or "rank 0 has stopped" in second
