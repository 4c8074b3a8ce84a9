"""Tilt-series geometry: projections, image positions, depth, defocus, dose and visibility.

Tomograms are written with ``starfile`` directly and read through ``io.load_tomograms``,
so the whole path from the STAR labels to the tensors is under test. The slow
reference builds every matrix from its textbook form with numpy, one particle and
one tilt at a time.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryorefine.geometry import euler_to_matrix
from cryorefine.io import load_particles, load_tomograms
from cryorefine.tomo import (
    decentred_coordinates_px,
    particle_tilts,
    relion5_projection_matrices,
    tilt_series_geometry,
)

F64 = torch.float64


def _write_relion5(
    folder: Path,
    *,
    size: tuple[int, int, int],
    pixel: float,
    hand: float,
    tilts: dict[str, np.ndarray],
) -> Path:
    """A RELION-5 tomograms.star (one tomogram, TS_T) and its tilt_series/TS_T.star."""
    (folder / "tilt_series").mkdir(parents=True, exist_ok=True)
    starfile.write({"TS_T": pd.DataFrame(tilts)}, folder / "tilt_series" / "TS_T.star")
    global_table = pd.DataFrame(
        {
            "rlnTomoName": ["TS_T"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnTomoHand": [hand],
            "rlnTomoTiltSeriesPixelSize": [pixel],
            "rlnTomoTiltSeriesStarFile": ["tilt_series/TS_T.star"],
            "rlnTomoSizeX": [size[0]],
            "rlnTomoSizeY": [size[1]],
            "rlnTomoSizeZ": [size[2]],
        }
    )
    starfile.write({"global": global_table}, folder / "tomograms.star")
    return folder / "tomograms.star"


def _random_tilts(gen: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    return {
        "rlnTomoXTilt": gen.uniform(-5, 5, count),
        "rlnTomoYTilt": gen.uniform(-60, 60, count),
        "rlnTomoZRot": gen.uniform(-180, 180, count),
        "rlnTomoXShiftAngst": gen.uniform(-200, 200, count),
        "rlnTomoYShiftAngst": gen.uniform(-200, 200, count),
        "rlnDefocusU": gen.uniform(20000, 40000, count),
        "rlnDefocusV": gen.uniform(20000, 40000, count),
        "rlnDefocusAngle": gen.uniform(-90, 90, count),
        "rlnMicrographPreExposure": gen.permutation(count) * 3.0,
        "rlnCtfScalefactor": gen.uniform(0.5, 1.0, count),
    }


def _rotation(axis: int, angle_deg: float) -> np.ndarray:
    """Counter-clockwise rotation about x, y or z (right-handed), the textbook matrices."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return [
        np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    ][axis]


def _slow_projection(row: pd.Series, size, image, pixel) -> np.ndarray:
    """P = T(image centre + shift) Rz Ry Rx T(-tomogram centre), built step by step."""
    move_in, move_out, turn = np.eye(4), np.eye(4), np.eye(4)
    move_in[:3, 3] = -np.array([size[0] // 2, size[1] // 2, size[2] // 2], dtype=float)
    turn[:3, :3] = (
        _rotation(2, row["rlnTomoZRot"])
        @ _rotation(1, row["rlnTomoYTilt"])
        @ _rotation(0, row["rlnTomoXTilt"])
    )
    move_out[:3, 3] = [
        image[0] // 2 + row["rlnTomoXShiftAngst"] / pixel,
        image[1] // 2 + row["rlnTomoYShiftAngst"] / pixel,
        0.0,
    ]
    return move_out @ turn @ move_in


@pytest.mark.parametrize("odd", [False, True])
def test_every_output_matches_a_per_particle_loop(tmp_path: Path, device, odd: bool) -> None:
    gen = np.random.default_rng(11 + odd)
    size = (1001, 1203, 401) if odd else (1000, 1200, 400)
    image, pixel, hand, tilts_count, count = (900, 1100), 1.7, -1.0, 7, 40
    tilts = _random_tilts(gen, tilts_count)
    star = _write_relion5(tmp_path, size=size, pixel=pixel, hand=hand, tilts=tilts)
    series = load_tomograms(star)["TS_T"]
    geometry = tilt_series_geometry(series, device=device, image_size_px=image)
    centred = gen.uniform(-1, 1, (count, 3)) * np.array(size) / 2 * pixel
    frames = euler_to_matrix(torch.tensor(gen.uniform(-180, 180, (count, 3)), dtype=F64))
    radius, max_dose = 60.0, 14.0
    got = particle_tilts(
        geometry,
        torch.tensor(centred, device=device),
        visibility_radius_px=radius,
        max_dose_e_per_angst2=max_dose,
        subtomogram_rotations=frames.to(device),
    )
    table = starfile.read(tmp_path / "tilt_series" / "TS_T.star")  # as written (rounded)
    centre = np.array(size, dtype=float) / 2
    want = {key: np.zeros((count, tilts_count)) for key in ("u", "v", "depth", "du", "dv")}
    want_rotations = np.zeros((count, tilts_count, 3, 3))
    want_visible = np.zeros((count, tilts_count), dtype=bool)
    for f in range(tilts_count):
        row = table.iloc[f]
        p = _slow_projection(row, size, image, pixel)
        for b in range(count):
            q = p @ np.append(centred[b] / pixel + centre, 1.0)
            depth = q[2] - (p @ np.append(centre, 1.0))[2]
            want["u"][b, f], want["v"][b, f], want["depth"][b, f] = q[0], q[1], depth
            want["du"][b, f] = row["rlnDefocusU"] + hand * pixel * depth
            want["dv"][b, f] = row["rlnDefocusV"] + hand * pixel * depth
            inside = radius < q[0] < image[0] - radius and radius < q[1] < image[1] - radius
            want_visible[b, f] = inside and row["rlnMicrographPreExposure"] <= max_dose
            want_rotations[b, f] = p[:3, :3] @ frames[b].numpy()
    # Float64 on coordinates up to ~1000 px through a few 4x4 products: ~1e-12 px;
    # defocus adds p times that to ~4e4 A (rounding ~1e-11 A).
    close = {"rtol": 0.0, "atol": 1e-9}
    np.testing.assert_allclose(got.position_px[..., 0].cpu(), want["u"], **close)
    np.testing.assert_allclose(got.position_px[..., 1].cpu(), want["v"], **close)
    np.testing.assert_allclose(got.depth_px.cpu(), want["depth"], **close)
    np.testing.assert_allclose(got.defocus_u_angst.cpu(), want["du"], **close)
    np.testing.assert_allclose(got.defocus_v_angst.cpu(), want["dv"], **close)
    np.testing.assert_allclose(got.rotations.cpu(), want_rotations, rtol=0.0, atol=1e-14)
    np.testing.assert_array_equal(got.visible.cpu(), want_visible)
    assert 0 < want_visible.sum() < want_visible.size  # both outcomes are exercised
    for mine, label in (
        (got.defocus_angle_deg, "rlnDefocusAngle"),
        (got.dose_e_per_angst2, "rlnMicrographPreExposure"),
        (got.scale, "rlnCtfScalefactor"),
    ):
        np.testing.assert_array_equal(mine.cpu(), np.tile(table[label].to_numpy(), (count, 1)))
    np.testing.assert_array_equal(got.bfactor_angst2.cpu(), 0.0)  # no rlnCtfBfactor


def test_untilted_particle_lands_at_its_centred_position_over_the_pixel(device) -> None:
    zero = torch.zeros(1, dtype=F64, device=device)
    size, image, pixel = (1000, 800, 300), (700, 900), 2.0
    p = relion5_projection_matrices(
        zero, zero, zero, zero, zero,
        pixel_size_angst=pixel, tomogram_size_px=size, image_size_px=image,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    centred = (torch.rand(20, 3, generator=gen, dtype=F64) - 0.5) * 800
    q = torch.cat([centred / pixel + torch.tensor(size, dtype=F64) / 2, torch.ones(20, 1)], 1)
    mapped = (p[0].cpu() @ q.T).T
    # Image centre (W // 2, H // 2) plus the centred coordinate in pixels; depth = z.
    want = centred / pixel + torch.tensor([image[0] // 2, image[1] // 2, 0.0], dtype=F64)
    torch.testing.assert_close(mapped[:, :3], want, rtol=0.0, atol=1e-12)


def test_tilt_about_y_turns_x_and_depth_by_cos_and_sin(device) -> None:
    angles = torch.tensor([-60.0, -20.0, 0.0, 35.0, 60.0], dtype=F64, device=device)
    zero = torch.zeros_like(angles)
    size, pixel = (2000, 2000, 1000), 1.0
    p = relion5_projection_matrices(
        zero, angles, zero, zero, zero,
        pixel_size_angst=pixel, tomogram_size_px=size, image_size_px=(2000, 2000),
    )  # fmt: skip
    point = torch.tensor([300.0, -40.0, 90.0], dtype=F64, device=device)  # from the centre
    mapped = p @ torch.cat(
        [
            point + 1000.0 * torch.tensor([1.0, 1.0, 0.5], device=device),
            torch.ones(1, dtype=F64, device=device),
        ]
    )
    t = torch.deg2rad(angles)
    # Active rotation about y: x' = c x + s z, z' = -s x + c z; y is the tilt axis.
    torch.testing.assert_close(
        mapped[:, 0], 1000 + t.cos() * 300 + t.sin() * 90, rtol=0, atol=1e-10
    )
    torch.testing.assert_close(mapped[:, 1], torch.full_like(t, 1000.0 - 40.0), rtol=0, atol=1e-10)
    torch.testing.assert_close(mapped[:, 2], -t.sin() * 300 + t.cos() * 90, rtol=0, atol=1e-10)


def test_depth_moves_defocus_by_hand_times_pixel(tmp_path: Path) -> None:
    tilts = {
        "rlnTomoXTilt": [0.0, 0.0], "rlnTomoYTilt": [0.0, 30.0], "rlnTomoZRot": [0.0, 0.0],
        "rlnTomoXShiftAngst": [0.0, 0.0], "rlnTomoYShiftAngst": [0.0, 0.0],
        "rlnDefocusU": [30000.0, 31000.0], "rlnDefocusV": [29000.0, 30500.0],
        "rlnDefocusAngle": [10.0, 20.0], "rlnMicrographPreExposure": [0.0, 3.0],
    }  # fmt: skip
    above = torch.tensor([[0.0, 0.0, 500.0]], dtype=F64)  # 500 A above the centre
    for hand in (1.0, -1.0):
        star = _write_relion5(
            tmp_path / str(hand), size=(400, 400, 200), pixel=2.5, hand=hand, tilts=tilts
        )
        geometry = tilt_series_geometry(load_tomograms(star)["TS_T"], device="cpu")
        got = particle_tilts(geometry, above)
        # Depth in pixels: 500 / 2.5 = 200 untilted, 200 cos 30 tilted; shift hand * p * depth.
        depth = torch.tensor([[200.0, 200.0 * math.cos(math.radians(30))]], dtype=F64)
        torch.testing.assert_close(got.depth_px, depth, rtol=0, atol=1e-10)
        shift = hand * 2.5 * depth
        torch.testing.assert_close(
            got.defocus_u_angst, torch.tensor([[30000.0, 31000.0]]) + shift, rtol=0, atol=1e-9
        )
        torch.testing.assert_close(
            got.defocus_v_angst, torch.tensor([[29000.0, 30500.0]]) + shift, rtol=0, atol=1e-9
        )


def test_relion4_projection_rows_are_used_as_written(tmp_path: Path) -> None:
    gen = np.random.default_rng(5)
    matrices = np.tile(np.eye(4), (3, 1, 1))
    matrices[:, :3, :3] = np.stack([_rotation(1, a) for a in (-30.0, 0.0, 30.0)])
    matrices[:, :3, 3] = gen.uniform(-50, 50, (3, 3)) + np.array([300.0, 250.0, 0.0])
    rows = {
        label: ["[" + ",".join(f"{v:.17g}" for v in m[i]) + "]" for m in matrices]
        for i, label in enumerate(("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW"))
    }
    tilts = {
        **rows, "rlnDefocusU": [1e4] * 3, "rlnDefocusV": [1e4] * 3, "rlnDefocusAngle": [0.0] * 3,
        "rlnMicrographPreExposure": [0.0, 3.0, 6.0],
        # Alignment angles that disagree: the projection rows win, as in RELION.
        "rlnTomoXTilt": [9.0] * 3, "rlnTomoYTilt": [9.0] * 3, "rlnTomoZRot": [9.0] * 3,
        "rlnTomoXShiftAngst": [9.0] * 3, "rlnTomoYShiftAngst": [9.0] * 3,
    }  # fmt: skip
    star = _write_relion5(tmp_path, size=(600, 500, 200), pixel=1.0, hand=1.0, tilts=tilts)
    geometry = tilt_series_geometry(load_tomograms(star)["TS_T"], device="cpu")
    np.testing.assert_array_equal(geometry.projections.numpy(), matrices)
    assert geometry.image_size_px == (600, 500)  # the tomogram's x, y when not given


def test_decentred_coordinates_are_centred_angstrom_over_pixel_plus_centre(tmp_path) -> None:
    tilts = _random_tilts(np.random.default_rng(1), 2)
    star = _write_relion5(tmp_path, size=(1001, 800, 301), pixel=1.35, hand=-1.0, tilts=tilts)
    geometry = tilt_series_geometry(load_tomograms(star)["TS_T"], device="cpu")
    centred = torch.tensor([[0.0, 0.0, 0.0], [13.5, -27.0, 135.0]], dtype=F64)
    want = torch.tensor([[500.5, 400.0, 150.5], [510.5, 380.0, 250.5]], dtype=F64)
    torch.testing.assert_close(
        decentred_coordinates_px(geometry, centred), want, rtol=0, atol=1e-12
    )


def test_tutorial_visible_frames_are_relions_own(hiv_tutorial: Path) -> None:
    """RELION's rlnTomoVisibleFrames of the tutorial's last refinement, from its geometry.

    That extraction used bin 1, box 192 (radius 96 px) and --max_dose 50 on
    3710 x 3838 tilt images. The positions here are the refined ones, which moved a
    few pixels since the extraction: only frames within that of an edge may differ.
    """
    tomograms = load_tomograms(hiv_tutorial / "Tomograms/job006/tomograms.star")
    particles = load_particles(hiv_tutorial / "Refine3D/job074/run_data.star", check_images=False)
    names = np.array(particles.tomo_names())
    frames = particles.visible_frames()
    subtomogram = euler_to_matrix(torch.tensor(particles.subtomogram_angles_deg()))
    origins = (subtomogram @ torch.tensor(particles.origins_angst())[..., None])[..., 0]
    positions = torch.tensor(particles.centered_coordinates_angst()) - origins
    mismatched, margins, total = 0, [], 0
    for name in tomograms.names():
        rows = np.flatnonzero(names == name)
        geometry = tilt_series_geometry(tomograms[name], device="cpu", image_size_px=(3710, 3838))
        got = particle_tilts(
            geometry, positions[rows], visibility_radius_px=96.0, max_dose_e_per_angst2=50.0
        )
        want = torch.tensor(np.stack([frames[r] for r in rows]), dtype=torch.bool)
        wrong = got.visible != want
        u, v = got.position_px[..., 0], got.position_px[..., 1]
        margin = torch.stack([u - 96, 3710 - 96 - u, v - 96, 3838 - 96 - v]).amin(dim=0)
        margins.append(margin[wrong])
        mismatched += int(wrong.sum())
        total += want.numel()
    assert total == 9053 * 40 + (2428 + 1605 + 1365) * 1  # 40 or 41 tilts a tomogram
    assert mismatched <= 30  # of 367,518 frames
    assert torch.cat(margins).abs().max() < 6.0  # all at the edge: position refinement
