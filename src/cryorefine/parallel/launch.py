"""Where a rank stands, from its launcher's environment, and which device it takes.

Two launchers are understood:

- ``torchrun`` (``python -m torch.distributed.run``), on one node or under
  SLURM: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``; its agent holds the rendezvous store
  (``TORCHELASTIC_USE_AGENT_STORE``).
- ``srun`` (one task per rank): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or
  ``SLURM_NTASKS``), ``SLURM_LOCALID``, inside a job step (``SLURM_STEP_ID``);
  ``MASTER_ADDR`` defaults to the step's first node, ``MASTER_PORT`` to
  ``20000 + SLURM_JOB_ID % 20000``; rank 0 holds the store.

``torchrun``'s variables win when both are present (torchrun started by srun).
Anything else is one process.
"""

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cryorefine.errors import InputError

__all__ = [
    "LaunchEnvironment",
    "backend_for",
    "first_slurm_host",
    "is_distributed_launch",
    "launch_environment",
    "rank_device",
    "ranks_on_device",
    "slurm_tasks_on_node",
]


@dataclass(frozen=True)
class LaunchEnvironment:
    """One rank's place in a launch.

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of ranks, rank among the ranks of this node.
    master_addr, master_port
        Where the rendezvous store listens (None for one process).
    launcher
        ``"torchrun"``, ``"slurm"`` or ``"single"``.
    local_world_size
        Ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``, srun's tasks per node;
        1 where the launcher does not say).
    agent_store
        Whether torchrun's agent holds the store (else rank 0 does).
    host
        This node's name, for messages.
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int | None
    launcher: str
    agent_store: bool = False
    host: str = ""
    local_world_size: int = 1


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise InputError(f"environment variable {name} is not set; the launcher sets it")
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name} is {value!r}, expected an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``."""
    match = re.match(r"\s*([^,\[\s]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        raise InputError(f"SLURM node list {nodelist!r}: no host name found")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Tasks on node ``node`` from SLURM's compressed list: ``"2(x3),1"``, node 3 -> 1."""
    counts: list[int] = []
    for entry in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", entry)
        if match is None:
            raise InputError(f"SLURM tasks per node {tasks_per_node!r}: expected e.g. 2(x3),1")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node < len(counts):
        raise InputError(f"SLURM tasks per node {tasks_per_node!r}: no entry for node {node}")
    return counts[node]


def _check(environment: LaunchEnvironment, source: str) -> LaunchEnvironment:
    if environment.world_size < 1 or not 0 <= environment.rank < environment.world_size:
        raise InputError(
            f"{source}: rank {environment.rank} is not in [0, {environment.world_size}) "
            "(world size)"
        )
    if environment.local_rank < 0:
        raise InputError(f"{source}: local rank {environment.local_rank} is negative")
    return environment


def launch_environment(environ: Mapping[str, str] | None = None) -> LaunchEnvironment:
    """This rank's ``LaunchEnvironment`` (default: ``os.environ``).

    Raises
    ------
    InputError
        A launcher variable that is not an integer, a rank outside the world,
        or a distributed launch without a rendezvous address.
    """
    env = os.environ if environ is None else environ
    host = socket.gethostname()
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _integer(env, "WORLD_SIZE")
        if world > 1 and not env.get("MASTER_ADDR"):
            raise InputError(
                f"environment: WORLD_SIZE is {world} but MASTER_ADDR is not set "
                "(start the ranks with torchrun, or set MASTER_ADDR and MASTER_PORT)"
            )
        return _check(
            LaunchEnvironment(
                rank=_integer(env, "RANK"),
                world_size=world,
                local_rank=_integer(env, "LOCAL_RANK", 0),
                master_addr=env.get("MASTER_ADDR") if world > 1 else None,
                master_port=_integer(env, "MASTER_PORT") if world > 1 else None,
                launcher="torchrun",
                agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
                host=host,
                local_world_size=_integer(env, "LOCAL_WORLD_SIZE", 1),
            ),
            "RANK/WORLD_SIZE",
        )
    tasks_name = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and tasks_name in env:
        world = _integer(env, tasks_name)
        if world > 1:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or host
            port = 20000 + _integer(env, "SLURM_JOB_ID", 0) % 20000
            per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
            local = (
                1
                if not per_node
                else slurm_tasks_on_node(per_node, _integer(env, "SLURM_NODEID", 0))
            )
            return _check(
                LaunchEnvironment(
                    rank=_integer(env, "SLURM_PROCID"),
                    world_size=world,
                    local_rank=_integer(env, "SLURM_LOCALID", 0),
                    master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodes),
                    master_port=_integer(env, "MASTER_PORT", port),
                    launcher="slurm",
                    host=host,
                    local_world_size=local,
                ),
                f"SLURM_PROCID/{tasks_name}",
            )
    return LaunchEnvironment(0, 1, 0, None, None, "single", host=host)


def is_distributed_launch(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of several ranks (a world size above 1)."""
    return launch_environment(environ).world_size > 1


def rank_device(environment: LaunchEnvironment, gpu: str | None) -> torch.device:
    """The device of this rank, from RELION's ``--gpu`` and the local rank.

    Without ``--gpu``: the CPU. ``--gpu`` without ids: GPU ``local_rank % count``.
    ``--gpu "0:1:2"``: one entry per rank of a node (colons), the entry of
    ``local_rank % entries``; within an entry RELION's commas list a rank's
    threads' GPUs, of which the first is taken.

    Raises
    ------
    InputError
        A GPU asked for where none is visible, or an id that does not exist.
    """
    if gpu is None:
        return torch.device("cpu")
    where = f"rank {environment.rank} on {environment.host or 'this host'}"
    if not torch.cuda.is_available():
        raise InputError(f"--gpu: no CUDA device is visible to {where} (leave out --gpu)")
    count = torch.cuda.device_count()
    entries = [entry.strip() for entry in gpu.split(":") if entry.strip()]
    if not entries:
        return torch.device("cuda", environment.local_rank % count)
    entry = entries[environment.local_rank % len(entries)]
    first = entry.split(",")[0].strip()
    if not first.isdigit():
        raise InputError(f"--gpu {gpu}: {first!r} is not a device id (expected e.g. 0:1:2)")
    if int(first) >= count:
        raise InputError(f"--gpu {gpu}: device {first} does not exist for {where} ({count} found)")
    return torch.device("cuda", int(first))


def ranks_on_device(environment: LaunchEnvironment, gpu: str | None) -> int:
    """How many of this node's ranks take this rank's device (1 on the CPU).

    RELION's ``--gpu 0:0:1:1`` (or more ranks than GPUs) puts several ranks on one
    GPU: each rank's host work (Python, launches) then overlaps the others' device work.
    """
    mine = rank_device(environment, gpu)
    if mine.type != "cuda":
        return 1
    locals_ = range(max(environment.local_world_size, environment.local_rank + 1))
    return sum(
        rank_device(dataclasses.replace(environment, local_rank=r), gpu) == mine for r in locals_
    )


def backend_for(device: torch.device, ranks_per_device: int = 1) -> str:
    """torch.distributed backend for tensors on ``device``: NCCL on GPUs, gloo on CPUs and
    where several ranks share a GPU (NCCL does not allow two ranks on one device)."""
    return "nccl" if device.type == "cuda" and ranks_per_device == 1 else "gloo"
