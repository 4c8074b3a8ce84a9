"""RELION-5 2D stacks against RELION-4 pseudo-subtomograms: the same tilt series refined both ways.

    python3 bench/stack2d_bench.py [--n_particles 200] [--box 64] [--angpix 2.7] [--bin 2] \\
        [--tilt_step 6] [--snr 0.3] [--iter N] [--gpu] [--work DIR] [--out FILE]

Simulates whole tilt series of the packaged HIV-1 CA hexamer (C6; ``cryorefine simulate
--format tilt_series``: ``--box`` at ``--angpix``, ``--per_tomogram`` particles per
tomogram), extracts the particles twice at ``--bin`` (box ``box / bin``): as RELION-4
pseudo-subtomograms (3D data, CTF^2 and multiplicity) and as RELION-5 2D stacks
(``--stack2d``), and refines both (``cryorefine refine --ios``) from the same starting
reference (the simulation's, turned and low-passed, Fourier-cropped to the binned grid)
with the demo's options (healpix order 1, local searches from 3, offsets 2 px in 1 px
steps, C6, ini_high 40 A). Each final map is compared with the truth (cropped the same
way) in the frame the poses give (``simulate.evaluate``: ``best_global_frame``,
``compare_map_to_truth``); particles are matched to the truth by rlnTomoParticleName.
The table has, per route: resolution against the truth (FSC 0.143 and 0.5), the
printed gold-standard resolution, median angular error (modulo C6), median origin
error (the picks are the true centres plus the true origins, so the refined origins
should be the truth's), iterations, and extraction and refinement seconds. The issue's
criterion: the stacks' resolution against the truth within 5% of the pseudo-subtomograms'. The same
figures go to ``--out`` as JSON.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from timed_command import run  # bench/ is on sys.path

from cryorefine.fourier.conventions import from_fourier, to_fourier
from cryorefine.fourier.filters import fourier_crop
from cryorefine.geometry import euler_to_matrix, point_group, symmetric_angular_distance_deg
from cryorefine.io import load_particles, read_mrc, write_mrc
from cryorefine.simulate.evaluate import (
    best_global_frame,
    compare_map_to_truth,
    reference_rotation_of,
)

SYMMETRY = "C6"
REFINE_OPTIONS = (
    "--ini_high 40 --ctf --particle_diameter 150 --healpix_order 1 --auto_local_healpix_order 3 "
    "--offset_range 2 --offset_step 1 --sym C6 --flatten_solvent --zero_mask "
    "--low_resol_join_halves 40 --auto_ignore_angles --auto_resol_angles --pad 2"
).split()
ROUTES = {"pseudo_subtomograms": [], "stacks_2d": ["--stack2d"]}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_particles", type=int, default=200)
    parser.add_argument("--box", type=int, default=64, help="simulated box (bin-1 pixels)")
    parser.add_argument("--angpix", type=float, default=2.7, help="tilt-series pixel (A)")
    parser.add_argument("--bin", type=int, default=2, help="extraction binning")
    parser.add_argument("--per_tomogram", type=int, default=16)
    parser.add_argument("--tilt_image_size", type=int, default=512, help="square tilt images")
    parser.add_argument("--tilt_step", type=float, default=6.0, help="degrees, -60 to 60")
    parser.add_argument("--snr", type=float, default=0.3, help="per tilt image (simulate)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--iter", type=int, default=0, help="stop after N iterations (0: converge)")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("bench_stack2d_work"))
    parser.add_argument("--out", type=Path, default=Path("bench_stack2d.json"))
    args = parser.parse_args()
    if args.box % args.bin or (args.box // args.bin) % 2:
        parser.error(f"--box {args.box} / --bin {args.bin} must be an even whole number")
    return args


def binned_map(path: Path, box: int) -> tuple[torch.Tensor, float]:
    """The map at ``path`` Fourier-cropped to ``box`` (the binned grid) and its pixel size."""
    volume, pixel = read_mrc(path)
    n = volume.shape[0]
    tensor = torch.as_tensor(np.asarray(volume, dtype=np.float64))
    if box != n:
        tensor = from_fourier(fourier_crop(to_fourier(tensor, 3), box, ndim=3), box, 3)
    return tensor, float(pixel) * n / box


def simulate(args: argparse.Namespace, sim: Path) -> float:
    arguments = [
        "simulate", "--o", str(sim), "--format", "tilt_series", "--sym", SYMMETRY,
        "--box", str(args.box), "--angpix", str(args.angpix),
        "--n_particles", str(args.n_particles), "--per_tomogram", str(args.per_tomogram),
        "--tilt_image_size", str(args.tilt_image_size), str(args.tilt_image_size),
        "--tilt_range", "-60", "60", "--tilt_step", str(args.tilt_step),
        "--snr", str(args.snr), "--seed", str(args.seed),
    ]  # fmt: skip
    return run(arguments + (["--gpu"] if args.gpu else []))


def final_files(folder: Path) -> tuple[Path, Path, int, float]:
    """Data and map of the last iteration, its number and the printed resolution."""
    log = (folder / "run.log").read_text()
    lines = re.findall(r"iter=(\d+) resolution_angst=([\d.]+)", log)
    last, printed = int(lines[-1][0]), float(lines[-1][1])
    data, final_map = folder / "run_data.star", folder / "run_class001.mrc"
    if not data.exists():  # stopped by --iter before convergence
        data = folder / f"run_it{last:03d}_data.star"
        final_map = folder / f"run_it{last:03d}_half1_class001.mrc"
    return data, final_map, last, printed


def judge(data: Path, final_map: Path, sim: Path, box: int) -> dict[str, float]:
    """Angular and origin errors (matched by particle name) and the map against the truth."""
    refined = load_particles(data, check_images=False)
    truth = load_particles(sim / "truth_particles.star", check_images=False)
    row_of = {name: row for row, name in enumerate(truth.tomo_particle_names())}
    order = np.array([row_of[name] for name in refined.tomo_particle_names()])
    refined_matrices = euler_to_matrix(torch.from_numpy(refined.angles_deg()))
    true_matrices = euler_to_matrix(torch.from_numpy(truth.angles_deg()[order]))
    group = point_group(SYMMETRY, device="cpu")
    start = reference_rotation_of(sim)
    frame = best_global_frame(refined_matrices, true_matrices, group.rotations, start=start)
    errors = symmetric_angular_distance_deg(
        refined_matrices @ frame, true_matrices, group.rotations
    ).numpy()
    origin_errors = refined.origins_angst() - truth.origins_angst()[order]
    volume, _ = read_mrc(final_map)
    truth_map, pixel = binned_map(sim / "truth.mrc", box)
    _, high, half = compare_map_to_truth(
        torch.as_tensor(np.asarray(volume, dtype=np.float32)),
        truth_map.float(),
        frame,
        pixel_size_angst=pixel,
    )
    return {
        "resolution_vs_truth_angst": high,
        "resolution_vs_truth_05_angst": half,
        "median_angular_error_deg": float(np.median(errors)),
        "median_origin_error_angst": float(np.median(np.linalg.norm(origin_errors, axis=1))),
    }


def main() -> None:
    args = parse_arguments()
    work = args.work
    sim = work / "sim"
    simulate_seconds = simulate(args, sim)
    box = args.box // args.bin
    reference, pixel = binned_map(sim / "reference.mrc", box)
    reference_path = work / "reference_binned.mrc"
    write_mrc(reference_path, reference.float().numpy(), voxel_size_angst=pixel)
    gpu = ["--gpu", "0"] if args.gpu else []
    rows = {}
    for route, flags in ROUTES.items():
        extracted = work / f"extract_{route}"
        extract_seconds = run(
            ["extract", "--ios", str(sim / "optimisation_set.star"), "--o", str(extracted),
             "--bin", str(args.bin), "--box", str(box), *flags, *(["--gpu"] if args.gpu else [])]
        )  # fmt: skip
        folder = work / f"refine_{route}"
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            "refine", "--ios", str(extracted / "optimisation_set.star"),
            "--ref", str(reference_path), "--o", str(folder / "run"), *REFINE_OPTIONS, *gpu,
        ]  # fmt: skip
        if args.iter:
            command += ["--iter", str(args.iter)]
        refine_seconds = run(command)
        data, final_map, iterations, printed = final_files(folder)
        rows[route] = {
            **judge(data, final_map, sim, box),
            "printed_resolution_angst": printed,
            "iterations": iterations,
            "extract_seconds": extract_seconds,
            "refine_seconds": refine_seconds,
        }
    ratio = (
        rows["stacks_2d"]["resolution_vs_truth_angst"]
        / rows["pseudo_subtomograms"]["resolution_vs_truth_angst"]
    )
    summary = {
        "device": torch.cuda.get_device_name() if args.gpu else "CPU",
        "particles": args.n_particles,
        "box": box,
        "pixel_angst": pixel,
        "tilt_step_deg": args.tilt_step,
        "snr": args.snr,
        "simulate_seconds": simulate_seconds,
        "routes": rows,
        "stack_over_volume_resolution": ratio,
        "within_5_percent": bool(abs(ratio - 1.0) <= 0.05),
    }
    columns = list(rows["pseudo_subtomograms"])
    lines = ["route | " + " | ".join(columns)]
    for route, row in rows.items():
        lines.append(route + " | " + " | ".join(f"{row[c]:.4g}" for c in columns))
    lines.append(
        f"device {summary['device']}, {args.n_particles} particles, box {box} at {pixel:g} A, "
        f"simulate {simulate_seconds:.0f} s; stacks / pseudo-subtomograms resolution "
        f"{ratio:.3f} (within 5%: {summary['within_5_percent']})"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
