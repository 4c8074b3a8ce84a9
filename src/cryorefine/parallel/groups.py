"""The process groups of a parallel refinement: the world, one group per half set, control.

Ranks ``0 .. ceil(W / 2) - 1`` score half set 1 and the rest half set 2: with
an odd count the spare rank joins half set 1; there is no idle leader. Rank 0
(the first of half set 1) writes the files. Consecutive ranks share a half set,
so with torchrun on several nodes a half set's reductions stay on as few nodes
as possible. The back-projector sums travel over the main backend (NCCL on
GPUs, gloo on CPUs and where ranks share a GPU); pose updates, the writer's
state and the barriers travel over a gloo "control" group on the CPU, where
``monitored_barrier`` names the ranks that do not arrive.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cryorefine.parallel.failures import RankMonitor, open_store
from cryorefine.parallel.launch import LaunchEnvironment, backend_for

__all__ = [
    "ProcessGroups",
    "half_sets_of_rank",
    "ranks_of_half",
    "start_process_groups",
    "stop_process_groups",
]

logger = logging.getLogger(__name__)


def ranks_of_half(half: int, world_size: int) -> tuple[int, ...]:
    """The ranks that score half set ``half`` (1 or 2) among ``world_size`` ranks."""
    if half not in (1, 2):
        raise ValueError(f"half set must be 1 or 2, got {half}")
    if world_size == 1:
        return (0,)
    first = (world_size + 1) // 2
    return tuple(range(first)) if half == 1 else tuple(range(first, world_size))


def half_sets_of_rank(rank: int, world_size: int) -> tuple[int, ...]:
    """The half sets rank ``rank`` scores: both with one rank, else one."""
    return tuple(half for half in (1, 2) if rank in ranks_of_half(half, world_size))


@dataclass
class ProcessGroups:
    """A started parallel run, as one rank sees it.

    Attributes
    ----------
    environment
        Its ``LaunchEnvironment``.
    device
        This rank's device; ``backend`` follows it.
    half_groups
        Half set -> its process group (every rank holds both handles).
    control
        The gloo group of all ranks (None: the world group is gloo already).
    timeout_s
        How long a rank waits for the others at a collective.
    monitor
        This rank's records for failure messages.
    store
        Under srun, the rendezvous store (rank 0 holds its server), which the
        failure records use too. None under torchrun.
    """

    environment: LaunchEnvironment
    device: torch.device
    backend: str
    half_groups: dict[int, dist.ProcessGroup]
    control: dist.ProcessGroup | None
    timeout_s: float
    monitor: RankMonitor
    store: dist.Store | None = None


def start_process_groups(
    environment: LaunchEnvironment,
    *,
    device: torch.device,
    timeout_s: float,
    ranks_per_device: int = 1,
) -> ProcessGroups:
    """Join the world (``init_process_group``), then make the half-set and control groups.

    ``ranks_per_device`` above 1 (ranks sharing a GPU) takes gloo for every group.

    Every rank calls it; it returns once all ranks have joined (or raises after
    ``timeout_s``). torchrun's agent store is used through ``env://``; under
    srun rank 0 opens the store at ``master_addr:master_port`` itself.
    """
    if environment.world_size < 2:
        raise ValueError("a parallel run needs at least 2 ranks")
    backend = backend_for(device, ranks_per_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    world = environment.world_size
    host, port = environment.master_addr or "localhost", environment.master_port or 0
    store = None
    if environment.launcher == "torchrun":
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
        records = open_store(host, port, prefix="cryorefine/")
    else:
        store = dist.TCPStore(host, port, world, is_master=environment.rank == 0, timeout=timeout)
        dist.init_process_group(
            backend, store=store, rank=environment.rank, world_size=world, timeout=timeout
        )
        records = dist.PrefixStore("cryorefine/", store)
    half_groups = {
        half: dist.new_group(list(ranks_of_half(half, world)), timeout=timeout) for half in (1, 2)
    }
    control = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    monitor = RankMonitor(
        records,
        rank=environment.rank,
        world_size=world,
        host=environment.host,
        half_sets_of=lambda rank: half_sets_of_rank(rank, world),
    )
    monitor.mark("start-up")
    logger.debug(
        "rank %d of %d on %s: %s, device %s, half set %s",
        environment.rank,
        world,
        environment.host,
        backend,
        device,
        half_sets_of_rank(environment.rank, world),
    )
    return ProcessGroups(
        environment, device, backend, half_groups, control, timeout_s, monitor, store
    )


def stop_process_groups(groups: ProcessGroups | None = None) -> None:
    """Leave the process groups: after the last collective, or after a failure.

    The store in ``groups`` (srun) stays open until ``groups`` is dropped.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
