"""End-to-end refinement of simulated data, judged against the truth, with timings.

    python3 bench/refine_bench.py --format spa --sym C6 --n_particles 200 --box 32 \\
        --angpix 5.4 --snr 10 [--gpu] [--out bench_refine.json]

Simulates a data set (``cryorefine simulate``), refines it with the tutorial's
options scaled down (``cryorefine refine``), reconstructs the same particles
with their true poses (``cryorefine reconstruct``), and prints one table row:
resolution against the truth (refined and true poses), the printed
gold-standard resolution, median angular and origin errors, iterations,
seconds per iteration and in total, particles per second, peak GPU memory.
The same row is written as JSON. ``--cases spa:C1 relion4:C6 subtomo3d:O ...``
runs several cases in turn and prints one table (the issue's matrix).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from blob_map import blob_map  # bench/ is on sys.path
from timed_command import run

from cryorefine.geometry import angular_step_deg
from cryorefine.io import read_mrc, read_star, write_mrc
from cryorefine.simulate.evaluate import compare_map_to_truth, compare_to_truth

CRITERIA = (
    "resolution within 10% of the true poses'; median angular error below the final "
    "HEALPix step; printed resolution within 10% of the one against the truth"
)

COLUMNS = [
    "device",
    "format",
    "sym",
    "map",
    "particles",
    "box",
    "resolution_vs_truth_angst",
    "resolution_vs_truth_05_angst",
    "true_poses_resolution_angst",
    "printed_resolution_angst",
    "median_angular_error_deg",
    "half_set_median_angular_error_deg",
    "half_set_frames_angle_deg",
    "final_healpix_step_deg",
    "final_sampling_deg",
    "median_origin_error_angst",
    "iterations",
    "seconds_per_iteration",
    "refine_seconds",
    "particles_per_second",
    "peak_gpu_memory_gib",
    "criteria_met",
]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="spa", choices=("spa", "subtomo3d", "relion4"))
    parser.add_argument("--sym", default="C6")
    parser.add_argument(
        "--cases",
        nargs="*",
        default=None,
        help="FORMAT:SYM[:MAP] to run in turn (e.g. spa:C1 relion4:C6 subtomo3d:O:blobs); "
        "overrides --format and --sym; MAP replaces --map for that case, 'blobs' for "
        "blob_map.py's O test object at this box (two blobs of 0.8 px, 48 copies under O), "
        "'cloud' for the C1 test object (16 blobs of 0.8 px, no symmetry)",
    )
    parser.add_argument("--n_particles", type=int, default=200)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--angpix", type=float, default=5.4)
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--diameter", type=float, default=150.0)
    parser.add_argument("--healpix_order", type=int, default=1)
    parser.add_argument(
        "--local_order",
        type=int,
        default=3,
        help="--auto_local_healpix_order (O uses one less, I one more, as the tutorial says)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--map",
        default=None,
        help="true map for simulate (default: the embedded hexamer; 'blobs', 'cloud': as in "
        "--cases)",
    )
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument(
        "--no_faster",
        action="store_true",
        help="leave out --auto_ignore_angles --auto_resol_angles ('finer angular sampling "
        "faster', on by default here): convergence then also waits for small pose changes",
    )
    parser.add_argument("--work", default="bench_refine_work")
    parser.add_argument("--out", default="bench_refine.json")
    return parser.parse_args()


def _stem(path: str) -> str:
    return Path(path).stem


def main() -> None:
    args = parse_arguments()
    cases = [c.split(":", 2) for c in args.cases] if args.cases else [[args.format, args.sym]]
    rows = []
    for data_format, sym, *case_map in cases:
        case = argparse.Namespace(**vars(args))
        case.format, case.sym = data_format, sym
        case.map = case_map[0] if case_map else args.map
        if sym[0].upper() == "O":  # local searches from 3.7 deg for O, 0.9 deg for I
            case.local_order = args.local_order - 1
        elif sym[0].upper() == "I":
            case.local_order = args.local_order + 1
        case.work = str(Path(args.work) / "_".join([data_format, sym, *map(_stem, case_map)]))
        rows.append(run_case(case))
        table = [" | ".join(COLUMNS)] + [
            " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS)
            for r in rows
        ]
        sys.stdout.write("\n".join(table) + "\n")
        Path(args.out).write_text(json.dumps({"criteria": CRITERIA, "rows": rows}, indent=1))


def cloud_map(path: Path, box: int, angpix: float) -> Path:
    """Write the C1 test object for this box: 16 blobs of 0.8 px at radii 3/32 to 12/32 of
    the box from its centre in random directions (seed 3): no symmetry, not even nearly
    (the embedded hexamer is C6 to an FSC of 0.89-0.95 between its copies, so a C1
    refinement of it spreads its particles over six nearly equal poses)."""
    radii = tuple(float(r) * box / 32 for r in np.linspace(3.0, 12.0, 16))
    write_mrc(path, blob_map(box, radii_px=radii, sigma_px=0.8, seed=3), voxel_size_angst=angpix)
    return path


def blobs_map(path: Path, box: int, angpix: float) -> Path:
    """Write ``blob_map.py``'s O test object for this box: two blobs of 0.8 px at 8/32 and
    11/32 of the box from its centre, whose power reaches Nyquist as the hexamer's does."""
    radii = (8.0 * box / 32, 11.0 * box / 32)
    write_mrc(path, blob_map(box, radii_px=radii, sigma_px=0.8, seed=3), voxel_size_angst=angpix)
    return path


def run_case(args: argparse.Namespace) -> dict[str, object]:
    """Simulate, refine, reconstruct with the true poses, and judge one case."""
    work = Path(args.work)
    hexamer = args.map is None
    if args.map in ("blobs", "cloud"):
        work.mkdir(parents=True, exist_ok=True)
        make = blobs_map if args.map == "blobs" else cloud_map
        args.map = str(make(work / f"{args.map}.mrc", args.box, args.angpix))
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
            *([] if args.map is None else ["--map", str(args.map)]),
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
            *([] if args.no_faster else ["--auto_ignore_angles", "--auto_resol_angles"]),
            *gpu,
        ]
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.gpu else 0.0
    result = compare_to_truth(
        work / "Refine" / "run_data.star",
        work / "Refine" / "run_class001.mrc",
        sim,
        # A C1 refinement of the C6 hexamer is judged modulo the truth's own symmetry.
        symmetry="C6" if args.sym.upper() == "C1" and hexamer else args.sym,
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
    sampling = read_star(work / "Refine" / "run_sampling.star")["sampling_general"]
    order = int(sampling["rlnHealpixOrder"])
    log = (work / "Refine" / "run.log").read_text()
    iterations = [float(s) for s in re.findall(r"iter=\d+ resolution.* seconds=([\d.]+)", log)]
    device = torch.cuda.get_device_name() if args.gpu else "CPU"
    row = {
        "device": device,
        "format": args.format,
        "map": "embedded hexamer" if args.map is None else Path(args.map).name,
        "sym": args.sym,
        "particles": args.n_particles,
        "box": args.box,
        "snr": args.snr,
        "resolution_vs_truth_angst": result.resolution_0143_angst,
        # the threshold that matches a half-map FSC of 0.143 (Rosenthal & Henderson)
        "resolution_vs_truth_05_angst": result.resolution_05_angst,
        "true_poses_resolution_angst": true_resolution,
        "printed_resolution_angst": printed,
        "median_angular_error_deg": result.median_angular_error_deg,
        # each half set in its own frame, and the angle between the two frames (evaluate.py)
        "half_set_median_angular_error_deg": result.half_set_median_angular_error_deg,
        "half_set_frames_angle_deg": result.half_set_frames_angle_deg,
        "median_origin_error_angst": result.median_origin_error_angst,
        "iterations": len(iterations),
        "seconds_per_iteration": float(np.mean(iterations)),
        "refine_seconds": refine_seconds,
        "simulate_seconds": simulate_seconds,
        "particles_per_second": args.n_particles * len(iterations) / sum(iterations),
        "peak_gpu_memory_gib": peak,
        "final_healpix_step_deg": angular_step_deg(order),
        "final_sampling_deg": angular_step_deg(order + 1),
    }
    # the same comparison at the truth's 0.5 (Rosenthal & Henderson's match of the half-map
    # 0.143 that refine prints); criteria_met below uses the truth's 0.143, as the issue says
    row["printed_within_10pct_of_truth_05"] = bool(
        abs(printed - result.resolution_05_angst) <= 0.10 * result.resolution_05_angst
    )
    row["criteria_met"] = bool(
        result.resolution_0143_angst <= 1.10 * true_resolution
        and result.median_angular_error_deg < angular_step_deg(order)
        and abs(printed - result.resolution_0143_angst) <= 0.10 * result.resolution_0143_angst
    )
    return row


if __name__ == "__main__":
    main()
