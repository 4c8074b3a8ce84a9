"""How the driver shares an iteration's work between processes (ranks).

The driver never imports ``torch.distributed``: it is handed a ``Communicator``
(ARCHITECTURE.md, "Parallel runs"). ``SingleProcess``, the default, runs both
half sets here on all their particles and reduces nothing. ``parallel``
builds the distributed one: each rank scores its share of one half set, and
``combine`` sums the shares of each half set and makes both halves' sums and
all new poses known to every rank, so that every rank runs the same M-step,
holds the same state and could write the same files (only ``is_writer`` does).
"""

from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from cryorefine.refine.half_pass import PoseUpdate
from cryorefine.refine.half_sums import HalfSetSums

__all__ = ["Communicator", "SingleProcess", "share_of_rows"]

T = TypeVar("T")


@runtime_checkable
class Communicator(Protocol):
    """What the driver asks of the processes that run a refinement together.

    ``halves_here``, ``local_rows`` and ``is_writer`` say what this rank does;
    ``combine``, ``same_everywhere`` and ``barrier`` are collective: every rank
    calls them, in the same order, once per iteration.
    """

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the output files (exactly one rank does)."""
        ...

    def halves_here(self) -> tuple[int, ...]:
        """The half sets (1, 2) whose particles this rank scores, in order."""
        ...

    def local_rows(self, half: int, rows: np.ndarray, *, block_size: int) -> np.ndarray:
        """This rank's share of ``rows`` (the half set's rows of the particle table)."""
        ...

    def combine(
        self,
        sums_by_half: dict[int, HalfSetSums],
        updates_by_half: dict[int, PoseUpdate],
        *,
        iteration: int,
    ) -> tuple[dict[int, HalfSetSums], list[PoseUpdate]]:
        """Both half sets' total sums, and the pose updates of every rank, on every rank.

        ``sums_by_half`` and ``updates_by_half`` hold this rank's shares of the
        half sets in ``halves_here``. The totals sum the tensors and the scalar
        fields over the ranks of each half set.
        """
        ...

    def same_everywhere(self, value: T) -> T:
        """The writer's ``value`` (small, picklable) on every rank."""
        ...

    def barrier(self) -> None:
        """Wait until every rank is here (after the writer's files are whole)."""
        ...


def share_of_rows(rows: np.ndarray, *, index: int, count: int, block_size: int = 1) -> np.ndarray:
    """Share ``index`` of ``count``: blocks of ``block_size`` rows dealt round-robin.

    Block ``j`` (``rows[j * block_size : (j + 1) * block_size]``) goes to share
    ``j % count``; the shares are disjoint, cover ``rows``, keep its order, and
    differ by at most one block. With ``block_size`` equal to the E-step's batch
    size every batch a rank scores is a batch the single-process run scores, so
    each particle's scores are computed the same way whatever the number of ranks.
    """
    if not 0 <= index < count:
        raise ValueError(f"share index {index} is not in [0, {count})")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    blocks = np.arange(len(rows)) // block_size
    return np.asarray(rows[blocks % count == index])


class SingleProcess:
    """One process: both half sets here, all rows, no reduction, writes the files."""

    @property
    def is_writer(self) -> bool:
        """The only process writes."""
        return True

    def halves_here(self) -> tuple[int, ...]:
        """Half set 1, then half set 2."""
        return (1, 2)

    def local_rows(self, half: int, rows: np.ndarray, *, block_size: int) -> np.ndarray:
        """All of ``rows``."""
        return rows

    def combine(
        self,
        sums_by_half: dict[int, HalfSetSums],
        updates_by_half: dict[int, PoseUpdate],
        *,
        iteration: int,
    ) -> tuple[dict[int, HalfSetSums], list[PoseUpdate]]:
        """The sums and updates as they are (this process scored every particle)."""
        return dict(sums_by_half), [updates_by_half[half] for half in sorted(updates_by_half)]

    def same_everywhere(self, value: T) -> T:
        """``value`` itself."""
        return value

    def barrier(self) -> None:
        """Nothing to wait for."""
