"""Particle files kept in host memory after their first read.

Every iteration reads every particle: for RELION-4 pseudo-subtomograms that is two
files per particle (the image and the CTF volume), 18,874 files per iteration for the
tutorial. On an H100's host a batch of 134 took 59 ms to read with four threads, and
93 ms to make whole (``bench/read_batches_bench.py``); the reading also slowed the
E-step running beside it (how is not pinned down: the GIL's switch interval changed
nothing). In iteration 4 of the tutorial job the phases after each batch's arrival ran
1.5-7 times faster with no reading thread, which then cost 6 s of waiting for data.

``ParticleCache`` keeps each batch's buffer of stored values (the files' own dtype, e.g.
float16) after its first read, within a byte budget. A later batch of held rows is
taken from those buffers, one copy per run of rows held side by side,
with no file opened. The held buffers are pageable memory; a batch is gathered from
them into the reused pinned buffer that file reads use, and copied to the device from
there. Holding the tutorial's 34 GB in pinned buffers, pinned 256 MB at a time while
the E-step ran, made its first iteration two to three times slower; copying from
pageable memory to the device, without the pinned buffer, made every iteration slower.
The values are the files' own, so a batch is the same whether it came from the files
or from the cache. RELION's ``--preread_images`` reads all particles into memory at the
start; this keeps them as they are first read, where they fit.
"""

import os
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["HOST_MEMORY_SHARE", "ParticleCache", "available_host_bytes"]

HOST_MEMORY_SHARE = 0.5
"""The share of the host's available memory (at the run's start, divided among the ranks
on the host) that the cache may take."""


def available_host_bytes(root: Path = Path("/")) -> int:
    """The memory this process may still take, in bytes: the host's ``MemAvailable``, or
    less where the process's memory cgroup (a container's or a batch job's limit, v1 or
    v2) leaves less below its limit. ``root``: where ``/proc`` and ``/sys`` are found."""
    available = 0
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 0
    headroom = _cgroup_headroom(root)
    return available if headroom is None else min(available, headroom)


def _cgroup_headroom(root: Path) -> int | None:
    """Limit minus usage of the process's memory cgroup (the smallest found, both its own
    folder and the namespace's root tried), or None where no limit is set or readable."""
    try:
        entries = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    places = []
    for entry in entries:
        _, controllers, path = entry.split(":", 2)
        if controllers == "":  # cgroup v2
            base, files = root / "sys/fs/cgroup", ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1
            base, files = root / "sys/fs/cgroup/memory", (
                "memory.limit_in_bytes", "memory.usage_in_bytes")  # fmt: skip
        else:
            continue
        places += [(base / path.lstrip("/"), files), (base, files)]
    headrooms = []
    for folder, (limit_file, usage_file) in places:
        try:
            limit = (folder / limit_file).read_text().strip()
            usage = int((folder / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit != "max" and limit.isdigit() and int(limit) < 2**60:  # v1: ~2**63, none
            headrooms.append(max(0, int(limit) - usage))
    return min(headrooms) if headrooms else None


class ParticleCache:
    """Stored particle values by kind (``"image"``, ``"ctf"``) and particle row.

    ``budget_bytes``: the most the held buffers may take; a batch that would pass it is
    not held (it is read from its files every time). ``n_particles``: rows are
    ``0 .. n_particles - 1``.
    """

    def __init__(self, n_particles: int, budget_bytes: int) -> None:
        self.n_particles = n_particles
        self.budget_bytes = max(0, int(budget_bytes))
        self.held_bytes = 0
        self._buffers: list[Tensor] = []  # a let-go buffer is replaced by an empty tensor
        self._buffer: dict[str, np.ndarray] = {}  # kind -> each row's buffer (-1: not held)
        self._index: dict[str, np.ndarray] = {}  # kind -> each row's index in its buffer

    def hold(self, kind: str, rows: Int[np.ndarray, " b"], buffer: Tensor) -> bool:
        """Keep ``buffer`` (``(b, ...)`` host tensor, row ``i`` the values of ``rows[i]``)
        if it fits the budget; whether it was kept. The caller must not write to it again."""
        size = buffer.numel() * buffer.element_size()
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != buffer.shape[0] or not self.accepts(size):
            return False
        if kind not in self._buffer:
            self._buffer[kind] = np.full(self.n_particles, -1, dtype=np.int64)
            self._index[kind] = np.zeros(self.n_particles, dtype=np.int64)
        replaced = set(self._buffer[kind][rows].tolist()) - {-1}
        self._buffer[kind][rows] = len(self._buffers)
        self._index[kind][rows] = np.arange(len(rows))
        self._buffers.append(buffer)
        self.held_bytes += size
        for owner in replaced:  # a buffer none of whose rows it still holds is let go
            if not (self._buffer[kind] == owner).any():
                gone = self._buffers[owner]
                self._buffers[owner] = torch.empty(0)
                self.held_bytes -= gone.numel() * gone.element_size()
        return True

    def accepts(self, nbytes: int) -> bool:
        """Whether a buffer of ``nbytes`` would fit the budget now."""
        return self.held_bytes + nbytes <= self.budget_bytes

    def holds(self, kind: str, rows: Int[np.ndarray, " b"]) -> bool:
        """Whether every one of ``rows`` is held for ``kind``."""
        owner = self._buffer.get(kind)
        return owner is not None and len(rows) > 0 and bool((owner[rows] >= 0).all())

    def layout(self, kind: str) -> tuple[tuple[int, ...], torch.dtype] | None:
        """The shape of one particle's values and their stored dtype (None: none held)."""
        owner = self._buffer.get(kind)
        held = None if owner is None else owner[owner >= 0]
        if held is None or len(held) == 0:
            return None
        first = self._buffers[held[0]]
        return tuple(first.shape[1:]), first.dtype

    def gather(self, kind: str, rows: Int[np.ndarray, " b"], out: Tensor) -> bool:
        """Copy the held values of ``rows`` into ``out`` (``(b, ...)`` host tensor of the
        stored dtype, e.g. a pinned buffer for the device); False, with ``out`` untouched,
        where any row is not held. One copy per run of rows held side by side."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self.holds(kind, rows):
            return False
        owner, index = self._buffer[kind][rows], self._index[kind][rows]
        breaks = np.flatnonzero((owner[1:] != owner[:-1]) | (index[1:] != index[:-1] + 1)) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(rows)]])
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            out[start:end].copy_(
                self._buffers[owner[start]][index[start] : index[start] + end - start]
            )
        return True
