"""A run's per-iteration tables, read into one dataclass for the report.

For each iteration (``run_files``), values come from RELION's labels:

- model file (``ROOT_itNNN_half1_model.star``; final: ``ROOT_model.star``):
  ``rlnCurrentResolution`` (Angstrom), ``rlnCurrentImageSize``, ``rlnPixelSize``,
  ``rlnOriginalImageSize``; the FSC from ``data_model_class_1``
  (``rlnResolution`` in 1/Angstrom, ``rlnGoldStandardFsc``);
- optimiser file: ``rlnOverallAccuracyRotations`` (degrees),
  ``rlnOverallAccuracyTranslationsAngst``, ``rlnChangesOptimalOrientations``
  (degrees), ``rlnChangesOptimalOffsets`` (Angstrom);
- sampling file: ``rlnHealpixOrder``, ``rlnPsiStep`` (the angular step, degrees),
  ``rlnOffsetRange`` and ``rlnOffsetStep`` (Angstrom), ``rlnSymmetryGroup``;
- ``run.log`` (``run_log``) fills what the files do not hold.

RELION writes 999 for an accuracy or a change not measured yet (iteration 0):
those read as NaN, as does every value no file gives. A missing or unreadable
file is noted (``RunHistory.notes``), never an error.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float64

from cryorefine.errors import InputError
from cryorefine.geometry import angular_step_deg
from cryorefine.io import StarBlock, read_star
from cryorefine.report.run_files import (
    RunFiles,
    command_line_option,
    find_run_files,
    solvent_mask_name,
)
from cryorefine.report.run_log import read_run_log

__all__ = ["FscCurve", "IterationRecord", "RunHistory", "read_run_history"]

#: RELION's "not measured yet" for accuracies and changes (999; 9999999 for classes).
_NOT_MEASURED = 999.0


@dataclass(frozen=True)
class FscCurve:
    """Gold-standard FSC per shell: ``rlnResolution`` (1/Angstrom) and ``rlnGoldStandardFsc``."""

    resolution_inv_angst: Float64[np.ndarray, " s"]
    fsc: Float64[np.ndarray, " s"]


@dataclass(frozen=True)
class IterationRecord:
    """What one iteration reports; NaN where no file says. ``is_final``: the ``ROOT_*`` files."""

    iteration: int
    is_final: bool = False
    resolution_angst: float = math.nan
    current_size_px: float = math.nan
    healpix_order: float = math.nan
    angular_step_deg: float = math.nan
    offset_range_px: float = math.nan
    offset_step_px: float = math.nan
    acc_rot_deg: float = math.nan
    acc_trans_angst: float = math.nan
    changes_orientations_deg: float = math.nan
    changes_offsets_angst: float = math.nan
    fsc: FscCurve | None = None


@dataclass(frozen=True)
class RunHistory:
    """A run's iterations in order (the final one last) and what the report needs besides.

    Attributes
    ----------
    files
        The run's files (``run_files.find_run_files``).
    iterations
        One record per iteration found, sorted; the final record (if the run
        finished) last, numbered one past the last ``itNNN``.
    pixel_size_angst, ori_size_px, symmetry
        ``rlnPixelSize``, ``rlnOriginalImageSize``, ``rlnSymmetryGroup`` (NaN, 0, ``""``
        if no file says).
    solvent_mask_name, solvent_mask
        The run's ``--solvent_mask`` as written and the file it resolves to (None: none).
    notes
        One sentence per thing the files did not hold (missing files, unreadable files).
    """

    files: RunFiles
    iterations: tuple[IterationRecord, ...]
    pixel_size_angst: float
    ori_size_px: int
    symmetry: str
    solvent_mask_name: str | None
    solvent_mask: Path | None
    notes: tuple[str, ...]


def _number(block: StarBlock | None, label: str, *, measured: bool = False) -> float:
    if not isinstance(block, Mapping) or label not in block:
        return math.nan
    try:
        value = float(block[label])
    except (TypeError, ValueError):
        return math.nan
    if not math.isfinite(value) or (measured and value >= _NOT_MEASURED):
        return math.nan
    return value


def _fsc(block: StarBlock | None) -> FscCurve | None:
    labels = ("rlnResolution", "rlnGoldStandardFsc")
    if block is None or isinstance(block, Mapping) or not set(labels) <= set(block.columns):
        return None
    resolution = block["rlnResolution"].to_numpy(dtype=np.float64)
    fsc = block["rlnGoldStandardFsc"].to_numpy(dtype=np.float64)
    # Before the first iteration RELION (and cryorefine) write zeros: no FSC yet.
    if len(fsc) < 2 or not np.any(fsc[1:] != 0.0):
        return None
    return FscCurve(resolution_inv_angst=resolution, fsc=fsc)


def _read(path: Path | None, notes: list[str]) -> dict[str, StarBlock]:
    if path is None:
        return {}
    try:
        return read_star(path)
    except InputError as error:
        notes.append(f"skipped: {error}")
        return {}


def _record(
    iteration: int,
    is_final: bool,
    paths: Mapping[str, Path | None],
    notes: list[str],
    *,
    run_pixel_size_angst: float,
) -> tuple[IterationRecord, float, float, str]:
    """One iteration's record, its pixel size, original size and symmetry group."""
    model = _read(paths.get("model"), notes)
    general = model.get("model_general")
    optimiser = _read(paths.get("optimiser"), notes).get("optimiser_general")
    sampling = _read(paths.get("sampling"), notes).get("sampling_general")
    pixel = _number(general, "rlnPixelSize")
    offset_pixel = pixel if math.isfinite(pixel) else run_pixel_size_angst
    resolution = _number(general, "rlnCurrentResolution", measured=True)
    record = IterationRecord(
        iteration=iteration,
        is_final=is_final,
        resolution_angst=resolution if resolution > 0 else math.nan,
        current_size_px=_number(general, "rlnCurrentImageSize"),
        healpix_order=_number(sampling, "rlnHealpixOrder"),
        angular_step_deg=_number(sampling, "rlnPsiStep"),
        offset_range_px=_number(sampling, "rlnOffsetRange") / offset_pixel,
        offset_step_px=_number(sampling, "rlnOffsetStep") / offset_pixel,
        acc_rot_deg=_number(optimiser, "rlnOverallAccuracyRotations", measured=True),
        acc_trans_angst=_number(optimiser, "rlnOverallAccuracyTranslationsAngst", measured=True),
        changes_orientations_deg=_number(optimiser, "rlnChangesOptimalOrientations", measured=True),
        changes_offsets_angst=_number(optimiser, "rlnChangesOptimalOffsets", measured=True),
        fsc=_fsc(model.get("model_class_1")),
    )
    symmetry = sampling.get("rlnSymmetryGroup", "") if isinstance(sampling, Mapping) else ""
    return record, pixel, _number(general, "rlnOriginalImageSize"), str(symmetry)


def _fill_from_log(record: IterationRecord, values: Mapping[str, float]) -> IterationRecord:
    """Values of the log line where the files gave NaN (999 still means not measured)."""
    changes: dict[str, Any] = {}
    names = {"current_size": "current_size_px"}
    for key, value in values.items():
        name = names.get(key, key)
        if math.isnan(getattr(record, name)) and value < _NOT_MEASURED:
            changes[name] = value
    order = changes.get("healpix_order", record.healpix_order)
    if math.isnan(record.angular_step_deg) and math.isfinite(order) and order >= 0:
        changes["angular_step_deg"] = angular_step_deg(round(order))
    return replace(record, **changes) if changes else record


def _missing_notes(files: RunFiles, iterations: list[int]) -> list[str]:
    notes = []
    wanted = {
        "optimiser": "accuracies and changes",
        "sampling": "angular and translational sampling",
    }
    model_files = files.model_files()
    for kind, what in [*wanted.items(), ("model", "resolution and FSC")]:
        have = model_files if kind == "model" else files.numbered.get(kind, {})
        missing = [i for i in iterations if i not in have]
        if missing:
            listed = ", ".join(str(i) for i in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            notes.append(
                f"no {kind} file (ROOT_itNNN_{'half1_model' if kind == 'model' else kind}.star) "
                f"for iteration(s) {listed}{more}: their {what} come from run.log or are not shown"
            )
        if files.final and kind not in files.final:
            notes.append(f"no final {files.root.name}_{kind}.star: the final {what} are not shown")
    if files.final and not iterations:
        notes.append(
            "no per-iteration files (ROOT_itNNN_*.star) were found, only the final ones: "
            "the per-iteration plots show the final iteration alone"
        )
    return notes


def _plan(
    files: RunFiles, log: Mapping[int, object]
) -> list[tuple[int, bool, dict[str, Path | None]]]:
    """(iteration, is_final, files by kind) of every iteration with files, in order."""
    models = files.model_files()
    plan: list[tuple[int, bool, dict[str, Path | None]]] = [
        (
            i,
            False,
            {
                "model": models.get(i),
                "optimiser": files.numbered.get("optimiser", {}).get(i),
                "sampling": files.numbered.get("sampling", {}).get(i),
            },
        )
        for i in files.iterations()
    ]
    if files.final:
        # The final iteration follows the last numbered one (its log line has that number).
        final_number = plan[-1][0] + 1 if plan else max(log, default=0)
        plan.append((final_number, True, {kind: files.final.get(kind) for kind in files.final}))
    return plan


def _solvent_mask(files: RunFiles) -> tuple[str | None, Path | None]:
    optimiser = files.latest("optimiser")
    if optimiser is None:
        return None, None
    try:
        return solvent_mask_name(optimiser)
    except InputError:
        return None, None  # noted when its values were read


def read_run_history(run_root: Path | str) -> RunHistory:
    """Read every iteration of the run with output root ``run_root`` (a folder: ``FOLDER/run``).

    Raises
    ------
    InputError
        No file of a run with that root exists (``run_files.find_run_files``).
    """
    files = find_run_files(run_root)
    notes: list[str] = []
    log: dict[int, dict[str, float]] = {}
    if files.log is not None:
        try:
            log = read_run_log(files.log)
        except InputError as error:
            notes.append(f"skipped: {error}")
    notes.extend(_missing_notes(files, files.iterations()))
    latest_model = files.latest("model") or files.latest("half1_model")
    pixel = _number(_read(latest_model, []).get("model_general"), "rlnPixelSize")
    ori, symmetry = math.nan, ""
    records = []
    for iteration, is_final, paths in _plan(files, log):
        record, its_pixel, its_ori, its_symmetry = _record(
            iteration, is_final, paths, notes, run_pixel_size_angst=pixel
        )
        pixel = pixel if math.isfinite(pixel) else its_pixel
        ori = its_ori if math.isfinite(its_ori) else ori
        symmetry = its_symmetry or symmetry
        records.append(_fill_from_log(record, log.get(iteration, {})))
    known = {r.iteration for r in records}
    records.extend(
        _fill_from_log(IterationRecord(iteration=i), log[i]) for i in log if i not in known
    )
    records.sort(key=lambda r: (r.iteration, r.is_final))
    mask_name, mask = _solvent_mask(files)
    optimiser = files.latest("optimiser")
    if not symmetry and optimiser is not None:
        symmetry = command_line_option(optimiser, "--sym") or ""
    return RunHistory(
        files=files,
        iterations=tuple(records),
        pixel_size_angst=pixel,
        ori_size_px=int(ori) if math.isfinite(ori) else 0,
        symmetry=symmetry,
        solvent_mask_name=mask_name,
        solvent_mask=mask,
        notes=tuple(notes),
    )
