"""Time per iteration of `cryorefine refine` with 1, 2, ... ranks, and the scaling.

    python3 bench/parallel_bench.py [--ranks 1,2] [--threads_per_rank 1] \\
        [--n_particles 400] [--box 32] [--iterations 4] [--gpu] [--out bench_parallel.json]

Simulates one SPA data set (``cryorefine simulate``), then refines it for a
fixed number of iterations (``--iter``) once per rank count: one process for 1
rank, ``torchrun --nproc_per_node K -m cryorefine refine`` for K ranks (gloo on
the CPU, NCCL with ``--gpu``, one GPU per rank). Each rank gets
``--threads_per_rank`` threads, so that K ranks use K times the cores of one.
Seconds per iteration are read from the writer's run.log (``iter=... seconds=``,
the first iteration left out: it holds start-up work); speed-up and parallel
efficiency are against the first rank count. Prints a table; the same rows are
written as JSON.

``--tutorial DIR`` times the tutorial-shaped job instead (``tutorial_bench.py``:
pseudo-subtomograms with the HIV tutorial's geometry, bin 6, box 96, refined
with Refine3D/job012's command line) for ``--iterations`` iterations, and adds
the resolution against the truth of each rank count's last half-1 map (it must
not depend on the ranks) and the bytes of the back-projector sums summed and
broadcast per iteration (both halves' float64 accumulators, side ``2 box``).
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cryorefine.cli.main import main as cryorefine
from cryorefine.simulate.evaluate import compare_to_truth


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _refine(ranks: int, arguments: list[str], threads: int) -> float:
    launcher = [sys.executable, "-m", "cryorefine"]
    if ranks > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(ranks),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "cryorefine",
        ]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run([*launcher, *arguments], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"refine with {ranks} ranks failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def _iteration_seconds(log: Path) -> list[float]:
    return [
        float(s) for s in re.findall(r"iter=\d+ resolution.* seconds=([\d.]+)", log.read_text())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2", help="rank counts, e.g. 1,2,4")
    parser.add_argument("--threads_per_rank", type=int, default=1)
    parser.add_argument("--n_particles", type=int, default=400)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--angpix", type=float, default=5.4)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=0, help="0: the refine default")
    parser.add_argument("--gpu", action="store_true", help="one GPU per rank (NCCL)")
    parser.add_argument("--work", default="bench_parallel_work")
    parser.add_argument("--out", default="bench_parallel.json")
    parser.add_argument("--tutorial", type=Path, default=None, help="the tutorial's folder")
    args = parser.parse_args()
    work = Path(args.work)
    sim = work / "sim"
    if args.tutorial is not None:
        tutorial_main(args, work, sim)
        return
    status = cryorefine(
        [
            "simulate",
            "--o",
            str(sim),
            "--format",
            "spa",
            "--sym",
            "C6",
            "--n_particles",
            str(args.n_particles),
            "--box",
            str(args.box),
            "--angpix",
            str(args.angpix),
            "--snr",
            "10",
            "--seed",
            "7",
        ]
    )
    if status != 0:
        raise SystemExit("simulate failed")
    rows = []
    for ranks in [int(k) for k in args.ranks.split(",")]:
        root = work / f"ranks{ranks}" / "run"
        arguments = [
            "refine",
            "--i",
            str(sim / "particles.star"),
            "--ref",
            str(sim / "reference.mrc"),
            "--o",
            str(root),
            "--ini_high",
            "40",
            "--ctf",
            "--particle_diameter",
            "150",
            "--healpix_order",
            "2",
            "--offset_range",
            "3",
            "--offset_step",
            "1",
            "--sym",
            "C6",
            "--flatten_solvent",
            "--iter",
            str(args.iterations),
            "--batch_size",
            str(args.batch_size),
            *(["--gpu"] if args.gpu else []),
        ]
        wall = _refine(ranks, arguments, args.threads_per_rank)
        seconds = _iteration_seconds(root.parent / "run.log")
        timed = seconds[1:] or seconds
        rows.append(
            {
                "device": torch.cuda.get_device_name() if args.gpu else "CPU",
                "ranks": ranks,
                "threads_per_rank": args.threads_per_rank,
                "particles": args.n_particles,
                "box": args.box,
                "iterations": len(seconds),
                "seconds_per_iteration": statistics.median(timed),
                "wall_seconds": wall,
            }
        )
    _finish(rows, args.out)


def _finish(rows: list[dict[str, object]], out: str) -> None:
    """Speed-up and efficiency against the first row; print the table, write the JSON."""
    base = rows[0]["seconds_per_iteration"] * rows[0]["ranks"]
    for row in rows:
        row["speedup"] = rows[0]["seconds_per_iteration"] / row["seconds_per_iteration"]
        row["efficiency"] = base / (row["seconds_per_iteration"] * row["ranks"])
    columns = list(rows[0])
    lines = [" | ".join(columns)]
    for row in rows:
        lines.append(
            " | ".join(
                f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns
            )
        )
    sys.stdout.write("\n".join(lines) + "\n")
    Path(out).write_text(json.dumps(rows, indent=1))


def _particle_count(sim: Path) -> int:
    """Particles of the simulated set (``--n_particles 0``: every pick)."""
    from cryorefine.io import load_particles

    return len(load_particles(sim / "particles.star", check_images=False))


def tutorial_main(args: argparse.Namespace, work: Path, sim: Path) -> None:
    """The tutorial-shaped job under 1, 2, ... ranks (module docstring)."""
    from tutorial_bench import TUTORIAL_OPTIONS, simulate  # bench/ is on sys.path

    tutorial = argparse.Namespace(
        tutorial=args.tutorial, box=96, bin=6, seed=11, snr=None, gpu=args.gpu,
        n_particles=args.n_particles,
    )  # fmt: skip
    simulate(tutorial, sim)
    p = 2 * 96
    accumulator_bytes = 2 * p * p * (p // 2 + 1) * (16 + 8)  # both halves, complex128 + float64
    rows = []
    for ranks in [int(k) for k in args.ranks.split(",")]:
        root = work / f"ranks{ranks}" / "run"
        root.parent.mkdir(parents=True, exist_ok=True)
        arguments = [
            "refine", "--ios", str(sim / "optimisation_set.star"),
            "--ref", str(sim / "reference.mrc"), "--o", str(root), *TUTORIAL_OPTIONS,
            "--iter", str(args.iterations), *(["--gpu"] if args.gpu else []),
        ]  # fmt: skip
        wall = _refine(ranks, arguments, args.threads_per_rank)
        seconds = _iteration_seconds(root.parent / "run.log")
        last = len(seconds)
        truth = compare_to_truth(
            root.parent / f"run_it{last:03d}_data.star",
            root.parent / f"run_it{last:03d}_half1_class001.mrc",
            sim,
            symmetry="C6",
        )
        rows.append(
            {
                "device": torch.cuda.get_device_name() if args.gpu else "CPU",
                "ranks": ranks,
                "particles": args.n_particles or _particle_count(sim),
                "box": 96,
                "iterations": last,
                "seconds_per_iteration": statistics.median(seconds[1:] or seconds),
                "seconds_all_iterations": sum(seconds),
                "wall_seconds": wall,
                "bytes_summed_per_iteration": accumulator_bytes if ranks > 1 else 0,
                "resolution_vs_truth_angst": truth.resolution_0143_angst,
                "median_angular_error_deg": truth.median_angular_error_deg,
            }
        )
    _finish(rows, args.out)


if __name__ == "__main__":
    main()
