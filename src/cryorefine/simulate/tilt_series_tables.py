"""STAR tables of a simulated tilt-series data set (``--format tilt_series``).

Labels follow the RELION-5 files of the HIV tutorial (REFINE_SPEC sections 2.3, 2.5;
``shared/data/hiv_tutorial_relion5/Tomograms/job006`` and ``Picks/job019``).

``tomograms.star``
    ``data_global``, one row per tomogram: ``rlnTomoName``, microscope
    (``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``),
    ``rlnMicrographOriginalPixelSize`` and ``rlnTomoTiltSeriesPixelSize`` (the
    simulation's pixel), ``rlnTomoHand`` (-1, as the tutorial), ``rlnOpticsGroupName``,
    ``rlnTomoTiltSeriesStarFile`` (``tilt_series/<name>.star``), ``rlnTomoTiltSeriesName``
    (the tilt images' MRC stack ``tilt_series/<name>.mrcs``, as RELION 4 names it),
    ``rlnTomoFrameCount``, ``rlnTomoSizeX/Y/Z`` and ``rlnTomoImportFractionalDose``.
``tilt_series/<name>.star``
    One row per tilt, in ascending tilt angle: ``rlnMicrographName``
    (``NNNNNN@tilt_series/<name>.mrcs``, the tilt's image in the stack),
    ``rlnTomoNominalStageTiltAngle``, ``rlnTomoNominalTiltAxisAngle``,
    ``rlnMicrographPreExposure``, ``rlnDefocusU/V`` (the tomogram's defocus at
    its centre), ``rlnDefocusAngle``, ``rlnCtfScalefactor``, RELION-5's alignment
    ``rlnTomoXTilt`` (0), ``rlnTomoYTilt`` (the tilt), ``rlnTomoZRot`` (the tilt
    axis), ``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` (0), and the projection
    rows ``rlnTomoProjX/Y/Z/W`` they give (``tomo.relion5_projection_matrices``).
``particles.star`` (picks) and ``truth_particles.star``
    ``data_optics`` (one group: microscope, ``rlnTomoTiltSeriesPixelSize``) and
    ``data_particles``: ``rlnTomoName``, ``rlnTomoParticleName`` (``<tomogram>/<j>``),
    ``rlnCenteredCoordinateX/Y/ZAngst`` of the pick (the true centre plus the
    origin: RELION's ``position = coordinate - origin``), ``rlnTomoSubtomogramRot/
    Tilt/Psi`` (0), ``rlnOpticsGroup``, ``rlnRandomSubset``; the truth adds
    ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/Y/ZAngst``.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float64, Int64

from cryorefine.io import OptimisationSet, TiltSeries, write_optimisation_set, write_star

__all__ = [
    "HAND",
    "TILT_SERIES_FOLDER",
    "tilt_series_global_row",
    "tilt_series_particle_tables",
    "tilt_series_table",
    "tilt_series_tomogram",
    "write_tilt_series_files",
]

#: Folder (inside the output folder) of the tilt images and per-tilt tables.
TILT_SERIES_FOLDER = "tilt_series"

#: rlnTomoHand of the simulated tomograms (the tutorial's).
HAND = -1.0


def _vector(values: np.ndarray) -> str:
    return "[" + ",".join(f"{v:.17g}" for v in values) + "]"


def tilt_series_global_row(
    name: str,
    *,
    microscope: dict[str, float],
    pixel_size_angst: float,
    tomogram_size_px: tuple[int, int, int],
    frame_count: int,
    dose_per_tilt_e_per_angst2: float,
) -> dict[str, object]:
    """The ``data_global`` row of one tomogram (module docstring)."""
    return {
        "rlnTomoName": name,
        "rlnVoltage": microscope["voltage_kv"],
        "rlnSphericalAberration": microscope["spherical_aberration_mm"],
        "rlnAmplitudeContrast": microscope["amplitude_contrast"],
        "rlnMicrographOriginalPixelSize": pixel_size_angst,
        "rlnTomoHand": HAND,
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnTomoTiltSeriesPixelSize": pixel_size_angst,
        "rlnTomoTiltSeriesStarFile": f"{TILT_SERIES_FOLDER}/{name}.star",
        "rlnTomoTiltSeriesName": f"{TILT_SERIES_FOLDER}/{name}.mrcs",
        "rlnTomoFrameCount": frame_count,
        "rlnTomoSizeX": tomogram_size_px[0],
        "rlnTomoSizeY": tomogram_size_px[1],
        "rlnTomoSizeZ": tomogram_size_px[2],
        "rlnTomoImportFractionalDose": dose_per_tilt_e_per_angst2,
    }


def tilt_series_table(
    name: str,
    *,
    tilt_deg: Float64[np.ndarray, " i"],
    x_tilt_deg: Float64[np.ndarray, " i"],
    z_rot_deg: Float64[np.ndarray, " i"],
    pre_exposure_e_per_angst2: Float64[np.ndarray, " i"],
    defocus_angst: float,
    projections: Float64[np.ndarray, "i 4 4"],
) -> pd.DataFrame:
    """The per-tilt table of one tomogram (module docstring), one row per tilt image."""
    count = len(tilt_deg)
    zeros = np.zeros(count)
    table = {
        "rlnMicrographName": [
            f"{j + 1:06d}@{TILT_SERIES_FOLDER}/{name}.mrcs" for j in range(count)
        ],
        "rlnTomoNominalStageTiltAngle": tilt_deg,
        "rlnTomoNominalTiltAxisAngle": z_rot_deg,
        "rlnMicrographPreExposure": pre_exposure_e_per_angst2,
        "rlnDefocusU": np.full(count, defocus_angst),
        "rlnDefocusV": np.full(count, defocus_angst),
        "rlnDefocusAngle": zeros,
        "rlnCtfScalefactor": np.ones(count),
        "rlnTomoXTilt": x_tilt_deg,
        "rlnTomoYTilt": tilt_deg,
        "rlnTomoZRot": z_rot_deg,
        "rlnTomoXShiftAngst": zeros,
        "rlnTomoYShiftAngst": zeros,
    }
    for row, label in enumerate(("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")):
        table[label] = [_vector(matrix[row]) for matrix in projections]
    return pd.DataFrame(table)


def tilt_series_tomogram(
    global_row: dict[str, object], tilts: pd.DataFrame, folder: Path
) -> TiltSeries:
    """The ``io.TiltSeries`` that ``io.load_tomograms`` will read back from these tables."""
    name = str(global_row["rlnTomoName"])
    source = folder / TILT_SERIES_FOLDER / f"{name}.star"
    return TiltSeries(name=name, global_row=dict(global_row), tilts=tilts, source=source)


def tilt_series_particle_tables(
    *,
    microscope: dict[str, float],
    pixel_size_angst: float,
    tomo_names: list[str],
    centered_coordinates_angst: Float64[np.ndarray, "b 3"],
    origins_angst: Float64[np.ndarray, "b 3"],
    angles_deg: Float64[np.ndarray, "b 3"],
    half_sets: Int64[np.ndarray, " b"],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``data_optics``, the picks' ``data_particles`` and the truth's (module docstring).

    ``centered_coordinates_angst`` are the true centres; the picks are those plus
    ``origins_angst`` (subtomogram frame = tomogram frame).
    """
    optics = pd.DataFrame(
        [
            {
                "rlnOpticsGroup": 1,
                "rlnOpticsGroupName": "opticsGroup1",
                "rlnVoltage": microscope["voltage_kv"],
                "rlnSphericalAberration": microscope["spherical_aberration_mm"],
                "rlnAmplitudeContrast": microscope["amplitude_contrast"],
                "rlnTomoTiltSeriesPixelSize": pixel_size_angst,
            }
        ]
    )
    count = len(tomo_names)
    numbers = np.zeros(count, dtype=np.int64)
    seen: dict[str, int] = {}
    for row, name in enumerate(tomo_names):
        seen[name] = seen.get(name, 0) + 1
        numbers[row] = seen[name]
    picks = centered_coordinates_angst + origins_angst
    table: dict[str, object] = {
        "rlnTomoName": list(tomo_names),
        "rlnTomoParticleName": [f"{n}/{j}" for n, j in zip(tomo_names, numbers, strict=True)],
    }
    for column, axis in enumerate("XYZ"):
        table[f"rlnCenteredCoordinate{axis}Angst"] = picks[:, column]
    for label in ("Rot", "Tilt", "Psi"):
        table[f"rlnTomoSubtomogram{label}"] = np.zeros(count)
    table["rlnOpticsGroup"] = np.ones(count, dtype=np.int64)
    table["rlnRandomSubset"] = half_sets.astype(np.int64)
    particles = pd.DataFrame(table)
    truth = particles.copy()
    for column, label in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        truth[label] = angles_deg[:, column]
    for column, axis in enumerate("XYZ"):
        truth[f"rlnOrigin{axis}Angst"] = origins_angst[:, column]
    return optics, particles, truth


def write_tilt_series_files(
    folder: Path,
    tomograms: list[TiltSeries],
    *,
    optics: pd.DataFrame,
    particles: pd.DataFrame,
    truth: pd.DataFrame,
) -> tuple[Path, Path]:
    """tomograms.star, the per-tilt tables, particles.star, truth_particles.star, optimisation set.

    Returns tomograms.star and optimisation_set.star. The optimisation set names
    the picks and the tomograms only, as RELION's picking job writes it: the
    reference and mask are at the tilt-series pixel size, not at an extraction's.
    """
    (folder / TILT_SERIES_FOLDER).mkdir(parents=True, exist_ok=True)
    for series in tomograms:
        write_star({series.name: series.tilts}, folder / TILT_SERIES_FOLDER / f"{series.name}.star")
    global_table = pd.DataFrame([series.global_row for series in tomograms])
    tomograms_star = write_star({"global": global_table}, folder / "tomograms.star")
    write_star({"optics": optics, "particles": particles}, folder / "particles.star")
    write_star({"optics": optics, "particles": truth}, folder / "truth_particles.star")
    optimisation_set = OptimisationSet(
        particles_file=Path("particles.star"), tomograms_file=Path("tomograms.star")
    )
    return tomograms_star, write_optimisation_set(
        optimisation_set, folder / "optimisation_set.star"
    )
