"""Small helpers on STAR tables: required labels, columns as arrays, row lists in messages.

Row numbers in messages are 1-based data rows of the named block, as a user
counts them in the file (the header lines not counted). At most five rows are
listed, then a count of the others.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float64, Int64

from cryorefine.errors import InputError

__all__ = [
    "CtfParameters",
    "describe_rows",
    "float_column",
    "int_column",
    "require_labels",
]


@dataclass(frozen=True)
class CtfParameters:
    """CTF parameters, one entry per particle (or per tilt image), RELION's units.

    Attributes
    ----------
    defocus_u_angst, defocus_v_angst
        ``rlnDefocusU``, ``rlnDefocusV`` (Angstrom, positive = underfocus).
    defocus_angle_deg
        ``rlnDefocusAngle``: direction of ``defocus_u`` from the x axis (degrees).
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``.
    phase_shift_deg
        ``rlnPhaseShift`` (0 where absent).
    bfactor_angst2
        ``rlnCtfBfactor`` (0 where absent); envelope ``exp(-B s**2 / 4)``.
    scale
        ``rlnCtfScalefactor`` (1 where absent).
    """

    defocus_u_angst: Float64[np.ndarray, " b"]
    defocus_v_angst: Float64[np.ndarray, " b"]
    defocus_angle_deg: Float64[np.ndarray, " b"]
    voltage_kv: Float64[np.ndarray, " b"]
    spherical_aberration_mm: Float64[np.ndarray, " b"]
    amplitude_contrast: Float64[np.ndarray, " b"]
    phase_shift_deg: Float64[np.ndarray, " b"]
    bfactor_angst2: Float64[np.ndarray, " b"]
    scale: Float64[np.ndarray, " b"]


def describe_rows(rows: Sequence[int] | np.ndarray) -> str:
    """``"row 3"`` or ``"rows 3, 4, 9, 10, 11 and 2 more"`` from 0-based row positions."""
    listed = [int(r) + 1 for r in rows]
    if len(listed) == 1:
        return f"row {listed[0]}"
    text = ", ".join(str(r) for r in listed[:5])
    more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
    return f"rows {text}{more}"


def require_labels(
    table: pd.DataFrame, labels: Sequence[str], *, path: Path, block: str, why: str = ""
) -> None:
    """Raise ``InputError`` naming the first of ``labels`` that ``table`` lacks."""
    missing = [label for label in labels if label not in table.columns]
    if missing:
        reason = f" ({why})" if why else ""
        raise InputError(
            f"{path}: data_{block}: required label {missing[0]} is missing{reason}"
            + (f"; also missing: {', '.join(missing[1:])}" if len(missing) > 1 else "")
        )


def float_column(
    table: pd.DataFrame,
    label: str,
    *,
    path: Path,
    block: str,
    default: float | None = None,
) -> Float64[np.ndarray, " b"]:
    """Column ``label`` as float64; ``default`` where the label is absent.

    Raises
    ------
    InputError
        The label is absent and there is no default, a value is not a number,
        or a value is not finite (``nan``, ``inf``).
    """
    if label not in table.columns:
        if default is None:
            raise InputError(f"{path}: data_{block}: required label {label} is missing")
        return np.full(len(table), float(default), dtype=np.float64)
    values: np.ndarray = pd.to_numeric(table[label], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        found = table[label].iloc[bad[0]]
        shown = repr(found) if isinstance(found, str) else str(found)
        raise InputError(
            f"{path}: data_{block} {describe_rows(bad)}: {label} is {shown}, "
            "expected a finite number"
        )
    return values


def int_column(
    table: pd.DataFrame,
    label: str,
    *,
    path: Path,
    block: str,
    default: int | None = None,
) -> Int64[np.ndarray, " b"]:
    """Column ``label`` as int64 (values must be whole numbers); ``default`` where absent."""
    values = float_column(
        table, label, path=path, block=block, default=None if default is None else float(default)
    )
    bad = np.flatnonzero(values != np.round(values))
    if len(bad):
        raise InputError(
            f"{path}: data_{block} {describe_rows(bad)}: {label} is {values[bad[0]]}, "
            "expected a whole number"
        )
    return values.astype(np.int64)
