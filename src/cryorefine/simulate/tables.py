"""STAR tables of a simulated data set: optics, particles (input and truth), tomograms.

Labels follow REFINE_SPEC §2.1 (SPA), §2.2 (RELION-4 pseudo-subtomograms), §2.5
(tomograms.star, RELION 4 layout: ``data_global`` and one ``data_<name>`` block of
projection rows per tomogram) and §7.4 (classic subtomograms). The refinement
input (``particles.star``) has no ``rlnAngle*``/``rlnOrigin*``; the truth table
adds them. Tomography: every particle has a tilt series of its own, named
``TS_<number>``, so that its tilt table can carry the particle's defocus
exactly; the particle sits at the tomogram's centre, which every projection
maps to the tilt image's centre at depth 0.
"""

import numpy as np
import pandas as pd
from jaxtyping import Float64, Int64

from cryorefine.simulate.images import MICROSCOPE
from cryorefine.simulate.options import SimulationOptions

__all__ = [
    "TOMOGRAM_SIZE_BOXES",
    "optics_table",
    "particle_table",
    "tomogram_blocks",
    "tomogram_names",
    "truth_columns",
]

#: Tomogram size in particle boxes along (x, y, z), bin-1 pixels (binning is 1).
TOMOGRAM_SIZE_BOXES = (8, 8, 4)


def tomogram_names(count: int) -> list[str]:
    """``TS_0001``, ... (at least four digits, as many as ``count`` needs)."""
    width = max(4, len(str(count)))
    return [f"TS_{i:0{width}d}" for i in range(1, count + 1)]


def _tomogram_centre_px(options: SimulationOptions) -> np.ndarray:
    size = np.array(TOMOGRAM_SIZE_BOXES, dtype=np.float64) * options.box_size
    return size / 2


def optics_table(options: SimulationOptions) -> pd.DataFrame:
    """data_optics: one group, the microscope of ``images.MICROSCOPE`` and the flavour's labels."""
    row: dict[str, object] = {
        "rlnOpticsGroup": 1,
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnVoltage": MICROSCOPE["voltage_kv"],
        "rlnSphericalAberration": MICROSCOPE["spherical_aberration_mm"],
        "rlnAmplitudeContrast": MICROSCOPE["amplitude_contrast"],
    }
    if options.data_format == "relion4":
        row["rlnTomoTiltSeriesPixelSize"] = options.pixel_size_angst
        row["rlnTomoSubtomogramBinning"] = 1.0
    row["rlnImagePixelSize"] = options.pixel_size_angst
    row["rlnImageSize"] = options.box_size
    row["rlnImageDimensionality"] = 2 if options.data_format == "spa" else 3
    row["rlnCtfDataAreCtfPremultiplied"] = 1 if options.data_format == "relion4" else 0
    return pd.DataFrame([row])


def particle_table(
    options: SimulationOptions,
    *,
    image_names: list[str],
    ctf_image_names: list[str] | None,
    half_sets: Int64[np.ndarray, " b"],
    defocus_angst: Float64[np.ndarray, " b"],
) -> pd.DataFrame:
    """data_particles of the refinement input (no angles, no origins)."""
    count = len(image_names)
    table: dict[str, object] = {}
    if options.data_format == "relion4":
        names = tomogram_names(count)
        centre = _tomogram_centre_px(options)
        table["rlnTomoName"] = names
        table["rlnTomoParticleName"] = [f"{name}/1" for name in names]
        for axis, value in zip("XYZ", centre, strict=True):
            table[f"rlnCoordinate{axis}"] = np.full(count, value)
        for label in ("Rot", "Tilt", "Psi"):
            table[f"rlnTomoSubtomogram{label}"] = np.zeros(count)
    table["rlnImageName"] = image_names
    if ctf_image_names is not None:
        table["rlnCtfImage"] = ctf_image_names
    if options.data_format == "spa":
        table["rlnDefocusU"] = defocus_angst
        table["rlnDefocusV"] = defocus_angst
        table["rlnDefocusAngle"] = np.zeros(count)
        table["rlnPhaseShift"] = np.zeros(count)
        table["rlnCtfBfactor"] = np.zeros(count)
        table["rlnCtfScalefactor"] = np.ones(count)
    table["rlnOpticsGroup"] = np.ones(count, dtype=np.int64)
    table["rlnRandomSubset"] = half_sets.astype(np.int64)
    return pd.DataFrame(table)


def truth_columns(
    table: pd.DataFrame,
    options: SimulationOptions,
    *,
    angles_deg: Float64[np.ndarray, "b 3"],
    origins_px: Float64[np.ndarray, "b 3"],
    defocus_angst: Float64[np.ndarray, " b"],
) -> pd.DataFrame:
    """The particles table plus the true poses (and, for subtomo3d, the defocus)."""
    out = table.copy()
    for column, label in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        out[label] = angles_deg[:, column]
    axes = "XYZ" if options.is_tomography else "XY"
    for column, axis in enumerate(axes):
        out[f"rlnOrigin{axis}Angst"] = origins_px[:, column] * options.pixel_size_angst
    if options.data_format == "subtomo3d":
        out["rlnDefocusU"] = defocus_angst
        out["rlnDefocusV"] = defocus_angst
        out["rlnDefocusAngle"] = np.zeros(len(out))
    return out


def _vector(values: np.ndarray) -> str:
    return "[" + ",".join(f"{v:.17g}" for v in values) + "]"


def tomogram_blocks(
    options: SimulationOptions,
    *,
    defocus_angst: Float64[np.ndarray, " b"],
    tilt_deg: Float64[np.ndarray, " f"],
    tilt_matrices: Float64[np.ndarray, "f 3 3"],
    pre_exposure_e_per_angst2: Float64[np.ndarray, " f"],
) -> dict[str, pd.DataFrame]:
    """tomograms.star blocks: ``global`` (one row per particle's tomogram), then one per tomogram.

    Projection ``P_f = [[R_f, t_f], [0, 0, 0, 1]]`` with ``t_f = (w / 2, h / 2, 0) -
    R_f c`` for tomogram centre ``c``: tomogram pixels (bin 1, from the corner) to
    tilt-image pixels, depth 0 at the centre. Every tilt carries the particle's
    defocus (U = V, angle 0) and its cumulative dose (``rlnMicrographPreExposure``).
    """
    count = len(defocus_angst)
    names = tomogram_names(count)
    size = np.array(TOMOGRAM_SIZE_BOXES, dtype=np.int64) * options.box_size
    centre = size / 2
    image_centre = np.array([size[0] / 2, size[1] / 2, 0.0])
    rows = []
    for r in tilt_matrices:
        p = np.eye(4)
        p[:3, :3] = r
        p[:3, 3] = image_centre - r @ centre
        rows.append([_vector(p[i]) for i in range(4)])
    projections = np.array(rows, dtype=object)  # (f, 4)
    global_table = pd.DataFrame(
        {
            "rlnTomoName": names,
            "rlnVoltage": np.full(count, MICROSCOPE["voltage_kv"]),
            "rlnSphericalAberration": np.full(count, MICROSCOPE["spherical_aberration_mm"]),
            "rlnAmplitudeContrast": np.full(count, MICROSCOPE["amplitude_contrast"]),
            "rlnTomoTiltSeriesPixelSize": np.full(count, options.pixel_size_angst),
            "rlnTomoHand": np.full(count, -1.0),
            "rlnTomoFrameCount": np.full(count, len(tilt_deg), dtype=np.int64),
            "rlnTomoSizeX": np.full(count, size[0]),
            "rlnTomoSizeY": np.full(count, size[1]),
            "rlnTomoSizeZ": np.full(count, size[2]),
            "rlnTomoImportFractionalDose": np.full(count, options.dose_per_tilt_e_per_angst2),
            "rlnOpticsGroupName": ["opticsGroup1"] * count,
        }
    )
    blocks: dict[str, pd.DataFrame] = {"global": global_table}
    f = len(tilt_deg)
    for name, defocus in zip(names, defocus_angst, strict=True):
        blocks[name] = pd.DataFrame(
            {
                "rlnTomoProjX": projections[:, 0],
                "rlnTomoProjY": projections[:, 1],
                "rlnTomoProjZ": projections[:, 2],
                "rlnTomoProjW": projections[:, 3],
                "rlnDefocusU": np.full(f, defocus),
                "rlnDefocusV": np.full(f, defocus),
                "rlnDefocusAngle": np.zeros(f),
                "rlnCtfScalefactor": np.ones(f),
                "rlnMicrographPreExposure": pre_exposure_e_per_angst2,
                "rlnTomoNominalStageTiltAngle": tilt_deg,
            }
        )
    return blocks
