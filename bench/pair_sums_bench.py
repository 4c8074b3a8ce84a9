"""``sum_pairs`` (the fine pass's M-step sums) at a fine group of the tutorial's final iteration.

    python3 bench/pair_sums_bench.py [--device cuda] [--fractions 0.125 0.25 0.5 1]
        [--repeats 5] [--particle_phases] [--group B PAIRS COARSE_T BLOCKS] [--held_powers]
        [--out FILE]
    python3 bench/pair_sums_bench.py --compare OLD.json NEW.json

One fine group of the tutorial job's final iteration (box 96, 3D): ``b`` = 37
particles, 15 carried pairs each of ``g`` = 8 translations by ``f`` = 8 children,
92 block rows (736 fine rows) of projections held on the fine window (``k`` =
238,869), 9 coarse translations (72 fine), a back-projection window of ``kb`` =
451,584; ``--group`` sets ``b``, the pairs, the coarse translations and the block rows
(a real group's, from ``fine_calls.py``: the final iteration's median group is 21
particles, 13 pairs, 3 coarse translations, 245 block rows, ``kb`` 242,499). The second
significance cut leaves only some children of a carried pair
with weight: ``--fractions`` sets the share of children that carry weight (each
child with that probability, one per pair at least). The inputs come from a seeded
generator on the device (the phases one table for all particles, or each particle's
own with ``--particle_phases``, as the fine pass has them), so that two builds (run
with ``PYTHONPATH`` at each) time the same sums; ``--compare`` prints their ratio
and how far their sums differ.

Floor per case: the products of the children that carry weight (``2 x tg x 2kb``
flops each, at the tf32 rate) or the bytes that must move (the shifted data read,
``b x tg x 2kb`` reals, and the table of carried rows written, ``rows x 3kb``), the
larger. Prints a table and writes it as JSON.
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from floor_rates import copy_rates, matmul_rate  # bench/ is on sys.path

from cryorefine.likelihood.pair_sums import sum_pairs
from cryorefine.likelihood.pairs import BlockProjector, PairLists
from cryorefine.likelihood.passes import RowProjector

B, PAIRS, G, F, BLOCKS, COARSE_T = 37, 15, 8, 8, 92, 9
K, KB, SHELLS = 238_869, 451_584, 49


class Group(NamedTuple):
    """A fine group's particles, carried pairs per particle, coarse translations and held
    block rows (default: the synthetic group above)."""

    b: int = B
    pairs: int = PAIRS
    coarse_t: int = COARSE_T
    blocks: int = BLOCKS


SYNTHETIC = Group()


def inputs(
    device: torch.device,
    fraction: float,
    k: int,
    kb: int,
    particle_phases: bool = False,
    group: Group = SYNTHETIC,
    held_powers: bool = False,
) -> dict:
    """The sums' arguments, from a generator seeded by ``fraction`` (the same in any build);
    the phases per particle ``(b, tg, k)`` where ``particle_phases`` (as the fine pass
    passes them), else one table ``(tg, k)`` for all; the projections' squares held with
    them where ``held_powers`` (as the fine pass's groups hold them)."""
    gen = torch.Generator(device=device).manual_seed(int(fraction * 1000))
    b, pairs, coarse_t, blocks = group
    tg = coarse_t * G

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=gen, device=device)

    def crand(*shape: int) -> torch.Tensor:
        return torch.complex(rand(*shape) - 0.5, rand(*shape) - 0.5)

    values = crand(blocks * F, k)
    squares = torch.view_as_real(values).square().sum(dim=-1) if held_powers else None
    projector = BlockProjector(RowProjector(values, None, None, 2, values, squares), F)  # type: ignore[arg-type]
    # each particle's pairs: distinct block rows, ascending; one coarse translation each
    rows = torch.sort(torch.argsort(rand(b, blocks), dim=1)[:, :pairs], dim=1).values
    translations = (rand(b, pairs) * coarse_t).long()
    lists = PairLists(torch.arange(pairs, device=device).expand(b, -1), translations,
                      torch.ones(b, pairs, dtype=torch.bool, device=device))  # fmt: skip
    carried = rand(b, pairs, 1, F) < fraction
    carried[..., 0] |= ~carried.any(dim=-1)  # one child per pair at least
    weights = rand(b, pairs, G, F) * (rand(b, pairs, G, F) < 0.3) * carried
    weights[..., 0, :] += 1e-3 * carried[..., 0, :]  # a carried child has weight
    lead = (b,) if particle_phases else ()
    shells = torch.nn.functional.one_hot((rand(k) * SHELLS).long(), SHELLS).float()
    return {
        "particles": (crand(b, k), rand(b, k), crand(*lead, tg, k)),
        "projector": projector,
        "rows": rows,
        "lists": lists,
        "weights": weights,
        "shells": shells,
        "backprojection": (crand(b, kb), rand(b, kb), crand(*lead, tg, kb)),
        "carried_children": int(carried.sum()),
        "tg": tg,
        "b": b,
    }


def measure(device: torch.device, fraction: float, repeats: int, args: argparse.Namespace) -> dict:
    """Median seconds of ``sum_pairs`` at one share of carried children, and its sums' digest."""
    group = Group(*args.group)
    case = inputs(device, fraction, args.k, args.kb, args.particle_phases, group, args.held_powers)
    names = ("particles", "projector", "rows", "lists", "weights", "shells", "backprojection")
    call = {key: case[key] for key in names}

    def run() -> object:
        return sum_pairs(**call, precision=args.precision, max_bytes=args.max_bytes)

    out = run()  # compiles and warms
    if args.profile:
        profile(run, fraction, args.profile)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    probe = torch.randn(out.data.shape[1], generator=torch.Generator().manual_seed(5))
    probe = probe.to(device=device, dtype=out.data.dtype)
    return {
        "fraction": fraction,
        "seconds": statistics.median(seconds),
        "kept_rows": int(out.rows.shape[0]),
        "carried_children": case["carried_children"],
        "tg": case["tg"],
        "b": case["b"],
        "rows": out.rows.tolist(),
        "data_digest": torch.view_as_real(out.data @ probe).abs().sum(dim=-1).tolist(),
        "weight_digest": (out.weight @ probe.real).tolist(),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
    }


def profile(run: Callable[[], object], fraction: float, top: int) -> None:
    """Print the ``top`` kernels by device time over one call of ``run`` (``--profile``)."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=top, max_name_column_width=60
    )
    sys.stdout.write(f"fraction {fraction}: kernels by device time\n{table}\n")


def floor_seconds(row: dict, rates: dict, kb: int) -> float:
    """The larger of the carried children's products at the tf32 rate and the bytes moved."""
    flops = 2.0 * row["carried_children"] * row["tg"] * 2 * kb
    nbytes = 4.0 * (row["b"] * row["tg"] * 2 * kb + row["kept_rows"] * 3 * kb)
    return max(flops / rates["tf32_flops"], nbytes / rates["copy"])


def compare(old_path: Path, new_path: Path) -> None:
    """Ratio old / new per share, and the largest relative difference of their digests."""
    old, new = (json.loads(Path(p).read_text()) for p in (old_path, new_path))
    lines = [f"{'fraction':>8} {'old ms':>9} {'new ms':>9} {'old/new':>8} {'rows equal':>10} "
             f"{'data rel diff':>13} {'weight rel diff':>15}"]  # fmt: skip
    for a, b in zip(old["cases"], new["cases"], strict=True):
        same_rows = a["rows"] == b["rows"]
        diffs = []
        for key in ("data_digest", "weight_digest"):
            x, y = torch.tensor(a[key]), torch.tensor(b[key])
            diffs.append(float((x - y).abs().max() / y.abs().max()) if same_rows else float("nan"))
        lines.append(
            f"{a['fraction']:8.3f} {a['seconds'] * 1e3:9.2f} {b['seconds'] * 1e3:9.2f} "
            f"{a['seconds'] / b['seconds']:8.2f} {same_rows!s:>10} {diffs[0]:13.2e} "
            f"{diffs[1]:15.2e}"
        )
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="tf32", choices=["float32", "tf32"])
    parser.add_argument("--max_bytes", type=int, default=12 * 2**30)
    parser.add_argument("--k", type=int, default=K, help="fine window (smaller for a CPU run)")
    parser.add_argument("--kb", type=int, default=KB, help="back-projection window")
    parser.add_argument("--particle_phases", action="store_true",
                        help="phases per particle, as the fine pass has them")  # fmt: skip
    parser.add_argument("--group", type=int, nargs=4, default=list(Group()),
                        metavar=("B", "PAIRS", "COARSE_T", "BLOCKS"),
                        help="the group's sizes (default: the synthetic group)")  # fmt: skip
    parser.add_argument("--held_powers", action="store_true",
                        help="the projections' squares held, as in the fine pass")  # fmt: skip
    parser.add_argument("--label", default="")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP",
                        help="the TOP kernels by device time, one call per share")  # fmt: skip
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("OLD", "NEW"))
    parser.add_argument("--out", type=Path, default=Path("bench_pair_sums.json"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    device = torch.device(args.device)
    rates = {"copy": max(copy_rates(device, 3).values())}
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        rates["tf32_flops"] = matmul_rate((1, 2048, 2048, 2048), device, 3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    cases = [measure(device, fraction, args.repeats, args) for fraction in args.fractions]
    lines = [
        f"{args.label} device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'};"
        f" tf32 {rates['tf32_flops'] / 1e12:.1f} TFLOP/s, copy {rates['copy'] / 1e9:.0f} GB/s",
        f"{'fraction':>8} {'children':>8} {'rows':>5} {'ms':>9} {'floor ms':>9} {'ratio':>6} "
        f"{'peak GiB':>8}",
    ]
    for row in cases:
        row["floor_seconds"] = floor_seconds(row, rates, args.kb)
        lines.append(
            f"{row['fraction']:8.3f} {row['carried_children']:8d} {row['kept_rows']:5d} "
            f"{row['seconds'] * 1e3:9.2f} {row['floor_seconds'] * 1e3:9.2f} "
            f"{row['seconds'] / row['floor_seconds']:6.1f} {row['peak_gib']:8.1f}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps({"label": args.label, "rates": rates, "cases": cases}))


if __name__ == "__main__":
    main()
