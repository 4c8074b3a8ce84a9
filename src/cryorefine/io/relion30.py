"""RELION 3.0 particle files (one loop, no ``data_optics``), converted as RELION 3.1+ reads them.

Classic subtomogram averaging and other programs still write such files: the
optics of each particle on its own row (``rlnMagnification``,
``rlnDetectorPixelSize``, ``rlnVoltage``...) and origins in pixels. RELION
3.1 and later convert them on reading (``StarConverter``), and so does
``load_particles``:

- each distinct combination of the optics labels present, among
  ``OPTICS_LABELS``, is an optics group (numbered in order of first
  appearance, named ``opticsGroupN``); the labels move to ``data_optics`` and
  the particles get ``rlnOpticsGroup``;
- ``rlnImagePixelSize = 10000 * rlnDetectorPixelSize / rlnMagnification``
  (both then leave the table);
- origins in pixels (``rlnOriginX/Y/Z`` and their priors) become Angstrom
  (``particle_checks.pixel_origins_to_angst``, in ``load_particles``);
- ``rlnImageSize`` and ``rlnImageDimensionality`` come from the header of each
  group's first image, which must be square (a cube for 3D) and even.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cryorefine.errors import InputError
from cryorefine.io.mrc import read_mrc_header, split_image_names
from cryorefine.io.paths import find_base_folder, not_found
from cryorefine.io.star import StarBlock
from cryorefine.io.tables import float_column

__all__ = ["OPTICS_LABELS", "convert_relion30", "is_relion30"]

logger = logging.getLogger(__name__)

#: Per-particle labels that RELION 3.1 moves into the optics groups, in its order.
OPTICS_LABELS = (
    "rlnAmplitudeContrast",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnSphericalAberration",
    "rlnVoltage",
    "rlnDetectorPixelSize",
    "rlnMagnification",
)


def _image_block(blocks: dict[str, StarBlock]) -> str | None:
    """Name of the first loop block with ``rlnImageName``, or None."""
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame) and "rlnImageName" in block.columns:
            return name
    return None


def is_relion30(blocks: dict[str, StarBlock]) -> bool:
    """Images listed without a ``data_optics`` block: a RELION 3.0 style file."""
    return "optics" not in blocks and _image_block(blocks) is not None


def _image_layout(star: Path, name: str, where: str) -> tuple[int, int]:
    """Box size and dimensionality (2 or 3) of image ``name`` (at ``where``) from its header."""
    indices, paths = split_image_names([name])
    if indices[0] < 0:
        raise InputError(f"{star}: {where}: rlnImageName {name!r} is not INDEX@FILE or FILE")
    path = Path(paths[0])
    if not path.is_absolute():
        path = find_base_folder(paths, star) / path
    if not path.is_file():
        raise InputError(
            f"{star}: {where}: rlnImageName {name!r}: {not_found(paths[0])}; a RELION 3.0 "
            "style file needs the first image of each optics group for the image size"
        )
    nz, ny, nx = read_mrc_header(path).shape
    three_d = indices[0] == 0 and nz > 1
    if nx != ny or (three_d and nz != nx):
        shape = f"{nx} x {ny}" + (f" x {nz}" if three_d else "")
        raise InputError(f"{path}: images of {shape} pixels; RELION needs square (cube) images")
    if nx % 2:
        raise InputError(f"{path}: images of odd size {nx}; RELION needs even sizes")
    return nx, 3 if three_d else 2


def convert_relion30(star: Path, blocks: dict[str, StarBlock]) -> dict[str, StarBlock]:
    """``data_optics`` and ``data_particles`` from a RELION 3.0 style file (module docstring).

    Raises
    ------
    InputError
        No pixel size (``rlnMagnification`` and ``rlnDetectorPixelSize`` both
        needed), an optics value that is not a number, or a first image that is
        missing, not square or of odd size.
    """
    name = _image_block(blocks)
    table = blocks[name] if name is not None else None
    if not isinstance(table, pd.DataFrame):
        raise ValueError("convert_relion30 needs a loop block with rlnImageName")
    if not {"rlnMagnification", "rlnDetectorPixelSize"} <= set(table.columns):
        raise InputError(
            f"{star}: no data_optics table, and no rlnMagnification and rlnDetectorPixelSize: "
            "a RELION 3.0 style file needs both for the pixel size (10000 x "
            "rlnDetectorPixelSize / rlnMagnification); or convert the file with "
            "relion_convert_star (RELION 3.1 or later)"
        )
    present = [label for label in OPTICS_LABELS if label in table.columns]
    block = name or ""
    values = np.stack(
        [float_column(table, label, path=star, block=block) for label in present], axis=1
    )
    _, first, inverse = np.unique(values, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups numbered in order of first appearance, as RELION
    group = np.argsort(order)[inverse.reshape(-1)]
    optics = pd.DataFrame(values[first[order]], columns=present)
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(order) + 1))
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in range(1, len(order) + 1)])
    pixel = 1e4 * optics.pop("rlnDetectorPixelSize") / optics.pop("rlnMagnification")
    optics["rlnImagePixelSize"] = pixel.to_numpy()
    layouts = [
        _image_layout(star, str(table["rlnImageName"].iloc[row]), f"data_{block} row {row + 1}")
        for row in first[order]
    ]
    optics["rlnImageSize"] = [size for size, _ in layouts]
    optics["rlnImageDimensionality"] = [ndim for _, ndim in layouts]
    particles = table.drop(columns=present)
    particles["rlnOpticsGroup"] = group + 1
    # origins and their priors in pixels: Angstrom in load_particles (pixel_origins_to_angst)
    logger.warning(
        "%s: a RELION 3.0 style file (no data_optics): converted as RELION 3.1 does, "
        "%d optics group(s), pixel size %s A; check them",
        star,
        len(optics),
        ", ".join(f"{p:.4g}" for p in optics["rlnImagePixelSize"]),
    )
    others = {key: value for key, value in blocks.items() if key not in (name, "particles")}
    return {"optics": optics, "particles": particles, **others}
