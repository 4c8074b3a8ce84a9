"""``--scale``: each group's intensity scale is estimated and used (rlnGroupScaleCorrection).

SPA particles of the embedded C6 hexamer (as the end-to-end test) in two groups
(``rlnGroupName``): the images of one group multiplied by 1.5. After a few
iterations with ``--scale`` the model's scales stand in that ratio, with a
particle-weighted mean of 1, and run_data.star numbers each particle's group.
"""

from pathlib import Path

import numpy as np
import pytest
import starfile
from intensity_cases import refine_arguments, simulate_multiplied

from cryorefine.cli.main import main
from cryorefine.errors import InputError
from cryorefine.io import read_star
from cryorefine.refine.driver import _check_continued_groups

BRIGHT = 1.5


@pytest.fixture(scope="module")
def refined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("refine_scale")
    sim = folder / "sim"
    bright = np.arange(200) % 2 == 0
    simulate_multiplied(sim, seed=2027, multiplied=bright, factor=BRIGHT)
    tables = starfile.read(sim / "particles.star", always_dict=True)
    tables["particles"]["rlnGroupName"] = np.where(bright, "bright", "plain")
    starfile.write(tables, sim / "grouped.star")
    grouped = sim / "grouped.star"
    arguments = refine_arguments(grouped, sim, folder / "Refine" / "run", "--scale", "--iter", "4")
    assert main(arguments) == 0
    return folder / "Refine"


def test_group_scales_stand_in_the_images_ratio_with_a_mean_of_one(refined: Path) -> None:
    for half in (1, 2):
        groups = read_star(refined / f"run_it004_half{half}_model.star")["model_groups"]
        scale = dict(zip(groups["rlnGroupName"], groups["rlnGroupScaleCorrection"], strict=True))
        counts = dict(zip(groups["rlnGroupName"], groups["rlnGroupNrParticles"], strict=True))
        # XA / AA of ~50 particles per group and half at SNR 10: a few per cent of noise
        assert scale["bright"] / scale["plain"] == pytest.approx(BRIGHT, rel=0.05)
        mean = sum(scale[g] * counts[g] for g in scale) / sum(counts.values())
        assert mean == pytest.approx(1.0, abs=1e-6)


def test_run_data_numbers_each_particles_group(refined: Path) -> None:
    data = read_star(refined / "run_it004_data.star")["particles"]
    names = list(data["rlnGroupName"])
    numbers = list(data["rlnGroupNumber"])
    assert {(n, g) for n, g in zip(names, numbers, strict=True)} == {("bright", 1), ("plain", 2)}


def test_continuing_a_model_with_other_groups_than_the_particles_is_refused() -> None:
    # a run written before groups followed the particles' names had one group, "group"
    with pytest.raises(InputError, match="scale groups"):
        _check_continued_groups(("group",), ("bright", "plain"), Path("run_it004_optimiser.star"))
    _check_continued_groups(("bright", "plain"), ("bright", "plain"), Path("x.star"))  # same: fine
