"""Accuracy of poses, RELION's ``calculateExpectedAngularErrors`` (REFINE_SPEC §5.3)."""

import itertools
import math

import numpy as np
import pytest
import torch

from cryorefine.fourier import (
    extract_slices,
    frequency_indices,
    friedel_redundant,
    prepare_reference,
    rotate_volume,
    shell_index,
)
from cryorefine.geometry import euler_to_matrix
from cryorefine.refine.accuracy import SNR_THRESHOLD, accuracy_ladder, estimate_accuracies


def test_ladders_are_relions_float64_sums_with_the_cap_last():
    rotation = accuracy_ladder("rotation")
    assert rotation[:4] == (0.05, 0.1, 0.15000000000000002, 0.2)
    assert rotation[4] == 0.2 + 0.1  # 0.2 is not below 0.2: steps of 0.1 from there
    assert rotation[-2] <= 30.0 < rotation[-1]
    assert all(b > a for a, b in itertools.pairwise(rotation))
    translation = accuracy_ladder("translation")
    assert translation[0] == 0.1
    assert translation[-2] <= 10.0 < translation[-1]
    with pytest.raises(ValueError, match="kind"):
        accuracy_ladder("psi")


def _setup(n: int, ndim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    volume = torch.randn(n, n, n, generator=gen, dtype=torch.float64)
    reference = prepare_reference(volume, padding_factor=2)
    angles = torch.rand(3, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [360.0, 180.0, 360.0]
    )
    return reference, angles


def _slow_accuracies(reference, angles, ctf, sigma2, *, m, n, ndim, draws):
    """One particle, one ladder step at a time; shifts written out per coefficient."""
    shells = shell_index(m, ndim).reshape(-1).numpy()
    keep = (shells >= 1) & (shells <= m // 2) & ~friedel_redundant(m, ndim).reshape(-1).numpy()
    freq = frequency_indices(m, ndim).reshape(-1, ndim).numpy()

    def project(a):
        rotation = euler_to_matrix(torch.tensor(a, dtype=torch.float64))[None]
        if ndim == 2:
            values = extract_slices(reference, rotation, out_size=m)
        else:
            values = rotate_volume(reference, rotation, out_size=m)
        return values.reshape(-1).numpy()

    rot_errors, shift_errors = [], []
    for b in range(angles.shape[0]):
        k = ctf[b].reshape(-1).numpy() if ctf is not None else np.ones(len(shells))
        f1 = project(angles[b].tolist()) * k
        weight = np.where(
            keep, 1.0 / (2.0 * sigma2[b].numpy()[np.minimum(shells, sigma2.shape[1] - 1)]), 0.0
        )
        axis = 0 if draws[b] < 0.3333 else (1 if draws[b] < 0.6667 else 2)
        ladder = accuracy_ladder("rotation")
        error = ladder[-1]
        for eps in ladder[:-1]:
            perturbed = angles[b].tolist()
            perturbed[axis] += eps
            f2 = project(perturbed) * k
            if float((np.abs(f1 - f2) ** 2 * weight).sum()) > SNR_THRESHOLD:
                error = eps
                break
        rot_errors.append(error)
        shift_axis = axis if ndim == 3 else (0 if draws[b] < 0.5 else 1)
        ladder = accuracy_ladder("translation")
        error = ladder[-1]
        for delta in ladder[:-1]:
            shift = np.zeros(ndim)
            shift[shift_axis] = delta
            f2 = f1 * np.exp(-2j * math.pi * (freq @ shift) / n)
            if float((np.abs(f1 - f2) ** 2 * weight).sum()) > SNR_THRESHOLD:
                error = delta
                break
        shift_errors.append(error)
    return np.array(rot_errors), np.array(shift_errors)


@pytest.mark.parametrize(("ndim", "n", "m"), [(2, 16, 12), (3, 12, 8)])
def test_accuracies_match_a_slow_loop_over_particles_and_steps(ndim, n, m, device):
    reference, angles = _setup(n, ndim, seed=41 + ndim)
    gen = torch.Generator().manual_seed(7)
    ctf = torch.rand(3, *(m,) * (ndim - 1), m // 2 + 1, generator=gen, dtype=torch.float64) + 0.5
    # Noise chosen so that the crossings fall inside both ladders for these maps.
    sigma2 = torch.full((3, n // 2 + 1), 2e-3 if ndim == 2 else 5e-4, dtype=torch.float64)
    pixel = torch.tensor([1.5, 1.5, 2.0], dtype=torch.float64)
    got = estimate_accuracies(
        reference.to(device),
        angles.to(device),
        ctf.to(device),
        sigma2.to(device),
        pixel.to(device),
        current_size=m,
        ori_size=n,
        data_dimensionality=ndim,
        generator=torch.Generator().manual_seed(3),
    )
    draws = torch.rand(3, generator=torch.Generator().manual_seed(3), dtype=torch.float64).tolist()
    rot, shift = _slow_accuracies(reference, angles, ctf, sigma2, m=m, n=n, ndim=ndim, draws=draws)
    assert 0 < rot.min()
    assert rot.max() < accuracy_ladder("rotation")[-1]
    assert 0 < shift.min()
    assert shift.max() < accuracy_ladder("translation")[-1]
    # Same ladder values: SNRs differ by float64 rounding only, far from the threshold here.
    assert got.acc_rot_deg == pytest.approx(rot.mean(), rel=1e-15)
    assert got.acc_trans_angst == pytest.approx((shift * pixel.numpy()).mean(), rel=1e-15)


def test_orientability_sums_to_one_over_the_scored_shells():
    reference, angles = _setup(16, 2, seed=45)
    sigma2 = torch.full((3, 9), 2e-3, dtype=torch.float64)
    got = estimate_accuracies(
        reference,
        angles,
        None,
        sigma2,
        torch.ones(3, dtype=torch.float64),
        current_size=10,
        ori_size=16,
        data_dimensionality=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(got.orientability.sum()) == pytest.approx(1.0, abs=1e-14)
    assert float(got.orientability[0]) == 0.0
    assert torch.all(got.orientability[6:] == 0)
    assert torch.all(got.orientability >= 0)


def test_small_batches_of_steps_give_the_same_result():
    reference, angles = _setup(16, 2, seed=46)
    sigma2 = torch.full((3, 9), 2e-3, dtype=torch.float64)
    kwargs = {"current_size": 12, "ori_size": 16, "data_dimensionality": 2}
    pixel = torch.ones(3, dtype=torch.float64)
    whole = estimate_accuracies(
        reference, angles, None, sigma2, pixel, generator=torch.Generator().manual_seed(1), **kwargs
    )
    steps = estimate_accuracies(
        reference,
        angles,
        None,
        sigma2,
        pixel,
        generator=torch.Generator().manual_seed(1),
        max_elements=1,
        **kwargs,
    )
    assert (whole.acc_rot_deg, whole.acc_trans_angst) == (steps.acc_rot_deg, steps.acc_trans_angst)
    torch.testing.assert_close(whole.orientability, steps.orientability, rtol=0, atol=0)


def test_no_signal_gives_the_caps_and_very_low_noise_the_first_steps():
    reference, angles = _setup(16, 2, seed=47)
    pixel = torch.full((3,), 2.0, dtype=torch.float64)
    kwargs = {"current_size": 12, "ori_size": 16, "data_dimensionality": 2}
    silent = estimate_accuracies(
        reference,
        angles,
        torch.zeros(3, 12, 7, dtype=torch.float64),
        torch.ones(3, 9, dtype=torch.float64),
        pixel,
        generator=torch.Generator(),
        **kwargs,
    )
    # mean of three equal values: one rounding of the sum
    assert silent.acc_rot_deg == pytest.approx(accuracy_ladder("rotation")[-1], rel=1e-15)
    assert silent.acc_trans_angst == pytest.approx(accuracy_ladder("translation")[-1] * 2.0)
    assert torch.all(silent.orientability == 0)
    sharp = estimate_accuracies(
        reference,
        angles,
        None,
        torch.full((3, 9), 1e-12, dtype=torch.float64),
        pixel,
        generator=torch.Generator(),
        **kwargs,
    )
    assert sharp.acc_rot_deg == pytest.approx(0.05, rel=1e-15)
    assert sharp.acc_trans_angst == pytest.approx(0.1 * 2.0)


def _weighted_3d_case():
    """Pseudo-subtomogram inputs, and a run whose noise is 4 times sigma2 with no weights.

    Returns ``(accuracies, plain)``: ``accuracies(**weights)`` runs with sigma2 and the
    given per-coefficient weights (same reference, poses and generator seed as ``plain``).
    """
    reference, angles = _setup(12, 3, seed=47)
    sigma2 = torch.full((3, 7), 1e-3, dtype=torch.float64)
    pixel = torch.ones(3, dtype=torch.float64)
    kwargs = {"current_size": 8, "ori_size": 12, "data_dimensionality": 3}

    def accuracies(noise: torch.Tensor = sigma2, **weights):
        return estimate_accuracies(
            reference, angles, None, noise, pixel, generator=torch.Generator().manual_seed(2),
            **weights, **kwargs,
        )  # fmt: skip

    return accuracies, accuracies(4 * sigma2)


def test_multiplicity_weighs_each_coefficient_as_the_scores_do():
    # Pseudo-subtomograms: weight 1 / (2 sigma2 M), 0 where M <= 0.1. A multiplicity of 4
    # everywhere must equal a noise spectrum 4 times larger; a zero multiplicity must leave
    # no signal at all (the caps: the last ladder values).
    accuracies, plain = _weighted_3d_case()
    four = torch.full((3, 8, 8, 5), 4.0, dtype=torch.float64)
    with_m = accuracies(multiplicity=four)
    assert math.isclose(plain.acc_rot_deg, with_m.acc_rot_deg, rel_tol=1e-12)
    assert math.isclose(plain.acc_trans_angst, with_m.acc_trans_angst, rel_tol=1e-12)
    empty = accuracies(multiplicity=torch.zeros_like(four))
    assert math.isclose(empty.acc_rot_deg, accuracy_ladder("rotation")[-1], rel_tol=1e-12)


def test_a_noise_scale_weighs_each_coefficient_in_place_of_the_multiplicity():
    # subtomo_noise.noise_scale V: weight 1 / (2 sigma2 V) where M > 0.1, 0 elsewhere. V = 4
    # everywhere equals a noise spectrum 4 times larger, whatever the multiplicity above 0.1.
    accuracies, plain = _weighted_3d_case()
    multiplicity = torch.rand(3, 8, 8, 5, generator=torch.Generator().manual_seed(5)) + 0.2
    four = torch.full((3, 8, 8, 5), 4.0, dtype=torch.float64)
    scaled = accuracies(multiplicity=multiplicity, noise_scale=four)
    assert math.isclose(plain.acc_rot_deg, scaled.acc_rot_deg, rel_tol=1e-12)
    assert math.isclose(plain.acc_trans_angst, scaled.acc_trans_angst, rel_tol=1e-12)
    empty = accuracies(multiplicity=torch.zeros_like(four), noise_scale=four)
    assert math.isclose(empty.acc_rot_deg, accuracy_ladder("rotation")[-1], rel_tol=1e-12)
