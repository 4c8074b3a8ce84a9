"""The STAR side of extraction: where tilt images are, and the particle tables written.

Tilt images (``tilt_image_references``)
    RELION 5: each tilt's ``rlnMicrographName`` in the per-tilt table (a file,
    or ``INDEX@stack``); RELION 4: the tomogram's ``rlnTomoTiltSeriesName`` in
    ``data_global``, a stack whose image ``j`` is tilt row ``j`` (a trailing
    ``:mrc`` format hint is dropped). Relative names resolve as ``io.paths`` says,
    from the file that names them.
Centres (``particle_centres_angst``)
    ``rlnCenteredCoordinate*Angst``, else ``rlnCoordinate*`` (bin-1 pixels from the
    tomogram's corner), in Angstrom from the tomogram's centre; with offsets
    applied, minus ``S origin`` (``S`` the subtomogram matrix; RELION's
    ``position = coordinate - S origin``).
Optimisation set (``rebased_optimisation_set``)
    The input's, the particles replaced, every file named from the current
    (project) directory, as RELION reads them; other entries kept.
Particle names (``particle_names``)
    ``rlnTomoParticleName``, or ``<tomogram>/<j>`` with ``j`` the particle's
    1-based number among its tomogram's particles in file order (as RELION names
    picks that have none).
Tables written (``extracted_blocks``, REFINE_SPEC sections 2.2, 2.3, 7.3)
    ``data_optics``: the input's (or one group made from the first tomogram's
    microscope), with ``rlnTomoTiltSeriesPixelSize``, ``rlnCtfDataAreCtfPremultiplied``
    (1 for 3D; for 2D stacks 1 unless ``--no_ctf``), ``rlnImageDimensionality``
    (3, or 2 for stacks), ``rlnTomoSubtomogramBinning``, ``rlnImagePixelSize``
    (binning times the tilt-series pixel) and ``rlnImageSize`` (the crop).
    ``data_particles``: the input's columns of the kept particles, without
    ``rlnCoordinateX/Y/Z`` (RELION 5 drops them), with
    ``rlnCenteredCoordinateX/Y/ZAngst`` (the extraction centre; with offsets
    applied ``rlnOriginX/Y/ZAngst`` are set to 0), ``rlnTomoParticleName``,
    ``rlnTomoSubtomogramRot/Tilt/Psi`` (0 where absent), ``rlnOpticsGroup``,
    ``rlnImageName`` and, for 3D, ``rlnCtfImage`` (``<root>_data.mrc``,
    ``<root>_weights.mrc``); for 2D stacks ``rlnImageName`` is ``<root>_stack2d.mrcs``,
    ``rlnTomoVisibleFrames`` lists the tilts in it (``[0,1,1,...]``, tilt order)
    and a ``data_general`` block comes first with ``rlnTomoSubTomosAre2DStacks`` 1,
    as in the tutorial's Refine3D/job074/run_data.star.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float64, Int64

from cryorefine.errors import InputError
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import (
    OPTIMISATION_SET_LABELS,
    OptimisationSet,
    ParticleSet,
    TiltSeries,
    TomogramSet,
    resolve_path,
    split_image_names,
)

__all__ = [
    "extracted_blocks",
    "particle_centres_angst",
    "particle_names",
    "rebased_optimisation_set",
    "tilt_image_references",
]


def tilt_image_references(series: TiltSeries) -> tuple[list[Path], Int64[np.ndarray, " i"]]:
    """Image file and 1-based index in it (0: the whole file) of every tilt (module docstring).

    Raises
    ------
    InputError
        Neither ``rlnMicrographName`` per tilt nor ``rlnTomoTiltSeriesName``.
    """
    if "rlnMicrographName" in series.tilts.columns:
        names = series.tilts["rlnMicrographName"].astype(str).tolist()
        indices, paths = split_image_names(names)
        if (indices < 0).any():
            row = int(np.flatnonzero(indices < 0)[0])
            raise InputError(
                f"{series.source}: data_{series.name} row {row + 1}: rlnMicrographName "
                f"{names[row]!r} is not FILE or INDEX@FILE"
            )
        return [resolve_path(path, series.source) for path in paths], indices
    stack = series.global_row.get("rlnTomoTiltSeriesName")
    if not stack:
        raise InputError(
            f"{series.source}: data_{series.name}: no tilt images: neither rlnMicrographName "
            "per tilt nor rlnTomoTiltSeriesName in data_global"
        )
    name = str(stack)
    for hint in (":mrcs", ":mrc"):
        name = name.removesuffix(hint)
    path = resolve_path(name, series.source)
    return [path] * len(series), np.arange(1, len(series) + 1, dtype=np.int64)


def particle_names(particles: ParticleSet) -> list[str]:
    """``rlnTomoParticleName`` of every particle, or ``<tomogram>/<j>`` (module docstring)."""
    if "rlnTomoParticleName" in particles.particles.columns:
        return particles.tomo_particle_names()
    counts: dict[str, int] = {}
    names = []
    for tomogram in particles.tomo_names():
        counts[tomogram] = counts.get(tomogram, 0) + 1
        names.append(f"{tomogram}/{counts[tomogram]}")
    return names


def _optics(particles: ParticleSet, tomograms: TomogramSet, first_tomogram: str) -> pd.DataFrame:
    """The input's optics table, or one group from the microscope of ``first_tomogram``."""
    series = tomograms[first_tomogram]
    if particles.optics is not None:
        optics = particles.optics.copy()
    else:
        ctf = series.ctf_parameters()
        optics = pd.DataFrame(
            [
                {
                    "rlnOpticsGroup": 1,
                    "rlnOpticsGroupName": str(
                        series.global_row.get("rlnOpticsGroupName", "opticsGroup1")
                    ),
                    "rlnVoltage": float(ctf.voltage_kv[0]),
                    "rlnSphericalAberration": float(ctf.spherical_aberration_mm[0]),
                    "rlnAmplitudeContrast": float(ctf.amplitude_contrast[0]),
                }
            ]
        )
    if "rlnTomoTiltSeriesPixelSize" not in optics.columns:
        optics["rlnTomoTiltSeriesPixelSize"] = series.pixel_size_angst
    return optics


def extracted_blocks(
    particles: ParticleSet,
    tomograms: TomogramSet,
    *,
    kept: Int64[np.ndarray, " c"],
    names: list[str],
    centered_coordinates_angst: Float64[np.ndarray, "c 3"],
    roots: list[str],
    visible: list[Bool[np.ndarray, " i"]] | None,
    binning: float,
    crop_size: int,
    ctf_premultiplied: bool,
    offsets_applied: bool,
) -> dict[str, pd.DataFrame | dict[str, object]]:
    """The blocks of the extracted particles.star (module docstring), kept rows in order.

    ``names``, ``centered_coordinates_angst`` and ``roots`` (file names without
    ``_data.mrc`` / ``_stack2d.mrcs``) are of the kept particles; ``visible``
    (2D stacks only, else None) their tilts in the stacks.
    """
    table = particles.particles.iloc[kept].reset_index(drop=True).copy()
    table = table.drop(columns=[c for c in ("rlnCoordinateX", "rlnCoordinateY",
                                            "rlnCoordinateZ") if c in table.columns])  # fmt: skip
    for column, axis in enumerate("XYZ"):
        table[f"rlnCenteredCoordinate{axis}Angst"] = centered_coordinates_angst[:, column]
        if offsets_applied:
            table[f"rlnOrigin{axis}Angst"] = 0.0
    table["rlnTomoParticleName"] = names
    for label in ("Rot", "Tilt", "Psi"):
        if f"rlnTomoSubtomogram{label}" not in table.columns:
            table[f"rlnTomoSubtomogram{label}"] = 0.0
    if "rlnOpticsGroup" not in table.columns:
        table["rlnOpticsGroup"] = 1
    stack2d = visible is not None
    if visible is not None:
        table["rlnImageName"] = [f"{root}_stack2d.mrcs" for root in roots]
        table = table.drop(columns=[c for c in ("rlnCtfImage",) if c in table.columns])
        table["rlnTomoVisibleFrames"] = [
            "[" + ",".join("1" if v else "0" for v in frames) + "]" for frames in visible
        ]
    else:
        table["rlnImageName"] = [f"{root}_data.mrc" for root in roots]
        table["rlnCtfImage"] = [f"{root}_weights.mrc" for root in roots]
    first = particles.tomo_names()[int(kept[0])] if len(kept) else tomograms.names()[0]
    optics = _optics(particles, tomograms, first)
    optics["rlnCtfDataAreCtfPremultiplied"] = int(ctf_premultiplied)
    optics["rlnImageDimensionality"] = 2 if stack2d else 3
    optics["rlnTomoSubtomogramBinning"] = float(binning)
    optics["rlnImagePixelSize"] = binning * optics["rlnTomoTiltSeriesPixelSize"].astype(float)
    optics["rlnImageSize"] = int(crop_size)
    blocks: dict[str, pd.DataFrame | dict[str, object]] = {}
    if stack2d:
        blocks["general"] = {"rlnTomoSubTomosAre2DStacks": 1}
    blocks["optics"] = optics
    blocks["particles"] = table
    return blocks


def particle_centres_angst(
    particles: ParticleSet, tomograms: TomogramSet, apply_offsets: bool
) -> np.ndarray:
    """Every particle's centre from its tomogram's centre, Angstrom (module docstring)."""
    try:
        centred = particles.centered_coordinates_angst()
    except InputError:
        decentred = particles.coordinates_px()
        centred = np.empty_like(decentred)
        for row, name in enumerate(particles.tomo_names()):
            series = tomograms[name]
            centre = np.array(series.size_px, dtype=np.float64) / 2
            centred[row] = (decentred[row] - centre) * series.pixel_size_angst
    if not apply_offsets:
        return centred
    frames = euler_to_matrix(torch.as_tensor(particles.subtomogram_angles_deg())).numpy()
    shifted: np.ndarray = centred - np.einsum("bij,bj->bi", frames, particles.origins_angst())
    return shifted


def rebased_optimisation_set(
    optimisation: OptimisationSet, particles_star: Path
) -> OptimisationSet:
    """The set with the new particles and every file named from the current directory.

    Names in an optimisation set are read from the project (current) directory;
    the input's may be relative to its own folder, which the new set is not in.
    """
    files: dict[str, Path | None] = {"particles_file": particles_star}
    for field in OPTIMISATION_SET_LABELS:
        value = getattr(optimisation, field)
        if field != "particles_file" and value is not None:
            relative = Path(os.path.relpath(value.resolve(), Path.cwd().resolve()))
            files[field] = value.resolve() if relative.parts[:1] == ("..",) else relative
    entries = {
        k: v for k, v in optimisation.entries.items() if k not in OPTIMISATION_SET_LABELS.values()
    }
    return dataclasses.replace(optimisation.replace(**files), entries=entries)
