"""``--norm``: each particle's normalisation is estimated and used (rlnNormCorrection).

SPA particles of the embedded C6 hexamer (as the end-to-end test), every other
image multiplied by 1.5 (signal and noise: a normalisation error). RELION's
update sets a particle's correction to the standard deviation of its residual in
its own units, so after a few iterations with ``--norm`` the corrections of the
multiplied images are 1.5 times the others', and the model's
``rlnNormCorrectionAverage`` is their mean over the half set.
"""

from pathlib import Path

import numpy as np
import pytest
from intensity_cases import refine_arguments, simulate_multiplied

from cryorefine.cli.main import main
from cryorefine.io import read_star
from cryorefine.refine.options import RefineOptions

FACTOR = 1.5
ADAPTIVE_FRACTION = RefineOptions().adaptive_fraction  # 0.999, RELION's default


@pytest.fixture(scope="module")
def refined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("refine_norm")
    sim = folder / "sim"
    simulate_multiplied(sim, seed=2028, multiplied=np.arange(200) % 2 == 0, factor=FACTOR)
    particles = sim / "particles.star"
    arguments = refine_arguments(particles, sim, folder / "Refine" / "run", "--norm", "--iter", "4")
    assert main(arguments) == 0
    return folder / "Refine"


def test_corrections_of_the_multiplied_images_are_the_factor_times_the_others(
    refined: Path,
) -> None:
    data = read_star(refined / "run_it004_data.star")["particles"]
    norm = np.asarray(data["rlnNormCorrection"], dtype=float)
    multiplied = np.arange(len(norm)) % 2 == 0
    ratio = np.median(norm[multiplied]) / np.median(norm[~multiplied])
    assert ratio == pytest.approx(FACTOR, rel=0.05)


def test_the_model_keeps_the_mean_correction_of_its_half_set(refined: Path) -> None:
    data = read_star(refined / "run_it004_data.star")["particles"]
    norm = np.asarray(data["rlnNormCorrection"], dtype=float)
    half = np.asarray(data["rlnRandomSubset"], dtype=int)
    for h in (1, 2):
        general = read_star(refined / f"run_it004_half{h}_model.star")["model_general"]
        average = float(np.asarray(general["rlnNormCorrectionAverage"]).ravel()[0])
        # the sum of the corrections over the summed weights: each particle's kept weights
        # sum to at most 1 and, after the fine pass's cut, to at least --adaptive_fraction
        mean = norm[half == h].mean()
        assert mean * (1 - 1e-9) <= average <= mean / ADAPTIVE_FRACTION * (1 + 1e-9)
