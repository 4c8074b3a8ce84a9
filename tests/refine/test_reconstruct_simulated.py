"""`reconstruct` on data made by `simulate`: every flavour, noise-free and noisy.

Noise-free particles with their true poses give back the truth to near
Nyquist (the issue's bar: FSC 0.143 within 10% of Nyquist). With noise, the
half-set FSC predicts the FSC of the full map against the truth through
FSC_truth = sqrt(2 FSC_half / (1 + FSC_half)) (Rosenthal & Henderson 2003),
within the sampling noise of each shell.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.cli.main import main
from cryorefine.fourier import fsc, shell_counts, to_fourier
from cryorefine.io import read_mrc
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.simulate.evaluate import compare_map_to_truth

BOX, PIXEL = 32, 5.4


def simulated(folder: Path, data_format: str, *, count: int, snr: float, seed: int) -> Path:
    simulate_dataset(
        SimulationOptions(
            output_dir=folder,
            symmetry="C6",
            n_particles=count,
            box_size=BOX,
            pixel_size_angst=PIXEL,
            snr=snr,
            data_format=data_format,
            seed=seed,
        )
    )
    return folder


def volume(path: Path) -> torch.Tensor:
    data, _ = read_mrc(path)
    return torch.as_tensor(np.asarray(data, dtype=np.float32))


@pytest.mark.parametrize(
    ("data_format", "count"), [("spa", 300), ("subtomo3d", 24), ("relion4", 24)]
)
def test_true_poses_of_noise_free_particles_reach_nyquist(tmp_path, data_format, count):
    sim = simulated(tmp_path / "sim", data_format, count=count, snr=float("inf"), seed=3)
    assert (
        main(
            [
                "reconstruct",
                "--i",
                str(sim / "truth_particles.star"),
                "--o",
                str(tmp_path / "map.mrc"),
                "--ctf",
            ]
        )
        == 0
    )
    _, resolution, _ = compare_map_to_truth(
        volume(tmp_path / "map.mrc"),
        volume(sim / "truth.mrc"),
        torch.eye(3, dtype=torch.float64),
        pixel_size_angst=PIXEL,
    )
    nyquist = 2 * PIXEL
    assert resolution <= nyquist / 0.9


def test_half_set_fsc_predicts_the_fsc_against_the_truth(tmp_path):
    sim = simulated(tmp_path / "sim", "spa", count=600, snr=0.5, seed=5)
    maps = {}
    for name, extra in (("half1", ["--subset", "1"]), ("half2", ["--subset", "2"]), ("all", [])):
        assert (
            main(
                [
                    "reconstruct",
                    "--i",
                    str(sim / "truth_particles.star"),
                    "--o",
                    str(tmp_path / f"{name}.mrc"),
                    "--ctf",
                    *extra,
                ]
            )
            == 0
        )
        maps[name] = to_fourier(volume(tmp_path / f"{name}.mrc").double(), 3)
    truth = to_fourier(volume(sim / "truth.mrc").double(), 3)
    half = fsc(maps["half1"], maps["half2"], ndim=3)
    against_truth = fsc(maps["all"], truth, ndim=3)
    predicted = torch.sqrt(2 * half.clamp(min=0) / (1 + half.clamp(min=0)))
    # Sampling noise of an FSC over N independent complex coefficients: ~1/sqrt(N);
    # the prediction combines two such estimates, so allow 3 * 2 / sqrt(N) per shell.
    counts = shell_counts(BOX, 3, device=torch.device("cpu"))
    shells = torch.arange(2, BOX // 2)
    tolerance = 6.0 / torch.sqrt(counts[shells])
    difference = (against_truth[shells] - predicted[shells]).abs()
    assert bool((difference <= tolerance).all()), (difference - tolerance).max()
    # The data are noisy enough that the relation is tested where it matters:
    # the half-set FSC falls through 0.5 inside the box.
    assert float(half[shells].min()) < 0.5
