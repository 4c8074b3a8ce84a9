"""What writing a tutorial-sized iteration's files takes from a busy Python thread.

The E-step's host is a Python thread that sets the pace of most of the tutorial job's
iterations on a GPU; the previous iteration's files are written beside it
(``refine.file_writer``). This bench writes one iteration of the tutorial's size (the
9,442 picks of shared/data/hiv_tutorial_relion5 as data.star, RELION's model of its
refinement as the two half models with box-96 maps,
an order-6 C6 grid), first alone, then beside a thread that only counts (a stand-in for
the host: a count that takes about 3 s alone), on a thread and through the writing
process. For each it prints the seconds until both the count and the write have ended
(the write's own seconds, alone) and the count's extra seconds against a
count with no write, and the thread's extra over the process's in each round (medians of
``--repeats`` rounds, after two not kept). Writes JSON with the same.

    python3 bench/write_iteration_bench.py --out bench/results/write_iteration_cpu2.json
"""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cryorefine.geometry import asymmetric_unit_pixels
from cryorefine.geometry.symmetry import point_group
from cryorefine.io import load_particles
from cryorefine.likelihood import OrientationGrid
from cryorefine.refine.file_writer import FileWriter
from cryorefine.refine.iteration_files import particle_statistics, write_iteration
from cryorefine.refine.model import HalfSetModel, initial_refine_state
from cryorefine.refine.model_star import half_model_from_star
from cryorefine.refine.options import RefineOptions

SHARED = Path(__file__).resolve().parents[2] / "shared"
WINDOW_S = 3.0
WARM_UP = 2  # rounds not kept: the first rounds' counts scatter by up to a second


def _model(half_set: int, pdf_size: int) -> HalfSetModel:
    """RELION's model of the tutorial's refinement (box 96), a random map, a random pdf."""
    gen = torch.Generator().manual_seed(half_set)
    model, _ = half_model_from_star(
        SHARED / "data/hiv_tutorial_relion5/Refine3D/job012/run_model.star",
        half_set=half_set,
        reference=torch.randn(96, 96, 96, generator=gen),
    )
    pdf = torch.rand(pdf_size, generator=gen, dtype=torch.float64)
    return dataclasses.replace(model, orientation_pdf=pdf / pdf.sum())


def _task(folder: Path, order: int) -> tuple[tuple, dict]:
    particles = load_particles(SHARED / "data/hiv_tutorial_relion5/Picks/job019/particles.star")
    pixels = asymmetric_unit_pixels(order, point_group("C6", device=torch.device("cpu")))
    grid = OrientationGrid(order, torch.as_tensor(pixels), torch.arange(12.0) * 30)
    options = RefineOptions(reference=Path("ref.mrc"), output_root=folder / "run", sym="C6")
    state = dataclasses.replace(
        initial_refine_state(options, ori_size=96, pixel_size_angst=8.1), iteration=7
    )
    b = len(particles)
    rng = np.random.default_rng(0)
    stats = particle_statistics(
        particles, rng.integers(1, 3, b), rng.random(b), rng.integers(1, 99, b), rng.random(b)
    )
    models = (_model(1, len(pixels)), _model(2, len(pixels)))
    return (state, options, models, particles, stats, grid), {
        "optimisation_set": None,
        "unfiltered": None,
        "ndim": 3,
    }


def _count(turns: int) -> float:
    """Seconds to count to ``turns`` in Python (the busy host's stand-in)."""
    start = time.perf_counter()
    count = 0
    while count < turns:
        count += 1
    return time.perf_counter() - start


def _beside_a_counter(mode: str, args: tuple, kwargs: dict, turns: int) -> tuple[float, float]:
    """(the write's seconds, the count's seconds) for one mode, the write started with it."""
    with FileWriter(in_process=mode == "process") as writer:
        writer.submit(time.sleep, 0.0)  # a process started and ready; a thread made
        writer.wait()
        if mode != "none":
            writer.submit(write_iteration, *args, **kwargs)
        start = time.perf_counter()
        writer.start()
        counted = _count(turns)
        writer.wait()
        return time.perf_counter() - start, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order", type=int, default=6, help="HEALPix order of the grid")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        task_args, task_kwargs = _task(Path(folder), args.order)
        write_iteration(*task_args, **task_kwargs)  # imports and caches warmed
        alone = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            write_iteration(*task_args, **task_kwargs)
            alone.append(time.perf_counter() - start)
        turns = int(WINDOW_S / _count(10**6) * 10**6)
        runs = {mode: [] for mode in ("none", "thread", "process")}
        for repeat in range(args.repeats + WARM_UP):
            for mode in runs:
                run = _beside_a_counter(mode, task_args, task_kwargs, turns)
                if repeat >= WARM_UP:
                    runs[mode].append(run)
    free = statistics.median(counted for _, counted in runs["none"])
    rows = [{"mode": "alone", "write_s": statistics.median(alone), "counter_lost_s": 0.0}]
    for mode in ("thread", "process"):
        lost = [counted - free for _, counted in runs[mode]]
        rows.append(
            {
                "mode": mode,
                "write_s": statistics.median(s for s, _ in runs[mode]),
                "counter_lost_s": statistics.median(lost),
                "counter_lost_s_each": lost,
            }
        )
    paired = [t - p for (_, t), (_, p) in zip(runs["thread"], runs["process"], strict=True)]
    rows.append(
        {
            "mode": "thread - process",
            "write_s": float("nan"),
            "counter_lost_s": statistics.median(paired),
            "counter_lost_s_each": paired,
        }
    )
    lines = [
        f"count alone {free:.2f} s (median); the write started with it",
        f"{'mode':8} | until both end s | the count's extra s (median of {args.repeats})",
    ]
    lines += [f"{r['mode']:8} | {r['write_s']:16.3f} | {r['counter_lost_s']:.3f}" for r in rows]
    print("\n".join(lines))  # noqa: T201
    if args.out is not None:
        args.out.write_text(json.dumps({"order": args.order, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
