"""Classic subtomograms: files, the centred signed 3D CTF, the signal, the noise level."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from simulation_blobs import alias_bound, blob_transform, blob_volume, trilinear_excess, write_truth

from cryorefine.fourier.ctf import ctf_volume_to_half_complex
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import load_particles, read_mrc
from cryorefine.simulate import SimulationOptions, half_to_centred_cube, simulate_dataset

N = 24
PIXEL = 4.0
COUNT = 6
CENTRES = np.array([[2.0, 1.0, -2.0], [-1.0, -3.0, 1.0]])
SIGMA = np.array([1.8, 1.5])
AMPLITUDE = np.array([1.0, 1.2])


def _simulate(folder: Path, truth: Path, **changes) -> Path:
    options = {
        "output_dir": folder,
        "map_path": truth,
        "n_particles": COUNT,
        "box_size": N,
        "pixel_size_angst": PIXEL,
        "snr": math.inf,
        "data_format": "subtomo3d",
        "tilt_step_deg": 6.0,
        "ref_lowpass_angst": 20.0,
        "seed": 8,
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


def _volumes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    particles = load_particles(folder / "particles.star")
    data = np.stack([read_mrc(p)[0] for p in particles.image_paths()]).astype(np.float64)
    ctfs = np.stack([read_mrc(p)[0] for p in particles.ctf_image_paths()]).astype(np.float64)
    return data, ctfs


def test_subtomo3d_set_loads_as_classic_subtomograms(clean: Path) -> None:
    particles = load_particles(clean / "particles.star")
    assert particles.flavour == "subtomo3d"
    assert not particles.ctf_premultiplied
    assert "rlnTomoParticleName" not in particles.particles.columns
    truth = load_particles(clean / "truth_particles.star")
    assert "rlnOriginZAngst" in truth.particles.columns
    assert np.all(np.abs(truth.origins_angst()) <= 2.0 * PIXEL)
    _, ctfs = _volumes(clean)
    assert ctfs.shape == (COUNT, N, N, N)


def test_ctf_cube_is_centred_signed_and_zero_in_the_missing_wedge(clean: Path) -> None:
    _, ctfs = _volumes(clean)
    c = N // 2
    # Zero frequency at voxel n // 2: CTF(0) = sin(atan(0.1 / sqrt(0.99))) = 0.1, dose weight 1.
    np.testing.assert_allclose(ctfs[:, c, c, c], 0.1, rtol=1e-5)
    # Friedel symmetric about the centre voxel (frequency -k at n // 2 - k).
    inner = ctfs[:, 1:, 1:, 1:]
    np.testing.assert_array_equal(inner, inner[:, ::-1, ::-1, ::-1])
    # Along z beyond |kz| = 2 no tilt plane (|tilt| <= 60) comes within a slab.
    np.testing.assert_array_equal(ctfs[:, c + 3 :, c, c], 0.0)
    assert ctfs.min() < 0 < ctfs.max()  # signed, not squared
    assert np.abs(ctfs).max() <= 1.0
    # RELION's reader turns the cube into the half-complex weight the E-step uses.
    half, _ = ctf_volume_to_half_complex(
        torch.from_numpy(ctfs[0]), box_size=N, ctf_premultiplied=False
    )
    assert float(half[0, 0, 0]) == pytest.approx(0.1, rel=1e-5)


def test_half_to_centred_cube_matches_fftshift_of_the_full_grid() -> None:
    gen = torch.Generator().manual_seed(4)
    n = 8
    raw = torch.rand(2, n, n, n, generator=gen, dtype=torch.float64)
    flipped = torch.roll(torch.flip(raw, dims=(1, 2, 3)), shifts=(1, 1, 1), dims=(1, 2, 3))
    even = (raw + flipped) / 2  # H(-k) = H(k) in FFTW order
    want = np.fft.fftshift(even.numpy(), axes=(1, 2, 3))
    got = half_to_centred_cube(even[..., : n // 2 + 1])
    np.testing.assert_array_equal(got.numpy(), want)


def test_noise_free_subtomograms_are_the_averaged_ctf_times_the_turned_truth(clean: Path) -> None:
    data, ctfs = _volumes(clean)
    truth = load_particles(clean / "truth_particles.star")
    rotations = euler_to_matrix(torch.tensor(truth.angles_deg())).numpy()
    origins_px = truth.origins_angst() / PIXEL
    full = np.fft.fftfreq(N, 1 / N)
    kz, ky, kx = np.meshgrid(full, full, full, indexing="ij")
    k = np.stack([kx, ky, kz], axis=-1)
    h = np.fft.ifftshift(ctfs, axes=(1, 2, 3))  # H(k) in FFTW order
    q = np.einsum("bji,...j->b...i", rotations, k)
    shift = np.exp(2j * math.pi * np.einsum("...i,bi->b...", k, origins_px) / N)
    inside = (k**2).sum(-1) <= (N // 2) ** 2
    want = np.where(inside, h * blob_transform(q, CENTRES, SIGMA, AMPLITUDE, N) * shift, 0.0)
    got = np.fft.fftn(np.fft.ifftshift(data, axes=(1, 2, 3)), axes=(1, 2, 3), norm="forward")
    # As for relion4 (|H| <= 1): trilinear and sampling aliases, plus float32 storage.
    volume = blob_volume(CENTRES, SIGMA, AMPLITUDE, N)
    per = (trilinear_excess(volume, 2) + alias_bound(SIGMA, AMPLITUDE)) / N**3
    storage = 2.0**-24 * np.abs(data).sum(axis=(1, 2, 3)) / N**3
    bound = np.abs(h) * per + storage[:, None, None, None] + 1e-12
    # The Nyquist planes of an even box hold +-n/2 together; they are left out.
    interior = (np.abs(k) < N // 2).all(axis=-1)
    assert np.all((np.abs(got - want) <= bound)[:, interior])


def test_noise_is_white_with_the_variance_the_snr_defines(tmp_path, truth_file, clean) -> None:
    snr = 0.3
    noisy = _simulate(tmp_path / "noisy", truth_file, snr=snr)
    clean_data, _ = _volumes(clean)
    noisy_data, _ = _volumes(noisy)
    noise = noisy_data - clean_data
    truth, _ = read_mrc(clean / "truth.mrc")
    # S for a 3D measurement: mean |V(k)|^2 over the 3D coefficients inside Nyquist.
    power = np.abs(np.fft.fftn(truth.astype(np.float64), norm="forward")) ** 2
    full = np.fft.fftfreq(N, 1 / N)
    radius = np.sqrt(full[:, None, None] ** 2 + full[None, :, None] ** 2 + full[None, None] ** 2)
    signal = power[np.rint(radius) <= N // 2].mean()
    want = N**3 * signal / snr  # N = sigma^2 / n^3 per coefficient
    m = noise.size
    assert noise.var() == pytest.approx(want, rel=6 * math.sqrt(2 / m))
