"""RELION 3.0 particle files (no data_optics) load as RELION 3.1+ converts them (io.relion30).

Classic subtomogram averaging and other programs write one loop with the optics
on every row (rlnMagnification, rlnDetectorPixelSize, rlnVoltage...) and
origins in pixels. The conversion makes one optics group per distinct
combination of those values, in order of first appearance, the pixel size
10000 x rlnDetectorPixelSize / rlnMagnification, origins in Angstrom, and the
image size and dimensionality from the first image of each group.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryorefine.errors import InputError
from cryorefine.io import load_particles, write_mrc, write_star

PIXEL = 10000 * 5.4 / 10000.0  # rlnDetectorPixelSize 5.4 um at magnification 10000


def _subtomograms(folder: Path, *, voltages: list[float], box: int = 8) -> pd.DataFrame:
    """A RELION 3.0 style table of classic 3D subtomograms with 3D CTF volumes."""
    rng = np.random.default_rng(0)
    (folder / "Subtomograms").mkdir(exist_ok=True)
    rows = []
    for i, voltage in enumerate(voltages):
        name = f"Subtomograms/p{i}.mrc"
        write_mrc(folder / name, rng.standard_normal((box, box, box)).astype(np.float32),
                  voxel_size_angst=PIXEL)  # fmt: skip
        write_mrc(folder / f"Subtomograms/p{i}_ctf.mrc", np.ones((box, box, box), np.float32),
                  voxel_size_angst=PIXEL)  # fmt: skip
        rows.append(
            {
                "rlnMicrographName": "tomo1.mrc",
                "rlnCoordinateX": 100.0 + i, "rlnCoordinateY": 50.0, "rlnCoordinateZ": 20.0,
                "rlnImageName": name, "rlnCtfImage": f"Subtomograms/p{i}_ctf.mrc",
                "rlnMagnification": 10000.0, "rlnDetectorPixelSize": 5.4,
                "rlnVoltage": voltage, "rlnSphericalAberration": 2.7,
                "rlnAmplitudeContrast": 0.07,
                "rlnAngleRot": 10.0 * i, "rlnAngleTilt": 90.0, "rlnAnglePsi": -30.0,
                "rlnOriginX": 1.5, "rlnOriginY": -2.0, "rlnOriginZ": 0.5 * i,
                "rlnOriginXPrior": 1.0,
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_a_relion30_subtomogram_file_loads_with_optics_groups_in_order_of_appearance(
    tmp_path: Path,
) -> None:
    table = _subtomograms(tmp_path, voltages=[300.0, 200.0, 300.0, 200.0])
    star = write_star({"": table}, tmp_path / "particles.star")
    particles = load_particles(star)
    assert particles.flavour == "subtomo3d"
    optics = particles.optics
    assert optics["rlnOpticsGroup"].tolist() == [1, 2]
    assert optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]
    assert optics["rlnVoltage"].tolist() == [300.0, 200.0]  # first appearance first
    assert optics["rlnImagePixelSize"].tolist() == pytest.approx([PIXEL, PIXEL], rel=1e-12)
    assert optics["rlnImageSize"].tolist() == [8, 8]
    assert optics["rlnImageDimensionality"].tolist() == [3, 3]
    assert "rlnMagnification" not in optics.columns
    assert "rlnDetectorPixelSize" not in optics.columns
    assert particles.particles["rlnOpticsGroup"].tolist() == [1, 2, 1, 2]
    for label in ("rlnVoltage", "rlnMagnification", "rlnOriginX"):
        assert label not in particles.particles.columns
    origins = particles.origins_angst()
    np.testing.assert_allclose(origins[:, 0], 1.5 * PIXEL, rtol=1e-12)
    np.testing.assert_allclose(origins[:, 2], 0.5 * np.arange(4) * PIXEL, rtol=1e-12)
    prior = particles.particles["rlnOriginXPriorAngst"].to_numpy()
    np.testing.assert_allclose(prior, PIXEL, rtol=1e-12)
    np.testing.assert_allclose(particles.pixel_size_angst, PIXEL, rtol=1e-12)
    assert particles.image_dimensionality == 3


def test_a_relion30_image_stack_is_two_dimensional(tmp_path: Path) -> None:
    stack = np.zeros((3, 16, 16), np.float32)
    write_mrc(tmp_path / "particles.mrcs", stack, voxel_size_angst=2.0)
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@particles.mrcs" for i in (1, 2, 3)],
            "rlnMagnification": [25000.0] * 3, "rlnDetectorPixelSize": [5.0] * 3,
            "rlnVoltage": [300.0] * 3, "rlnSphericalAberration": [2.7] * 3,
            "rlnAmplitudeContrast": [0.1] * 3, "rlnDefocusU": [1e4] * 3,
            "rlnDefocusV": [1e4] * 3, "rlnDefocusAngle": [0.0] * 3,
        }
    )  # fmt: skip
    particles = load_particles(write_star({"": table}, tmp_path / "particles.star"))
    assert particles.flavour == "spa"
    assert particles.optics["rlnImageSize"].tolist() == [16]
    assert particles.optics["rlnImageDimensionality"].tolist() == [2]
    np.testing.assert_allclose(particles.pixel_size_angst, 2.0, rtol=1e-12)


def test_a_relion30_file_without_magnification_names_what_the_pixel_size_needs(
    tmp_path: Path,
) -> None:
    table = _subtomograms(tmp_path, voltages=[300.0]).drop(columns="rlnMagnification")
    star = write_star({"": table}, tmp_path / "particles.star")
    with pytest.raises(InputError, match="rlnMagnification and rlnDetectorPixelSize"):
        load_particles(star)


def test_a_relion30_file_with_odd_sized_images_is_refused_naming_the_image(
    tmp_path: Path,
) -> None:
    table = _subtomograms(tmp_path, voltages=[300.0], box=7)
    star = write_star({"": table}, tmp_path / "particles.star")
    with pytest.raises(InputError, match=r"p0\.mrc.*odd size 7"):
        load_particles(star)


def test_a_relion30_file_whose_first_image_is_missing_names_the_row_and_the_image(
    tmp_path: Path,
) -> None:
    table = _subtomograms(tmp_path, voltages=[300.0, 300.0])
    (tmp_path / "Subtomograms" / "p0.mrc").unlink()
    star = write_star({"": table}, tmp_path / "particles.star")
    with pytest.raises(InputError, match=r"particles\.star: data_ row 1: rlnImageName .*p0\.mrc"):
        load_particles(star, check_images=False)


def test_origins_given_in_angstrom_too_keep_the_angstrom_values(tmp_path: Path) -> None:
    table = _subtomograms(tmp_path, voltages=[300.0])
    table["rlnOriginXAngst"] = 7.0
    particles = load_particles(write_star({"images": table}, tmp_path / "particles.star"))
    assert particles.origins_angst()[0, 0] == 7.0
