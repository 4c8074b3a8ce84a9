"""RELION-4 pseudo-subtomograms: files, tilt series, CTF^2 || multiplicity layout, signal, noise.

Truth: Gaussian blobs (``simulation_blobs``), whose transform is analytic.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from simulation_blobs import (
    alias_bound,
    blob_transform,
    blob_volume,
    first_harmonic_positions,
    trilinear_excess,
    write_truth,
)

from cryorefine.geometry import euler_to_matrix
from cryorefine.io import load_optimisation_set, load_particles, load_tomograms, read_mrc
from cryorefine.simulate import SimulationOptions, simulate_dataset

N = 24
PIXEL = 4.0
COUNT = 8
TILTS = np.arange(-60.0, 60.0 + 1e-9, 6.0)  # 21 tilts
CENTRES = np.array([[3.0, -1.0, 2.0], [-2.0, 2.0, -1.0]])
SIGMA = np.array([1.6, 2.0])
AMPLITUDE = np.array([1.0, 0.7])


def _simulate(folder: Path, truth: Path, **changes) -> Path:
    options = {
        "output_dir": folder,
        "map_path": truth,
        "n_particles": COUNT,
        "box_size": N,
        "pixel_size_angst": PIXEL,
        "snr": math.inf,
        "data_format": "relion4",
        "tilt_range_deg": (-60.0, 60.0),
        "tilt_step_deg": 6.0,
        "dose_per_tilt_e_per_angst2": 2.0,
        "max_offset_px": 3.0,
        "ref_lowpass_angst": 20.0,
        "seed": 5,
    }
    options.update(changes)
    simulate_dataset(SimulationOptions(**options))
    return folder


@pytest.fixture(scope="module")
def truth_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("truth")
    return write_truth(folder / "blobs.mrc", blob_volume(CENTRES, SIGMA, AMPLITUDE, N), PIXEL)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, truth_file) -> Path:
    return _simulate(tmp_path_factory.mktemp("clean"), truth_file)


def _frequencies(n: int) -> np.ndarray:
    """(x, y, z) integer frequency of each coefficient of the (n, n, n//2+1) layout, FFTW order."""
    full = np.fft.fftfreq(n, 1 / n)
    full[n // 2] = n // 2
    half = np.arange(n // 2 + 1, dtype=np.float64)
    kz, ky, kx = np.meshgrid(full, full, half, indexing="ij")
    return np.stack([kx, ky, kz], axis=-1)


def _half_transform(volumes: np.ndarray) -> np.ndarray:
    return np.fft.rfftn(
        np.fft.ifftshift(volumes, axes=(-3, -2, -1)), axes=(-3, -2, -1), norm="forward"
    )


def _load(folder: Path):
    particles = load_particles(folder / "particles.star")
    truth = load_particles(folder / "truth_particles.star")
    data = np.stack([read_mrc(p)[0] for p in particles.image_paths()]).astype(np.float64)
    weights = np.stack([read_mrc(p)[0] for p in particles.ctf_image_paths()]).astype(np.float64)
    rotations = euler_to_matrix(torch.tensor(truth.angles_deg())).numpy()
    return particles, data, weights, rotations, truth.origins_angst() / PIXEL


def test_relion4_set_loads_with_its_optimisation_set_and_tomograms(clean: Path) -> None:
    optimisation = load_optimisation_set(clean / "optimisation_set.star")
    assert optimisation.particles_file == clean / "particles.star"
    assert optimisation.reference_map1 == clean / "reference.mrc"
    assert optimisation.reference_mask == clean / "mask.mrc"
    particles = load_particles(optimisation.particles_file)
    assert particles.flavour == "relion4"
    assert particles.ctf_premultiplied
    assert particles.image_dimensionality == 3
    assert not any(c.startswith(("rlnAngle", "rlnOrigin")) for c in particles.particles.columns)
    np.testing.assert_array_equal(particles.subtomogram_angles_deg(), 0.0)
    truth = load_particles(clean / "truth_particles.star")
    assert {"rlnOriginZAngst", "rlnAngleTilt"} <= set(truth.particles.columns)
    tomograms = load_tomograms(optimisation.tomograms_file)
    assert tomograms.names() == particles.tomo_names()


def test_tilt_series_carry_the_scheme_and_map_the_particle_to_the_image_centre(clean) -> None:
    particles = load_particles(clean / "particles.star")
    tomograms = load_tomograms(clean / "tomograms.star")
    coordinates = particles.coordinates_px()
    for row, name in enumerate(particles.tomo_names()):
        series = tomograms[name]
        np.testing.assert_array_equal(series.nominal_tilt_angles_deg(), TILTS)
        # Dose-symmetric from 0: 0, +6, -6, +12, ... so tilt t was taken after 2|t|/6 - (t > 0).
        order = np.where(TILTS > 0, 2 * TILTS / 6 - 1, -2 * TILTS / 6)
        np.testing.assert_allclose(series.pre_exposure_e_per_angst2(), 2.0 * order)
        ctf = series.ctf_parameters()
        assert np.unique(ctf.defocus_u_angst).size == 1
        matrices = series.projection_matrices()
        t = np.deg2rad(TILTS)
        # RELION's frame rotation about y: rows (c, 0, -s), (0, 1, 0), (s, 0, c).
        np.testing.assert_allclose(matrices[:, 0, 0], np.cos(t), atol=1e-15)
        np.testing.assert_allclose(matrices[:, 2, 0], np.sin(t), atol=1e-15)
        np.testing.assert_allclose(matrices[:, 1, :3], [[0, 1, 0]] * len(t), atol=1e-15)
        mapped = matrices @ np.append(coordinates[row], 1.0)
        size = series.size_px
        np.testing.assert_allclose(
            mapped[:, :3], [[size[0] / 2, size[1] / 2, 0]] * len(t), atol=1e-9
        )


def test_weights_hold_ctf2_over_multiplicity_with_a_missing_wedge(clean: Path) -> None:
    _, _, weights, _, _ = _load(clean)
    assert weights.shape == (COUNT, 2 * N, N, N // 2 + 1)
    ctf2, multiplicity = weights[:, :N], weights[:, N:]
    assert ctf2.min() >= 0.0
    # Each tilt adds a weight in [0, 1]: 0 <= M <= tilts; CTF^2 D^2 <= 1, so ctf2 <= M.
    assert multiplicity.min() >= 0.0
    assert multiplicity.max() <= len(TILTS) + 1e-5
    assert np.all(ctf2 <= multiplicity + 1e-5)
    # Every tilt plane contains the tilt axis y: whole multiplicity, one per tilt.
    np.testing.assert_allclose(multiplicity[:, 0, 1:4, 0], len(TILTS), rtol=1e-6)  # (z, y, x)
    np.testing.assert_allclose(multiplicity[:, 0, 0, 0], len(TILTS), rtol=1e-6)
    # Along z at |kz| >= 3 every plane (normal (sin t, 0, cos t), |t| <= 60) is at least
    # 3 cos 60 = 1.5 voxels away, beyond the slab of 1: the missing wedge.
    np.testing.assert_array_equal(multiplicity[:, 3 : N - 2, 0, 0], 0.0)
    np.testing.assert_array_equal(ctf2[:, 3 : N - 2, 0, 0], 0.0)
    # At k = 0 the CTF is sin(atan(0.1 / sqrt(0.99))) = 0.1 and the dose weight 1.
    np.testing.assert_allclose(ctf2[:, 0, 0, 0], len(TILTS) * 0.01, rtol=1e-5)


def test_noise_free_data_are_ctf2_times_the_turned_truth(clean: Path) -> None:
    _, data, weights, rotations, origins_px = _load(clean)
    ctf2, multiplicity = weights[:, :N], weights[:, N:]
    k = _frequencies(N)
    q = np.einsum("bji,...j->b...i", rotations, k)  # A.T k
    truth_ft = blob_transform(q, CENTRES, SIGMA, AMPLITUDE, N)
    shift = np.exp(2j * math.pi * np.einsum("...i,bi->b...", k, origins_px) / N)  # by -origin
    inside = (k**2).sum(-1) <= (N // 2) ** 2
    kept = inside & (multiplicity >= 0.01)
    want = np.where(kept, ctf2 * truth_ft * shift, 0.0)
    got = _half_transform(data)
    # Per coefficient: trilinear aliases (trilinear_excess / n^3) and sampling aliases
    # (alias_bound / n^3), times ctf2; float32 storage of the data adds at most
    # 2^-24 sum |data| / n^3 (the transform is a mean over voxels).
    volume = blob_volume(CENTRES, SIGMA, AMPLITUDE, N)
    per_coefficient = (trilinear_excess(volume, 2) + alias_bound(SIGMA, AMPLITUDE)) / N**3
    storage = 2.0**-24 * np.abs(data).sum(axis=(1, 2, 3)) / N**3
    bound = ctf2 * per_coefficient + storage[:, None, None, None] + 1e-12
    assert np.all(np.abs(got - want) <= bound)
    # Informative: the inverse rotation, or the centre at +origin, breaks the bound on
    # much of the low-frequency region where the blobs have their power.
    turned_back = blob_transform(
        np.einsum("bij,...j->b...i", rotations, k), CENTRES, SIGMA, AMPLITUDE, N
    )
    for wrong in (ctf2 * turned_back * shift, ctf2 * truth_ft * shift.conj()):
        assert (np.abs(got - np.where(kept, wrong, 0.0)) > bound).mean() > 0.01


def test_particle_centre_lies_at_minus_origin_in_3d(tmp_path: Path) -> None:
    centre, sigma, amplitude = np.array([[0.0, 4.0, 0.0]]), np.array([1.5]), np.array([1.0])
    truth = write_truth(tmp_path / "one.mrc", blob_volume(centre, sigma, amplitude, N), PIXEL)
    folder = _simulate(tmp_path / "one", truth, max_offset_px=5.0, seed=9)
    _, data, _, rotations, origins_px = _load(folder)
    ft = _half_transform(data)
    first = np.stack([ft[:, 0, 0, 1], ft[:, 0, 1, 0], ft[:, 1, 0, 0]], axis=-1)  # e_x, e_y, e_z
    measured = first_harmonic_positions(first, N)  # ctf2 > 0 at |k| = 1: no phase of its own
    expected = (rotations @ centre[0]) - origins_px
    mass = (2 * math.pi * sigma[0] ** 2) ** 1.5 / N**3
    size = mass * math.exp(-2 * math.pi**2 * sigma[0] ** 2 / N**2)
    volume = blob_volume(centre, sigma, amplitude, N)
    relative = (trilinear_excess(volume, 2) + alias_bound(sigma, amplitude)) / N**3 / size
    tolerance = N / (2 * math.pi) * math.asin(min(1.0, relative))
    np.testing.assert_allclose(measured, expected, rtol=0, atol=tolerance)
    far = np.abs(origins_px) > 1.5 * tolerance
    assert far.sum() >= COUNT
    assert np.all(np.abs(measured - (expected + 2 * origins_px))[far] > tolerance)


def test_noise_has_the_variance_ctf2_times_the_tilt_noise_power(
    tmp_path_factory, truth_file, clean
) -> None:
    snr = 0.5
    noisy = _simulate(tmp_path_factory.mktemp("noisy"), truth_file, snr=snr)
    _, clean_data, weights, _, _ = _load(clean)
    _, noisy_data, noisy_weights, _, _ = _load(noisy)
    np.testing.assert_array_equal(noisy_weights, weights)
    summary = json.loads((noisy / "simulation.json").read_text())
    tilt_noise_power = summary["noise_power_per_coefficient"]
    assert tilt_noise_power == pytest.approx(summary["signal_power"] / snr, rel=1e-12)
    ctf2, multiplicity = weights[:, :N], weights[:, N:]
    noise = _half_transform(noisy_data - clean_data)
    k = _frequencies(N)
    # Coefficients with 0 < kx < n/2 are independent (no Friedel mate stored), each
    # complex Gaussian: |noise|^2 / variance is exponential with mean 1.
    independent = (k[..., 0] > 0) & (k[..., 0] < N // 2) & ((k**2).sum(-1) <= (N // 2) ** 2)
    used = independent & (multiplicity >= 0.01) & (ctf2 > 1e-3 * ctf2.max())
    ratio = np.abs(noise[used]) ** 2 / (ctf2[used] * tilt_noise_power / N**2)
    m = ratio.size
    # Mean of m unit exponentials: standard deviation 1 / sqrt(m); 6 of them.
    assert ratio.mean() == pytest.approx(1.0, abs=6 / math.sqrt(m))
    # Zeroed where the multiplicity is below RELION's threshold (the wedge): what is left
    # is the float32 rounding of the two stored volumes, 2^-24 sum |data| / n^3 each.
    rounding = 2.0**-24 * (np.abs(noisy_data) + np.abs(clean_data)).sum(axis=(1, 2, 3)) / N**3
    wedge = (multiplicity < 0.01) & independent
    assert wedge.sum() > 0
    assert np.all(np.abs(noise) * wedge <= rounding[:, None, None, None])
