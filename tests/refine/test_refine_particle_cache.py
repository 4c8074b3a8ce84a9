"""The run's particle cache (``refine.initialise.particle_cache``): half of the host's
available memory, shared by the ranks on the host, and logged once."""

import logging
from pathlib import Path

import pytest

from cryorefine.io import load_particles
from cryorefine.refine import initialise
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.tomo import HOST_MEMORY_SHARE


@pytest.fixture(scope="module")
def particles_star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache_sim")
    simulate_dataset(
        SimulationOptions(output_dir=folder, n_particles=4, box_size=8, pixel_size_angst=20.0,
                          data_format="relion4", seed=3)
    )  # fmt: skip
    return folder / "particles.star"


@pytest.mark.parametrize(("ranks", "expected_share"), [(None, 1), ("1", 1), ("4", 4)])
def test_the_budget_is_half_the_available_memory_shared_by_the_hosts_ranks(
    particles_star: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    ranks: str | None,
    expected_share: int,
) -> None:
    available = 64 * 10**9
    monkeypatch.setattr(initialise, "available_host_bytes", lambda: available)
    if ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    particles = load_particles(particles_star)
    with caplog.at_level(logging.INFO, logger=initialise.__name__):
        cache = initialise.particle_cache(particles)
    assert cache is not None
    assert cache.n_particles == len(particles) == 4
    assert cache.budget_bytes == int(HOST_MEMORY_SHARE * available / expected_share)
    assert cache.held_bytes == 0
    (message,) = [r.getMessage() for r in caplog.records if r.name == initialise.__name__]
    assert f"up to {cache.budget_bytes / 1e9:.1f} GB" in message
    assert ("shared by 4 ranks" in message) == (expected_share == 4)
