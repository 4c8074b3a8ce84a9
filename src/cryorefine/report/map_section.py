"""The report's map section: which map and mask, their slices, and the recentring command.

The map is the run's final ``ROOT_class001.mrc``, or (a run not finished) the
last iteration's half-set-1 map. The mask is ``--mask`` where given, else the
run's ``--solvent_mask`` (``run_files.solvent_mask_name``), else none: then the
page draws no outline and gives no offset, and says why.
"""

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from cryorefine.errors import InputError
from cryorefine.io import read_mrc
from cryorefine.report.centring import centre_of_mass_px, map_mask_offset_px, recentre_command
from cryorefine.report.html import Section, image_html
from cryorefine.report.map_plots import map_slices_plot
from cryorefine.report.run_history import RunHistory

__all__ = ["MapInputs", "map_section", "read_map_inputs"]

#: Relative difference of the map's and the mask's voxel sizes that the page warns about.
_PIXEL_SIZE_TOLERANCE = 0.01


@dataclass(frozen=True)
class MapInputs:
    """The map and mask of the report (None where there is none) and summary lines."""

    map_path: Path | None = None
    volume: Float[np.ndarray, "z y x"] | None = None
    map_pixel_size_angst: float = math.nan
    mask_path: Path | None = None
    mask: Float[np.ndarray, "z y x"] | None = None
    summary: list[tuple[str, str]] = field(default_factory=list)


def _find_map(history: RunHistory, notes: list[str]) -> Path | None:
    files = history.files
    if files.final_map is not None:
        return files.final_map
    if files.iteration_maps:
        iteration = max(files.iteration_maps)
        path = files.iteration_maps[iteration]
        notes.append(
            f"no final map {files.root.name}_class001.mrc: the slices show {path.name} "
            f"(iteration {iteration})"
        )
        return path
    notes.append(
        f"no map ({files.root.name}_class001.mrc or {files.root.name}_itNNN_half1_class001.mrc): "
        "no slices and no centring offset"
    )
    return None


def _read_volume(path: Path) -> tuple[np.ndarray, float]:
    data, voxel = read_mrc(path)
    if data.ndim != 3 or min(data.shape) < 2:
        raise InputError(f"{path}: expected a 3D map, found an array of shape {data.shape}")
    return np.asarray(data, dtype=np.float32), voxel


def _read_mask(
    history: RunHistory, mask: Path | str | None, shape: tuple[int, ...], notes: list[str]
) -> tuple[Path | None, np.ndarray | None]:
    """The mask: ``--mask`` (errors raise) or the run's solvent mask (errors are noted)."""
    if mask is not None:
        try:
            data, _ = _read_volume(Path(mask))
        except InputError as error:
            raise InputError(f"--mask: {error}") from error
        if data.shape != shape:
            raise InputError(f"--mask {mask}: a {data.shape} box, but the map is {shape} (z, y, x)")
        return Path(mask), data
    if history.solvent_mask is None:
        notes.append(
            "the run names no --solvent_mask and no --mask was given: "
            "no mask outline and no centring offset"
        )
        return None, None
    if not history.solvent_mask.is_file():
        notes.append(
            f"the run's --solvent_mask {history.solvent_mask_name} was not found "
            f"(looked for {history.solvent_mask}): no mask outline and no centring offset; "
            "give it with --mask"
        )
        return None, None
    try:
        data, _ = _read_volume(history.solvent_mask)
    except InputError as error:
        notes.append(f"skipped the mask: {error}")
        return None, None
    if data.shape != shape:
        notes.append(
            f"{history.solvent_mask}: a {data.shape} box, but the map is {shape}: "
            "no mask outline and no centring offset"
        )
        return None, None
    return history.solvent_mask, data


def read_map_inputs(history: RunHistory, mask: Path | str | None, notes: list[str]) -> MapInputs:
    """The map and the mask of the report (module docstring); what is missing goes to ``notes``.

    Raises
    ------
    InputError
        ``mask`` is given but cannot be read or has another box than the map.
    """
    map_path = _find_map(history, notes)
    if map_path is None:
        return MapInputs()
    try:
        volume, voxel = _read_volume(map_path)
    except InputError as error:
        notes.append(f"skipped the map: {error}")
        return MapInputs()
    mask_path, mask_data = _read_mask(history, mask, volume.shape, notes)
    if mask_path is not None:
        mask_voxel = _read_volume(mask_path)[1]
        if voxel > 0 and abs(mask_voxel - voxel) > _PIXEL_SIZE_TOLERANCE * voxel:
            notes.append(
                f"{mask_path}: voxel size {mask_voxel:.4f} Å differs from the map's {voxel:.4f} Å"
            )
    summary = [("map", str(map_path)), ("mask", str(mask_path) if mask_path else "none")]
    return MapInputs(map_path, volume, voxel, mask_path, mask_data, summary)


def _vector(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{round(v, 2) + 0.0:+.2f}" for v in values) + ")"  # no "-0.00"


def _centring_html(history: RunHistory, inputs: MapInputs, offset: tuple[float, ...]) -> str:
    root = history.files.root
    data = history.files.latest("data") or root.with_name(f"{root.name}_data.star")
    output = data.with_name(f"{data.stem}_recentred.star")
    command = recentre_command(data, (offset[0], offset[1], offset[2]), output=output)
    # One unbreakable span per word: a long line wraps between words, never inside one.
    words = " ".join(f"<span>{html.escape(word)}</span>" for word in command.split(" "))
    length = math.sqrt(sum(v * v for v in offset))
    pixel = inputs.map_pixel_size_angst
    angst = f" = {length * pixel:.2f} Å" if pixel > 0 else ""
    return (
        f"<p>Offset of the map's centre of mass from the mask's centre (map − mask): "
        f"<b>{_vector(offset)} px</b> (x, y, z), length {length:.2f} px{angst}.</p>"
        "<p>To recentre the particles on the mask (the point of the reference given to "
        "<code>--center_X/Y/Z</code>, in pixels from the box centre, moves to the box centre, "
        "so the map moves by minus the offset onto the mask), run in the project directory:</p>"
        f'<pre class="command">{words}</pre>'
    )


def map_section(history: RunHistory, inputs: MapInputs, notes: list[str]) -> list[Section]:
    """Slices of the map with the mask's outline, and the centring offset and command."""
    if inputs.volume is None:
        return []
    volume = torch.from_numpy(inputs.volume)
    map_centre = tuple(centre_of_mass_px(volume).tolist())
    mask_centre = None
    body = (
        f"<p>Map {html.escape(str(inputs.map_path))}; centre of mass "
        f"{_vector(map_centre)} px from the box centre (x, y, z; voxel n/2).</p>"
    )
    if inputs.mask is not None:
        mask = torch.from_numpy(inputs.mask)
        mask_centre = tuple(centre_of_mass_px(mask).tolist())
        offset = tuple(map_mask_offset_px(volume, mask).tolist())
        body += (
            f"<p>Mask {html.escape(str(inputs.mask_path))} (outline: its 0.5 contour); "
            f"centre {_vector(mask_centre)} px.</p>"
        )
        if all(math.isfinite(v) for v in offset):
            body += _centring_html(history, inputs, offset)
        else:
            notes.append("the map or the mask has no positive voxel: no centring offset")
    else:
        body += "<p>No mask (see Notes): no outline and no centring offset.</p>"
    png = map_slices_plot(
        inputs.volume, inputs.mask, map_centre_px=map_centre, mask_centre_px=mask_centre
    )
    caption = "Central slices; x: map centre of mass, o: mask centre, +: box centre."
    return [
        Section(
            "Final map, mask and centring",
            image_html(png, alt="map slices", caption=caption) + body,
        )
    ]
