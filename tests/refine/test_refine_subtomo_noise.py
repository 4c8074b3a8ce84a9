"""The noise of RELION-4 pseudo-subtomograms follows each voxel's CTF², not its multiplicity.

Noise-only pseudo-subtomograms come from the simulator (``simulate.images``), which
adds the tilt images' noise through their CTF weights; the scores' noise model
(``refine.subtomo_noise``) must predict each voxel's variance, where RELION-4's
``2 sigma2 M`` misses it by a decade either way.
"""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryorefine.fourier import shell_index, to_fourier
from cryorefine.fourier.ctf import ctf_volume_to_half_complex
from cryorefine.fourier.shells import shell_sums
from cryorefine.io import load_particles
from cryorefine.likelihood.subtomo_noise import NOISE_FLOOR
from cryorefine.refine.initialise import load_inputs
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.subtomo_noise import ctf2_per_multiplicity, noise_scale_grid
from cryorefine.simulate import SimulationOptions, simulate_dataset
from cryorefine.simulate.images import pseudo_subtomograms
from cryorefine.simulate.poses import scheme_tilts, tilt_scheme
from cryorefine.tomo import particle_batches, with_tomograms

N = 24


def _noise_only(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` pseudo-subtomograms of pure noise (unit tilt-image power): X, W, M."""
    scheme = tilt_scheme(torch.arange(-60.0, 60.1, 3.0), dose_per_tilt_e_per_angst2=3.0)
    defocus = torch.linspace(15000.0, 30000.0, count, dtype=torch.float64)
    reference_ft = torch.zeros(2 * N, 2 * N, N + 1, dtype=torch.complex128)
    volumes, weights = pseudo_subtomograms(
        reference_ft,
        torch.eye(3, dtype=torch.float64).expand(count, 3, 3),
        torch.zeros(count, 3, dtype=torch.float64),
        scheme_tilts(scheme, defocus),
        pixel_size_angst=5.4,
        box_size=N,
        tilt_noise_power=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    ctf2, multiplicity = ctf_volume_to_half_complex(weights, box_size=N, ctf_premultiplied=True)
    assert multiplicity is not None
    return to_fourier(volumes, 3), ctf2, multiplicity


def _shell_ratio(ctf2: torch.Tensor, multiplicity: torch.Tensor) -> torch.Tensor:
    used = multiplicity > 0.1
    sums = [shell_sums(torch.where(used, v, 0.0), N, 3).sum(0) for v in (ctf2, multiplicity)]
    return torch.where(sums[1] > 0, sums[0] / sums[1].clamp(min=1e-300), 0.0)


def test_ctf2_in_proportion_to_the_multiplicity_gives_relions_noise():
    # W = c(r) M in every shell: the floor's blend and the ratio cancel, V = M; M <= 0.1: 1.
    gen = torch.Generator().manual_seed(3)
    multiplicity = torch.rand(2, N, N, N // 2 + 1, generator=gen, dtype=torch.float64) * 5
    per_shell = torch.rand(N // 2 + 1, generator=gen, dtype=torch.float64) + 0.5
    shells = shell_index(N, 3).clamp(max=N // 2)
    ctf2 = per_shell[shells] * multiplicity
    scale = noise_scale_grid(ctf2, multiplicity, per_shell.expand(2, -1))
    want = torch.where(multiplicity > 0.1, multiplicity, 1.0)
    torch.testing.assert_close(scale, want, rtol=1e-14, atol=0)


def test_the_noise_of_a_shell_is_the_multiplicitys_in_sum():
    # sigma2 keeps RELION's meaning: over the voxels it is estimated on (M > 0.1), V and M
    # have the same sum in every shell of the particles the ratio was taken from.
    _, ctf2, multiplicity = _noise_only(6, seed=1)
    ratio = _shell_ratio(ctf2, multiplicity)
    scale = noise_scale_grid(ctf2, multiplicity, ratio.expand(6, -1))
    used = multiplicity > 0.1
    got = shell_sums(torch.where(used, scale, 0.0), N, 3).sum(0)
    want = shell_sums(torch.where(used, multiplicity, 0.0), N, 3).sum(0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_each_voxels_noise_is_what_the_model_predicts_and_not_relions():
    # With the noise power s2 of every tilt, Var X(k) = s2 W(k) / n^2 (simulator). The scores
    # weigh |X|^2 by 1 / (2 sigma2 V), sigma2 = sum |X|^2 / (2 sum M) as the M-step has it:
    # E z(k) = (W / c) / V with c = sum W / sum M of the shell. Voxels binned by
    # rho = W / (c M): the mean of z per bin must match the model's mean within 5 standard
    # errors (|X|^2 is exponential: its standard deviation is its mean).
    count = 40
    data_ft, ctf2, multiplicity = _noise_only(count, seed=2)
    shells = shell_index(N, 3).expand(count, -1, -1, -1)
    used = (multiplicity > 0.1) & (shells >= 1) & (shells < N // 2)
    power = data_ft.abs() ** 2
    noise = shell_sums(torch.where(used, power, 0.0), N, 3).sum(0)
    counts = shell_sums(torch.where(used, multiplicity, 0.0), N, 3).sum(0)
    sigma2 = torch.where(counts > 0, noise / (2 * counts.clamp(min=1e-300)), 0.0)
    ratio = _shell_ratio(torch.where(used, ctf2, 0.0), torch.where(used, multiplicity, 0.0))
    c = ratio[shells.clamp(max=N // 2)]
    rho = ctf2 / (c * multiplicity.clamp(min=1e-300))
    ours = noise_scale_grid(ctf2, multiplicity, ratio.expand(count, -1))
    edges = [0.0, 0.03, 0.3, 1.0, 3.0, math.inf]
    relion_means = []
    for scale, label in ((ours, "CTF^2"), (multiplicity, "multiplicity")):
        z = power / (2 * sigma2[shells.clamp(max=N // 2)] * scale)
        expected = (ctf2 / c) / scale
        for low, high in itertools.pairwise(edges):
            chosen = used & (rho >= low) & (rho < high)
            assert int(chosen.sum()) > 1000, (label, low)
            mean, want = float(z[chosen].mean()), float(expected[chosen].mean())
            error = float((expected[chosen] ** 2).sum().sqrt()) / int(chosen.sum())
            assert abs(mean - want) < 5 * error, (label, low, mean, want)
            if label == "multiplicity":
                relion_means.append(mean)
            else:  # E z = rho (1 + a) / (rho + a): below 1 + a, above 0.825 from rho = 0.3
                a = NOISE_FLOOR
                assert mean < 1 + a + 5 * error, (low, mean)
                if low >= 0.3:
                    assert mean > low * (1 + a) / (low + a) - 5 * error, (low, mean)
    # RELION's rule: E z = rho, off by a decade and more at both ends.
    assert relion_means[0] < 0.05
    assert relion_means[-1] > 3.0


@pytest.fixture(scope="module")
def relion4_folder(tmp_path_factory) -> Path:
    """Six simulated RELION-4 pseudo-subtomograms of box 16, with their files."""
    folder = tmp_path_factory.mktemp("relion4") / "sim"
    simulate_dataset(
        SimulationOptions(
            output_dir=folder, n_particles=6, box_size=16, pixel_size_angst=10.8, snr=10.0,
            data_format="relion4", seed=4,
        )
    )  # fmt: skip
    return folder


def test_the_ratio_is_read_per_optics_group_from_the_files(relion4_folder):
    folder = relion4_folder
    particles = with_tomograms(
        load_particles(folder / "particles.star"), tomograms_file=folder / "tomograms.star"
    )
    groups = np.array([0, 1, 0, 1, 0, 1])
    got = ctf2_per_multiplicity(particles, groups, ori_size=16, device=torch.device("cpu"), count=2)
    batch = next(particle_batches(particles, batch_size=6, device=torch.device("cpu")))
    assert batch.multiplicity is not None
    used = batch.multiplicity > 0.1
    w = shell_sums(torch.where(used, batch.ctf, 0.0), 16, 3)
    m = shell_sums(torch.where(used, batch.multiplicity, 0.0), 16, 3)
    for group, rows in ((0, [0, 2]), (1, [1, 3])):  # the first two of each group
        want = w[rows].sum(0) / m[rows].sum(0)
        torch.testing.assert_close(got[group], want, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("flag", "expect_ratio"), [(False, True), (True, False)])
def test_the_inputs_carry_the_ratio_unless_relions_rule_is_asked(
    relion4_folder, flag, expect_ratio
):
    folder = relion4_folder
    options = RefineOptions(
        optimisation_set=folder / "optimisation_set.star",
        reference=folder / "reference.mrc",
        particle_diameter=120.0,
        ctf=True,
        subtomo_noise_multiplicity=flag,
    )
    inputs = load_inputs(options, device=torch.device("cpu"))
    assert (inputs.ctf2_per_multiplicity is not None) == expect_ratio
