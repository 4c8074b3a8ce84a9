"""Particle files kept in memory after their first read (``tomo.ParticleCache``).

The cache returns exactly the values it was given, for rows in any order, in runs or
one by one; it keeps nothing past its budget and lets go of a buffer none of whose
rows it still holds. ``particle_batches`` with a cache gives batches equal to those
read from the files (the same stored values, so bit for bit), and once every row has
been read it opens no file: the files are taken away and the batches still come. The
memory it may count on is the host's available memory, bounded by what a memory cgroup
(a container's or a batch job's limit, v1 or v2) leaves: checked on fake ``/proc`` and
``/sys`` trees.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.io import load_particles
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.tomo import ParticleCache, available_host_bytes, particle_batches


def _stored(rows: int, seed: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((rows, 3, 4, 5), generator=generator).to(dtype)


def _gathered(cache: ParticleCache, rows: list[int]) -> torch.Tensor | None:
    layout = cache.layout("image")
    assert layout is not None
    out = torch.full((len(rows), *layout[0]), -7.0, dtype=layout[1])
    return out if cache.gather("image", np.array(rows), out) else None


def test_held_rows_come_back_exactly_in_any_order() -> None:
    cache = ParticleCache(n_particles=10, budget_bytes=10**6)
    first, second = _stored(4, 1), _stored(3, 2)
    assert cache.hold("image", np.array([7, 2, 3, 4]), first)
    assert cache.hold("image", np.array([0, 9, 5]), second)
    assert cache.layout("image") == ((3, 4, 5), torch.float16)
    by_row = {7: first[0], 2: first[1], 3: first[2], 4: first[3], 0: second[0], 9: second[1]}
    by_row[5] = second[2]
    for rows in ([2, 3, 4], [4, 3, 2], [9, 2, 3, 0, 7, 5], [5]):
        got = _gathered(cache, rows)
        assert got is not None
        assert torch.equal(got, torch.stack([by_row[r] for r in rows]))


def test_rows_not_held_are_not_gathered() -> None:
    cache = ParticleCache(n_particles=6, budget_bytes=10**6)
    assert cache.layout("image") is None  # nothing held yet
    cache.hold("image", np.array([0, 1]), _stored(2, 3))
    assert cache.holds("image", np.array([1, 0]))
    assert not cache.holds("image", np.array([0, 2]))
    out = torch.zeros((2, 3, 4, 5), dtype=torch.float16)
    assert not cache.gather("image", np.array([0, 2]), out)
    assert torch.count_nonzero(out) == 0  # untouched
    assert not cache.gather("ctf", np.array([0]), out[:1])  # another kind
    assert cache.layout("ctf") is None


def test_nothing_is_held_past_the_budget() -> None:
    one = _stored(2, 4)
    size = one.numel() * one.element_size()
    cache = ParticleCache(n_particles=6, budget_bytes=2 * size)
    assert cache.hold("image", np.array([0, 1]), one)
    assert cache.hold("image", np.array([2, 3]), _stored(2, 5))
    assert not cache.hold("image", np.array([4, 5]), _stored(2, 6))
    assert cache.held_bytes == 2 * size
    assert not cache.holds("image", np.array([4]))
    assert not ParticleCache(n_particles=2, budget_bytes=0).hold("image", np.array([0, 1]), one)


def test_a_buffer_whose_rows_are_all_held_again_is_let_go() -> None:
    cache = ParticleCache(n_particles=8, budget_bytes=10**6)
    early, late = _stored(2, 7), _stored(4, 8)
    size = early.numel() * early.element_size()
    cache.hold("image", np.array([1, 2]), early)
    cache.hold("image", np.array([0, 1, 2, 3]), late)  # rows 1 and 2 held again
    assert cache.held_bytes == late.numel() * late.element_size()  # early let go
    got = _gathered(cache, [2, 1])
    assert got is not None
    assert torch.equal(got, late[[2, 1]])
    cache.hold("image", np.array([5, 3]), _stored(2, 9))  # late still holds 0, 1, 2
    assert cache.held_bytes == late.numel() * late.element_size() + size


# --- particle_batches with a cache --------------------------------------------------------


def _simulate(folder: Path, data_format: str) -> Path:
    simulate_dataset(
        SimulationOptions(
            output_dir=folder,
            n_particles=7,
            box_size=8,
            pixel_size_angst=20.0,
            max_offset_px=1.0,
            data_format=data_format,
            seed=6,
        )
    )
    return folder / "particles.star"


def _equal_batches(got: list, want: list) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.rows, b.rows)
        assert torch.equal(a.data_ft, b.data_ft)
        assert torch.equal(a.ctf, b.ctf)
        assert (a.multiplicity is None) == (b.multiplicity is None)
        if a.multiplicity is not None:
            assert torch.equal(a.multiplicity, b.multiplicity)
        assert torch.equal(a.finite, b.finite)


@pytest.mark.parametrize("data_format", ["relion4", "subtomo3d", "spa"])
def test_batches_from_the_cache_equal_those_from_the_files_which_are_not_opened_again(
    tmp_path: Path, device: torch.device, data_format: str
) -> None:
    star = _simulate(tmp_path / "sim", data_format)
    particles = load_particles(star)
    first_order = np.array([6, 0, 3, 1, 5, 2, 4])
    later_order = np.array([2, 3, 4, 0, 6, 1, 5])  # other batches, rows in another order

    def batches(order: np.ndarray, size: int, cache: ParticleCache | None) -> list:
        return list(
            particle_batches(particles, batch_size=size, device=device, rows=order, cache=cache)
        )

    cache = ParticleCache(len(particles), budget_bytes=10**8)
    _equal_batches(batches(first_order, 3, cache), batches(first_order, 3, None))
    want = batches(later_order, 4, None)
    for name in list((tmp_path / "sim").iterdir()):  # every particle file gone
        if name.suffix in (".mrc", ".mrcs") or name.is_dir():
            shutil.rmtree(name) if name.is_dir() else name.unlink()
    _equal_batches(batches(later_order, 4, cache), want)
    assert cache.held_bytes > 0


def test_a_cache_without_budget_leaves_the_files_read_every_time(
    tmp_path: Path, device: torch.device
) -> None:
    star = _simulate(tmp_path / "sim", "relion4")
    particles = load_particles(star)
    cache = ParticleCache(len(particles), budget_bytes=0)
    got = list(particle_batches(particles, batch_size=4, device=device, cache=cache))
    _equal_batches(got, list(particle_batches(particles, batch_size=4, device=device)))
    assert cache.held_bytes == 0
    assert not cache.holds("image", np.arange(len(particles)))


# --- the memory the cache may count on ----------------------------------------------------

GB = 10**9


def _host(tmp_path: Path, cgroup: str, files: dict[str, str]) -> Path:
    """A fake root with ``/proc/meminfo`` (64 GB available), ``/proc/self/cgroup`` and
    cgroup files (paths relative to the root)."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(
        f"MemTotal: {128 * GB // 1024} kB\nMemAvailable: {64 * GB // 1024} kB\n"
    )
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_available_memory_is_the_hosts_without_a_cgroup_limit(tmp_path: Path) -> None:
    v2 = _host(
        tmp_path / "v2",
        "0::/\n",
        {"sys/fs/cgroup/memory.max": "max\n", "sys/fs/cgroup/memory.current": f"{GB}\n"},
    )
    assert available_host_bytes(v2) == 64 * GB
    v1 = _host(
        tmp_path / "v1",
        "4:memory:/job\n",
        {
            "sys/fs/cgroup/memory/job/memory.limit_in_bytes": "9223372036854771712\n",  # none
            "sys/fs/cgroup/memory/job/memory.usage_in_bytes": f"{GB}\n",
        },
    )
    assert available_host_bytes(v1) == 64 * GB
    bare = _host(tmp_path / "bare", "0::/\n", {})  # no cgroup files readable
    assert available_host_bytes(bare) == 64 * GB


def test_a_cgroup_limit_below_the_hosts_memory_bounds_it(tmp_path: Path) -> None:
    v2 = _host(
        tmp_path / "v2",
        "0::/slurm/job7\n",
        {
            "sys/fs/cgroup/slurm/job7/memory.max": f"{16 * GB}\n",
            "sys/fs/cgroup/slurm/job7/memory.current": f"{3 * GB}\n",
        },
    )
    assert available_host_bytes(v2) == 13 * GB
    v1 = _host(
        tmp_path / "v1",
        "9:cpu:/\n4:memory:/docker/c1\n",
        {  # the namespace's root holds the limit
            "sys/fs/cgroup/memory/memory.limit_in_bytes": f"{10 * GB}\n",
            "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{4 * GB}\n",
        },
    )
    assert available_host_bytes(v1) == 6 * GB
    full = _host(
        tmp_path / "full",
        "0::/\n",
        {"sys/fs/cgroup/memory.max": f"{GB}\n", "sys/fs/cgroup/memory.current": f"{2 * GB}\n"},
    )
    assert available_host_bytes(full) == 0
