"""STAR tables of a simulated data set: optics, particles (input and truth), tomograms.

Labels follow REFINE_SPEC §2.1 (SPA), §2.2 (RELION-4 pseudo-subtomograms), §2.5
(tomograms.star, RELION 4 layout: ``data_global`` and one ``data_<name>`` block of
projection rows per tomogram) and §7.4 (classic subtomograms). The refinement
input (``particles.star``) has no ``rlnAngle*``/``rlnOrigin*`` (picks on surfaces:
the angles and priors of ``simulate.surface_frames``); the truth table
sets them. Tomography: every particle has a tilt series of its own, named
``TS_<number>``, so that its tilt table can carry the particle's defocus
exactly; the particle sits at the tomogram's centre, which every projection
maps to the tilt image's centre at depth 0. On real tilt series (``picked``) the
particles are the picks in the real tomograms instead (``simulate.picks_tables``).
"""

from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float64, Int64

from cryorefine.io import OptimisationSet, write_optimisation_set, write_star
from cryorefine.simulate.images import MICROSCOPE
from cryorefine.simulate.options import SimulationOptions
from cryorefine.simulate.picks import PickedGeometry
from cryorefine.simulate.picks_tables import picked_particle_columns, write_picked_tables
from cryorefine.simulate.poses import ParticleDraws, TiltScheme
from cryorefine.simulate.surface_frames import PRIOR_ANGLES_DEG

__all__ = [
    "TOMOGRAM_SIZE_BOXES",
    "optics_table",
    "particle_table",
    "tomogram_blocks",
    "tomogram_names",
    "truth_columns",
    "write_tables",
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


def optics_table(options: SimulationOptions, picked: PickedGeometry | None = None) -> pd.DataFrame:
    """data_optics: one group, its microscope (``MICROSCOPE`` or real) and the flavour's labels."""
    microscope = MICROSCOPE if picked is None else picked.microscope
    row: dict[str, object] = {
        "rlnOpticsGroup": 1,
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnVoltage": microscope["voltage_kv"],
        "rlnSphericalAberration": microscope["spherical_aberration_mm"],
        "rlnAmplitudeContrast": microscope["amplitude_contrast"],
    }
    if options.data_format == "relion4":
        binning = 1.0 if picked is None else picked.binning
        row["rlnTomoTiltSeriesPixelSize"] = options.pixel_size_angst / binning
        row["rlnTomoSubtomogramBinning"] = binning
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
    picked: PickedGeometry | None = None,
) -> pd.DataFrame:
    """data_particles of the refinement input (no origins; angles only on surfaces)."""
    count = len(image_names)
    table: dict[str, object] = {}
    if picked is not None:
        relion4 = options.data_format == "relion4"
        table.update(picked_particle_columns(picked, particle_names=relion4))
        if relion4:
            table.update(_frame_columns(picked, count))
    elif options.data_format == "relion4":
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


def _frame_columns(picked: PickedGeometry, count: int) -> dict[str, np.ndarray]:
    """Subtomogram frames; on surfaces also the starting angles and the priors (as RELION's)."""
    frames = picked.subtomogram_angles_deg
    if frames is None:
        return {f"rlnTomoSubtomogram{label}": np.zeros(count) for label in ("Rot", "Tilt", "Psi")}
    columns = {
        f"rlnTomoSubtomogram{label}": frames[:, axis]
        for axis, label in enumerate(("Rot", "Tilt", "Psi"))
    }
    rot, tilt, psi = PRIOR_ANGLES_DEG
    for label, value in (("Rot", rot), ("Tilt", tilt), ("Psi", psi)):
        columns[f"rlnAngle{label}"] = np.full(count, value)
    columns["rlnAngleTiltPrior"] = np.full(count, tilt)
    columns["rlnAnglePsiPrior"] = np.full(count, psi)
    return columns


def truth_columns(
    table: pd.DataFrame,
    options: SimulationOptions,
    *,
    angles_deg: Float64[np.ndarray, "b 3"],
    origins_px: Float64[np.ndarray, "b 3"],
    defocus_angst: Float64[np.ndarray, " b"] | None,
) -> pd.DataFrame:
    """The particles table plus the true poses (and, for subtomo3d, the defocus if given)."""
    out = table.copy()
    for column, label in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        out[label] = angles_deg[:, column]
    axes = "XYZ" if options.is_tomography else "XY"
    for column, axis in enumerate(axes):
        out[f"rlnOrigin{axis}Angst"] = origins_px[:, column] * options.pixel_size_angst
    if options.data_format == "subtomo3d" and defocus_angst is not None:
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


def write_tables(
    options: SimulationOptions,
    draws: ParticleDraws,
    scheme: TiltScheme | None,
    picked: PickedGeometry | None,
    names: list[str],
    ctf_names: list[str] | None,
) -> tuple[Path | None, Path | None]:
    """particles.star, truth_particles.star and (relion4) tomograms.star, optimisation set.

    ``names`` and ``ctf_names``: rlnImageName and rlnCtfImage of every particle.
    Returns tomograms.star and optimisation_set.star (relion4; else None).
    """
    out = options.output_dir
    defocus = draws.defocus_angst.cpu().numpy()
    particles = particle_table(
        options,
        image_names=names,
        ctf_image_names=ctf_names,
        half_sets=draws.half_sets.cpu().numpy(),
        defocus_angst=defocus,
        picked=picked,
    )
    truth = truth_columns(
        particles,
        options,
        angles_deg=draws.angles_deg.cpu().numpy(),
        origins_px=draws.origins_px.cpu().numpy(),
        defocus_angst=None if picked is not None else defocus,
    )
    optics = optics_table(options, picked)
    write_star({"optics": optics, "particles": particles}, out / "particles.star")
    write_star({"optics": optics, "particles": truth}, out / "truth_particles.star")
    if options.data_format != "relion4":
        return None, None
    if picked is not None:
        tomograms = write_picked_tables(picked, out)
    else:
        assert scheme is not None
        blocks = tomogram_blocks(
            options,
            defocus_angst=defocus,
            tilt_deg=scheme.tilt_deg.numpy(),
            tilt_matrices=scheme.matrices.numpy(),
            pre_exposure_e_per_angst2=scheme.pre_exposure_e_per_angst2.numpy(),
        )
        tomograms = write_star(blocks, out / "tomograms.star")
    optimisation_set = OptimisationSet(
        particles_file=Path("particles.star"),
        tomograms_file=Path("tomograms.star"),
        reference_map1=Path("reference.mrc"),
        reference_mask=Path("mask.mrc"),
    )
    return tomograms, write_optimisation_set(optimisation_set, out / "optimisation_set.star")
