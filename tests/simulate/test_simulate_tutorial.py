"""Simulating on the real tutorial's tilt series and picks (--tomograms, --particles).

The written set must read back through ``io`` as the refinement input RELION would
see (the real tomograms, tilt angles and positions), and each particle's 3D CTF must
follow its tomogram's per-tilt defocus at the particle's own depth: checked against
a float64 reference built here from the real STAR files with the textbook formulas.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryorefine.errors import InputError
from cryorefine.fourier.ctf3d import tilt_series_ctf_weights
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import (
    check_particles_against_tomograms,
    load_optimisation_set,
    load_particles,
    load_tomograms,
    read_mrc,
)
from cryorefine.simulate import SimulationOptions, load_picked_geometry, simulate_dataset
from cryorefine.simulate.surface_frames import PRIOR_ANGLES_DEG, surface_normals
from cryorefine.tomo import particle_tilts, tilt_series_geometry

N = 24
BINNING = 6.0
IMAGE = (3710, 3838)
COUNT = 5


def _options(folder: Path, tutorial: Path, **changes) -> SimulationOptions:
    values = {
        "output_dir": folder,
        "n_particles": COUNT,
        "box_size": N,
        "binning": BINNING,
        "snr": math.inf,
        "data_format": "relion4",
        "ref_lowpass_angst": 40.0,
        "seed": 4,
        "tomograms_star": tutorial / "Tomograms/job006/tomograms.star",
        "particles_star": tutorial / "Picks/job019/particles.star",
        "tilt_image_size_px": IMAGE,
    }
    values.update(changes)
    return SimulationOptions(**values)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, hiv_tutorial: Path) -> Path:
    folder = tmp_path_factory.mktemp("tutorial")
    simulate_dataset(_options(folder, hiv_tutorial))
    return folder


def test_written_set_reads_back_with_the_real_tomograms_and_picks(simulated, hiv_tutorial):
    optimisation = load_optimisation_set(simulated / "optimisation_set.star")
    particles = load_particles(optimisation.particles_file)
    tomograms = load_tomograms(optimisation.tomograms_file)
    check_particles_against_tomograms(particles, tomograms)
    assert particles.flavour == "relion4"
    assert len(particles) == COUNT
    np.testing.assert_allclose(particles.pixel_size_angst, BINNING * 1.35, rtol=1e-12)
    picks = starfile.read(hiv_tutorial / "Picks/job019/particles.star")
    centred = picks[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    # Every particle is a pick: its tomogram and its position, both RELION-5 and -4 style.
    mine = particles.centered_coordinates_angst()
    for name, position in zip(particles.tomo_names(), mine, strict=True):
        same = (picks["rlnTomoName"] == name).to_numpy() & np.all(
            np.abs(centred - position) < 1e-6, axis=1
        )
        assert same.sum() == 1
    series = {name: tomograms[name] for name in set(particles.tomo_names())}
    for row, name in enumerate(particles.tomo_names()):
        centre = np.array(series[name].size_px) / 2
        np.testing.assert_allclose(
            particles.coordinates_px()[row], mine[row] / 1.35 + centre, rtol=0, atol=1e-6
        )
        real = starfile.read(hiv_tutorial / f"Tomograms/job006/tilt_series/{name}.star")
        np.testing.assert_array_equal(
            series[name].nominal_tilt_angles_deg(), real["rlnTomoNominalStageTiltAngle"]
        )
        np.testing.assert_array_equal(
            series[name].pre_exposure_e_per_angst2(), real["rlnMicrographPreExposure"]
        )
    assert series[name].has_projection_matrices  # the geometry used, written out


def test_same_seed_chooses_the_same_picks_and_another_seed_others(tmp_path, hiv_tutorial):
    def names(seed: int) -> list[str]:
        picked = load_picked_geometry(
            _options(tmp_path, hiv_tutorial, seed=seed, n_particles=50),
            generator=torch.Generator().manual_seed(seed),
            device=torch.device("cpu"),
        )
        numbers = picked.particle_numbers
        return [f"{n}/{k}" for n, k in zip(picked.tomo_names, numbers, strict=True)]

    assert names(1) == names(1)
    assert names(1) != names(2)
    assert len(set(names(1))) == 50


def _rotation(axis: int, angle_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return [
        np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    ][axis]


def _slow_ctf(fx, fy, *, du, dv, angle_deg, scale, dose):
    """Textbook CTF (300 kV, Cs 2.7 mm, Q0 0.1) times the dose weight, Python floats."""
    kv, cs, q0 = 300e3, 2.7e7, 0.1
    lam = 12.2643247 / math.sqrt(kv * (1 + 0.978466e-6 * kv))
    s2 = fx * fx + fy * fy
    theta = math.atan2(fy, fx)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * math.cos(2 * (theta - math.radians(angle_deg)))
    chi = math.pi * lam * df * s2 - 0.5 * math.pi * cs * lam**3 * s2 * s2 + math.asin(q0)
    weight = math.exp(-dose / (2 * (0.245 * math.sqrt(s2) ** -1.665 + 2.81))) if s2 else 1.0
    return scale * math.sin(chi) * weight


def _tilt_axis_reference(table: pd.DataFrame, position_angst, *, depth: bool) -> np.ndarray:
    """CTF^2 summed over visible tilts on the kx = kz = 0 line, ky = 0 .. n/2 (float64).

    Every tilt of the tutorial has rlnTomoXTilt 0, so its slice contains the tomogram's
    y axis: frequency (0, ky, 0) is seen by tilt f at (R_f e_y) ky / (n p), weight 1.
    """
    size, pixel, hand = np.array([4000.0, 4000.0, 2000.0]), 1.35, -1.0
    point = np.append(position_angst / pixel + size / 2, 1.0)
    out = np.zeros(N // 2 + 1)
    radius = BINNING * N / 2
    for _, row in table.iterrows():
        assert row["rlnTomoXTilt"] == 0.0
        turn = _rotation(2, row["rlnTomoZRot"]) @ _rotation(1, row["rlnTomoYTilt"])
        p = np.eye(4)
        p[:3, :3] = turn
        p[:3, 3] = -turn @ (size // 2) + [
            IMAGE[0] // 2 + row["rlnTomoXShiftAngst"] / pixel,
            IMAGE[1] // 2 + row["rlnTomoYShiftAngst"] / pixel,
            0.0,
        ]
        q = p @ point
        if not (radius < q[0] < IMAGE[0] - radius and radius < q[1] < IMAGE[1] - radius):
            continue
        shift = hand * pixel * (q[2] - (p @ np.append(size / 2, 1.0))[2]) if depth else 0.0
        for ky in range(N // 2 + 1):
            fx, fy = turn[:2, 1] * ky / (N * pixel * BINNING)
            c = _slow_ctf(
                fx, fy,
                du=row["rlnDefocusU"] + shift, dv=row["rlnDefocusV"] + shift,
                angle_deg=row["rlnDefocusAngle"], scale=row.get("rlnCtfScalefactor", 1.0),
                dose=row["rlnMicrographPreExposure"],
            )  # fmt: skip
            out[ky] += c * c
    return out


def test_3d_ctf_follows_the_real_per_tilt_defocus_at_the_particles_depth(
    simulated, hiv_tutorial
) -> None:
    particles = load_particles(simulated / "particles.star")
    positions = particles.centered_coordinates_angst()
    checked = 0
    for row, name in enumerate(particles.tomo_names()):
        table = starfile.read(hiv_tutorial / f"Tomograms/job006/tilt_series/{name}.star")
        weights, _ = read_mrc(particles.ctf_image_paths()[row])
        got = weights[0, : N // 2 + 1, 0].astype(np.float64)  # ctf2 at (0, ky, 0), (z, y, x)
        want = _tilt_axis_reference(table, positions[row], depth=True)
        # Float32 storage of a float64 sum: relative 2^-24; the sum itself, from the
        # factored CTF, is exact to ~1e-12 (fourier tests).
        np.testing.assert_allclose(got, want, rtol=2.0**-22, atol=1e-12)
        flat = _tilt_axis_reference(table, positions[row], depth=False)
        if np.abs(flat - want).max() > 1e-3 * want.max():
            checked += 1  # the depth term mattered for this particle, and was matched
    assert checked >= 1


def test_unseen_picks_are_dropped_and_counted(tmp_path: Path, hiv_tutorial: Path) -> None:
    picks = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01", "TS_01", "TS_03"],
            "rlnCenteredCoordinateXAngst": [0.0, 40000.0, 100.0],  # the second is far outside
            "rlnCenteredCoordinateYAngst": [0.0, 0.0, -200.0],
            "rlnCenteredCoordinateZAngst": [0.0, 0.0, 50.0],
        }
    )
    starfile.write({"particles": picks}, tmp_path / "picks.star")
    options = _options(
        tmp_path / "out", hiv_tutorial, n_particles=None, particles_star=tmp_path / "picks.star"
    )
    simulate_dataset(options)
    particles = load_particles(tmp_path / "out" / "particles.star")
    assert particles.tomo_names() == ["TS_01", "TS_03"]
    assert particles.tomo_particle_names() == ["TS_01/1", "TS_03/1"]
    summary = (tmp_path / "out" / "simulation.json").read_text()
    assert '"picks_dropped_unseen": 1' in summary
    with pytest.raises(InputError, match=r"--n_particles 3: .* has only 2 picks"):
        simulate_dataset(_options(tmp_path / "more", hiv_tutorial, n_particles=3,
                                  particles_star=tmp_path / "picks.star"))  # fmt: skip


def test_real_tilt_series_options_are_checked(tmp_path: Path, hiv_tutorial: Path) -> None:
    with pytest.raises(InputError, match="--tomograms and --particles go together"):
        _options(tmp_path, hiv_tutorial, particles_star=None)
    with pytest.raises(InputError, match="--tomograms: real tilt series need"):
        _options(tmp_path, hiv_tutorial, data_format="spa")
    with pytest.raises(InputError, match="--bin: only with --tomograms"):
        SimulationOptions(output_dir=tmp_path, binning=2.0)
    with pytest.raises(InputError, match="--n_particles: expected a number"):
        SimulationOptions(output_dir=tmp_path, n_particles=None)
    with pytest.raises(InputError, match="--surface_normals: needs --tomograms"):
        SimulationOptions(output_dir=tmp_path, surface_normals=True)
    with pytest.raises(InputError, match="--surface_normals: needs"):
        _options(tmp_path, hiv_tutorial, data_format="subtomo3d", surface_normals=True)
    with pytest.raises(InputError, match="--normal_spread 60"):
        _options(tmp_path, hiv_tutorial, surface_normals=True, normal_spread_deg=60.0)


def test_classic_subtomograms_take_the_real_geometry_too(tmp_path: Path, hiv_tutorial: Path):
    simulate_dataset(_options(tmp_path, hiv_tutorial, n_particles=2, data_format="subtomo3d"))
    particles = load_particles(tmp_path / "particles.star")
    assert particles.flavour == "subtomo3d"
    assert set(particles.tomo_names()) <= {"TS_01", "TS_03", "TS_43", "TS_45", "TS_54"}
    assert not (tmp_path / "tomograms.star").exists()  # RELION-4 pseudo-subtomograms only
    ctf, _ = read_mrc(particles.ctf_image_paths()[0])
    assert ctf.shape == (N, N, N)
    assert np.abs(ctf).max() > 0.1  # the real tilts reach the grid


def test_picks_on_surfaces_are_built_in_frames_along_their_normals(
    tmp_path: Path, hiv_tutorial: Path
) -> None:
    simulate_dataset(_options(tmp_path, hiv_tutorial, surface_normals=True))
    table = starfile.read(tmp_path / "particles.star")["particles"]
    truth = starfile.read(tmp_path / "truth_particles.star")["particles"]
    # The input carries what RELION's picking on spheres writes.
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    np.testing.assert_array_equal(table[angles].to_numpy(), [PRIOR_ANGLES_DEG] * COUNT)
    assert (table["rlnAngleTiltPrior"] == 90).all()
    assert (table["rlnAnglePsiPrior"] == 0).all()
    # The truth spreads about the priors (8 degrees by default; 5 sigma).
    assert (np.abs(truth["rlnAngleTilt"] - 90) < 40).all()
    assert (np.abs(truth["rlnAnglePsi"]) < 40).all()
    assert truth["rlnAngleRot"].nunique() == COUNT
    # Each frame's normal is the one the tomogram's picks give.
    picks = starfile.read(hiv_tutorial / "Picks/job019/particles.star")
    centred = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    frame_labels = [f"rlnTomoSubtomogram{a}" for a in ("Rot", "Tilt", "Psi")]
    frames = euler_to_matrix(torch.as_tensor(table[frame_labels].to_numpy(np.float64)))
    prior = euler_to_matrix(torch.tensor(PRIOR_ANGLES_DEG, dtype=torch.float64))
    tomograms = load_tomograms(tmp_path / "tomograms.star")
    particles = load_particles(tmp_path / "particles.star")
    for row, name in enumerate(table["rlnTomoName"]):
        mine = picks[picks["rlnTomoName"] == name][centred].to_numpy()
        match = np.flatnonzero(np.abs(mine - table[centred].to_numpy()[row]).max(axis=1) < 1e-6)
        normal = surface_normals(mine)[match[0]]
        np.testing.assert_allclose((frames[row] @ prior)[:, 2].numpy(), normal, atol=1e-5)
        # The pseudo-subtomogram's CTF^2 is that of its tilts seen through the frame.
        geometry = tilt_series_geometry(tomograms[name], device="cpu", image_size_px=IMAGE)
        position = torch.as_tensor(table[centred].to_numpy()[row : row + 1])
        expected = {}
        for framed in (True, False):
            tilts = particle_tilts(
                geometry,
                position,
                visibility_radius_px=BINNING * N / 2,
                subtomogram_rotations=frames[row : row + 1] if framed else None,
            )
            expected[framed] = tilt_series_ctf_weights(
                tilts.rotations, defocus_u_angst=tilts.defocus_u_angst,
                defocus_v_angst=tilts.defocus_v_angst, defocus_angle_deg=tilts.defocus_angle_deg,
                voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast=0.1,
                pixel_size_angst=BINNING * 1.35, box_size=N,
                dose_e_per_angst2=tilts.dose_e_per_angst2, bfactor_angst2=tilts.bfactor_angst2,
                scale=tilts.scale, visible=tilts.visible,
            )[0][0].numpy()  # fmt: skip
        weights, _ = read_mrc(particles.ctf_image_paths()[row])
        got = weights[:N].astype(np.float64)
        np.testing.assert_allclose(got, expected[True], rtol=2.0**-22, atol=1e-6)
        assert np.abs(got - expected[False]).max() > 1e-2 * got.max()
