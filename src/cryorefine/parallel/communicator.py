"""``DistributedCommunicator``: ``refine.Communicator`` over torch.distributed process groups.

Per iteration (``combine``): a monitored barrier on the control group (every
rank alive, or the ranks that are not named); each half set's group all-reduces
its ranks' sums: the back-projector's data and weight, and one float64 vector
with the noise and multiplicity sums per optics group and shell, the weights
per optics group, the direction masses, the offset moments, the pmax sum, the
particle count and whether multiplicities were summed; then both halves' sums
are broadcast from each half set's first rank to every rank (the half maps
cross between the groups here, for the FSC; through host memory where ranks share
a GPU and gloo carries the sums), and the pose updates of every
rank are gathered on every rank (pickled, over gloo).

Reduction order: each half set's sums are the sums of its ranks' partial sums,
in the order of the backend's all-reduce; they differ from the single-process
sums only by float64 rounding, at most ``(B - 1) * 2**-53 * sum(|term|)`` for
``B`` batches (each batch's contribution is computed identically, ``share_of_rows``).
"""

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from cryorefine.parallel.failures import RankFailure
from cryorefine.parallel.groups import ProcessGroups, half_sets_of_rank, ranks_of_half
from cryorefine.refine.communicator import share_of_rows
from cryorefine.refine.half_pass import PoseUpdate
from cryorefine.refine.half_sums import HalfSetSums

__all__ = ["DistributedCommunicator"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _pack(sums: HalfSetSums) -> list[Tensor]:
    """The sums as three float64 tensors (views of the accumulators, and one vector)."""
    noise = sums.noise.to(torch.float64)
    multiplicity = torch.zeros_like(noise) if sums.multiplicity is None else sums.multiplicity
    scalars = torch.tensor(
        [
            sums.offset_moments_angst2,
            sums.pmax_sum,
            float(sums.count),
            sums.norm_sum,
            0.0 if sums.multiplicity is None else 1.0,
        ],
        dtype=torch.float64,
        device=noise.device,
    )
    vector = torch.cat(
        [
            noise.flatten(),
            multiplicity.to(torch.float64).flatten(),
            sums.weight_per_group.to(torch.float64),
            sums.direction_mass.to(torch.float64),
            sums.scale_sums.to(torch.float64).flatten(),
            scalars,
        ]
    )
    return [torch.view_as_real(sums.data), sums.weight, vector]


def _unpack(packed: list[Tensor], like: HalfSetSums) -> HalfSetSums:
    """``HalfSetSums`` from ``_pack``'s tensors (shapes taken from ``like``)."""
    data, weight, vector = packed
    groups, shells = like.noise.shape
    scale_shape = like.scale_sums.shape
    sizes = [
        groups * shells,
        groups * shells,
        groups,
        like.direction_mass.shape[0],
        scale_shape.numel(),
        5,
    ]
    noise, multiplicity, per_group, mass, scale_sums, scalars = torch.split(vector, sizes)
    # one transfer per iteration
    offsets, pmax_sum, count, norm_sum, has_multiplicity = scalars.tolist()
    return HalfSetSums(
        data=torch.view_as_complex(data),
        weight=weight,
        noise=noise.reshape(groups, shells),
        multiplicity=multiplicity.reshape(groups, shells) if has_multiplicity > 0 else None,
        weight_per_group=per_group,
        offset_moments_angst2=offsets,
        direction_mass=mass,
        pmax_sum=pmax_sum,
        count=round(count),
        scale_sums=scale_sums.reshape(scale_shape),
        norm_sum=norm_sum,
    )


class DistributedCommunicator:
    """One rank of a parallel refinement (``refine.communicator.Communicator``).

    Parameters
    ----------
    groups
        The started groups (``groups.start_process_groups``), 2 ranks or more.
    """

    def __init__(self, groups: ProcessGroups) -> None:
        self.groups = groups
        self.rank = groups.environment.rank
        self.world_size = groups.environment.world_size
        self._iteration = 0

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes."""
        return self.rank == 0

    def halves_here(self) -> tuple[int, ...]:
        """This rank's half set."""
        return half_sets_of_rank(self.rank, self.world_size)

    def local_rows(self, half: int, rows: np.ndarray, *, block_size: int) -> np.ndarray:
        """This rank's blocks of ``rows`` among its half set's ranks (``share_of_rows``)."""
        ranks = ranks_of_half(half, self.world_size)
        self.groups.monitor.mark(f"the E-step of iteration {self._iteration + 1}")
        return share_of_rows(
            rows, index=ranks.index(self.rank), count=len(ranks), block_size=block_size
        )

    @contextlib.contextmanager
    def _collective(self, position: str) -> Iterator[None]:
        """Record ``position``; turn a failed collective into a ``RankFailure`` naming ranks."""
        monitor = self.groups.monitor
        monitor.mark(position)
        try:
            yield
        except RankFailure:
            raise
        except RuntimeError as error:  # torch.distributed's DistError is a RuntimeError
            message = monitor.explain(error)
            logger.error("%s", message)
            raise RankFailure(message) from error

    def _staged(self, tensors: list[Tensor]) -> list[Tensor]:
        """``tensors``, or their copies in host memory where gloo carries GPU tensors (ranks
        that share a GPU): gloo's collectives are for host memory."""
        if self.groups.backend != "gloo" or tensors[0].device.type != "cuda":
            return tensors
        return [tensor.cpu() for tensor in tensors]

    def _all_here(self) -> None:
        """Wait for every rank (gloo's monitored barrier names those that do not come)."""
        dist.monitored_barrier(
            group=self.groups.control,
            timeout=timedelta(seconds=self.groups.timeout_s),
            wait_all_ranks=True,
        )

    def combine(
        self,
        sums_by_half: dict[int, HalfSetSums],
        updates_by_half: dict[int, PoseUpdate],
        *,
        iteration: int,
    ) -> tuple[dict[int, HalfSetSums], list[PoseUpdate]]:
        """Sum each half set over its ranks; both halves' sums and all updates everywhere.

        The tensors of ``sums_by_half`` are reduced in place and reused.
        """
        self._iteration = iteration
        (half,) = self.halves_here()
        mine = sums_by_half[half]
        with self._collective(f"the reduction of iteration {iteration}"):
            self._all_here()
            packed = _pack(mine)
            staged = self._staged(packed)
            for tensor in staged:
                dist.all_reduce(tensor, group=self.groups.half_groups[half])
            totals = {}
            for other in (1, 2):
                buffers = staged if other == half else [torch.zeros_like(t) for t in staged]
                for tensor in buffers:  # from the half set's first rank: the same bits everywhere
                    dist.broadcast(tensor, src=ranks_of_half(other, self.world_size)[0])
                if other == half and staged is not packed:
                    buffers = [home.copy_(part) for home, part in zip(packed, staged, strict=True)]
                elif staged is not packed:
                    buffers = [
                        part.to(home.device) for home, part in zip(packed, buffers, strict=True)
                    ]
                totals[other] = _unpack(buffers, mine)
            gathered: list[PoseUpdate | None] = [None] * self.world_size
            dist.all_gather_object(gathered, updates_by_half[half], group=self.groups.control)
        return totals, [update for update in gathered if update is not None]

    def same_everywhere(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (pickled, over the control group)."""
        with self._collective(f"the agreement on the state of iteration {self._iteration}"):
            holder = [value if self.rank == 0 else None]
            dist.broadcast_object_list(holder, src=0, group=self.groups.control)
        return holder[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        """Wait for every rank, naming those that do not arrive within the timeout."""
        with self._collective(f"the barrier after iteration {self._iteration}"):
            self._all_here()
