"""A parallel run from start to end: groups, device and communicator; records and teardown.

``cli/refine.py`` wraps ``refine_run`` in ``parallel_session``. An error raised
by this rank's own code is recorded in the store before it propagates, so
the other ranks' messages name this rank and its error. The groups are left
at the end; after a failure the process ends (the launcher stops the others).
"""

import contextlib
import logging
from collections.abc import Iterator

import torch

from cryorefine.parallel.communicator import DistributedCommunicator
from cryorefine.parallel.failures import RankFailure
from cryorefine.parallel.groups import start_process_groups, stop_process_groups
from cryorefine.parallel.launch import LaunchEnvironment, rank_device, ranks_on_device

__all__ = ["DEFAULT_TIMEOUT_S", "parallel_session"]

logger = logging.getLogger(__name__)

#: How long a rank waits at a collective for the others (the slowest E-step share).
DEFAULT_TIMEOUT_S = 2 * 3600.0

#: Share of a GPU's memory that the ranks on it may hold together; each takes its part.
#: The rest stays for what the caching allocator does not count (CUDA contexts, the
#: texture arrays of ``fourier.texture``, the FFT plans' work areas).
SHARED_DEVICE_MEMORY = 0.9


@contextlib.contextmanager
def parallel_session(
    environment: LaunchEnvironment,
    *,
    gpu: str | None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Iterator[tuple[DistributedCommunicator, torch.device]]:
    """Start this rank's groups; yield its communicator and device; leave the groups.

    Ranks of a node that share a GPU (``launch.ranks_on_device``) take gloo and
    split the GPU's memory (``SHARED_DEVICE_MEMORY``) evenly.

    Raises
    ------
    InputError
        ``--gpu`` names a device this rank cannot use (``launch.rank_device``).
    RankFailure
        A collective failed; the message names the ranks that failed or fell behind.
    """
    device = rank_device(environment, gpu)
    sharing = ranks_on_device(environment, gpu)
    if sharing > 1:  # each rank keeps to its part of the card (memory_budget follows it)
        torch.cuda.set_per_process_memory_fraction(SHARED_DEVICE_MEMORY / sharing, device)
        logger.info("%d ranks share %s: each holds at most %.0f %% of its memory", sharing,
                    device, 100 * SHARED_DEVICE_MEMORY / sharing)  # fmt: skip
    groups = start_process_groups(
        environment, device=device, timeout_s=timeout_s, ranks_per_device=sharing
    )
    communicator = DistributedCommunicator(groups)
    try:
        yield communicator, device
    except BaseException as error:
        # The groups are not left after a failure: a collective may still be pending
        # (NCCL's teardown would wait on it); the process ends, which closes them.
        if not isinstance(error, RankFailure):
            groups.monitor.record_failure(error)
        raise
    groups.monitor.mark("the end of the run")
    stop_process_groups(groups)
