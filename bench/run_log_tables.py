"""Tables from a refine's run.log: per iteration, per E-step phase, per part of an iteration.

``iteration_table`` reads each iteration's line (seconds, resolution, current size), its
half sets' ``e_step_seconds`` and its parts (``iter=N phase_seconds``: references,
accuracy, e_step, m_step, poses, files); ``phase_totals`` sums the E-step's phases
(``iter=N half_set=H phase_seconds``), ``part_totals`` the parts.
"""

import re

__all__ = ["iteration_table", "part_totals", "phase_totals"]


def iteration_table(log: str) -> list[dict[str, float]]:
    """Per iteration: its seconds, E-step seconds (both halves) and resolution.

    An iteration logged twice (run again from a carried state) counts as its last run.
    """
    halves: dict[tuple[int, int], float] = {}
    pattern = r"iter=(\d+) half_set=(\d) .*?e_step_seconds=([\d.]+)"
    for it, half, seconds in re.findall(pattern, log):
        halves[int(it), int(half)] = float(seconds)
    e_step: dict[int, float] = {}
    for (it, _), seconds in halves.items():
        e_step[it] = e_step.get(it, 0.0) + seconds
    rows: dict[int, dict[str, float]] = {}
    pattern = r"iter=(\d+) resolution_angst=([\d.]+) current_size=(\d+).* seconds=([\d.]+)"
    for it, resolution, size, seconds in re.findall(pattern, log):
        rows[int(it)] = {
            "iteration": int(it),
            "seconds": float(seconds),
            "e_step_seconds": e_step.get(int(it), 0.0),
            "resolution_angst": float(resolution),
            "current_size": int(size),
        }
    # the iteration's parts (references, accuracy, e_step, m_step, poses, files), where logged
    for it, line in re.findall(r"iter=(\d+) phase_seconds (.*)", log):
        if int(it) in rows:
            parts = {name: float(value) for name, value in re.findall(r"(\w+)=([\d.]+)", line)}
            rows[int(it)]["parts"] = parts
    return [rows[it] for it in sorted(rows)]


def phase_totals(log: str) -> dict[str, float]:
    """The E-step's phases summed over iterations and half sets.

    A half set logged twice (a call cut by its time limit and the iteration run again
    from the carried state) counts as its last run, as in ``iteration_table``.
    """
    last: dict[tuple[int, int], str] = {}
    for it, half, line in re.findall(r"iter=(\d+) half_set=(\d) phase_seconds (.*)", log):
        last[int(it), int(half)] = line
    phases: dict[str, float] = {}
    for line in last.values():
        for name, seconds in re.findall(r"(\w+)=([\d.]+)", line):
            phases[name] = phases.get(name, 0.0) + float(seconds)
    return phases


def part_totals(iterations: list[dict]) -> dict[str, float]:
    """The iteration's parts (``iter=N phase_seconds``) summed over the iterations."""
    totals: dict[str, float] = {}
    for row in iterations:
        for name, seconds in row.get("parts", {}).items():
            totals[name] = totals.get(name, 0.0) + seconds
    return totals
