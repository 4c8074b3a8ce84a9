"""The whole data set: determinism, simulation.json, the reference's rotation, the mask, the CLI."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from simulation_blobs import blob_volume, first_harmonic_positions, trilinear_excess, write_truth

from cryorefine.cli import simulate as simulate_command
from cryorefine.errors import InputError
from cryorefine.geometry import angular_distance_deg, point_group
from cryorefine.io import read_mrc
from cryorefine.simulate import (
    SNR_DEFINITION,
    SimulationOptions,
    make_mask,
    reference_rotation,
    simulate_dataset,
)

N = 24
PIXEL = 4.0


def _options(folder: Path, **changes) -> SimulationOptions:
    values = {
        "output_dir": folder,
        "n_particles": 5,
        "box_size": N,
        "pixel_size_angst": 64 * 2.7 / N,  # the embedded map's 64 voxels of 2.7 A
        "data_format": "relion4",
        "tilt_step_deg": 10.0,
        "ref_lowpass_angst": 30.0,
        "seed": 2,
    }
    values.update(changes)
    return SimulationOptions(**values)


def _contents(folder: Path) -> dict[str, object]:
    """Every file's content: STAR text without comment lines (they carry the time), MRC data."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.suffix == ".star":
            lines = path.read_text().splitlines()
            out[name] = [line for line in lines if not line.startswith("#")]
        elif path.suffix in (".mrc", ".mrcs"):
            out[name] = read_mrc(path)[0]
        elif path.suffix == ".json":
            summary = json.loads(path.read_text())
            summary["options"].pop("output_dir")
            out[name] = summary
    return out


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            if not np.array_equal(value, b[key]):
                return False
        elif value != b[key]:
            return False
    return True


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("first")
    simulate_dataset(_options(folder))
    return folder


def test_same_seed_gives_the_same_files_and_another_seed_others(first, tmp_path) -> None:
    simulate_dataset(_options(tmp_path / "again"))
    simulate_dataset(_options(tmp_path / "other", seed=3))
    reference = _contents(first)
    assert len(reference) == 2 * 5 + 8  # 5 x (data, weights) and 8 files beside
    assert _same(_contents(tmp_path / "again"), reference)
    other = _contents(tmp_path / "other")
    assert other.keys() == reference.keys()
    for name in ("truth_particles.star", "subtomograms/TS_0001_data.mrc", "reference.mrc"):
        assert not _same({name: other[name]}, {name: reference[name]})
    assert _same({"truth.mrc": other["truth.mrc"]}, {"truth.mrc": reference["truth.mrc"]})


def test_summary_records_every_option_and_the_snr_definition(first: Path) -> None:
    summary = json.loads((first / "simulation.json").read_text())
    options = summary["options"]
    assert set(options) == {
        "output_dir", "map", "sym", "n_particles", "box", "angpix", "snr", "defocus_range",
        "tilt_range", "tilt_step", "dose", "max_offset", "format", "ref_lowpass",
        "ref_rotation_deg", "bfactor", "seed", "tomograms", "particles", "bin",
        "tilt_image_size", "float16",
    }  # fmt: skip
    assert options["box"] == N
    assert summary["snr_definition"] == SNR_DEFINITION
    assert summary["noise_power_per_coefficient"] == pytest.approx(
        summary["signal_power"] / options["snr"], rel=1e-12
    )
    assert summary["truth"]["resampled"]
    assert len(summary["tilt_series"]["tilt_deg"]) == 13


def test_embedded_truth_is_resampled_to_the_box_and_pixel(first: Path) -> None:
    truth, pixel = read_mrc(first / "truth.mrc")
    assert truth.shape == (N, N, N)
    assert pixel == pytest.approx(64 * 2.7 / N, rel=1e-6)
    # Resampling keeps the integral (mass times voxel volume) of the band-limited map.
    from cryorefine.simulate import embedded_map

    original, original_pixel = embedded_map()
    mass = original.astype(np.float64).sum() * original_pixel**3
    assert truth.astype(np.float64).sum() * pixel**3 == pytest.approx(mass, rel=1e-3)


def test_reference_is_the_truth_turned_by_the_stated_angle(tmp_path: Path) -> None:
    centre, sigma = np.array([[6.0, 0.0, 0.0]]), np.array([1.5])
    path = write_truth(tmp_path / "blob.mrc", blob_volume(centre, sigma, np.ones(1), N), PIXEL)
    angle = 40.0
    options = _options(
        tmp_path / "out",
        map_path=path,
        pixel_size_angst=PIXEL,
        ref_rotation_deg=angle,
        ref_lowpass_angst=2.5 * PIXEL,
        n_particles=1,
    )
    result = simulate_dataset(options)
    rotation = np.array(result.reference_rotation)
    summary = json.loads((tmp_path / "out" / "simulation.json").read_text())
    np.testing.assert_array_equal(np.array(summary["reference"]["matrix"]), rotation)
    # The rotation angle, from the trace: cos t = (tr - 1) / 2.
    assert math.degrees(math.acos((np.trace(rotation) - 1) / 2)) == pytest.approx(angle, abs=1e-9)
    # The lone blob lies at Q c in the reference: phases of the first harmonics. The
    # low-pass is 1 there (cutoff 9.6 shells); the phase error is at most asin of the
    # trilinear error (padding 2) over |F|, as in the projector tests.
    reference, _ = read_mrc(tmp_path / "out" / "reference.mrc")
    ft = np.fft.rfftn(np.fft.ifftshift(reference.astype(np.float64)), norm="forward")
    measured = first_harmonic_positions(np.array([ft[0, 0, 1], ft[0, 1, 0], ft[1, 0, 0]]), N)
    volume = blob_volume(centre, sigma, np.ones(1), N)
    size = (2 * math.pi * sigma[0] ** 2) ** 1.5 * math.exp(-2 * math.pi**2 * sigma[0] ** 2 / N**2)
    tolerance = N / (2 * math.pi) * math.asin(trilinear_excess(volume, 2) / size)
    np.testing.assert_allclose(measured, rotation @ centre[0], rtol=0, atol=tolerance)
    assert np.linalg.norm(rotation @ centre[0] - centre[0]) > 3 * tolerance  # it did turn


def test_reference_rotation_is_not_near_a_symmetry_operator() -> None:
    group = point_group("C6", device="cpu")
    for seed in range(5):
        rotation, axis = reference_rotation(
            15.0, group.rotations, generator=torch.Generator().manual_seed(seed)
        )
        distances = angular_distance_deg(rotation[None], group.rotations)
        # Identity nearest: modulo the symmetry the reference is still 15 degrees away.
        assert float(distances[0]) == pytest.approx(15.0, abs=1e-9)
        assert float(distances[1:].min()) >= 16.0
        # A cyclic group's reference turns about its axis, keeping the symmetry frame.
        torch.testing.assert_close(axis, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    with pytest.raises(InputError, match="--ref_rotation_deg 40"):
        reference_rotation(40.0, group.rotations, generator=torch.Generator())  # 20 from 60


def test_reference_of_a_group_with_axes_off_z_keeps_the_frame() -> None:
    rotation, _ = reference_rotation(
        15.0, point_group("O", device="cpu").rotations, generator=torch.Generator()
    )
    torch.testing.assert_close(rotation, torch.eye(3, dtype=torch.float64))


def test_c1_reference_turns_about_a_random_axis() -> None:
    rotation, axis = reference_rotation(
        15.0, point_group("C1", device="cpu").rotations, generator=torch.Generator().manual_seed(2)
    )
    assert abs(float(axis[2])) < 1.0
    identity = torch.eye(3, dtype=torch.float64)[None]
    assert float(angular_distance_deg(rotation[None], identity)[0]) == pytest.approx(15.0, abs=1e-9)


def test_mask_is_soft_between_zero_and_one(first: Path) -> None:
    mask, _ = read_mrc(first / "mask.mrc")
    reference, _ = read_mrc(first / "reference.mrc")
    assert mask.min() >= 0.0
    assert mask.max() <= 1.0
    # 1 on the density (above a tenth of the maximum) inside the sphere that is left
    # alone by the box-face taper (radius n/2 - 3), 0 on the faces.
    axis = np.arange(N) - N // 2
    radius = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None] ** 2)
    density = (reference > 0.1 * reference.max()) & (radius <= N / 2 - 3)
    assert density.sum() > 100
    assert mask[density].min() == pytest.approx(1.0)
    assert mask[0].max() == 0.0
    soft = (mask > 0) & (mask < 1)
    assert soft.sum() > 0.1 * (mask == 1).sum()  # a raised-cosine edge, not a hard mask
    with pytest.raises(InputError, match="no positive density"):
        make_mask(-torch.ones(8, 8, 8))


def _command_line(arguments: list[str]) -> argparse.Namespace:
    """The ``simulate`` sub-command's own parser (cli.main adds only --debug to it)."""
    parser = argparse.ArgumentParser(prog="cryorefine simulate")
    simulate_command.add_arguments(parser)
    return parser.parse_args(arguments)


def test_cli_writes_a_set_and_reports_progress(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO", logger="cryorefine")
    args = _command_line(
        [
            "--o", str(tmp_path / "cli"), "--format", "spa", "--n_particles", "40",
            "--box", "24", "--angpix", str(64 * 2.7 / 24), "--no_noise", "--seed", "7",
        ]
    )  # fmt: skip
    simulate_command.run(args)
    assert (tmp_path / "cli" / "particles.mrcs").is_file()
    summary = json.loads((tmp_path / "cli" / "simulation.json").read_text())
    assert summary["options"]["snr"] == "inf"
    assert summary["options"]["seed"] == 7
    assert summary["options"]["format"] == "spa"
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("particles=")]
    # One line per chunk (32 particles): count, rate and time left, key=value.
    assert [line.split()[0] for line in progress] == ["particles=32/40", "particles=40/40"]
    for line in progress:
        fields = dict(field.split("=") for field in line.split()[1:])
        assert set(fields) == {"particles_per_second", "eta_seconds"}
        assert float(fields["particles_per_second"]) > 0
    assert float(dict(f.split("=") for f in progress[-1].split()[1:])["eta_seconds"]) == 0


def test_cli_defaults_are_the_documented_ones() -> None:
    args = _command_line(["--o", "out"])
    # --n_particles and --angpix: None, read as 200 and 2.7 (all picks with --particles).
    assert (args.sym, args.n_particles, args.box, args.angpix) == ("C1", None, 64, None)
    assert (args.tomograms, args.particles, args.bin, args.tilt_image_size) == (None,) * 4
    assert not args.float16
    assert args.snr == 0.05
    assert tuple(args.defocus_range) == (15000.0, 30000.0)
    assert tuple(args.tilt_range) == (-60.0, 60.0)
    assert (args.tilt_step, args.dose, args.max_offset, args.format) == (3.0, 3.0, 2.0, "relion4")
    assert (args.ref_lowpass, args.ref_rotation_deg, args.bfactor) == (40.0, 15.0, 0.0)
    assert args.seed == 0


def test_cli_refuses_a_bad_option_naming_it(tmp_path: Path) -> None:
    args = _command_line(["--o", str(tmp_path / "bad"), "--box", "23"])
    with pytest.raises(InputError, match=r"^--box 23: expected an even box"):
        simulate_command.run(args)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("data_format", ["relion4", "spa"])
def test_chunking_does_not_change_the_data(tmp_path: Path, data_format: str) -> None:
    # Box 10: 1000 (or 100) draws a particle, not a whole number of the CPU generator's
    # blocks of 16, so the per-particle padding of the noise draws is exercised.
    contents = []
    for chunk in (2, 5):
        folder = tmp_path / f"chunk{chunk}"
        options = _options(folder, box_size=10, snr=0.5, data_format=data_format)
        simulate_dataset(options, chunk_particles=chunk)
        contents.append(_contents(folder))
    first, second = contents
    assert first.keys() == second.keys()
    for name, value in first.items():
        if isinstance(value, np.ndarray):
            # Same draws; batched float32 kernels (FFT, GEMM) may round differently with
            # the batch size: a few ulps of the largest value. Other noise would be O(1).
            atol = 16 * 2.0**-24 * float(np.abs(value).max())
            np.testing.assert_allclose(second[name], value, rtol=0, atol=atol, err_msg=name)
        else:
            assert second[name] == value, name
