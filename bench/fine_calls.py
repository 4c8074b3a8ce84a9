"""The fine pass call by call in a real run: each fine group's shape and time.

``FineCalls`` (a context manager) wraps ``likelihood.fine``'s ``sum_pairs`` (the M-step
sums), ``score_pairs`` (the children's scores) and ``window_phases`` while a refine runs
in this process (``tutorial_bench.py --record_fine_calls``). For every sums call it
records the group's sizes (particles ``b``,
fine translations ``t``, carried pairs ``q``, children per pair ``f``, carried children,
held rows, fine window ``k``, back-projection window ``kb``) and its device time, the
device synchronised before and after (which removes the call's overlap with the host's
next work: a recorder, not a timer of the whole run); for every scores call the sizes
and time. ``table`` sums the sums' calls by bins of ``t`` and ``b`` and lists the shapes
that cost most: where a synthetic group (``pair_sums_bench.py``, ``fine_kernel_configs.py
--shape``) stands among the real ones; ``scores_table`` sums the scores' calls by ``t``.

    python3 bench/fine_calls.py RUN.json [--shape_args]

prints the table of a ``tutorial_bench.py --record_fine_calls`` run's JSON, or with
``--shape_args`` the costliest shape as ``fine_kernel_configs.py``'s ``--shape ...
--carried ...`` arguments.
"""

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cryorefine.likelihood import fine

# 112: 14 coarse translations of 8 fine ones, beyond which sum_pairs and score_pairs leave
# the kernels (pairs.MAX_TRANSLATIONS_PER_PRODUCT); 128: the kernels' tile (MAX_TILE_ROWS)
T_BINS = (8, 16, 32, 64, 112, 128, 1 << 30)
B_BINS = (4, 8, 16, 32, 64, 1 << 30)


def _synchronized_ms(call: Callable[[], Any]) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) * 1e3


def _by_shape(calls: list[dict]) -> dict[tuple, list[dict]]:
    """The calls grouped by ``(b, t, q)``."""
    groups: dict[tuple, list[dict]] = collections.defaultdict(list)
    for call in calls:
        groups[(call["b"], call["t"], call["q"])].append(call)
    return groups


def _binned(calls: list[dict], key: str, bins: tuple[int, ...]) -> list[tuple[str, list[dict]]]:
    """``(label, calls)`` for each bin ``low < call[key] <= high`` that holds a call."""
    out, low = [], 0
    for high in bins:
        inside = [c for c in calls if low < c[key] <= high]
        if inside:
            out.append((f"{low + 1}-{high}" if high < 1 << 30 else f">{low}", inside))
        low = high
    return out


class FineCalls:
    """Records ``fine.sum_pairs``, ``fine.score_pairs`` and ``fine.window_phases`` calls
    while entered."""

    def __init__(self) -> None:
        self.sums: list[dict] = []
        self.scores: list[dict] = []
        self.phases: list[dict] = []
        self._saved: tuple[Callable, Callable, Callable] | None = None

    def __enter__(self) -> "FineCalls":
        self._saved = (fine.sum_pairs, fine.score_pairs, fine.window_phases)
        sum_pairs, score_pairs, window_phases = self._saved

        def recorded_sums(particles, projector, rows, lists, weights, *rest, **options):
            out, ms = _synchronized_ms(
                lambda: sum_pairs(particles, projector, rows, lists, weights, *rest, **options)
            )
            b, _, _, f = weights.shape
            carried = (weights.sum(dim=2) > 0) & lists.valid[:, :, None]
            # the widest list of pairs that carry weight (sum_pairs drops the others)
            q = max(1, int(carried.any(dim=2).sum(dim=1).max()))
            values = projector.projector.values
            self.sums.append({
                "b": b, "t": int(particles[2].shape[-2]), "q": q, "f": f,
                "carried_children": int(carried.sum()),
                "held_rows": -1 if values is None else int(values.shape[0]),
                "k": int(particles[0].shape[-1]), "kb": int(rest[1][0].shape[-1]), "ms": ms,
                "powers_held": projector.projector.powers is not None,
                "max_bytes": int(options.get("max_bytes", -1)),
            })  # fmt: skip
            return out

        def recorded_scores(terms, projector, rows, *rest, **options):
            out, ms = _synchronized_ms(
                lambda: score_pairs(terms, projector, rows, *rest, **options)
            )
            b, t, _ = terms.shifted.shape
            self.scores.append({"b": b, "t": int(t), "q": int(rows.shape[1]),
                                "f": projector.block, "ms": ms})  # fmt: skip
            return out

        def recorded_phases(*args, **options):
            out, ms = _synchronized_ms(lambda: window_phases(*args, **options))
            self.phases.append({"shape": list(out.shape), "ms": ms})
            return out

        fine.sum_pairs, fine.score_pairs = recorded_sums, recorded_scores
        fine.window_phases = recorded_phases
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        fine.sum_pairs, fine.score_pairs, fine.window_phases = self._saved

    def as_dict(self) -> dict:
        return {"sum_pairs": self.sums, "score_pairs": self.scores, "window_phases": self.phases}

    def costliest_shape(self) -> dict:
        """The shape ``(b, t, q)`` with the most device time: its mean sizes, and the share
        of its children (``b q f``) that carry weight."""
        calls = max(_by_shape(self.sums).values(), key=lambda group: sum(c["ms"] for c in group))
        keys = ("b", "t", "q", "f", "held_rows", "k", "kb", "carried_children")
        mean = {key: round(sum(c[key] for c in calls) / len(calls)) for key in keys}
        mean["carried"] = mean["carried_children"] / max(1, mean["b"] * mean["q"] * mean["f"])
        return mean

    def scores_table(self) -> str:
        """The scores' calls by bins of ``t``: calls, seconds, mean milliseconds."""
        lines = [f"fine scores: {len(self.scores)} score_pairs calls, "
                 f"{sum(c['ms'] for c in self.scores) / 1e3:.2f} s",
                 f"{'t':>10} {'calls':>6} {'s':>8} {'mean ms':>8}"]  # fmt: skip
        for label, calls in _binned(self.scores, "t", T_BINS):
            total = sum(c["ms"] for c in calls)
            lines.append(f"{label:>10} {len(calls):6d} {total / 1e3:8.2f} "
                         f"{total / len(calls):8.2f}")  # fmt: skip
        return "\n".join(lines) + "\n"

    def table(self, top: int = 12) -> str:
        """Calls, total and mean milliseconds by bins of ``t`` and of ``b``, and the ``top``
        shapes ``(b, t, q)`` by total time."""
        sums_s = sum(c["ms"] for c in self.sums) / 1e3
        phases_s = sum(c["ms"] for c in self.phases) / 1e3
        lines = [f"fine sums: {len(self.sums)} sum_pairs calls, {sums_s:.2f} s; "
                 f"{len(self.phases)} window_phases calls, {phases_s:.2f} s"]  # fmt: skip
        for key, bins in (("t", T_BINS), ("b", B_BINS)):
            lines.append(f"{key:>10} {'calls':>6} {'s':>8} {'mean ms':>8} {'mean carried':>12}")
            for label, calls in _binned(self.sums, key, bins):
                total = sum(c["ms"] for c in calls)
                carried = sum(c["carried_children"] for c in calls) / len(calls)
                lines.append(f"{label:>10} {len(calls):6d} {total / 1e3:8.2f} "
                             f"{total / len(calls):8.2f} {carried:12.1f}")  # fmt: skip
        lines.append(f"{'b':>4} {'t':>4} {'q':>4} {'calls':>6} {'s':>8} {'mean ms':>8} "
                     f"{'carried':>8} {'held rows':>9} {'k':>7} {'kb':>7}")  # fmt: skip
        groups = _by_shape(self.sums)
        ranked = sorted(groups.items(), key=lambda item: -sum(c["ms"] for c in item[1]))
        for (b, t, q), calls in ranked[:top]:
            total = sum(c["ms"] for c in calls)
            mean = {key: sum(c[key] for c in calls) / len(calls)
                    for key in ("carried_children", "held_rows", "k", "kb")}  # fmt: skip
            lines.append(
                f"{b:4d} {t:4d} {q:4d} {len(calls):6d} {total / 1e3:8.2f} "
                f"{total / len(calls):8.2f} {mean['carried_children']:8.1f} "
                f"{mean['held_rows']:9.0f} {mean['k']:7.0f} {mean['kb']:7.0f}"
            )
        return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="a recorded run's fine sums, tabled")
    parser.add_argument("run", type=Path, help="tutorial_bench.py --record_fine_calls's JSON")
    parser.add_argument(
        "--shape_args", action="store_true", help="the costliest shape, as --shape ... --carried"
    )
    args = parser.parse_args()
    recorded = json.loads(args.run.read_text())["fine_calls"]
    calls = FineCalls()
    calls.sums, calls.phases = recorded["sum_pairs"], recorded["window_phases"]
    calls.scores = recorded.get("score_pairs", [])
    if not args.shape_args:
        sys.stdout.write(calls.table() + calls.scores_table())
        return
    shape = calls.costliest_shape()
    children = shape["q"] * shape["f"]
    sizes = (shape["b"], shape["t"], children, shape["held_rows"], shape["k"], shape["kb"])
    sys.stdout.write(f"--shape {' '.join(map(str, sizes))} --carried {shape['carried']:.3f}\n")


if __name__ == "__main__":
    main()
