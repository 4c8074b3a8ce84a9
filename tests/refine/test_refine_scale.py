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
from cryorefine.likelihood import fourier_window
from cryorefine.likelihood.plan import BackprojectionSums, ExpectationResult
from cryorefine.likelihood.sums import ShellSums
from cryorefine.refine.driver import _check_continued_groups
from cryorefine.refine.half_models import group_scales
from cryorefine.refine.half_pass import _add_batch
from cryorefine.refine.half_sums import HalfSetSums, scale_shells
from cryorefine.refine.maximisation import update_scale_correction
from cryorefine.tomo.particle_batches import ParticleBatch

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


def test_a_batch_adds_its_scale_terms_only_in_the_shells_it_is_given() -> None:
    # half_pass gives each batch scale_shells(its half model's SSNR)
    b, n, shells = 4, 8, 5
    gen = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=torch.float64)

    eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
    sums_of = ShellSums(rand(b, shells), rand(b, shells), rand(b, shells))
    result = ExpectationResult(
        rotations=eye, angles_deg=zeros(b, 3), origins_px=zeros(b, 2), pmax=rand(b),
        significant_samples=torch.ones(b, dtype=torch.int64), log_likelihood=zeros(b),
        weight_sums=torch.ones(b, dtype=torch.float64), shell_sums=sums_of,
        multiplicity_sums=None, offset_moments_px2=rand(b), direction_mass=rand(3),
        backprojection=BackprojectionSums(
            rotations=eye[:0], data=torch.zeros(0, 1, dtype=torch.complex64),
            weight=torch.zeros(0, 1), window=fourier_window(n, 2, device=torch.device("cpu")),
        ),
    )  # fmt: skip
    masked = torch.complex(torch.rand(b, n, n // 2 + 1), torch.rand(b, n, n // 2 + 1))
    batch = ParticleBatch(
        rows=torch.arange(b), data_ft=masked, ctf=torch.ones(b, n, n // 2 + 1),
        multiplicity=None, ctf_premultiplied=False, rotations=eye, origins_px=zeros(b, 2),
        finite=torch.ones(b, dtype=torch.bool),
    )  # fmt: skip
    sums = HalfSetSums(
        data=torch.zeros(1), weight=torch.zeros(1), noise=zeros(1, shells), multiplicity=None,
        weight_per_group=zeros(1), offset_moments_angst2=0.0, direction_mass=zeros(3),
        pmax_sum=0.0, count=0, scale_sums=zeros(2, 2, shells),
    )  # fmt: skip
    taken = scale_shells(torch.tensor([40.0, 2.0, 5.0, 0.5, 9.0]))
    scale_groups = torch.tensor([0, 1, 1, 0])
    _add_batch(
        sums, result, batch, masked, torch.zeros(b, dtype=torch.int64), scale_groups, None,
        current_size=n, shells_for_scales=taken,
    )  # fmt: skip
    for index, per_particle in enumerate((sums_of.signal_product, sums_of.reference_power)):
        want = zeros(2, shells).index_add_(0, scale_groups, per_particle)
        torch.testing.assert_close(sums.scale_sums[index], want * taken, rtol=1e-15, atol=0)
    assert (sums.scale_sums[:, :, ~taken] == 0).all()


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
