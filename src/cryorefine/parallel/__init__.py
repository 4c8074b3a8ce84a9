"""parallel layer: torch.distributed groups, one per half set, and the reductions between them.

``parallel_session`` starts a rank (``launch`` reads torchrun's or srun's
variables, ``groups`` joins the world and makes the half-set groups) and yields
a ``DistributedCommunicator`` for ``refine.driver.refine_run``. docs/parallel.md
has the commands.
"""

from cryorefine.parallel.communicator import DistributedCommunicator
from cryorefine.parallel.failures import RankFailure, RankMonitor, open_store
from cryorefine.parallel.groups import (
    ProcessGroups,
    half_sets_of_rank,
    ranks_of_half,
    start_process_groups,
    stop_process_groups,
)
from cryorefine.parallel.launch import (
    LaunchEnvironment,
    backend_for,
    first_slurm_host,
    is_distributed_launch,
    launch_environment,
    rank_device,
    ranks_on_device,
    slurm_tasks_on_node,
)
from cryorefine.parallel.session import DEFAULT_TIMEOUT_S, parallel_session

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedCommunicator",
    "LaunchEnvironment",
    "ProcessGroups",
    "RankFailure",
    "RankMonitor",
    "backend_for",
    "first_slurm_host",
    "half_sets_of_rank",
    "is_distributed_launch",
    "launch_environment",
    "open_store",
    "parallel_session",
    "rank_device",
    "ranks_of_half",
    "ranks_on_device",
    "slurm_tasks_on_node",
    "start_process_groups",
    "stop_process_groups",
]
