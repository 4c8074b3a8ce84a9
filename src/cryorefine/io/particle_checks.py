"""Checks behind ``load_particles``: flavour, required labels, optics groups, image files.

Flavours, decided from the content of the file (never from its name):

``spa``
    2D images (``rlnImageDimensionality`` 2, or ``INDEX@stack`` names where the
    label is absent), no tomography labels.
``subtomo3d``
    Classic 3D subtomograms: 3D images, optional ``rlnCtfImage`` with a signed
    3D CTF (N^3 centred, or (N/2+1) x N x N half layout), not CTF-premultiplied.
``relion4``
    RELION-4 pseudo-subtomograms: 3D images plus ``rlnCtfImage`` (CTF^2 and
    multiplicity, (N/2+1) x N x 2N; the two older layouts are accepted too),
    with ``rlnCtfDataAreCtfPremultiplied`` 1 and/or ``rlnTomoParticleName``.
``relion5_stack2d``
    RELION-5 2D stacks, one stack of tilt images per particle: 2D images with
    ``rlnTomoParticleName``, ``rlnTomoVisibleFrames`` or ``rlnTomoSubTomosAre2DStacks``.
``relion5_picks``
    Positions only (``rlnTomoName`` and coordinates, no ``rlnImageName``), as
    written by RELION 5 picking; no optics table needed.

A RELION 3.0 particles file (images, no ``data_optics``) is converted first, as RELION
3.1+ does (``io.relion30``, in ``load_particles``); ``detect_flavour`` refuses one.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float64, Int64

from cryorefine.errors import InputError
from cryorefine.io.mrc import cached_mrc_header, split_image_names
from cryorefine.io.paths import find_base_folder, not_found
from cryorefine.io.star import StarBlock
from cryorefine.io.tables import describe_rows, float_column, int_column, require_labels

__all__ = [
    "FLAVOURS",
    "PIXEL_SIZE_TOLERANCE",
    "check_image_files",
    "detect_flavour",
    "is_ctf_premultiplied",
    "map_optics",
    "parse_visible_frames",
    "pixel_origins_to_angst",
    "required_labels",
]

FLAVOURS = ("spa", "subtomo3d", "relion4", "relion5_stack2d", "relion5_picks")

#: Largest relative difference allowed between rlnImagePixelSize and an MRC header's
#: voxel size: far above the rounding of 6-decimal labels and float32 headers (< 1e-6),
#: far below any real mismatch (binning, a wrong magnification: >= 1 %).
PIXEL_SIZE_TOLERANCE = 1e-3

_CENTERED = (
    "rlnCenteredCoordinateXAngst",
    "rlnCenteredCoordinateYAngst",
    "rlnCenteredCoordinateZAngst",
)
_DECENTRED = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")


def detect_flavour(
    star: Path, blocks: dict[str, StarBlock]
) -> tuple[str, pd.DataFrame | None, pd.DataFrame]:
    """The flavour of a particles file, with its optics and particles tables (see module)."""
    particles = blocks.get("particles")
    optics = blocks.get("optics")
    if not isinstance(particles, pd.DataFrame):
        found = ", ".join(f"data_{name}" for name in blocks)
        if "rlnImageName" in _loop_labels(blocks) and optics is None:
            raise InputError(_RELION30.format(star=star))
        raise InputError(f"{star}: no data_particles loop table (blocks found: {found})")
    if len(particles) == 0:
        raise InputError(f"{star}: data_particles has no rows (no particles)")
    labels = set(particles.columns)
    tomo = bool(labels & {"rlnTomoName", "rlnTomoParticleName"})
    if "rlnImageName" not in labels:
        if tomo and (set(_CENTERED) <= labels or set(_DECENTRED) <= labels):
            return "relion5_picks", optics if isinstance(optics, pd.DataFrame) else None, particles
        require_labels(particles, ["rlnImageName"], path=star, block="particles")
    if optics is None:
        raise InputError(_RELION30.format(star=star))
    if not isinstance(optics, pd.DataFrame) or len(optics) == 0:
        raise InputError(f"{star}: data_optics must be a loop table with one row per optics group")
    general = blocks.get("general")
    stacks2d = isinstance(general, dict) and general.get("rlnTomoSubTomosAre2DStacks") == 1
    stacks2d = stacks2d or "rlnTomoVisibleFrames" in labels
    dimensionality = _dimensionality(star, optics, particles, stacks2d)
    if dimensionality == 2:
        if stacks2d or "rlnTomoParticleName" in labels:
            return "relion5_stack2d", optics, particles
        return "spa", optics, particles
    if is_ctf_premultiplied(star, optics) or "rlnTomoParticleName" in labels:
        return "relion4", optics, particles
    return "subtomo3d", optics, particles


_RELION30 = (
    "{star}: no data_optics table: a RELION 3.0 style particle file must go through "
    "load_particles (which converts it), or relion_convert_star (RELION 3.1 or later)"
)


def _loop_labels(blocks: dict[str, StarBlock]) -> set[str]:
    return {c for b in blocks.values() if isinstance(b, pd.DataFrame) for c in b.columns}


def _dimensionality(
    star: Path, optics: pd.DataFrame, particles: pd.DataFrame, stacks2d: bool
) -> int:
    """rlnImageDimensionality, one value for all groups.

    Where absent: 2 for INDEX@FILE names or RELION-5 stacks, else 3 (a volume per file).
    """
    if "rlnImageDimensionality" not in optics.columns:
        has_index = particles["rlnImageName"].astype(str).str.contains("@", regex=False)
        return 2 if stacks2d or bool(has_index.any()) else 3
    values = int_column(optics, "rlnImageDimensionality", path=star, block="optics")
    if len(set(values.tolist())) > 1 or values[0] not in (2, 3):
        raise InputError(
            f"{star}: data_optics: rlnImageDimensionality is {sorted(set(values.tolist()))}, "
            "expected one value, 2 or 3, for all optics groups"
        )
    return int(values[0])


def is_ctf_premultiplied(star: Path, optics: pd.DataFrame) -> bool:
    """rlnCtfDataAreCtfPremultiplied (0 where absent), one value for all optics groups."""
    values = int_column(
        optics, "rlnCtfDataAreCtfPremultiplied", path=star, block="optics", default=0
    )
    if len(set(values.tolist())) > 1:
        raise InputError(
            f"{star}: data_optics: rlnCtfDataAreCtfPremultiplied differs between optics "
            "groups; expected one value for all"
        )
    return bool(values[0])


def required_labels(flavour: str, particles: pd.DataFrame, star: Path) -> None:
    """Raise ``InputError`` for a label that ``flavour`` needs and the particles table lacks."""
    labels = set(particles.columns)
    needed = {
        "spa": ["rlnImageName"],
        "subtomo3d": ["rlnImageName"],
        "relion4": ["rlnImageName", "rlnCtfImage"],
        "relion5_stack2d": ["rlnImageName", "rlnTomoName", "rlnTomoVisibleFrames"],
        "relion5_picks": ["rlnTomoName"],
    }[flavour]
    why = {"relion4": "pseudo-subtomograms need their CTF^2 and multiplicity volumes"}
    require_labels(particles, needed, path=star, block="particles", why=why.get(flavour, ""))
    if flavour in ("relion5_stack2d", "relion5_picks"):
        if not (set(_CENTERED) <= labels or set(_DECENTRED) <= labels):
            raise InputError(
                f"{star}: data_particles: required labels {', '.join(_CENTERED)} "
                f"(or {', '.join(_DECENTRED)}) are missing"
            )


def map_optics(
    star: Path, optics: pd.DataFrame, particles: pd.DataFrame
) -> tuple[Int64[np.ndarray, " b"], Float64[np.ndarray, " b"], Int64[np.ndarray, " b"]]:
    """Optics row, pixel size (Angstrom) and box size (pixels) of every particle.

    Raises
    ------
    InputError
        Missing or duplicated optics groups, a particle in a group that
        data_optics does not define, non-positive sizes, or optics groups of
        different box sizes.
    """
    require_labels(
        optics, ["rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize"], path=star, block="optics"
    )
    groups = int_column(optics, "rlnOpticsGroup", path=star, block="optics")
    unique, first = np.unique(groups, return_index=True)
    if len(unique) < len(groups):
        repeated = np.setdiff1d(np.arange(len(groups)), first)
        raise InputError(
            f"{star}: data_optics {describe_rows(repeated)}: rlnOpticsGroup "
            f"{groups[repeated[0]]} is defined twice"
        )
    if "rlnOpticsGroup" not in particles.columns and len(groups) > 1:
        raise InputError(
            f"{star}: data_particles: required label rlnOpticsGroup is missing "
            f"(data_optics defines {len(groups)} groups)"
        )
    wanted = int_column(
        particles, "rlnOpticsGroup", path=star, block="particles", default=int(groups[0])
    )
    order = np.argsort(groups)
    position = np.clip(np.searchsorted(groups[order], wanted), 0, len(groups) - 1)
    index = order[position]
    bad = np.flatnonzero(groups[index] != wanted)
    if len(bad):
        raise InputError(
            f"{star}: data_particles {describe_rows(bad)}: rlnOpticsGroup {wanted[bad[0]]} "
            f"is not defined in data_optics (defined: {sorted(groups.tolist())})"
        )
    pixel = float_column(optics, "rlnImagePixelSize", path=star, block="optics")
    box = int_column(optics, "rlnImageSize", path=star, block="optics")
    for label, values in (("rlnImagePixelSize", pixel), ("rlnImageSize", box)):
        wrong = np.flatnonzero(values <= 0)
        if len(wrong):
            raise InputError(
                f"{star}: data_optics {describe_rows(wrong)}: {label} is {values[wrong[0]]}, "
                "expected a positive number"
            )
    _check_microscope(star, optics)
    used = np.unique(index)
    if len(set(box[used].tolist())) > 1:
        raise InputError(
            f"{star}: data_optics {describe_rows(used)}: rlnImageSize differs between optics "
            f"groups ({', '.join(str(b) for b in box[used])}); all images must have one size"
        )
    return index.astype(np.int64), pixel[index], box[index]


def _check_microscope(star: Path, optics: pd.DataFrame) -> None:
    """rlnVoltage > 0 and 0 <= rlnAmplitudeContrast < 1 where given (a CTF needs both)."""
    for label, expected in (
        ("rlnVoltage", "a positive number (kV)"),
        ("rlnAmplitudeContrast", "a fraction in [0, 1)"),
    ):
        if label not in optics.columns:
            continue
        values = float_column(optics, label, path=star, block="optics")
        valid = values > 0 if label == "rlnVoltage" else (values >= 0) & (values < 1)
        wrong = np.flatnonzero(~valid)
        if len(wrong):
            raise InputError(
                f"{star}: data_optics {describe_rows(wrong)}: {label} is "
                f"{values[wrong[0]]:g}, expected {expected}"
            )


def pixel_origins_to_angst(particles: pd.DataFrame, pixel_size_angst: np.ndarray) -> pd.DataFrame:
    """Replace RELION-3.0 origins in pixels (rlnOriginX/Y/Z and their priors
    rlnOriginX/Y/ZPrior) by rlnOriginX/Y/ZAngst (rlnOriginX/Y/ZPriorAngst), as
    RELION 3.1 converts them.

    Only where the Angstrom label is absent; the new column takes the old one's place.
    """
    table = particles
    for axis, prior in ((a, p) for p in ("", "Prior") for a in "XYZ"):
        pixels, angst = f"rlnOrigin{axis}{prior}", f"rlnOrigin{axis}{prior}Angst"
        if pixels in table.columns and angst not in table.columns:
            table = table.copy() if table is particles else table
            where = table.columns.get_loc(pixels)
            values = pd.to_numeric(table.pop(pixels)).to_numpy(dtype=np.float64) * pixel_size_angst
            table.insert(int(where), angst, values)
    return table


def parse_visible_frames(star: Path, particles: pd.DataFrame) -> list[np.ndarray]:
    """rlnTomoVisibleFrames (``[0,1,1,...]``) as one bool array per particle."""
    text = particles["rlnTomoVisibleFrames"].astype(str).str.strip().str.strip("[]")
    frames: list[np.ndarray] = []
    for row, value in enumerate(text):
        items = [item.strip() for item in value.split(",")] if value else []
        if any(item not in ("0", "1") for item in items):
            raise InputError(
                f"{star}: data_particles row {row + 1}: rlnTomoVisibleFrames is "
                f"{particles['rlnTomoVisibleFrames'].iloc[row]!r}, "
                "expected [0,1,...] (one 0 or 1 per tilt)"
            )
        frames.append(np.array([item == "1" for item in items], dtype=bool))
    return frames


def check_image_files(
    star: Path,
    flavour: str,
    particles: pd.DataFrame,
    *,
    label: str,
    pixel_size_angst: np.ndarray,
    box_size_px: np.ndarray,
) -> None:
    """Every file under ``label`` exists; one header per file has the right shape and pixel size.

    Relative names resolve as ``paths.find_base_folder`` says. For images
    (``rlnImageName``) the header's voxel size must agree with rlnImagePixelSize
    within ``PIXEL_SIZE_TOLERANCE`` (a header voxel size of 0 means "not set" and
    is not checked); CTF volumes (``rlnCtfImage``) are checked for shape only.
    """
    names = particles[label].astype(str).tolist()
    indices, paths = split_image_names(names)
    malformed = np.flatnonzero(indices < 0)
    if len(malformed):
        raise InputError(
            f"{star}: data_particles {describe_rows(malformed)}: {label} is "
            f"{names[malformed[0]]!r}, expected INDEX@FILE (1-based INDEX) or FILE"
        )
    base = find_base_folder(paths, star)
    rows_of: dict[str, list[int]] = {}
    for row, name in enumerate(paths):
        rows_of.setdefault(name, []).append(row)
    frames = parse_visible_frames(star, particles) if flavour == "relion5_stack2d" else None
    for name, rows in rows_of.items():
        file = base / name
        if not file.is_file():
            found_first = (base / paths[0]).is_file()
            raise InputError(
                f"{star}: data_particles {describe_rows(rows)}: {label} file "
                + not_found(name, base if found_first else None)
            )
        row = rows[0]
        try:  # parsed once per process: the E-step's reader then finds it cached
            header = cached_mrc_header(file)
        except InputError as error:
            raise InputError(f"{star}: data_particles row {row + 1}: {error}") from error
        _check_shape(
            star, file, header.shape, flavour, label, int(box_size_px[row]), rows, indices, frames
        )
        if label == "rlnImageName" and header.voxel_size_angst > 0:
            expected_px = float(pixel_size_angst[row])
            if abs(header.voxel_size_angst - expected_px) > PIXEL_SIZE_TOLERANCE * expected_px:
                raise InputError(
                    f"{star}: data_particles row {row + 1}: {file} has voxel size "
                    f"{header.voxel_size_angst:.6g} A in its MRC header but rlnImagePixelSize "
                    f"is {expected_px:.6g} A (relative tolerance {PIXEL_SIZE_TOLERANCE:g})"
                )


def _check_shape(
    star: Path,
    file: Path,
    shape: tuple[int, int, int],
    flavour: str,
    label: str,
    box: int,
    rows: list[int],
    indices: np.ndarray,
    frames: list[np.ndarray] | None,
) -> None:
    """Header shape ``(nz, ny, nx)`` against the box size, the stack indices, the visible tilts."""
    wanted = indices[rows]
    beyond = [row for row, index in zip(rows, wanted, strict=True) if index > shape[0]]
    if beyond:
        raise InputError(
            f"{star}: data_particles {describe_rows(beyond)}: {label} asks for image "
            f"{indices[beyond[0]]} of {file}, which holds {shape[0]} image(s)"
        )
    half = box // 2 + 1
    row = rows[0]
    found = "x".join(str(n) for n in shape[::-1])
    if label == "rlnImageName" and flavour in ("subtomo3d", "relion4") and wanted.max() > 0:
        raise InputError(
            f"{star}: data_particles {describe_rows(rows)}: {label} names image "
            f"{wanted.max()} of {file} ({found} voxels), but the images are 3D "
            f"(rlnImageDimensionality 3): expected one {box}x{box}x{box} volume per file, "
            "named without INDEX@"
        )
    if label == "rlnCtfImage":
        allowed = [(box, box, box), (box, box, half)]
        if flavour == "relion4":
            allowed.insert(0, (2 * box, box, half))
    elif flavour == "relion5_stack2d" and frames is not None:
        allowed = [(int(frames[row].sum()), box, box)]
    elif flavour == "spa" or wanted.max() > 0:
        allowed = [(shape[0], box, box)]  # a stack (or single image) of box x box images
    else:
        allowed = [(box, box, box)]
    if shape not in allowed:
        expected = " or ".join("x".join(str(n) for n in a[::-1]) for a in allowed)
        raise InputError(
            f"{star}: data_particles row {row + 1}: {label} file {file} is {found} voxels "
            f"(x y z) but {expected} was expected (rlnImageSize {box}"
            + (", visible tilts in rlnTomoVisibleFrames)" if frames is not None else ")")
        )
