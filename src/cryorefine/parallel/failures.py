"""Which rank stopped, and where: the message a parallel run ends with.

Every rank keeps two records in the rendezvous store: where it is (``mark``,
before each collective step) and, if its own code raised, what went wrong
(``record_failure``). When a collective fails on a rank (a peer's connection
closed, or the timeout passed), ``explain`` reads the other ranks' records and
names the ranks that failed or fell behind, with their host, half set and last
position. With torchrun the store lives in the launcher's agent and outlives
any rank; under ``srun`` rank 0 holds it: when rank 0 has stopped, the message
says so, and rank 0's own message (in run.log: rank 0 writes) names the ranks
that failed, if it was not rank 0 itself.
"""

import logging
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

__all__ = ["RankFailure", "RankMonitor", "open_store"]

logger = logging.getLogger(__name__)


class RankFailure(RuntimeError):
    """A parallel run cannot go on: another rank stopped, hangs, or a collective failed."""


def open_store(host: str, port: int, *, prefix: str, timeout_s: float = 30.0) -> dist.Store | None:
    """A client of the rendezvous store under ``prefix``; None if it cannot be reached."""
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, OSError) as error:
        logger.warning("the rendezvous store at %s:%d cannot be reached: %s", host, port, error)
        return None
    return dist.PrefixStore(prefix, store)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": .")


class RankMonitor:
    """This rank's records in the store, and the explanation of a failed collective.

    Parameters
    ----------
    store
        The store (``open_store``); None: nothing is recorded, messages say so.
    rank, world_size
        This rank and the number of ranks.
    host
        This rank's node name.
    half_sets_of
        The half sets a rank scores (``groups.half_sets_of_rank``).
    """

    def __init__(
        self,
        store: dist.Store | None,
        *,
        rank: int,
        world_size: int,
        host: str,
        half_sets_of: Callable[[int], tuple[int, ...]],
    ) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.host = host
        self.half_sets_of = half_sets_of
        self.position = "start-up"

    def describe(self, rank: int, host: str | None = None) -> str:
        """``rank 2 (host node3, half set 2)``."""
        halves = " and ".join(str(h) for h in self.half_sets_of(rank))
        where = f"host {host}, " if host else ""
        return f"rank {rank} ({where}half set {halves})"

    def _set(self, key: str, value: str) -> None:
        if self.store is None:
            return
        try:
            self.store.set(key, f"{self.host}|{value}")
        except (RuntimeError, OSError) as error:  # the store's host may be gone
            logger.debug("could not record %s in the store: %s", key, error)

    def mark(self, position: str) -> None:
        """Record that this rank has reached ``position`` (e.g. "the reduction of iteration 3")."""
        self.position = position
        self._set(f"at/{self.rank}", position)

    def record_failure(self, error: BaseException) -> None:
        """Record this rank's own error, for the other ranks' messages."""
        self._set(f"failed/{self.rank}", f"{_first_line(error)} (at {self.position})")

    def _read(self, key: str) -> tuple[str, str] | None:
        assert self.store is not None
        if not self.store.check([key]):
            return None
        host, _, value = self.store.get(key).decode().partition("|")
        return host, value

    def _others(self) -> list[str]:
        """One line per other rank that failed or is elsewhere; raises if the store is gone."""
        lines = []
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            failed = self._read(f"failed/{rank}")
            if failed is not None:
                lines.append(f"{self.describe(rank, failed[0])} failed: {failed[1]}")
                continue
            seen = self._read(f"at/{rank}")
            if seen is None:
                lines.append(f"{self.describe(rank)} never reported in")
            elif seen[1] != self.position:
                lines.append(
                    f"{self.describe(rank, seen[0])} did not arrive (stopped, hung or still "
                    f"busy): last seen at {seen[1]}"
                )
        return lines

    def explain(self, error: BaseException) -> str:
        """The message of a collective that failed on this rank at its current position."""
        head = (
            f"{self.describe(self.rank, self.host)} of {self.world_size} ranks could not "
            f"finish {self.position}: {_first_line(error)}"
        )
        if self.store is None:
            return f"{head}. No rank records are available (the store could not be reached)."
        try:
            others = self._others()
        except (RuntimeError, OSError) as store_error:
            return (
                f"{head}. The rendezvous store does not answer ({_first_line(store_error)}): "
                "without torchrun rank 0 holds it, so rank 0 has stopped; if rank 0's own "
                "message (run.log) names no other rank, rank 0 is the one that failed."
            )
        if not others:
            return (
                f"{head}. Every other rank reached the same point and recorded no error: "
                "look for a rank killed (out of memory, time limit) in the launcher's output."
            )
        return f"{head}. " + "; ".join(others) + "."
