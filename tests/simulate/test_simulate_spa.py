"""SPA simulation: the images are the CTF-modulated projections of the truth at the true poses.

Truth: Gaussian blobs (``simulation_blobs``), whose projections are analytic.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from simulation_blobs import (
    alias_bound,
    blob_volume,
    first_harmonic_positions,
    grid,
    projections,
    trilinear_excess,
    write_truth,
)

from cryorefine.fourier.ctf import ctf_2d
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import load_particles, read_mrc
from cryorefine.simulate import SimulationOptions, simulate_dataset

N = 32
PIXEL = 3.0
COUNT = 12


def _blobs(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    centres = direction * rng.uniform(0, N / 8, size=(count, 1))
    return centres, rng.uniform(1.5, 2.5, count), rng.uniform(0.5, 1.5, count)


def _simulate(folder: Path, truth: Path, **changes) -> Path:
    options = {
        "output_dir": folder,
        "map_path": truth,
        "n_particles": COUNT,
        "box_size": N,
        "pixel_size_angst": PIXEL,
        "snr": math.inf,
        "data_format": "spa",
        "max_offset_px": 3.0,
        "ref_lowpass_angst": 12.0,
        "seed": 1,
    }
    options.update(changes)
    simulate_dataset(SimulationOptions(**options))
    return folder


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _blobs(np.random.default_rng(11), 4)


@pytest.fixture(scope="module")
def truth_file(tmp_path_factory, blobs) -> Path:
    folder = tmp_path_factory.mktemp("truth")
    return write_truth(folder / "blobs.mrc", blob_volume(*blobs, N), PIXEL)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, truth_file) -> Path:
    return _simulate(tmp_path_factory.mktemp("clean"), truth_file)


def _truth_poses(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = load_particles(folder / "truth_particles.star")
    rotations = euler_to_matrix(torch.tensor(truth.angles_deg())).numpy()
    origins_px = truth.origins_angst() / PIXEL
    return rotations, origins_px, truth.ctf_parameters().defocus_u_angst


def _ctf(defocus: np.ndarray) -> np.ndarray:
    d = torch.tensor(defocus, dtype=torch.float64)
    return ctf_2d(
        defocus_u_angst=d,
        defocus_v_angst=d,
        defocus_angle_deg=torch.zeros_like(d),
        voltage_kv=300.0,
        spherical_aberration_mm=2.7,
        amplitude_contrast=0.1,
        pixel_size_angst=PIXEL,
        box_size=N,
    ).numpy()


def _inside_nyquist_rfft() -> np.ndarray:
    ky = np.fft.fftfreq(N, 1 / N)[:, None]
    kx = np.arange(N // 2 + 1)[None, :]
    return kx**2 + ky**2 <= (N // 2) ** 2


def test_spa_set_loads_as_spa_with_half_sets_and_no_poses(clean: Path) -> None:
    particles = load_particles(clean / "particles.star")
    assert particles.flavour == "spa"
    assert len(particles) == COUNT
    assert set(particles.pixel_size_angst) == {PIXEL}
    assert set(particles.box_size_px) == {N}
    assert not particles.ctf_premultiplied
    columns = set(particles.particles.columns)
    assert not any(c.startswith(("rlnAngle", "rlnOrigin")) for c in columns)
    half_sets = particles.half_sets()
    assert sorted(np.bincount(half_sets)[1:]) == [COUNT // 2, COUNT // 2]
    truth = load_particles(clean / "truth_particles.star")
    np.testing.assert_array_equal(truth.half_sets(), half_sets)
    assert {"rlnAngleRot", "rlnOriginXAngst", "rlnOriginYAngst"} <= set(truth.particles.columns)
    assert "rlnOriginZAngst" not in truth.particles.columns
    assert np.all(np.abs(truth.origins_angst()[:, :2]) <= 3.0 * PIXEL)


def test_noise_free_images_are_ctf_times_analytic_projections(clean: Path, blobs) -> None:
    images, pixel = read_mrc(clean / "particles.mrcs")
    assert pixel == pytest.approx(PIXEL, rel=1e-6)
    rotations, origins_px, defocus = _truth_poses(clean)
    exact = projections(*blobs, rotations, origins_px, N)
    ft = np.fft.rfft2(np.fft.ifftshift(exact, axes=(-2, -1)), norm="forward")
    ft = ft * _ctf(defocus) * _inside_nyquist_rfft()
    want = np.fft.fftshift(np.fft.irfft2(ft, s=(N, N), norm="forward"), axes=(-2, -1))
    # Per Fourier coefficient, a slice differs from the transform of the analytic
    # projection by the trilinear aliases (simulation_blobs.trilinear_excess, times n
    # for a slice: at most n * n^-3 sum |v| (1 - L) / L) plus the sampling aliases of the
    # blobs; |CTF| <= 1. By Parseval (forward-normalised), the RMS over pixels of the
    # image error is the root sum of squares over the K coefficients inside Nyquist,
    # at most sqrt(K) times the bound per coefficient. Float32 storage adds 2^-24 max.
    volume = blob_volume(*blobs, N)
    per_coefficient = (trilinear_excess(volume, 2) + alias_bound(*blobs[1:])) / N**2
    inside = int(
        (np.hypot(*np.meshgrid(np.fft.fftfreq(N, 1 / N), np.fft.fftfreq(N, 1 / N))) <= N // 2).sum()
    )
    bound = math.sqrt(inside) * per_coefficient + 2.0**-23 * np.abs(want).max()
    rms = np.sqrt(((images - want) ** 2).mean(axis=(1, 2)))
    assert np.all(rms <= bound)
    # The bound is informative: a wrong pose or CTF is an error of order the signal.
    signal = np.sqrt((want**2).mean(axis=(1, 2)))
    assert bound < 0.5 * signal.min()


def test_particle_centre_lies_at_minus_origin(tmp_path: Path) -> None:
    centre = np.array([[5.0, 0.0, 0.0]])
    sigma, amplitude = np.array([1.5]), np.array([1.0])
    truth = write_truth(tmp_path / "one_blob.mrc", blob_volume(centre, sigma, amplitude, N), PIXEL)
    folder = _simulate(tmp_path / "one", truth, max_offset_px=6.0, seed=3)
    images, _ = read_mrc(folder / "particles.mrcs")
    rotations, origins_px, defocus = _truth_poses(folder)
    ft = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)), norm="forward")
    ft = ft / _ctf(defocus)  # CTF is real; at |k| = 1 it is about 0.3 here, far from 0
    measured = first_harmonic_positions(np.stack([ft[:, 0, 1], ft[:, 1, 0]], axis=-1), N)
    expected = np.einsum("bij,kj->bki", rotations, centre)[:, 0, :2] - origins_px[:, :2]
    # Phase error <= asin(relative error of F(e_i)): trilinear and sampling aliases over
    # |F| = n * mass / n^3 * exp(-2 pi^2 s^2 / n^2) of the lone blob.
    volume = blob_volume(centre, sigma, amplitude, N)
    mass = (2 * math.pi * sigma[0] ** 2) ** 1.5
    size = N * mass / N**3 * math.exp(-2 * math.pi**2 * sigma[0] ** 2 / N**2)
    relative = (trilinear_excess(volume, 2) + alias_bound(sigma, amplitude)) / N**2 / size
    tolerance = N / (2 * math.pi) * math.asin(min(1.0, relative))
    np.testing.assert_allclose(measured, expected, rtol=0, atol=tolerance)
    # The opposite sign (centre at +origin) is ruled out wherever the origin is not tiny.
    wrong = expected + 2 * origins_px[:, :2]
    far = np.abs(2 * origins_px[:, :2]) > 3 * tolerance
    assert far.sum() >= COUNT
    assert np.all(np.abs(measured - wrong)[far] > tolerance)


def _signal_power_2d(volume: np.ndarray) -> float:
    """SNR_DEFINITION's S for images, the slow obvious way: shell by shell."""
    n = volume.shape[-1]
    power = np.abs(np.fft.fftn(volume.astype(np.float64), norm="forward")) ** 2
    k = np.fft.fftfreq(n, 1 / n)
    shells3 = np.rint(
        np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    )
    shells2 = np.rint(np.sqrt(k[:, None] ** 2 + k[None, :] ** 2))
    total, count = 0.0, 0
    for shell in range(n // 2 + 1):
        mean3 = power[shells3 == shell].mean()
        members = int((shells2 == shell).sum())
        total += members * n * n * mean3
        count += members
    return total / count


def test_noise_has_the_variance_the_snr_defines(tmp_path_factory, truth_file, clean) -> None:
    snr = 0.2
    noisy = _simulate(tmp_path_factory.mktemp("noisy"), truth_file, snr=snr)
    clean_images, _ = read_mrc(clean / "particles.mrcs")
    noisy_images, _ = read_mrc(noisy / "particles.mrcs")
    noise = (noisy_images - clean_images).astype(np.float64)  # same seed: same particles
    truth, _ = read_mrc(clean / "truth.mrc")
    # White noise of variance sigma^2 per pixel has N = sigma^2 / n^2 per coefficient.
    want = N * N * _signal_power_2d(truth) / snr
    m = noise.size
    # Sample variance of m Gaussian values: relative standard deviation sqrt(2 / m);
    # 6 of them leave a false failure rate below 1e-8.
    assert noise.var() == pytest.approx(want, rel=6 * math.sqrt(2 / m))
    assert abs(noise.mean()) < 6 * math.sqrt(want / m)


def test_grid_helper_is_centred_on_n_over_2() -> None:
    offsets = grid(4, 2)
    assert offsets[2, 2].tolist() == [0.0, 0.0]
    assert offsets[2, 3].tolist() == [1.0, 0.0]  # last axis is x
