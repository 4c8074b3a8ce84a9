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
import torch
from intensity_cases import refine_arguments, simulate_multiplied

from cryorefine.cli.main import main
from cryorefine.errors import InputError
from cryorefine.io import read_star
from cryorefine.refine.driver import _check_continued_groups
from cryorefine.refine.half_models import group_scales
from cryorefine.refine.half_sums import scale_shells
from cryorefine.refine.maximisation import update_scale_correction

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


def test_each_half_sums_its_scale_terms_where_its_own_model_has_ssnr_above_three() -> None:
    # RELION masks XA and AA while summing, with the half's own SSNR; the final,
    # joined iteration then adds two differently masked sums
    ssnr = {1: torch.tensor([40.0, 5.0, 2.0, 0.5]), 2: torch.tensor([40.0, 2.0, 5.0, 0.5])}
    assert scale_shells(ssnr[1]).tolist() == [True, True, False, False]
    assert scale_shells(ssnr[2]).tolist() == [True, False, True, False]
    gen = torch.Generator().manual_seed(0)
    per_shell = {h: torch.rand(2, 3, 4, generator=gen, dtype=torch.float64) for h in (1, 2)}
    masked = {h: per_shell[h] * scale_shells(ssnr[h]) for h in (1, 2)}
    joined = group_scales(masked[1] + masked[2], (10, 10, 20))
    xa = per_shell[1][0, :, :2].sum(1) + per_shell[2][0, :, [0, 2]].sum(1)
    aa = per_shell[1][1, :, :2].sum(1) + per_shell[2][1, :, [0, 2]].sum(1)
    want = update_scale_correction(xa, aa, torch.tensor([10.0, 10.0, 20.0], dtype=torch.float64))
    torch.testing.assert_close(joined, want, rtol=1e-12, atol=0)
