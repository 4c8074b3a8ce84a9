"""A RELION 3.0 style particles file refines exactly as its RELION 3.1 form (io.relion30).

Classic subtomograms (``cryorefine simulate --format subtomo3d``), written once
with data_optics and once as RELION 3.0 wrote them (the optics and the pixel
size, as rlnMagnification and rlnDetectorPixelSize, on every row; origins in
pixels, half a pixel in x). The converted file describes the same particles, so two iterations
do the same float operations on the same numbers: the maps and the poses must
be equal.
"""

from pathlib import Path

import numpy as np
import pytest
import starfile

from cryorefine.cli.main import main
from cryorefine.io import read_mrc, read_star
from cryorefine.simulate import SimulationOptions, simulate_dataset


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("relion30")
    simulate_dataset(
        SimulationOptions(
            output_dir=folder / "sim",
            symmetry="C6",
            n_particles=12,
            box_size=16,
            pixel_size_angst=9.0,
            data_format="subtomo3d",
            seed=5,
        )
    )
    tables = starfile.read(folder / "sim" / "particles.star", always_dict=True)
    optics, particles = tables["optics"], tables["particles"].copy()
    assert len(optics) == 1
    for label in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        particles[label] = optics[label].iloc[0]
    pixel = float(optics["rlnImagePixelSize"].iloc[0])
    particles["rlnMagnification"] = 10000.0
    particles["rlnDetectorPixelSize"] = pixel  # micrometres: 10000 x pixel / magnification
    particles["rlnOriginX"] = 0.5  # pixels, as RELION 3.0
    particles = particles.drop(columns="rlnOpticsGroup")
    starfile.write({"": particles}, folder / "sim" / "relion30.star")
    shifted = tables["particles"].copy()
    shifted["rlnOriginXAngst"] = 0.5 * pixel
    starfile.write({"optics": optics, "particles": shifted}, folder / "sim" / "relion31.star")
    return folder


def _refine(project: Path, star: str, out: str) -> Path:
    sim = project / "sim"
    arguments = [
        "refine", "--i", str(sim / star), "--ref", str(sim / "reference.mrc"),
        "--o", str(project / out / "run"), "--ini_high", "40", "--sym", "C6",
        "--particle_diameter", "120", "--healpix_order", "1", "--offset_range", "3",
        "--offset_step", "1.5", "--ctf", "--random_seed", "1", "--iter", "2",
    ]  # fmt: skip
    (project / out).mkdir()
    assert main(arguments) == 0
    return project / out


def test_a_relion30_file_refines_as_its_relion31_form(project: Path) -> None:
    new = _refine(project, "relion31.star", "new")
    old = _refine(project, "relion30.star", "old")
    for name in ("run_it002_half1_class001.mrc", "run_it002_half2_class001.mrc"):
        want, _ = read_mrc(new / name)
        got, _ = read_mrc(old / name)
        np.testing.assert_array_equal(got, want, err_msg=name)
    want = read_star(new / "run_it002_data.star")["particles"]
    got = read_star(old / "run_it002_data.star")["particles"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        np.testing.assert_array_equal(got[label].to_numpy(), want[label].to_numpy())
    # written as RELION 3.1 writes the converted file: optics groups, Angstrom origins
    written = read_star(old / "run_it002_data.star")
    assert "optics" in written
    assert "rlnMagnification" not in written["particles"].columns
