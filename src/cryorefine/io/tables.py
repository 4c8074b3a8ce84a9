"""Small helpers on STAR tables: required labels, columns as arrays, row lists in messages.

Row numbers in messages are 1-based data rows of the named block, as a user
counts them in the file (the header lines not counted). At most five rows are
listed, then a count of the others. A label that is missing while a label one
typing slip away is present (``rlnImageNmae``) is named in the message as the
likely misspelling; ``warn_misspelt_labels`` logs such near misses of labels
cryorefine reads.
"""

import logging
from collections.abc import Collection, Sequence
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
    "misspelling_of",
    "require_labels",
    "warn_misspelt_labels",
]

logger = logging.getLogger(__name__)


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


def _typing_distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) from ``a`` to ``b``."""
    rows = [list(range(len(b) + 1))]
    for i, char_a in enumerate(a, start=1):
        row = [i] + [0] * len(b)
        for j, char_b in enumerate(b, start=1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (char_a != char_b))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def misspelling_of(label: str, present: Collection[object]) -> str | None:
    """A label of ``present`` that is ``label`` mistyped (1 slip; 2 for labels of 12+ letters)."""
    allowed = 2 if len(label) >= 12 else 1
    for candidate in present:
        text = str(candidate)
        if text != label and abs(len(text) - len(label)) <= allowed:
            if _typing_distance(text.lower(), label.lower()) <= allowed:
                return text
    return None


def _missing(label: str, table: pd.DataFrame) -> str:
    near = misspelling_of(label, table.columns)
    return f"{label} is missing" + (f" (found {near}: misspelt?)" if near else "")


def require_labels(
    table: pd.DataFrame, labels: Sequence[str], *, path: Path, block: str, why: str = ""
) -> None:
    """Raise ``InputError`` naming the first of ``labels`` that ``table`` lacks.

    A present label one typing slip away from the missing one is named as well.
    """
    missing = [label for label in labels if label not in table.columns]
    if missing:
        reason = f" ({why})" if why else ""
        raise InputError(
            f"{path}: data_{block}: required label {_missing(missing[0], table)}{reason}"
            + (f"; also missing: {', '.join(missing[1:])}" if len(missing) > 1 else "")
        )


def warn_misspelt_labels(
    table: pd.DataFrame, known: Collection[str], *, path: Path, block: str
) -> None:
    """Log a warning for each unknown label of ``table`` that looks like a mistyped known one.

    Unknown labels are kept and written back (RELION's files carry many), but a
    label such as ``rlnAngelRot`` is most likely ``rlnAngleRot`` mistyped, whose
    values would then be ignored.
    """
    columns = [str(column) for column in table.columns]
    absent = sorted(label for label in known if label not in columns)
    for column in columns:
        if column in known:
            continue
        near = misspelling_of(column, absent)
        if near is not None:
            logger.warning(
                "%s: data_%s: label %s is not a label cryorefine reads; if %s was meant, "
                "its values are ignored (rename the column)",
                path,
                block,
                column,
                near,
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
            raise InputError(f"{path}: data_{block}: required label {_missing(label, table)}")
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
    bad = np.flatnonzero((values != np.round(values)) | (np.abs(values) > 2.0**53))
    if len(bad):
        raise InputError(
            f"{path}: data_{block} {describe_rows(bad)}: {label} is {values[bad[0]]}, "
            "expected a whole number (of at most 2**53)"
        )
    return values.astype(np.int64)
