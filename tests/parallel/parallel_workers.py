"""Rank programs of the parallel tests, started in fresh processes (spawn).

Each rank joins a gloo world, as under torchrun (``env://``, the store held by
the test process as torchrun's agent holds it) or as under srun (SLURM's
variables, ``tcp://``, rank 0 holding the store), then runs a scenario and
saves what it saw under ``out_dir``.
"""

import os
import time
from pathlib import Path

import numpy as np
import torch

from cryorefine.parallel import (
    DistributedCommunicator,
    RankFailure,
    launch_environment,
    parallel_session,
    start_process_groups,
)
from cryorefine.refine.half_pass import PoseUpdate
from cryorefine.refine.half_sums import HalfSetSums

GROUPS, SHELLS, DIRECTIONS, SIDE = 2, 5, 7, 8
SCALE_GROUPS = 3  # scale groups (tomograms) differ from optics groups


def rank_sums(rank: int, *, with_multiplicity: bool) -> HalfSetSums:
    """Random sums of one rank (float64), the same for a rank in any process."""
    gen = torch.Generator().manual_seed(1000 + rank)
    shape = (SIDE, SIDE, SIDE // 2 + 1)
    return HalfSetSums(
        data=torch.randn(shape, dtype=torch.complex128, generator=gen),
        weight=torch.rand(shape, dtype=torch.float64, generator=gen),
        noise=torch.rand(GROUPS, SHELLS, dtype=torch.float64, generator=gen),
        multiplicity=torch.rand(GROUPS, SHELLS, dtype=torch.float64, generator=gen)
        if with_multiplicity
        else None,
        weight_per_group=torch.rand(GROUPS, dtype=torch.float64, generator=gen),
        offset_moments_angst2=float(torch.rand(1, dtype=torch.float64, generator=gen)),
        direction_mass=torch.rand(DIRECTIONS, dtype=torch.float64, generator=gen),
        pmax_sum=float(torch.rand(1, dtype=torch.float64, generator=gen)),
        count=3 + rank,
        scale_sums=torch.rand(2, SCALE_GROUPS, SHELLS, dtype=torch.float64, generator=gen),
        norm_sum=float(torch.rand(1, dtype=torch.float64, generator=gen)),
    )


def rank_update(rank: int) -> PoseUpdate:
    """Poses of rows ``10 rank .. 10 rank + 2``."""
    rows = np.arange(3, dtype=np.int64) + 10 * rank
    return PoseUpdate(
        rows=rows,
        angles_deg=np.full((3, 3), float(rank)),
        origins_angst=np.zeros((3, 3)),
        pmax=np.full(3, 0.5),
        significant_samples=np.ones(3, dtype=np.int64),
        log_likelihood=np.full(3, -float(rank)),
    )


def has_multiplicity(rank: int) -> bool:
    """Rank 1 sums no multiplicity (as a rank with an empty share)."""
    return rank == 0


def _srun_environment(rank: int, world: int, port: int) -> None:
    os.environ.update(
        SLURM_STEP_ID="0",
        SLURM_PROCID=str(rank),
        SLURM_STEP_NUM_TASKS=str(world),
        SLURM_LOCALID=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _torchrun_environment(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )


def _join(rank: int, world: int, port: int) -> DistributedCommunicator:
    _torchrun_environment(rank, world, port)
    torch.set_num_threads(1)
    groups = start_process_groups(launch_environment(), device=torch.device("cpu"), timeout_s=60.0)
    return DistributedCommunicator(groups)


def combine_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """Combine random sums; save the totals, the updates and the writer's value."""
    communicator = _join(rank, world, port)
    (half,) = communicator.halves_here()
    totals, updates = communicator.combine(
        {half: rank_sums(rank, with_multiplicity=has_multiplicity(rank))},
        {half: rank_update(rank)},
        iteration=1,
    )
    agreed = communicator.same_everywhere(f"state of rank {rank}")
    communicator.barrier()
    torch.save(
        {
            "totals": {h: vars(s) for h, s in totals.items()},
            "updates": [vars(u) for u in updates],
            "agreed": agreed,
            "halves": communicator.halves_here(),
            "writer": communicator.is_writer,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


def _wait_for_file(path: Path, timeout_s: float = 60.0) -> None:
    """Return once ``path`` exists, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _fail_in_session(rank: int, world: int, out_dir: str, *, killed: int | None) -> None:
    """In ``parallel_session``: the last rank raises, rank ``killed`` ends silently.

    The others combine and save the message of their ``RankFailure``. Rank ``killed``
    ends only once the last rank's error is recorded (it leaves a file then): the
    others' collective fails when either ends, and their message is read from the
    store at that moment, so without the wait it could find neither of the last
    rank's records yet (on a busy machine it may still be starting up).
    """
    torch.set_num_threads(1)
    raised = Path(out_dir) / f"rank{world - 1}.raised"
    try:
        with parallel_session(launch_environment(), gpu=None, timeout_s=60.0) as (comm, _):
            # every rank's connections made before the last one fails: on a busy machine a
            # rank still connecting when it ended failed there instead (code 3, not 9)
            torch.distributed.barrier()
            if rank == world - 1:
                raise RuntimeError("out of memory on purpose")
            if rank == killed:
                _wait_for_file(raised)
                os._exit(9)
            (half,) = comm.halves_here()
            comm.combine(
                {half: rank_sums(rank, with_multiplicity=False)},
                {half: rank_update(rank)},
                iteration=4,
            )
        message = "no failure seen"
    except RankFailure as error:
        message = str(error)
    except RuntimeError:  # parallel_session has recorded it in the store
        raised.touch()
        os._exit(3)
    (Path(out_dir) / f"rank{rank}.txt").write_text(message)
    os._exit(0)


def failing_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """Under torchrun: rank ``world - 1`` raises, ``world - 2`` is killed; the others combine."""
    _torchrun_environment(rank, world, port)
    _fail_in_session(rank, world, out_dir, killed=world - 2)


def failing_srun_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """Under srun (rank 0 holds the store): rank ``world - 1`` raises; the others combine."""
    _srun_environment(rank, world, port)
    _fail_in_session(rank, world, out_dir, killed=None)
