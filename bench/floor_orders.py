"""A floor table summed per HEALPix order: where the job's time goes against its floor.

    python3 bench/floor_orders.py FLOOR.json [--out FILE]

Reads the rows a ``floor_table.py --out`` (or ``tutorial_bench.py``'s ``floor``
entry) wrote and sums, over the iterations and half sets of each HEALPix order,
the measured and floor seconds of every phase. Prints measured / floor per
phase and order, and the E-step's ratio twice: as ``floor_table`` counts it,
and without the insert on either side. The insert's floor assumes the
back-projector's accumulators are read and written in device memory; where
they sit in the L2 cache (at box 96 the packed float32 accumulator's voxels
within the insert's radius take 30 MB, and the H100's L2 holds 50 MB) the
splat runs below that figure, so that floor is not a lower bound and the
E-step's ratio with it flatters the other phases. Writes the same figures as JSON.
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

PHASES = ("load", "mask", "coarse", "fine", "insert", "e_step")
WITHOUT_INSERT = ("mask", "coarse", "fine")


def order_totals(rows: list[dict]) -> list[dict]:
    """Per HEALPix order: iterations, and per phase measured and floor seconds summed."""
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    iterations: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        order = int(row["healpix_order"])
        iterations[order].add(int(row["iteration"]))
        total = sums[order][row["phase"]]
        total[0] += float(row["measured_seconds"])
        total[1] += float(row["floor_seconds"])
    out = []
    for order in sorted(sums):
        phases = {p: {"measured_seconds": m, "floor_seconds": f, "ratio": m / f if f else None}
                  for p, (m, f) in sums[order].items()}  # fmt: skip
        measured = phases["e_step"]["measured_seconds"] - phases["insert"]["measured_seconds"]
        floor = sum(phases[p]["floor_seconds"] for p in WITHOUT_INSERT)
        out.append({
            "healpix_order": order, "iterations": sorted(iterations[order]), "phases": phases,
            "e_step_without_insert": {"measured_seconds": measured, "floor_seconds": floor,
                                      "ratio": measured / floor if floor else None},
        })  # fmt: skip
    return out


def _cell(c: dict) -> str:
    return f"{c['measured_seconds']:.3g}/{c['floor_seconds']:.3g}={c['ratio']:.3g}"


def format_orders(totals: list[dict]) -> str:
    header = "order | iterations | " + " | ".join(PHASES) + " | e_step without insert"
    lines = [header, "(each: measured s / floor s = ratio)"]
    for t in totals:
        cells = []
        for p in PHASES:
            c = t["phases"].get(p)
            cells.append("-" if c is None else _cell(c))
        cells.append(_cell(t["e_step_without_insert"]))
        its = t["iterations"]
        lines.append(f"{t['healpix_order']} | {its[0]}-{its[-1]} | " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("floor", type=Path, help="floor_table.py's JSON, or tutorial_bench's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = json.loads(args.floor.read_text())
    rows = data["floor"]["rows"] if "floor" in data else data["rows"]
    totals = order_totals(rows)
    sys.stdout.write(format_orders(totals) + "\n")
    if args.out is not None:
        args.out.write_text(json.dumps(totals, indent=1))


if __name__ == "__main__":
    main()
