"""Fixtures shared by every test: where the shared RELION files are, and devices."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=_devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each test that takes ``device`` runs on the CPU and, where present, on CUDA."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (RELION test files, tutorial metadata), beside the clone."""
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def relion_testdata(shared_dir: Path) -> Path:
    """Real RELION output files: shared/testdata/relion/."""
    return shared_dir / "testdata" / "relion"


@pytest.fixture(scope="session")
def hiv_tutorial(shared_dir: Path) -> Path:
    """Metadata of RELION 5's HIV tutorial run: shared/data/hiv_tutorial_relion5/."""
    return shared_dir / "data" / "hiv_tutorial_relion5"
