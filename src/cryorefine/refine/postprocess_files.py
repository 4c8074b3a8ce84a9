"""relion_postprocess on files: read and check the half maps and the mask, write RELION's outputs.

Outputs for ``--o ROOT`` (as RELION names them): ``ROOT.mrc`` (sharpened,
low-passed map), ``ROOT_masked.mrc`` (the same times the mask), ``ROOT.star``
(blocks ``data_general``, ``data_fsc``, ``data_guinier`` with RELION's labels,
in RELION 5's order) and ``ROOT_fsc.png`` (the FSC curves, in place of RELION's
PostScript plot). Every file goes through ``io.write_atomically``.

The STAR labels written here are those of RELION's ``postprocess.star``; the
layout was checked against RELION 3.0 and 5.0 outputs in ``shared/``.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryorefine.errors import InputError
from cryorefine.io import (
    StarBlock,
    make_output_folder,
    read_mrc,
    read_star,
    write_atomically,
    write_mrc,
    write_star,
)
from cryorefine.refine.postprocess import PostprocessOptions, PostprocessResult, postprocess_maps

__all__ = ["PostprocessFiles", "other_half_name", "run_postprocess"]

logger = logging.getLogger(__name__)

#: Tolerance of the mask's [0, 1] range (RELION's, for float rounding in mask files).
_MASK_RANGE_SLACK = 1e-6

#: Relative difference of the half maps' voxel sizes taken as equal (MRC headers hold float32,
#: rounded to a few digits by the programs that write them).
_PIXEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PostprocessFiles:
    """Inputs and output root of a run; ``half2`` None means ``other_half_name(half1)``."""

    half1: Path
    output_root: Path
    half2: Path | None = None
    mask: Path | None = None
    mtf: Path | None = None
    pixel_size_angst: float | None = None
    mtf_pixel_size_angst: float | None = None
    random_seed: int = 0


def other_half_name(half1: Path) -> Path:
    """``half1`` <-> ``half2`` in the file name (not the folders), as RELION's ``--i2`` default.

    Raises
    ------
    InputError
        The name contains neither ``half1`` nor ``half2``.
    """
    name = half1.name
    if "half1" in name:
        return half1.with_name(name.replace("half1", "half2"))
    if "half2" in name:
        return half1.with_name(name.replace("half2", "half1"))
    raise InputError(
        f"{half1}: --i2 not given and the file name contains neither 'half1' nor 'half2'"
    )


def _read_volume(path: Path, what: str) -> tuple[np.ndarray, float]:
    data, voxel = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: {what} of shape (z, y, x) = {data.shape}; expected a cube")
    return data, voxel


def _check_same_pixel(half1: Path, pixel1: float, half2: Path, pixel2: float) -> None:
    """Refuse half maps whose headers give different voxel sizes (both given, > 0)."""
    if pixel1 > 0 and pixel2 > 0 and abs(pixel1 - pixel2) > _PIXEL_TOLERANCE * pixel1:
        raise InputError(
            f"{half2}: voxel size {pixel2:g} A in the header, but half map 1 ({half1}) has "
            f"{pixel1:g} A: expected two halves of one refinement, on the same grid "
            "(or give --angpix if a header is wrong)"
        )


def _read_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    mask, _ = read_mrc(path)
    if mask.shape != shape:
        raise InputError(
            f"{path}: mask of shape (z, y, x) = {mask.shape}; the half maps are {shape}"
        )
    low, high = float(mask.min()), float(mask.max())
    if low < -_MASK_RANGE_SLACK or high > 1.0 + _MASK_RANGE_SLACK:
        raise InputError(
            f"{path}: mask values must lie between 0 and 1; found minimum {low:.6g} "
            f"and maximum {high:.6g}"
        )
    return np.asarray(np.clip(mask, 0.0, 1.0), dtype=np.float32)


def _read_mtf(path: Path, pixel_size_angst: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The MTF table (``rlnResolutionInversePixel``, ``rlnMtfValue``) as 1/Angstrom and values."""
    tables = [b for b in read_star(path).values() if isinstance(b, pd.DataFrame)]
    labels = ("rlnResolutionInversePixel", "rlnMtfValue")
    table = next((t for t in tables if all(label in t for label in labels)), None)
    if table is None or len(table) < 2:
        raise InputError(f"{path}: expected a loop with {' and '.join(labels)} and >= 2 rows")
    frequency = table[labels[0]].to_numpy(dtype=np.float64) / pixel_size_angst
    value = table[labels[1]].to_numpy(dtype=np.float64)
    bad = np.nonzero(value < 1e-10)[0]
    if len(bad):
        raise InputError(
            f"{path}: row {bad[0] + 1}: rlnMtfValue is {value[bad[0]]:g}, expected > 0"
        )
    steps = np.nonzero(np.diff(frequency) <= 0)[0]
    if len(steps):
        raise InputError(f"{path}: row {steps[0] + 2}: rlnResolutionInversePixel does not increase")
    return torch.tensor(frequency), torch.tensor(value)


def run_postprocess(files: PostprocessFiles, options: PostprocessOptions) -> PostprocessResult:
    """Read, check, post-process and write everything (module docstring).

    Phases are randomised with a CPU ``torch.Generator`` seeded with
    ``files.random_seed`` (RELION's ``--random_seed``, default 0), half 1 first.

    Raises
    ------
    InputError
        A file is missing or unreadable; the halves differ in shape or (without
        ``pixel_size_angst``) in voxel size, or are not cubes; the mask has
        another shape or values outside [0, 1]; the MTF table is malformed; no
        pixel size is known; the output folder cannot be created.
    """
    half2_path = files.half2 or other_half_name(files.half1)
    half1, header_pixel = _read_volume(files.half1, "half map 1")
    half2, half2_pixel = _read_volume(half2_path, "half map 2")
    if half2.shape != half1.shape:
        raise InputError(
            f"{half2_path}: half map 2 of shape {half2.shape} but half map 1 "
            f"({files.half1}) is {half1.shape}"
        )
    if files.pixel_size_angst is None:
        _check_same_pixel(files.half1, header_pixel, half2_path, half2_pixel)
    make_output_folder(files.output_root.parent, option="--o")
    mask = None if files.mask is None else _read_mask(files.mask, half1.shape)
    pixel = files.pixel_size_angst if files.pixel_size_angst else header_pixel
    if not pixel > 0:
        raise InputError(f"{files.half1}: the header gives no voxel size; give --angpix")
    mtf = None
    if files.mtf is not None:
        mtf = _read_mtf(files.mtf, files.mtf_pixel_size_angst or pixel)
    result = postprocess_maps(
        torch.from_numpy(half1),
        torch.from_numpy(half2),
        None if mask is None else torch.from_numpy(mask),
        pixel_size_angst=pixel,
        options=options,
        generator=torch.Generator().manual_seed(files.random_seed),
        mtf=mtf,
    )
    _write_outputs(files, half2_path, options, result, pixel)
    logger.info(
        "final_resolution_angst=%.4f bfactor_angst2=%.2f randomise_from_shell=%s",
        result.final_resolution_angst,
        result.bfactor_angst2,
        result.randomise_from_shell,
    )
    return result


def _write_outputs(
    files: PostprocessFiles,
    half2: Path,
    options: PostprocessOptions,
    result: PostprocessResult,
    pixel: float,
) -> None:
    root = files.output_root
    names = {
        "map": Path(f"{root}.mrc"),
        "masked": Path(f"{root}_masked.mrc"),
        "star": Path(f"{root}.star"),
        "plot": Path(f"{root}_fsc.png"),
    }
    write_mrc(names["map"], result.sharpened.cpu().numpy(), voxel_size_angst=pixel)
    if result.sharpened_masked is not None:
        write_mrc(names["masked"], result.sharpened_masked.cpu().numpy(), voxel_size_angst=pixel)
    blocks = star_blocks(
        result,
        options,
        half1=files.half1,
        half2=half2,
        mask=files.mask,
        output_root=root,
        pixel_size_angst=pixel,
    )
    write_star(blocks, names["star"])
    write_atomically(names["plot"], lambda partial: _plot_fsc(result, pixel, partial))


def star_blocks(
    result: PostprocessResult,
    options: PostprocessOptions,
    *,
    half1: Path,
    half2: Path,
    mask: Path | None,
    output_root: Path,
    pixel_size_angst: float,
) -> dict[str, StarBlock]:
    """``general``, ``fsc`` and ``guinier`` blocks with RELION 5's labels, in its order."""
    general: dict[str, str | int | float] = {
        "rlnFinalResolution": result.final_resolution_angst,
        "rlnBfactorUsedForSharpening": result.bfactor_angst2,
        "rlnUnfilteredMapHalf1": str(half1),
        "rlnUnfilteredMapHalf2": str(half2),
        "rlnPostprocessedMap": f"{output_root}.mrc",
    }
    if mask is not None and result.randomise_from_shell and result.particle_box_fraction:
        n = result.sharpened.shape[-1]
        general["rlnParticleBoxFractionSolventMask"] = result.particle_box_fraction
        general["rlnMaskName"] = str(mask)
        general["rlnRandomiseFrom"] = n * pixel_size_angst / result.randomise_from_shell
        general["rlnPostprocessedMapMasked"] = f"{output_root}_masked.mrc"
    if result.guinier_fit is not None:
        slope, intercept, correlation = result.guinier_fit
        general["rlnFittedSlopeGuinierPlot"] = slope
        general["rlnFittedInterceptGuinierPlot"] = intercept
        general["rlnCorrelationFitGuinierPlot"] = correlation
    return {
        "general": general,
        "fsc": _fsc_table(result, pixel_size_angst, masked=mask is not None),
        "guinier": _guinier_table(result, options),
    }


def _fsc_table(result: PostprocessResult, pixel: float, *, masked: bool) -> pd.DataFrame:
    shells = np.arange(result.fsc_unmasked.shape[-1])
    n = result.sharpened.shape[-1]
    angst = np.where(shells > 0, n * pixel / np.maximum(shells, 1), 999.0)
    columns: dict[str, np.ndarray] = {
        "rlnSpectralIndex": shells,
        "rlnResolution": 1.0 / angst,
        "rlnAngstromResolution": angst,
    }
    curves: dict[str, torch.Tensor | None]
    if masked:
        curves = {
            "rlnFourierShellCorrelationCorrected": result.fsc_corrected,
            "rlnFourierShellCorrelationParticleMaskFraction": result.fsc_particle_fraction,
            "rlnFourierShellCorrelationUnmaskedMaps": result.fsc_unmasked,
            "rlnFourierShellCorrelationMaskedMaps": result.fsc_masked,
            "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps": (
                result.fsc_random_masked
            ),
        }
    else:
        curves = {"rlnFourierShellCorrelationUnmaskedMaps": result.fsc_corrected}
    for label, curve in curves.items():
        if curve is not None:
            columns[label] = curve.cpu().numpy()
    return pd.DataFrame(columns)


def _guinier_table(result: PostprocessResult, options: PostprocessOptions) -> pd.DataFrame:
    columns = {
        "rlnResolutionSquared": result.guinier_resolution_squared,
        "rlnLogAmplitudesOriginal": result.guinier_original,
    }
    if result.guinier_mtf is not None:
        columns["rlnLogAmplitudesMTFCorrected"] = result.guinier_mtf
    if options.fsc_weighting:
        columns["rlnLogAmplitudesWeighted"] = result.guinier_weighted
    if options.auto_bfactor or options.adhoc_bfactor_angst2 != 0.0:
        columns["rlnLogAmplitudesSharpened"] = result.guinier_sharpened
    table = pd.DataFrame({label: v.cpu().numpy() for label, v in columns.items()})
    if result.guinier_fit is not None:
        table["rlnLogAmplitudesIntercept"] = result.guinier_fit[1]
    return table


def _plot_fsc(result: PostprocessResult, pixel: float, path: Path) -> None:
    """FSC curves against resolution (1/Angstrom), RELION's colours, as a PNG."""
    n = result.sharpened.shape[-1]
    frequency = np.arange(result.fsc_unmasked.shape[-1]) / (n * pixel)
    figure = Figure(figsize=(7.5, 5.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    curves = [
        ("corrected", result.fsc_corrected, "black", 2.0),
        ("unmasked maps", result.fsc_unmasked, "green", 1.0),
        ("masked maps", result.fsc_masked, "blue", 1.0),
        ("phase-randomised masked maps", result.fsc_random_masked, "red", 1.0),
    ]
    for label, curve, colour, width in curves:
        if curve is not None:
            axes.plot(frequency, curve.cpu().numpy(), color=colour, lw=width, label=label)
    axes.axhline(0.143, color="grey", lw=0.8, ls="--")
    axes.set_xlabel("resolution (1/Å)")
    axes.set_ylabel("Fourier shell correlation")
    axes.set_title(f"Final resolution = {result.final_resolution_angst:.2f} Å")
    axes.legend(loc="upper right", fontsize="small")
    figure.savefig(path, format="png")
