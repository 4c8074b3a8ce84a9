"""The fine pass's two M-step kernels at one fine group's sizes, over launch shapes.

    python3 bench/fine_kernel_configs.py [--out FILE] [--quick]
        [--shape B T CHILDREN ROWS K KB] [--carried SHARE]

``unshifted._unshifted`` (the noise sums ``sum_t conj(S) sum_j W P``) and
``carried_rows._carried`` (the carried children's data ``Y sum_t W S`` and weights,
added by atomics: the second owners' launch) at the shape of
``pair_sums_bench.py``'s synthetic group: ``b`` = 37 particles, ``t`` = 72 fine
translations, 120 children each (a quarter carried), 736 held rows of ``k`` =
238,869 coefficients, a back-projection window of ``kb`` = 451,584; or ``--shape``
(a real group's, from ``tutorial_bench.py --record_fine_calls``). Each kernel is
launched with every combination of its block sizes, ``num_warps`` and ``num_stages``
listed below; each launch's sums are compared with the first one's (the committed
launch; session 32's sweep had the launch before it first: 32-coefficient blocks,
Triton's default 4 warps and 3 stages), and its time (``launch_sweep.sweep``: the launch
alone, the tables zeroed before it untimed; session 32's sweep timed the zeroing too)
with the bytes it must move at the device's copy rate: the floor. Prints a table per
kernel and writes both as JSON. Needs a GPU and Triton.
"""

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pair_sums_bench
import torch
import triton
from floor_rates import copy_rates  # bench/ is on sys.path
from launch_sweep import sweep

from cryorefine.likelihood import carried_rows, unshifted


class Shape(NamedTuple):
    """A fine group's sizes: particles, fine translations, children per particle, held rows,
    fine and back-projection windows' complex coefficients (default: ``pair_sums_bench``'s
    synthetic group)."""

    b: int = pair_sums_bench.B
    t: int = pair_sums_bench.COARSE_T * pair_sums_bench.G
    children: int = pair_sums_bench.PAIRS * pair_sums_bench.F
    rows: int = pair_sums_bench.BLOCKS * pair_sums_bench.F
    k: int = pair_sums_bench.K
    kb: int = pair_sums_bench.KB


# the committed launch first (a32ff53), then the others; --quick: fewer
UNSHIFTED = {"BC": (64, 32, 128), "BJ": (16, 32, 64), "num_warps": (4, 8), "num_stages": (1, 2, 3)}
CARRIED = {"BC": (32, 64, 128), "BM": (16, 32), "num_warps": (4, 8), "num_stages": (1, 2, 3)}
QUICK = {"BJ": (16, 32), "BM": (16,), "num_warps": (4, 8), "num_stages": (1, 3)}


def _gen(device: torch.device) -> Callable[..., torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(31)
    return lambda *shape: torch.rand(shape, generator=gen, device=device)


def unshifted_case(device: torch.device, shape: Shape, carried: float) -> dict:
    """``W (b, t, r)``, the table of projections as real pairs, each particle's rows and
    phases ``(b, t, 2k)``, and the output (``carried`` unused: every child is summed)."""
    b, t, c, n, k, _ = shape
    rand = _gen(device)
    rows = torch.sort(torch.argsort(rand(b, n), dim=1)[:, :c], dim=1).values
    return {
        "shape": shape,
        "w": rand(b, t, c) * (rand(b, t, c) < 0.3),
        "table": rand(n, 2 * k) - 0.5,
        "rows": rows.contiguous(),
        "s": rand(b, t, 2 * k) - 0.5,
        "out": torch.zeros(b, 2 * k, device=device),
        "bytes": 4.0 * (b * c * 2 * k + b * t * 2 * k + b * 2 * k),
    }


def launch_unshifted(case: dict, bc: int, bj: int, num_warps: int, num_stages: int) -> None:
    w, table, rows, s, out = (case[key] for key in ("w", "table", "rows", "s", "out"))
    b, t, c, _, k, _ = case["shape"]
    unshifted._unshifted[(triton.cdiv(k, bc), b)](
        w, table, rows, s, out, t, c, k, w.stride(0), w.stride(1), rows.stride(0),
        table.stride(0), s.stride(0), s.stride(1), out.stride(0),
        BT=max(16, triton.next_power_of_2(t)), BJ=bj, BC=bc, IEEE=False,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def carried_case(device: torch.device, shape: Shape, carried: float) -> dict:
    """Each child carried with probability ``carried`` (one per particle at least), each on
    a row of the tables shared with another particle's (the atomics' launch); ``Y``, ``V``
    and phases ``(b, t, 2kb)``."""
    b, t, c, _, _, kb = shape
    rand = _gen(device)
    is_carried = rand(b, c) < carried
    is_carried[:, 0] = True
    counts = is_carried.sum(dim=1).to(torch.int32)
    picks = torch.sort((~is_carried).to(torch.int8), dim=1, stable=True).indices
    picks = picks[:, : int(counts.max())].contiguous()
    n = max(1, b * c // 2)
    return {
        "shape": shape,
        "w": rand(b, t, c) * (rand(b, t, c) < 0.3),
        "table_rows": (rand(b, c) * n).long(),
        "child_w": rand(b, c) * is_carried,
        "picks": picks,
        "counts": counts,
        "y": rand(b, 2 * kb) - 0.5,
        "v": rand(b, kb),
        "s": rand(b, t, 2 * kb) - 0.5,
        "data": torch.zeros(n + 1, 2 * kb, device=device),
        "weight": torch.zeros(n + 1, kb, device=device),
        "out": None,
        "bytes": 4.0 * (b * t * 2 * kb + int(counts.sum()) * 3 * kb * 2),
    }


def launch_carried(case: dict, bc: int, bm: int, num_warps: int, num_stages: int) -> None:
    c = case
    b, t, _, _, _, kb = c["shape"]
    carried_rows._carried[(triton.cdiv(kb, bc), b)](
        c["w"], c["table_rows"], c["child_w"], c["picks"], c["counts"], c["y"], c["v"], c["s"],
        c["data"], c["weight"], t, kb, c["w"].stride(0), c["w"].stride(1),
        c["table_rows"].stride(0), c["picks"].stride(0), c["y"].stride(0), c["v"].stride(0),
        c["s"].stride(0), c["s"].stride(1), c["data"].stride(0), c["weight"].stride(0),
        BM=bm, BT=max(16, triton.next_power_of_2(t)), BC=bc, IEEE=False, STORE=False,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def _reset(case: dict) -> None:
    """The carried launch adds into zeroed tables: zeroed before each launch, not timed."""
    if case["out"] is None:
        case["data"].zero_()
        case["weight"].zero_()


def table(name: str, case: dict, rows: list[dict], copy: float) -> str:
    """The launches by time: milliseconds, ratio to the floor, difference from the first."""
    floor_ms = case["bytes"] / copy * 1e3
    lines = [f"{name}: floor {floor_ms:.2f} ms ({case['bytes'] / 1e9:.1f} GB)"]
    for row in sorted(rows, key=lambda r: r.get("ms", float("inf"))):
        shape = " ".join(f"{key}={value}" for key, value in row.items() if key.isupper()
                         or key.startswith("num_"))  # fmt: skip
        if "error" in row:
            lines.append(f"  {shape:48s} {row['error']}")
        else:
            lines.append(f"  {shape:48s} {row['ms']:8.2f} ms {row['ms'] / floor_ms:6.1f}x"
                         f" floor, rel diff {row['rel_diff']:.1e}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer launch shapes")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=6,
        default=list(Shape()),
        metavar=("B", "T", "CHILDREN", "ROWS", "K", "KB"),
        help="the group's sizes (default: pair_sums_bench.py's group)",
    )
    parser.add_argument(
        "--carried", type=float, default=0.25, help="share of the children that carry weight"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_fine_kernel_configs.json"))
    args = parser.parse_args()
    device = torch.device("cuda")
    copy = max(copy_rates(device, 3).values())
    shape = Shape(*args.shape)
    sys.stdout.write(f"{torch.cuda.get_device_name()}: copy {copy / 1e9:.0f} GB/s; {shape}, "
                     f"{args.carried:.0%} carried\n")  # fmt: skip
    results = {}
    for name, make, launch, grid in (
        ("unshifted", unshifted_case, launch_unshifted, UNSHIFTED),
        ("carried", carried_case, launch_carried, CARRIED),
    ):
        if args.quick:
            grid = {key: QUICK.get(key, values[:2]) for key, values in grid.items()}
        case = make(device, shape, args.carried)
        result = case["out"] if case["out"] is not None else case["data"]
        results[name] = sweep(grid, functools.partial(launch, case), lambda r=result: r,
                              args.repeats, functools.partial(_reset, case))  # fmt: skip
        for row in results[name]:
            row["floor_ms"] = case["bytes"] / copy * 1e3
        sys.stdout.write(table(name, case, results[name], copy))
        del case
        torch.cuda.empty_cache()
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "copy": copy,
                                    "shape": shape._asdict(), "carried": args.carried,
                                    "kernels": results}))  # fmt: skip


if __name__ == "__main__":
    main()
