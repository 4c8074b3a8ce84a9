"""Small fake refinement runs, written with cryorefine.io's writers, for the report's tests.

A run has iterations 0..n-1 (model, optimiser, sampling and data files named as
RELION names them) and, when finished, the final files. Every value written is a
simple function of the iteration (``expected``), so tests compare what the report
reads with what was written. Labels are RELION's, written here directly.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryorefine.io import write_mrc, write_star

PIXEL = 3.0
BOX = 24
N_PARTICLES = 40
N_SHELLS = BOX // 2 + 1


@dataclass
class FakeRun:
    """Where a fake run is and what it holds."""

    root: Path
    iterations: int
    finished: bool
    mask: Path | None = None
    skipped: dict[str, list[int]] = field(default_factory=dict)


def expected(iteration: int) -> dict[str, float]:
    """The values written for ``iteration`` (the final one: ``iteration == n``)."""
    return {
        "resolution_angst": 40.0 / (iteration + 1),
        "current_size_px": float(min(BOX, 12 + 4 * iteration)),
        "healpix_order": float(min(2 + iteration // 2, 4)),
        "angular_step_deg": 360.0 / (6 * 2 ** min(2 + iteration // 2, 4)),
        "offset_range_px": 5.0 / (iteration + 1),
        "offset_step_px": 1.0 / (iteration + 1),
        "acc_rot_deg": 10.0 / (iteration + 1),
        "acc_trans_angst": 6.0 / (iteration + 1),
        "changes_orientations_deg": 30.0 / (iteration + 1),
        "changes_offsets_angst": 3.0 / (iteration + 1),
    }


def fsc_values(iteration: int) -> np.ndarray:
    """A falling FSC, sharper for later iterations; zeros before the first iteration."""
    if iteration == 0:
        return np.zeros(N_SHELLS)
    shells = np.arange(N_SHELLS, dtype=np.float64)
    return 1.0 / (1.0 + np.exp((shells - 2.0 - iteration) / 1.5))


def _model(iteration: int) -> dict[str, object]:
    values = expected(iteration)
    shells = np.arange(N_SHELLS)
    resolution = shells / (BOX * PIXEL)
    table = pd.DataFrame(
        {
            "rlnSpectralIndex": shells,
            "rlnResolution": resolution,
            "rlnAngstromResolution": np.where(
                shells > 0, 1.0 / np.maximum(resolution, 1e-9), 999.0
            ),
            "rlnGoldStandardFsc": fsc_values(iteration),
        }
    )
    general = {
        "rlnOriginalImageSize": BOX,
        "rlnCurrentResolution": values["resolution_angst"],
        "rlnCurrentImageSize": int(values["current_size_px"]),
        "rlnPixelSize": PIXEL,
    }
    return {"model_general": general, "model_class_1": table}


def _optimiser(iteration: int, mask_name: str) -> dict[str, object]:
    values = expected(iteration)
    unmeasured = iteration == 0  # RELION writes 999 before anything is measured
    return {
        "optimiser_general": {
            "rlnCurrentIteration": iteration,
            "rlnSolventMaskName": mask_name,
            "rlnOverallAccuracyRotations": 999.0 if unmeasured else values["acc_rot_deg"],
            "rlnOverallAccuracyTranslationsAngst": (
                999.0 if unmeasured else values["acc_trans_angst"]
            ),
            "rlnChangesOptimalOrientations": (
                999.0 if unmeasured else values["changes_orientations_deg"]
            ),
            "rlnChangesOptimalOffsets": 999.0 if unmeasured else values["changes_offsets_angst"],
        }
    }


def _sampling(iteration: int) -> dict[str, object]:
    values = expected(iteration)
    return {
        "sampling_general": {
            "rlnHealpixOrder": int(values["healpix_order"]),
            "rlnSymmetryGroup": "C2",
            "rlnPsiStep": values["angular_step_deg"],
            "rlnOffsetRange": values["offset_range_px"] * PIXEL,
            "rlnOffsetStep": values["offset_step_px"] * PIXEL,
        }
    }


def particle_blocks(angles_deg: np.ndarray) -> dict[str, pd.DataFrame]:
    """An SPA data_optics and data_particles with these (rot, tilt, psi) and zero origins."""
    count = len(angles_deg)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [PIXEL],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(count)],
            "rlnOpticsGroup": np.ones(count, dtype=np.int64),
            "rlnAngleRot": angles_deg[:, 0],
            "rlnAngleTilt": angles_deg[:, 1],
            "rlnAnglePsi": angles_deg[:, 2],
            "rlnOriginXAngst": np.zeros(count),
            "rlnOriginYAngst": np.zeros(count),
            "rlnRandomSubset": 1 + np.arange(count) % 2,
        }
    )
    return {"optics": optics, "particles": particles}


def random_angles(count: int, seed: int) -> np.ndarray:
    """Uniform directions (tilt from cos uniform) and uniform psi, degrees."""
    gen = np.random.default_rng(seed)
    rot = gen.uniform(-180.0, 180.0, count)
    tilt = np.degrees(np.arccos(gen.uniform(-1.0, 1.0, count)))
    psi = gen.uniform(-180.0, 180.0, count)
    return np.stack([rot, tilt, psi], axis=1)


def blob_map(centre_px: tuple[float, float, float], *, sigma_px: float = 2.0) -> np.ndarray:
    """A Gaussian blob (z, y, x) at ``centre_px`` (x, y, z) from voxel BOX // 2."""
    axis = np.arange(BOX, dtype=np.float64) - BOX // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    r2 = (x - centre_px[0]) ** 2 + (y - centre_px[1]) ** 2 + (z - centre_px[2]) ** 2
    return np.exp(-r2 / (2.0 * sigma_px**2))


def soft_mask(
    centre_px: tuple[float, float, float],
    *,
    box: int = BOX,
    inner_px: float = 7.0,
    edge_px: float = 3.0,
) -> np.ndarray:
    """1 within ``inner_px`` of ``centre_px`` (x, y, z from voxel box // 2), a raised-cosine
    edge of ``edge_px`` down to 0; symmetric about its centre, so that is its centre of mass."""
    axis = np.arange(box, dtype=np.float64) - box // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    r = np.sqrt((x - centre_px[0]) ** 2 + (y - centre_px[1]) ** 2 + (z - centre_px[2]) ** 2)
    edge = 0.5 + 0.5 * np.cos(np.pi * np.clip((r - inner_px) / edge_px, 0.0, 1.0))
    return np.where(r <= inner_px, 1.0, edge)


def write_fake_run(
    folder: Path,
    *,
    iterations: int = 4,
    finished: bool = True,
    skip: dict[str, list[int]] | None = None,
    mask_name: str = "None",
    volume: np.ndarray | None = None,
) -> FakeRun:
    """A run ``folder/Refine3D/job001/run``; ``skip`` leaves out kinds' files of some iterations.

    ``skip`` keys: ``model``, ``optimiser``, ``sampling``; ``final`` in a list means the
    final file of that kind. ``volume`` (default a blob at the centre) is the final map
    (or, unfinished, the last iteration's half-set-1 map).
    """
    skip = skip or {}
    job = folder / "Refine3D" / "job001"
    job.mkdir(parents=True, exist_ok=True)
    root = job / "run"
    blocks = particle_blocks(random_angles(N_PARTICLES, seed=1))
    numbered = [(i, f"{root}_it{i:03d}_") for i in range(iterations)]
    final = [(iterations, f"{root}_")] if finished else []
    for i, prefix in numbered + final:
        tag = "final" if prefix == f"{root}_" else i
        model_name = "model.star" if tag == "final" else "half1_model.star"
        if tag not in skip.get("model", []):
            write_star(_model(i), prefix + model_name)
        if tag not in skip.get("optimiser", []):
            write_star(_optimiser(i, mask_name), prefix + "optimiser.star")
        if tag not in skip.get("sampling", []):
            write_star(_sampling(i), prefix + "sampling.star")
        write_star(blocks, prefix + "data.star")
    the_map = blob_map((0.0, 0.0, 0.0)) if volume is None else volume
    map_path = (
        f"{root}_class001.mrc" if finished else f"{root}_it{iterations - 1:03d}_half1_class001.mrc"
    )
    write_mrc(map_path, the_map, voxel_size_angst=PIXEL)
    return FakeRun(root=root, iterations=iterations, finished=finished, skipped=skip)


def close(a: float, b: float) -> bool:
    """Equal to the 12 significant digits io.write_star keeps (relative 1e-11)."""
    return math.isclose(a, b, rel_tol=1e-11, abs_tol=1e-12)
