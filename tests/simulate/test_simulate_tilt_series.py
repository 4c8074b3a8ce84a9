"""Whole tilt series (``simulate --format tilt_series``): files, layout, images, noise.

Truth: Gaussian blobs (``simulation_blobs``). The tilt images must read back through
``io`` and ``tomo`` as RELION-5 tilt series, every particle must be seen by every tilt,
each tilt image must be the sum of its particles' dark, CTF-modulated projections, and
the noise must have the standard deviation that ``--snr`` asks for.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from simulation_blobs import blob_volume, write_truth

from cryorefine.cli.main import main
from cryorefine.errors import InputError
from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.ctf import ctf_2d, dose_weight
from cryorefine.fourier.filters import shift_fourier
from cryorefine.fourier.projector import extract_slices, prepare_reference
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import (
    check_particles_against_tomograms,
    load_optimisation_set,
    load_particles,
    load_tomograms,
    read_mrc,
)
from cryorefine.simulate import MICROSCOPE, SimulationOptions, simulate_dataset
from cryorefine.simulate.tilt_series import TILT_AXIS_DEG, simulate_tilt_images
from cryorefine.tomo import particle_tilts, relion5_projection_matrices, tilt_series_geometry

N = 16
PIXEL = 6.0
COUNT = 7
PER = 3
TILTS = np.arange(-45.0, 45.0 + 1e-9, 15.0)
F64 = torch.float64
U64 = 2.0**-53


@pytest.fixture(scope="module")
def truth_file(tmp_path_factory) -> Path:
    centres = np.array([[2.0, -1.0, 1.0], [-2.0, 1.5, -1.0]])
    volume = blob_volume(centres, np.array([1.2, 1.6]), np.array([1.0, 0.6]), N)
    return write_truth(tmp_path_factory.mktemp("truth") / "blobs.mrc", volume, PIXEL)


def _arguments(folder: Path, truth: Path, *extra: str) -> list[str]:
    return [
        "simulate", "--o", str(folder), "--format", "tilt_series", "--map", str(truth),
        "--box", str(N), "--angpix", str(PIXEL), "--n_particles", str(COUNT),
        "--per_tomogram", str(PER), "--tilt_range", "-45", "45", "--tilt_step", "15",
        "--max_offset", "1.5", "--seed", "3", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def clean(tmp_path_factory, truth_file) -> Path:
    folder = tmp_path_factory.mktemp("clean")
    assert main(_arguments(folder, truth_file, "--no_noise")) == 0
    return folder


def _true_centres_angst(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    truth = load_particles(folder / "truth_particles.star", check_images=False)
    picks = truth.centered_coordinates_angst()
    return truth.tomo_names(), picks - truth.origins_angst(), truth.angles_deg()


def test_tilt_series_set_reads_back_as_relion5_tilt_series_and_picks(clean):
    optimisation = load_optimisation_set(clean / "optimisation_set.star")
    assert optimisation.particles_file == clean / "particles.star"
    assert optimisation.reference_map1 is None  # a picking job's set: particles, tomograms
    tomograms = load_tomograms(optimisation.tomograms_file)
    assert tomograms.names() == ["TS_0001", "TS_0002", "TS_0003"]
    picks = load_particles(optimisation.particles_file)
    assert picks.flavour == "relion5_picks"
    check_particles_against_tomograms(picks, tomograms)
    assert picks.tomo_particle_names()[:4] == ["TS_0001/1", "TS_0001/2", "TS_0001/3", "TS_0002/1"]
    truth = load_particles(clean / "truth_particles.star", check_images=False)
    assert np.abs(truth.origins_angst()).max() <= 1.5 * PIXEL
    for name in tomograms.names():
        series = tomograms[name]
        np.testing.assert_array_equal(series.nominal_tilt_angles_deg(), TILTS)
        images, voxel = read_mrc(clean / "tilt_series" / f"{name}.mrcs")
        assert images.shape == (len(TILTS), 4 * N, 4 * N)
        assert voxel == pytest.approx(PIXEL)
        angles = torch.as_tensor(TILTS, dtype=F64)
        want = relion5_projection_matrices(
            angles * 0, angles, angles * 0 + TILT_AXIS_DEG, angles * 0, angles * 0,
            pixel_size_angst=PIXEL, tomogram_size_px=(4 * N, 4 * N, 2 * N),
            image_size_px=(4 * N, 4 * N),
        )  # fmt: skip
        np.testing.assert_allclose(series.projection_matrices(), want.numpy(), rtol=0, atol=1e-12)
    summary = json.loads((clean / "simulation.json").read_text())
    assert summary["tilt_series"]["tomograms"] == 3
    assert summary["noise_measurement"].startswith("tilt image")


def test_every_particle_is_seen_by_every_tilt_and_the_particles_keep_apart(clean):
    tomograms = load_tomograms(clean / "tomograms.star")
    names, centres, _ = _true_centres_angst(clean)
    for name in tomograms.names():
        rows = [i for i, t in enumerate(names) if t == name]
        geometry = tilt_series_geometry(tomograms[name], device="cpu", image_size_px=(64, 64))
        points = torch.as_tensor(centres[rows])
        # a paste box of 2 N fits in every tilt image: radius N
        assert bool(particle_tilts(geometry, points, visibility_radius_px=N).visible.all())
        distance = torch.cdist(points, points) / PIXEL + torch.eye(len(rows)) * 1e9
        assert float(distance.min()) >= 0.75 * N


def _reference(truth_file: Path) -> torch.Tensor:
    volume, _ = read_mrc(truth_file)
    return prepare_reference(torch.as_tensor(volume, dtype=F64), gridding_correction="separable")


def _geometry_and_particles(folder: Path, name: str):
    tomograms = load_tomograms(folder / "tomograms.star")
    names, centres, angles = _true_centres_angst(folder)
    rows = [i for i, t in enumerate(names) if t == name]
    geometry = tilt_series_geometry(tomograms[name], device="cpu", image_size_px=(64, 64))
    tilts = particle_tilts(geometry, torch.as_tensor(centres[rows]))
    return geometry, tilts, euler_to_matrix(torch.as_tensor(angles[rows]))


def _images(reference_ft, rotations, tilts) -> torch.Tensor:
    return simulate_tilt_images(reference_ft, rotations, tilts, image_size_px=(64, 64),
                                box_size=N, pixel_size_angst=PIXEL)  # fmt: skip


def test_a_tilt_image_is_the_sum_of_its_particles_dark_ctf_projections(clean, truth_file):
    reference_ft = _reference(truth_file)
    _, tilts, rotations = _geometry_and_particles(clean, "TS_0001")
    together = _images(reference_ft, rotations, tilts)
    single = [
        _images(reference_ft, rotations[i : i + 1],
                type(tilts)(**{k: v[i : i + 1] for k, v in vars(tilts).items()}))
        for i in range(PER)
    ]  # fmt: skip
    # float64; each pixel is a sum of PER boxes either way (only the order differs)
    bound = PER * 4 * U64 * float(together.abs().max())
    torch.testing.assert_close(together, sum(single), rtol=0.0, atol=bound)
    # One particle, one tilt, by the definition: -IFT(CTF D shift(pad(slice))) at round(c).
    image, t, p = single[0], 2, 2 * N
    matrix = tilts.rotations[0, t] @ rotations[0]
    slice_ft = extract_slices(reference_ft, matrix[None], out_size=N)
    padded = torch.zeros(1, p, p, dtype=F64)
    padded[:, p // 2 - N // 2 : p // 2 + N // 2, p // 2 - N // 2 : p // 2 + N // 2] = from_fourier(
        slice_ft, N, 2
    )
    ctf = ctf_2d(
        defocus_u_angst=tilts.defocus_u_angst[0, t : t + 1],
        defocus_v_angst=tilts.defocus_v_angst[0, t : t + 1],
        defocus_angle_deg=tilts.defocus_angle_deg[0, t : t + 1], pixel_size_angst=PIXEL,
        box_size=p, **{k: float(v) for k, v in MICROSCOPE.items()},
    )  # fmt: skip
    ctf = ctf * dose_weight(
        tilts.dose_e_per_angst2[0, t : t + 1], pixel_size_angst=PIXEL, box_size=p
    )
    centre = torch.floor(tilts.position_px[0, t] + 0.5)
    box = -from_fourier(
        shift_fourier(to_fourier(padded, 2) * ctf, tilts.position_px[0, t] - centre), p, 2
    )
    x0, y0 = (int(v) - p // 2 for v in centre)
    want = torch.zeros_like(image[t])
    want[y0 : y0 + p, x0 : x0 + p] = box[0]
    bound = 8 * p * p * U64 * float(box.abs().max())
    torch.testing.assert_close(image[t], want, rtol=0.0, atol=bound)


def test_written_tilt_images_are_the_single_precision_computation(clean, truth_file):
    volume, _ = read_mrc(truth_file)
    reference_ft = prepare_reference(torch.as_tensor(volume), gridding_correction="separable")
    _, tilts, rotations = _geometry_and_particles(clean, "TS_0002")
    want = simulate_tilt_images(reference_ft, rotations.float(), tilts, image_size_px=(64, 64),
                                box_size=N, pixel_size_angst=PIXEL)  # fmt: skip
    got, _ = read_mrc(clean / "tilt_series" / "TS_0002.mrcs")
    # The same float32 operations on the same inputs, up to the picks' round trip through
    # 12-digit STAR values (positions move by < 1e-9 pixel): float32 rounding of |image|.
    bound = 64 * 2.0**-24 * float(want.abs().max())
    torch.testing.assert_close(torch.as_tensor(got), want, rtol=0.0, atol=bound)


def test_noise_has_the_standard_deviation_the_snr_asks_for(clean, truth_file, tmp_path):
    noisy = tmp_path / "noisy"
    assert main(_arguments(noisy, truth_file, "--snr", "0.5")) == 0
    sigma = json.loads((noisy / "simulation.json").read_text())["noise_sigma_per_pixel"]
    differences = []
    for name in ("TS_0001", "TS_0002", "TS_0003"):
        a, _ = read_mrc(noisy / "tilt_series" / f"{name}.mrcs")
        b, _ = read_mrc(clean / "tilt_series" / f"{name}.mrcs")
        differences.append((a.astype(np.float64) - b).ravel())
    noise = np.concatenate(differences)
    m = noise.size
    # Gaussian samples: the mean has standard error sigma / sqrt(m), the standard
    # deviation sigma / sqrt(2 m); 5 standard errors each.
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(m)
    assert abs(noise.std() - sigma) < 5 * sigma / math.sqrt(2 * m)


def test_too_many_particles_per_tomogram_are_refused(truth_file, tmp_path):
    options = SimulationOptions(
        output_dir=tmp_path, map_path=truth_file, box_size=N, pixel_size_angst=PIXEL,
        n_particles=9, data_format="tilt_series", particles_per_tomogram=9,
    )  # fmt: skip
    with pytest.raises(InputError, match="--per_tomogram 9"):
        simulate_dataset(options)
