"""Helpers of the parallel tests: free ports, quiet environments, command lines, a tiny data
set, and the final maps of its runs compared."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from cryorefine.cli.main import main
from cryorefine.fourier import fsc, to_fourier
from cryorefine.io import read_mrc, read_star

PIXEL = 7.2
BOX = 24
FINAL_MAPS = ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc")


def free_port() -> int:
    """A TCP port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_thread_environment(**extra: str) -> dict[str, str]:
    """This environment with one thread per process (2 cores shared by several ranks)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        and not key.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def cryorefine_command(ranks: int, arguments: list[str]) -> list[str]:
    """``python -m cryorefine ...``, or the same under ``torchrun --nproc_per_node ranks``."""
    if ranks == 1:
        return [sys.executable, "-m", "cryorefine", *arguments]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "cryorefine",
        *arguments,
    ]


def run_cryorefine(
    ranks: int, arguments: list[str], *, cwd: Path, timeout_s: float = 180.0
) -> subprocess.CompletedProcess[str]:
    """Run a command line; the result (stdout, stderr, status) is returned, not checked."""
    return subprocess.run(
        cryorefine_command(ranks, arguments),
        cwd=cwd,
        env=one_thread_environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def simulate_tiny_spa(folder: Path) -> Path:
    """A tiny simulated SPA data set (box 24, 48 particles, C6) in ``folder``."""
    arguments = ["simulate", "--o", str(folder), "--format", "spa", "--box", str(BOX),
                 "--n_particles", "48", "--angpix", str(PIXEL), "--snr", "10", "--sym", "C6",
                 "--seed", "3"]  # fmt: skip
    assert main(arguments) == 0
    return folder


def refine_arguments(sim: Path, output_root: Path) -> list[str]:
    """``refine`` of ``simulate_tiny_spa``'s data to convergence, in batches of 8 particles."""
    return ["refine", "--i", str(sim / "particles.star"), "--ref", str(sim / "reference.mrc"),
            "--o", str(output_root), "--ini_high", "40", "--ctf", "--particle_diameter", "150",
            "--healpix_order", "1", "--auto_local_healpix_order", "3", "--offset_range", "3",
            "--offset_step", "1", "--sym", "C6", "--flatten_solvent",
            "--low_resol_join_halves", "40", "--auto_ignore_angles", "--auto_resol_angles",
            "--batch_size", "8", "--random_seed", "11"]  # fmt: skip


def final_map(path: Path) -> np.ndarray:
    """A written map, float32."""
    volume, _ = read_mrc(path)
    return np.asarray(volume, dtype=np.float32)


def final_shell(folder: Path) -> int:
    """The Fourier shell of a finished run's final resolution (``run_model.star``)."""
    general = read_star(folder / "run_model.star")["model_general"]
    return int(BOX * PIXEL / float(general["rlnCurrentResolution"]))


def maps_fsc(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """FSC between two maps, per shell, in float64."""
    return fsc(
        to_fourier(torch.as_tensor(a, dtype=torch.float64), 3),
        to_fourier(torch.as_tensor(b, dtype=torch.float64), 3),
    )
