"""Where the GPU waits for the host: its idle time charged to what the host was doing.

From one ``torch.profiler`` run (``tutorial_bench.py --torch_profile``): the
device's kernels and copies are merged into busy intervals; every gap between
them is cut into equal parts at most ``step_us`` long (one part for a shorter
gap), and each part is charged, at its middle, to the
host's innermost range on the thread that runs the phases (the operator it was
in, or the phase itself where it was in Python between operators) and to the
innermost phase (``timing.PhaseTimes`` ranges: ``fine_sum``, ``coarse_select``,
...). A GPU that is idle while the host sits in ``cudaStreamSynchronize`` is
waiting for a copy or for the host's own queue; one idle while the host is in
Python or in small operators is waiting for the host.
"""

import collections
import math
from collections.abc import Iterable, Sequence

Interval = tuple[float, float]
HostRange = tuple[float, float, str]  # start, end (microseconds), name


def busy_intervals(device: Iterable[Interval]) -> list[Interval]:
    """The union of the device's intervals, sorted and merged where they touch or overlap."""
    merged: list[list[float]] = []
    for start, end in sorted(device):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def idle_gaps(busy: Sequence[Interval], start: float, end: float) -> list[Interval]:
    """The gaps of ``[start, end)`` not covered by the sorted, disjoint ``busy`` intervals."""
    gaps, at = [], start
    for a, b in busy:
        if b <= start or a >= end:
            continue
        if a > at:
            gaps.append((at, a))
        at = max(at, b)
    if at < end:
        gaps.append((at, end))
    return gaps


def innermost(ranges: Sequence[HostRange], points: Sequence[float]) -> list[str | None]:
    """For each of the ascending ``points``, the name of the latest-starting range that
    contains it (the innermost, as ranges of one thread nest), or None."""
    order = sorted(ranges, key=lambda r: (r[0], -r[1]))
    names: list[str | None] = []
    stack: list[HostRange] = []
    i = 0
    for p in points:
        while i < len(order) and order[i][0] <= p:
            while stack and stack[-1][1] <= order[i][0]:
                stack.pop()
            stack.append(order[i])
            i += 1
        while stack and stack[-1][1] <= p:
            stack.pop()
        names.append(stack[-1][2] if stack else None)
    return names


def charge_idle(
    device: Iterable[Interval],
    host: Sequence[HostRange],
    phases: Sequence[HostRange],
    *,
    step_us: float = 20.0,
) -> dict:
    """Idle device time (seconds) by the host's innermost range and by innermost phase.

    The span is from the first phase's start to the last phase's end. Each gap is
    cut into ``ceil(length / step_us)`` equal parts, each charged at its middle, so
    the charges add up to the idle time exactly, short gaps included.
    """
    if not phases:
        raise ValueError("no phase ranges: nothing to charge the idle time to")
    start, end = min(p[0] for p in phases), max(p[1] for p in phases)
    busy = busy_intervals(device)
    gaps = idle_gaps(busy, start, end)
    points, lengths = [], []
    for a, b in gaps:
        parts = max(1, math.ceil((b - a) / step_us))
        part = (b - a) / parts
        points += [a + part * (j + 0.5) for j in range(parts)]
        lengths += [part] * parts
    by_host: collections.Counter = collections.Counter()
    by_phase: collections.Counter = collections.Counter()
    for name, us in zip(innermost(host, points), lengths, strict=True):
        by_host[name or "(no host range)"] += us * 1e-6
    for name, us in zip(innermost(phases, points), lengths, strict=True):
        by_phase[name or "(between phases)"] += us * 1e-6
    busy_us = sum(min(b, end) - max(a, start) for a, b in busy if b > start and a < end)
    return {
        "span_seconds": (end - start) * 1e-6,
        "busy_seconds": busy_us * 1e-6,
        "idle_seconds": sum(b - a for a, b in gaps) * 1e-6,
        "idle_by_phase": dict(by_phase.most_common()),
        "idle_by_host": dict(by_host.most_common()),
    }


def from_profiler(events: Iterable, phase_names: Iterable[str], *, step_us: float = 20.0) -> dict:
    """``charge_idle`` from ``prof.events()``: CUDA events (kernels, copies) are the
    device's; the host ranges are those of the thread that ran the first phase range."""
    wanted = set(phase_names)
    device, cpu = [], []
    for event in events:
        span = (event.time_range.start, event.time_range.end)
        if getattr(event.device_type, "name", "") == "CUDA":
            # the profiler also puts each record_function range on the device's timeline,
            # spanning its kernels and gaps: not device work
            if not getattr(event, "is_user_annotation", False) and event.name not in wanted:
                device.append(span)
        else:
            cpu.append((*span, event.name, event.thread))
    thread = next((t for *_, name, t in cpu if name in wanted), None)
    host = [(a, b, name) for a, b, name, t in cpu if t == thread]
    phases = [r for r in host if r[2] in wanted]
    return charge_idle(device, host, phases, step_us=step_us)


def charge_busy(
    kernels: Iterable[tuple[float, float, str]], phases: Sequence[HostRange]
) -> dict[str, dict[str, float]]:
    """Device seconds by phase, then by kernel name: each kernel ``(start, end, name)``
    charged whole to the innermost phase range on the device's timeline containing its
    midpoint (``"(between phases)"`` where none does). Sorted, largest first."""
    kernels = sorted(kernels)
    middles = [(a + b) / 2 for a, b, _ in kernels]
    charged: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (a, b, name), phase in zip(kernels, innermost(phases, middles), strict=True):
        charged[phase or "(between phases)"][name] += (b - a) * 1e-6
    totals = sorted(charged, key=lambda p: -sum(charged[p].values()))
    return {p: dict(charged[p].most_common()) for p in totals}


def busy_from_profiler(events: Iterable, phase_names: Iterable[str]) -> dict:
    """``charge_busy`` from ``prof.events()``: the device's kernels and copies against the
    phase ranges the profiler puts on the device's timeline (each spans its kernels)."""
    wanted = set(phase_names)
    kernels, phases = [], []
    for event in events:
        if getattr(event.device_type, "name", "") != "CUDA":
            continue
        span = (event.time_range.start, event.time_range.end)
        if event.name in wanted:
            phases.append((*span, event.name))
        elif not getattr(event, "is_user_annotation", False):
            kernels.append((*span, event.name))
    return charge_busy(kernels, phases)


def busy_table(charged: dict[str, dict[str, float]], kernels: int = 6, width: int = 70) -> str:
    """Device seconds per phase and its ``kernels`` largest kernels, as lines of text."""
    lines = ["device seconds by phase, and their largest kernels:"]
    for phase, by_kernel in charged.items():
        lines.append(f"  {sum(by_kernel.values()):8.3f}  {phase}")
        for name, seconds in list(by_kernel.items())[:kernels]:
            lines.append(f"      {seconds:8.3f}  {name[:width]}")
    return "\n".join(lines) + "\n"


def table(result: dict, rows: int = 25) -> str:
    """The result as lines of text: totals, then the two charges, largest first."""
    lines = [
        f"span {result['span_seconds']:.2f} s: device busy {result['busy_seconds']:.2f} s, "
        f"idle {result['idle_seconds']:.2f} s",
        "idle seconds by phase:",
    ]
    lines += [f"  {v:8.3f}  {k}" for k, v in list(result["idle_by_phase"].items())[:rows]]
    lines.append("idle seconds by the host's innermost range:")
    lines += [f"  {v:8.3f}  {k}" for k, v in list(result["idle_by_host"].items())[:rows]]
    return "\n".join(lines) + "\n"


__all__ = [
    "busy_from_profiler",
    "busy_intervals",
    "busy_table",
    "charge_busy",
    "charge_idle",
    "from_profiler",
    "idle_gaps",
    "innermost",
    "table",
]
