"""End-to-end refinement of simulated data, judged against the truth, with timings.

    python3 bench/refine_bench.py --format spa --sym C6 --n_particles 200 --box 32 \\
        --angpix 5.4 --snr 10 [--gpu] [--out bench_refine.json]

Simulates a data set (``cryorefine simulate``), refines it with the tutorial's
options scaled down (``cryorefine refine``), reconstructs the same particles
with their true poses (``cryorefine reconstruct``), and prints one table row:
resolution against the truth (refined and true poses), the printed
gold-standard resolution, median angular and origin errors, iterations,
seconds per iteration and in total, particles per second, peak GPU memory.
The same row is written as JSON.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryorefine.cli.main import main as cryorefine
from cryorefine.io import read_mrc, read_star
from cryorefine.simulate.evaluate import compare_map_to_truth, compare_to_truth


def run(arguments: list[str]) -> float:
    start = time.perf_counter()
    status = cryorefine(arguments)
    if status != 0:
        raise SystemExit(f"cryorefine {arguments[0]} failed with status {status}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="spa", choices=("spa", "subtomo3d", "relion4"))
    parser.add_argument("--sym", default="C6")
    parser.add_argument("--n_particles", type=int, default=200)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--angpix", type=float, default=5.4)
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--diameter", type=float, default=150.0)
    parser.add_argument("--healpix_order", type=int, default=1)
    parser.add_argument("--local_order", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--work", default="bench_refine_work")
    parser.add_argument("--out", default="bench_refine.json")
    args = parser.parse_args()
    work = Path(args.work)
    gpu = ["--gpu"] if args.gpu else []
    sim = work / "sim"
    simulate_seconds = run(
        [
            "simulate",
            "--o",
            str(sim),
            "--format",
            args.format,
            "--sym",
            args.sym,
            "--n_particles",
            str(args.n_particles),
            "--box",
            str(args.box),
            "--angpix",
            str(args.angpix),
            "--snr",
            str(args.snr),
            "--seed",
            str(args.seed),
            *gpu,
        ]
    )
    inputs = (
        ["--ios", str(sim / "optimisation_set.star")]
        if args.format == "relion4"
        else ["--i", str(sim / "particles.star"), "--ref", str(sim / "reference.mrc")]
    )
    if args.format == "relion4":
        inputs += ["--ref", str(sim / "reference.mrc")]
    if args.gpu:
        torch.cuda.reset_peak_memory_stats()
    refine_seconds = run(
        [
            "refine",
            *inputs,
            "--o",
            str(work / "Refine" / "run"),
            "--ini_high",
            "40",
            "--ctf",
            "--particle_diameter",
            str(args.diameter),
            "--healpix_order",
            str(args.healpix_order),
            "--auto_local_healpix_order",
            str(args.local_order),
            "--offset_range",
            "3",
            "--offset_step",
            "1",
            "--sym",
            args.sym,
            "--zero_mask",
            "--flatten_solvent",
            "--low_resol_join_halves",
            "40",
            "--auto_ignore_angles",
            "--auto_resol_angles",
            *gpu,
        ]
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.gpu else 0.0
    result = compare_to_truth(
        work / "Refine" / "run_data.star",
        work / "Refine" / "run_class001.mrc",
        sim,
        symmetry=args.sym,
    )
    run(
        [
            "reconstruct",
            "--i",
            str(sim / "truth_particles.star"),
            "--o",
            str(work / "true_poses.mrc"),
            "--ctf",
            "--sym",
            args.sym,
            *gpu,
        ]
    )
    true_map, _ = read_mrc(work / "true_poses.mrc")
    truth, pixel = read_mrc(sim / "truth.mrc")
    _, true_resolution, _ = compare_map_to_truth(
        torch.as_tensor(np.asarray(true_map)),
        torch.as_tensor(np.asarray(truth)),
        torch.eye(3, dtype=torch.float64),
        pixel_size_angst=float(pixel),
    )
    printed = float(
        read_star(work / "Refine" / "run_model.star")["model_general"]["rlnCurrentResolution"]
    )
    log = (work / "Refine" / "run.log").read_text()
    iterations = [float(s) for s in re.findall(r"iter=\d+ resolution.* seconds=([\d.]+)", log)]
    device = torch.cuda.get_device_name() if args.gpu else "CPU"
    row = {
        "device": device,
        "format": args.format,
        "sym": args.sym,
        "particles": args.n_particles,
        "box": args.box,
        "snr": args.snr,
        "resolution_vs_truth_angst": result.resolution_0143_angst,
        "true_poses_resolution_angst": true_resolution,
        "printed_resolution_angst": printed,
        "median_angular_error_deg": result.median_angular_error_deg,
        "median_origin_error_angst": result.median_origin_error_angst,
        "iterations": len(iterations),
        "seconds_per_iteration": float(np.mean(iterations)),
        "refine_seconds": refine_seconds,
        "simulate_seconds": simulate_seconds,
        "particles_per_second": args.n_particles * len(iterations) / sum(iterations),
        "peak_gpu_memory_gib": peak,
    }
    columns = [
        "device",
        "format",
        "sym",
        "particles",
        "box",
        "resolution_vs_truth_angst",
        "true_poses_resolution_angst",
        "printed_resolution_angst",
        "median_angular_error_deg",
        "median_origin_error_angst",
        "iterations",
        "seconds_per_iteration",
        "refine_seconds",
        "particles_per_second",
        "peak_gpu_memory_gib",
    ]
    cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
    sys.stdout.write(" | ".join(columns) + "\n" + " | ".join(cells) + "\n")
    Path(args.out).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
