"""The per-iteration lines of ``run.log`` (STYLE.md 2.9), as numbers.

``cryorefine refine`` logs one INFO line per iteration beside its outputs,
``key=value`` with units in the keys, e.g.
``2026-01-02 10:00:00 iter=007 resolution_angst=6.84 current_size=64 ...
acc_rot_deg=1.20 changes_orientations_deg=3.10 ... seconds=38``. Lines of one
half set (``half_set=1``, the E-step's timing) are not iteration summaries and
are skipped, as is every line without ``iter=``. The report takes from here
what an iteration's STAR files do not say (or the iterations whose files are gone).
"""

import math
import re
from pathlib import Path

from cryorefine.errors import InputError

__all__ = ["LOG_KEYS", "read_run_log"]

#: The keys of an iteration line that the report uses (others are ignored).
LOG_KEYS = (
    "resolution_angst",
    "current_size",
    "healpix_order",
    "offset_range_px",
    "offset_step_px",
    "acc_rot_deg",
    "acc_trans_angst",
    "changes_orientations_deg",
    "changes_offsets_angst",
)

_PAIR = re.compile(r"(?<!\S)([a-z_]+)=(\S+)")


def _iteration_values(line: str) -> tuple[int, dict[str, float]] | None:
    pairs = dict(_PAIR.findall(line))
    if "iter" not in pairs or "half_set" in pairs:
        return None
    try:
        iteration = int(pairs["iter"])
    except ValueError:
        return None
    values: dict[str, float] = {}
    for key in LOG_KEYS:
        try:
            value = float(pairs[key])
        except (KeyError, ValueError):
            continue
        if math.isfinite(value):
            values[key] = value
    return iteration, values


def read_run_log(path: Path) -> dict[int, dict[str, float]]:
    """Iteration number -> ``{key: value}`` of its summary line in ``run.log``.

    Parameters
    ----------
    path
        The log (``run.log`` in the folder of the run's output root).

    Returns
    -------
    dict
        For each iteration with a summary line, the finite values of ``LOG_KEYS``
        it holds; a later line of the same iteration (a continued run) wins.
        Empty if the file does not exist.

    Raises
    ------
    InputError
        The file exists but cannot be read as text.
    """
    if not path.is_file():
        return {}
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error})") from error
    found: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        parsed = _iteration_values(line)
        if parsed is not None:
            found[parsed[0]] = parsed[1]
    return found
