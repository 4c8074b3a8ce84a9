"""``--norm``: each particle's normalisation is estimated and used (rlnNormCorrection).

SPA particles of the embedded C6 hexamer (as the end-to-end test), every other
image multiplied by 1.5 (signal and noise: a normalisation error). RELION's
update sets a particle's correction to the standard deviation of its residual in
its own units, so after a few iterations with ``--norm`` the corrections of the
multiplied images are 1.5 times the others', and the model's
``rlnNormCorrectionAverage`` is their mean over the half set.
"""

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryorefine.cli.main import main
from cryorefine.io import read_star
from cryorefine.simulate import SimulationOptions, simulate_dataset

FACTOR = 1.5


@pytest.fixture(scope="module")
def refined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("refine_norm")
    sim = folder / "sim"
    simulate_dataset(
        SimulationOptions(
            output_dir=sim, symmetry="C6", n_particles=200, box_size=32, pixel_size_angst=5.4,
            snr=10.0, data_format="spa", ref_lowpass_angst=40.0, ref_rotation_deg=15.0, seed=2028,
        )
    )  # fmt: skip
    with mrcfile.open(sim / "particles.mrcs", mode="r+") as stack:
        stack.data[::2] *= FACTOR  # rows are the stack's images in order
    arguments = [
        "refine", "--i", str(sim / "particles.star"), "--ref", str(sim / "reference.mrc"),
        "--o", str(folder / "Refine" / "run"), "--ini_high", "40", "--ctf",
        "--particle_diameter", "150", "--healpix_order", "1", "--auto_local_healpix_order", "3",
        "--offset_range", "3", "--offset_step", "1", "--sym", "C6", "--zero_mask",
        "--flatten_solvent", "--low_resol_join_halves", "40", "--norm", "--iter", "4",
    ]  # fmt: skip
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
        # the mean over the weights, which sum to at most 1 per particle
        assert average >= norm[half == h].mean() * (1 - 1e-9)
        assert average == pytest.approx(norm[half == h].mean(), rel=0.02)
