"""STAR tables of a data set simulated on real tilt series: particle columns and tomograms.star.

Particles (RELION-4 and RELION-5 labels, REFINE_SPEC sections 2.2 and 2.3)
    ``rlnTomoName`` (the pick's tomogram), ``rlnTomoParticleName``
    (``<tomogram>/<number>``, the pick's number in its tomogram, relion4 only:
    the label marks pseudo-subtomograms), ``rlnCoordinateX/Y/Z`` (bin-1 pixels
    from the tomogram's corner, as RELION 4 writes them) and
    ``rlnCenteredCoordinateX/Y/ZAngst`` (as RELION 5 does); both describe the
    same point.
tomograms.star (RELION-5 layout, REFINE_SPEC section 2.5)
    ``data_global``: the input's rows of the tomograms that have particles, every
    label kept, ``rlnTomoTiltSeriesStarFile`` pointing to ``tilt_series/<name>.star``
    beside it. Each of those holds the input's per-tilt table, every column kept,
    plus (or replacing) ``rlnTomoProjX/Y/Z/W``: the projections the simulation used
    (``tomo.tilt_geometry``), so that the file reads back to the same geometry
    whatever the tilt images' size.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryorefine.io import write_star
from cryorefine.simulate.picks import PickedGeometry
from cryorefine.tomo import decentred_coordinates_px

__all__ = ["picked_image_stems", "picked_particle_columns", "write_picked_tables"]

TILT_SERIES_FOLDER = "tilt_series"


def picked_image_stems(picked: PickedGeometry) -> list[str]:
    """``subtomograms/<tomogram>/<number>`` of every particle (RELION's Subtomograms layout)."""
    return [
        f"subtomograms/{name}/{number}"
        for name, number in zip(picked.tomo_names, picked.particle_numbers, strict=True)
    ]


def picked_particle_columns(picked: PickedGeometry, *, particle_names: bool) -> dict[str, object]:
    """Tomogram, particle name (if ``particle_names``) and both coordinates of every particle."""
    columns: dict[str, object] = {"rlnTomoName": list(picked.tomo_names)}
    if particle_names:
        columns["rlnTomoParticleName"] = [
            f"{name}/{number}"
            for name, number in zip(picked.tomo_names, picked.particle_numbers, strict=True)
        ]
    centred = picked.centered_coordinates_angst
    decentred = np.empty_like(centred)
    names = np.array(picked.tomo_names)
    for name, geometry in picked.geometries.items():
        rows = names == name
        points = torch.as_tensor(centred[rows], device=geometry.projections.device)
        decentred[rows] = decentred_coordinates_px(geometry, points).cpu().numpy()
    for axis, column in zip("XYZ", range(3), strict=True):
        columns[f"rlnCoordinate{axis}"] = decentred[:, column]
    for axis, column in zip("XYZ", range(3), strict=True):
        columns[f"rlnCenteredCoordinate{axis}Angst"] = centred[:, column]
    return columns


def _vector(values: np.ndarray) -> str:
    return "[" + ",".join(f"{v:.17g}" for v in values) + "]"


def write_picked_tables(picked: PickedGeometry, folder: Path) -> Path:
    """tomograms.star and ``tilt_series/<name>.star`` of the tomograms with particles."""
    used = list(picked.geometries)
    table = picked.tomograms.global_table
    rows = table[table["rlnTomoName"].astype(str).isin(used)].reset_index(drop=True)
    rows = rows.copy()
    rows["rlnTomoTiltSeriesStarFile"] = [
        f"{TILT_SERIES_FOLDER}/{name}.star" for name in rows["rlnTomoName"]
    ]
    (folder / TILT_SERIES_FOLDER).mkdir(parents=True, exist_ok=True)
    for name in used:
        tilts = picked.tomograms[name].tilts.copy()
        projections = picked.geometries[name].projections.cpu().numpy()
        for row, label in enumerate(
            ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
        ):
            tilts[label] = [_vector(matrix[row]) for matrix in projections]
        write_star({name: tilts}, folder / TILT_SERIES_FOLDER / f"{name}.star")
    return write_star({"global": pd.DataFrame(rows)}, folder / "tomograms.star")
