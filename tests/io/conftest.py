"""Small valid data sets of every particle flavour (4 particles, box 8), built in tmp_path.

Each builder lays a project out as RELION does (paths in STAR files relative to the
project folder) and writes the STAR files with ``starfile`` directly, so that the
readers under test are not also the writers of their inputs. Bad-input tests take
a valid set and break one thing (``Dataset.rewrite`` writes edited blocks back).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

N_PARTICLES = 4
BOX = 8
PIXEL = 1.5
N_TILTS = 5
VISIBLE = [0, 1, 1, 1, 0]


@dataclass
class Dataset:
    """A project folder with a particles STAR file and its images."""

    project: Path
    star: Path
    blocks: dict
    images: list[Path]

    def rewrite(self) -> None:
        """Write ``blocks`` (after a test edited them) back to ``star``."""
        starfile.write(self.blocks, self.star, overwrite=True)

    def replace_text(self, old: str, new: str, count: int = 1) -> None:
        """Edit the STAR file's raw text."""
        text = self.star.read_text()
        assert old in text, f"{old!r} not in {self.star}"
        self.star.write_text(text.replace(old, new, count))


def write_volume(path: Path, data: np.ndarray, voxel: float, *, stack: bool = False) -> Path:
    """An MRC file written with mrcfile itself (voxel size in Angstrom)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel
    return path


def _optics(dimensionality: int, premultiplied: int, **extra: float) -> pd.DataFrame:
    table = {
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnAmplitudeContrast": [0.1],
        "rlnSphericalAberration": [2.7],
        "rlnVoltage": [300.0],
        "rlnImagePixelSize": [PIXEL],
        "rlnImageSize": [BOX],
        "rlnImageDimensionality": [dimensionality],
        "rlnCtfDataAreCtfPremultiplied": [premultiplied],
    }
    table.update({key: [value] for key, value in extra.items()})
    return pd.DataFrame(table)


def _poses(rng: np.random.Generator, z: bool) -> dict[str, np.ndarray]:
    columns = {
        "rlnAngleRot": rng.uniform(-180, 180, N_PARTICLES),
        "rlnAngleTilt": rng.uniform(0, 180, N_PARTICLES),
        "rlnAnglePsi": rng.uniform(-180, 180, N_PARTICLES),
        "rlnOriginXAngst": rng.uniform(-5, 5, N_PARTICLES),
        "rlnOriginYAngst": rng.uniform(-5, 5, N_PARTICLES),
    }
    if z:
        columns["rlnOriginZAngst"] = rng.uniform(-5, 5, N_PARTICLES)
    columns["rlnRandomSubset"] = np.array([1, 2, 1, 2])
    columns["rlnOpticsGroup"] = np.ones(N_PARTICLES, dtype=int)
    columns["rlnMyOwnLabel"] = np.array(["a", "b", "c", "d"])  # unknown to us: kept as is
    return columns


def build_spa(project: Path, rng: np.random.Generator) -> Dataset:
    folder = project / "Extract" / "job001"
    stack = write_volume(
        folder / "particles.mrcs", rng.standard_normal((4, BOX, BOX)), PIXEL, stack=True
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@Extract/job001/particles.mrcs" for i in range(1, 5)],
            "rlnMicrographName": ["MotionCorr/job002/mic1.mrc"] * N_PARTICLES,
            "rlnCoordinateX": rng.uniform(0, 4000, N_PARTICLES),
            "rlnCoordinateY": rng.uniform(0, 4000, N_PARTICLES),
            "rlnDefocusU": rng.uniform(10000, 20000, N_PARTICLES),
            "rlnDefocusV": rng.uniform(10000, 20000, N_PARTICLES),
            "rlnDefocusAngle": rng.uniform(-180, 180, N_PARTICLES),
            "rlnCtfBfactor": np.zeros(N_PARTICLES),
            "rlnCtfScalefactor": np.ones(N_PARTICLES),
            "rlnPhaseShift": np.zeros(N_PARTICLES),
            **_poses(rng, z=False),
        }
    )
    blocks = {"optics": _optics(2, 0), "particles": particles}
    return _finish(project, folder / "particles.star", blocks, [stack])


def build_subtomo3d(project: Path, rng: np.random.Generator) -> Dataset:
    folder = project / "Subtomograms"
    images, names, ctfs = [], [], []
    for i in range(N_PARTICLES):
        images.append(write_volume(folder / f"p{i}.mrc", rng.standard_normal((BOX,) * 3), PIXEL))
        write_volume(folder / f"p{i}_ctf.mrc", rng.uniform(-1, 1, (BOX, BOX, BOX // 2 + 1)), 1.0)
        names.append(f"Subtomograms/p{i}.mrc")
        ctfs.append(f"Subtomograms/p{i}_ctf.mrc")
    particles = pd.DataFrame({"rlnImageName": names, "rlnCtfImage": ctfs, **_poses(rng, z=True)})
    blocks = {"optics": _optics(3, 0), "particles": particles}
    return _finish(project, project / "particles_3d.star", blocks, images)


def build_relion4(project: Path, rng: np.random.Generator) -> Dataset:
    folder = project / "PseudoSubtomo" / "job007" / "Subtomograms" / "TS_01"
    images, names, ctfs = [], [], []
    for i in range(N_PARTICLES):
        images.append(
            write_volume(folder / f"{i}_data.mrc", rng.standard_normal((BOX,) * 3), PIXEL)
        )
        weights = rng.uniform(0, 1, (2 * BOX, BOX, BOX // 2 + 1))
        write_volume(folder / f"{i}_weights.mrc", weights, 1 / PIXEL)
        names.append(f"PseudoSubtomo/job007/Subtomograms/TS_01/{i}_data.mrc")
        ctfs.append(f"PseudoSubtomo/job007/Subtomograms/TS_01/{i}_weights.mrc")
    particles = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01"] * N_PARTICLES,
            "rlnTomoParticleName": [f"TS_01/{i}" for i in range(N_PARTICLES)],
            "rlnCoordinateX": rng.uniform(0, 4000, N_PARTICLES),
            "rlnCoordinateY": rng.uniform(0, 4000, N_PARTICLES),
            "rlnCoordinateZ": rng.uniform(0, 2000, N_PARTICLES),
            "rlnTomoSubtomogramRot": rng.uniform(-180, 180, N_PARTICLES),
            "rlnTomoSubtomogramTilt": rng.uniform(0, 180, N_PARTICLES),
            "rlnTomoSubtomogramPsi": rng.uniform(-180, 180, N_PARTICLES),
            "rlnImageName": names,
            "rlnCtfImage": ctfs,
            **_poses(rng, z=True),
        }
    )
    optics = _optics(3, 1, rlnTomoTiltSeriesPixelSize=PIXEL / 2, rlnTomoSubtomogramBinning=2.0)
    star = project / "PseudoSubtomo" / "job007" / "particles.star"
    return _finish(project, star, {"optics": optics, "particles": particles}, images)


def build_relion5_stack2d(project: Path, rng: np.random.Generator) -> Dataset:
    folder = project / "Extract" / "job071" / "Subtomograms" / "TS_01"
    images, names = [], []
    for i in range(N_PARTICLES):
        data = rng.standard_normal((sum(VISIBLE), BOX, BOX))
        images.append(write_volume(folder / f"{i}_stack2d.mrcs", data, PIXEL, stack=True))
        names.append(f"Extract/job071/Subtomograms/TS_01/{i}_stack2d.mrcs")
    particles = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01"] * N_PARTICLES,
            "rlnTomoParticleName": [f"TS_01/{i}" for i in range(N_PARTICLES)],
            "rlnTomoVisibleFrames": ["[" + ",".join(map(str, VISIBLE)) + "]"] * N_PARTICLES,
            "rlnImageName": names,
            "rlnCenteredCoordinateXAngst": rng.uniform(-2000, 2000, N_PARTICLES),
            "rlnCenteredCoordinateYAngst": rng.uniform(-2000, 2000, N_PARTICLES),
            "rlnCenteredCoordinateZAngst": rng.uniform(-500, 500, N_PARTICLES),
            **_poses(rng, z=True),
        }
    )
    blocks = {
        "general": {"rlnTomoSubTomosAre2DStacks": 1},
        "optics": _optics(2, 1, rlnTomoTiltSeriesPixelSize=PIXEL, rlnTomoSubtomogramBinning=1.0),
        "particles": particles,
    }
    dataset = _finish(project, project / "Extract" / "job071" / "particles.star", blocks, images)
    build_tomograms_relion5(project, rng)
    return dataset


def build_relion5_picks(project: Path, rng: np.random.Generator) -> Dataset:
    particles = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01"] * N_PARTICLES,
            "rlnCenteredCoordinateXAngst": rng.uniform(-2000, 2000, N_PARTICLES),
            "rlnCenteredCoordinateYAngst": rng.uniform(-2000, 2000, N_PARTICLES),
            "rlnCenteredCoordinateZAngst": rng.uniform(-500, 500, N_PARTICLES),
        }
    )
    star = project / "Picks" / "job019" / "particles.star"
    return _finish(project, star, {"particles": particles}, [])


def _tomogram_globals(rng: np.random.Generator) -> dict:
    return {
        "rlnTomoName": ["TS_01"],
        "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7],
        "rlnAmplitudeContrast": [0.1],
        "rlnTomoHand": [-1.0],
        "rlnTomoTiltSeriesPixelSize": [PIXEL],
        "rlnTomoSizeX": [4000],
        "rlnTomoSizeY": [4000],
        "rlnTomoSizeZ": [2000],
    }


def _tilts(rng: np.random.Generator) -> dict:
    return {
        "rlnTomoNominalStageTiltAngle": np.linspace(-6.0, 6.0, N_TILTS),
        "rlnMicrographPreExposure": np.array([6.0, 3.0, 0.0, 9.0, 12.0]),
        "rlnDefocusU": rng.uniform(30000, 40000, N_TILTS),
        "rlnDefocusV": rng.uniform(30000, 40000, N_TILTS),
        "rlnDefocusAngle": rng.uniform(-90, 90, N_TILTS),
        "rlnCtfScalefactor": np.cos(np.deg2rad(np.linspace(-6.0, 6.0, N_TILTS))),
    }


def build_tomograms_relion5(project: Path, rng: np.random.Generator) -> Path:
    """Tomograms/job006/tomograms.star pointing at tilt_series/TS_01.star (RELION 5)."""
    folder = project / "Tomograms" / "job006"
    (folder / "tilt_series").mkdir(parents=True, exist_ok=True)
    tilts = pd.DataFrame(
        {
            **_tilts(rng),
            "rlnTomoXTilt": np.zeros(N_TILTS),
            "rlnTomoYTilt": np.linspace(-6.0, 6.0, N_TILTS),
            "rlnTomoZRot": np.full(N_TILTS, 85.0),
            "rlnTomoXShiftAngst": rng.uniform(-20, 20, N_TILTS),
            "rlnTomoYShiftAngst": rng.uniform(-20, 20, N_TILTS),
        }
    )
    starfile.write({"TS_01": tilts}, folder / "tilt_series" / "TS_01.star", overwrite=True)
    table = _tomogram_globals(rng)
    table["rlnTomoTiltSeriesStarFile"] = ["Tomograms/job006/tilt_series/TS_01.star"]
    starfile.write({"global": pd.DataFrame(table)}, folder / "tomograms.star", overwrite=True)
    return folder / "tomograms.star"


def build_tomograms_relion4(project: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """tomograms.star with data_global and data_TS_01 holding rlnTomoProjX/Y/Z/W (RELION 4)."""
    matrices = rng.uniform(-1, 1, (N_TILTS, 4, 4))
    matrices[:, 3] = [0, 0, 0, 1]
    tilts = pd.DataFrame(_tilts(rng))
    for row, label in enumerate(("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")):
        tilts[label] = ["[" + ",".join(f"{v:.17g}" for v in m[row]) + "]" for m in matrices]
    table = _tomogram_globals(rng)
    table["rlnTomoFrameCount"] = [N_TILTS]
    table["rlnTomoTiltSeriesName"] = ["tilt_series/TS_01.mrc"]
    path = project / "tomograms_r4.star"
    starfile.write({"global": pd.DataFrame(table), "TS_01": tilts}, path, overwrite=True)
    return path, matrices


def _finish(project: Path, star: Path, blocks: dict, images: list[Path]) -> Dataset:
    star.parent.mkdir(parents=True, exist_ok=True)
    starfile.write(blocks, star, overwrite=True)
    return Dataset(project=project, star=star, blocks=blocks, images=images)


BUILDERS: dict[str, Callable[[Path, np.random.Generator], Dataset]] = {
    "spa": build_spa,
    "subtomo3d": build_subtomo3d,
    "relion4": build_relion4,
    "relion5_stack2d": build_relion5_stack2d,
    "relion5_picks": build_relion5_picks,
}


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[[str], Dataset]:
    """``make_dataset(flavour)`` builds a valid 4-particle, box-8 set in ``tmp_path/project``."""

    def build(flavour: str) -> Dataset:
        project = tmp_path / "project"
        project.mkdir(exist_ok=True)
        return BUILDERS[flavour](project, np.random.default_rng(sorted(BUILDERS).index(flavour)))

    return build
