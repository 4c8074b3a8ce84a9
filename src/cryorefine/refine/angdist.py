"""The angular distribution as a BILD file (``run_class001_angdist.bild``), as RELION writes it.

One cylinder per viewing direction with posterior mass, pointing out from a
sphere of radius ``R = ori_size * pixel_size / 2`` (Angstrom) about the box
centre ``(R, R, R)``, for UCSF Chimera/ChimeraX to show over the map:

- length ``0.3 R pdf / max(pdf)``, from ``R v`` to ``(R + 0.3 R pdf / max) v``,
  ``v = (cos rot sin tilt, sin rot sin tilt, cos tilt)``;
- width ``0.5 pi R step / 360`` for the angular step ``step`` (degrees) of the
  directions, so that neighbouring cylinders nearly touch;
- colour ``.color c 0 1-c`` from blue to red with ``c = (clip((pdf - mean) / sigma,
  -1, 5) + 1) / 6`` (mean and population standard deviation over all directions).

Directions with zero mass, and cylinders shorter than 0.01 A along every axis,
are left out (Chimera refuses zero-length cylinders).
"""

import math
from os import PathLike
from pathlib import Path

import numpy as np
from jaxtyping import Float

from cryorefine.io.atomic import write_atomically

__all__ = ["angdist_bild", "write_angdist_bild"]

_LENGTH_FRACTION = 0.3
_WIDTH_FRACTION = 0.5


def angdist_bild(
    pdf: Float[np.ndarray, " m"],
    rot_tilt_deg: Float[np.ndarray, "m 2"],
    *,
    radius_angst: float,
    angular_step_deg: float,
) -> str:
    """BILD text for the mass ``pdf`` over directions ``(rot, tilt)`` (module docstring)."""
    pdf = np.asarray(pdf, dtype=np.float64)
    rot, tilt = np.deg2rad(np.asarray(rot_tilt_deg, dtype=np.float64)).T
    if pdf.shape != rot.shape:
        raise ValueError(f"{pdf.shape[0]} masses for {rot.shape[0]} directions")
    peak, mean, sigma = pdf.max(initial=0.0), pdf.mean(), pdf.std()
    if peak <= 0:
        return ""
    deviation = (pdf - mean) / sigma if sigma > 0 else np.zeros_like(pdf)
    colour = (np.clip(deviation, -1.0, 5.0) + 1.0) / 6.0
    direction = np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], 1)
    outer = radius_angst + _LENGTH_FRACTION * radius_angst * pdf / peak
    start = radius_angst * direction + radius_angst
    end = outer[:, None] * direction + radius_angst
    width = _WIDTH_FRACTION * math.pi * radius_angst * angular_step_deg / 360.0
    keep = (pdf > 0) & (np.abs(end - start) > 0.01).any(axis=1)
    lines = []
    for c, a, b in zip(colour[keep], start[keep], end[keep], strict=True):
        lines.append(f".color {c:g} 0 {1.0 - c:g}")
        lines.append(".cylinder " + " ".join(f"{x:g}" for x in (*a, *b, width)))
    return "\n".join(lines) + ("\n" if lines else "")


def write_angdist_bild(
    path: str | PathLike[str],
    pdf: Float[np.ndarray, " m"],
    rot_tilt_deg: Float[np.ndarray, "m 2"],
    *,
    radius_angst: float,
    angular_step_deg: float,
) -> Path:
    """Write ``angdist_bild(...)`` to ``path`` (whole or not at all)."""
    text = angdist_bild(
        pdf, rot_tilt_deg, radius_angst=radius_angst, angular_step_deg=angular_step_deg
    )
    return write_atomically(Path(path), lambda temporary: Path(temporary).write_text(text))
