"""The tutorial's "bin 4, then bin 2" chain on a simulated tilt series, judged against the truth.

    python3 bench/binning_chain.py [--n_particles 100] [--box 32] [--gpu] [--out FILE]

The issue: a tilt series extracted at bin 4, refined, re-extracted at bin 2 and
refined again from the first result must reach, against the truth, a resolution
within 10% of what the true poses give at bin 2. Steps, each a ``cryorefine``
command as a user types it (docs/tomography.md):

1. ``simulate --format tilt_series``: whole tilt series at ``--angpix`` (bin 1), the
   particle box ``2 --box`` bin-1 pixels, the truth and its starting reference (the
   truth low-passed to 40 A and turned by 15 degrees, as the other benches).
2. ``image-handler``: the reference to the bin-4 pixel size and box.
3. ``extract --bin 4 --box B/2`` and ``refine`` (global searches from HEALPix order 2,
   local from ``--local_order_bin4``).
4. ``extract --bin 2 --box B`` from ``run_optimisation_set.star`` (the refined poses),
   ``image-handler`` on ``run_class001.mrc`` to the bin-2 pixel size and box, and
   ``refine`` with local searches from the start (``--healpix_order 4
   --auto_local_healpix_order 4``, ``--ini_high`` the bin-4 run's resolution,
   ``--offset_range 2``), as RELION users do at this step.
5. ``reconstruct --ios --bin 4/2`` with the true poses (``truth_particles.star``) on
   the same particles.

Judged here, not by ``simulate.evaluate.compare_to_truth`` (which matches SPA-style
image names and compares origins; extract folds origins into the coordinates and
names no common image): particles are matched by ``rlnTomoParticleName``; angular
errors modulo the symmetry after the global frame fit (``best_global_frame``); position
errors are between ``coordinate - origin`` of the refined and true tables; the
FSC is against the truth Fourier-cropped to the stage's grid (``fourier.rescale_map``)
and turned into the refined frame. Prints a table (stage, pixel size, resolution
against the truth at FSC 0.143, median angular and position errors, seconds) and
the ratio of the bin-2 refined resolution to the bin-2 true-poses one; writes JSON.
"""

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from timed_command import run  # bench/ is on sys.path

from cryorefine.fourier import rescale_map
from cryorefine.geometry import euler_to_matrix, point_group, symmetric_angular_distance_deg
from cryorefine.io import load_optimisation_set, read_mrc, read_star, write_optimisation_set
from cryorefine.simulate.evaluate import (
    best_global_frame,
    compare_map_to_truth,
    reference_rotation_of,
)

CRITERION = "bin-2 refined resolution vs truth <= 1.10 x bin-2 true-poses resolution"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_particles", type=int, default=100)
    parser.add_argument("--box", type=int, default=32, help="particle box at bin 2 (multiple of 4)")
    parser.add_argument("--angpix", type=float, default=2.7, help="tilt-series (bin 1) pixel")
    parser.add_argument("--per_tomogram", type=int, default=4)
    parser.add_argument("--tilt_step", type=float, default=6.0)
    parser.add_argument("--snr", type=float, default=0.05, help="per tilt image (simulate)")
    parser.add_argument("--sym", default="C6", help="imposed on the truth and in refine")
    parser.add_argument("--diameter", type=float, default=150.0, help="--particle_diameter (A)")
    parser.add_argument("--local_order_bin4", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("bench_binning_work"))
    parser.add_argument("--out", type=Path, default=Path("bench_binning.json"))
    args = parser.parse_args()
    if args.box % 4:
        parser.error(f"--box {args.box}: a multiple of 4 (the bin-4 box is --box / 2, even)")
    return args


def refine_command(args: argparse.Namespace, folder: Path, reference: Path, bin4: bool) -> list:
    extract = folder.parent.parent / "Extract" / folder.name
    common = [
        "refine", "--ios", str(extract / "optimisation_set.star"), "--ref", str(reference),
        "--o", str(folder / "run"), "--ctf", "--particle_diameter", str(args.diameter),
        "--sym", args.sym, "--zero_mask", "--flatten_solvent", "--low_resol_join_halves", "40",
        "--norm", "--scale",
    ]  # fmt: skip
    if bin4:
        return [
            *common, "--ini_high", "40", "--healpix_order", "2",
            "--auto_local_healpix_order", str(args.local_order_bin4),
            "--offset_range", "3", "--offset_step", "1",
        ]  # fmt: skip
    previous = float(
        read_star(folder.parent / "bin4" / "run_model.star")["model_general"][
            "rlnCurrentResolution"
        ]
    )
    return [
        *common, "--ini_high", f"{math.ceil(previous)}", "--healpix_order", "4",
        "--auto_local_healpix_order", "4", "--offset_range", "2", "--offset_step", "1",
    ]  # fmt: skip


def matched_poses(data_star: Path, truth_star: Path) -> tuple[np.ndarray, ...]:
    """Refined and true angles (deg) and positions (A) of the same particles, by name."""
    refined = read_star(data_star)["particles"]
    truth = read_star(truth_star)["particles"].set_index("rlnTomoParticleName")
    truth = truth.loc[refined["rlnTomoParticleName"]]

    def angles(table) -> np.ndarray:
        return table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)

    def positions(table) -> np.ndarray:
        xyz = "XYZ"
        coordinate = table[[f"rlnCenteredCoordinate{a}Angst" for a in xyz]].to_numpy(float)
        return coordinate - table[[f"rlnOrigin{a}Angst" for a in xyz]].to_numpy(float)

    return angles(refined), angles(truth), positions(refined), positions(truth)


def truth_on_grid(sim: Path, *, pixel_size_angst: float, box: int) -> torch.Tensor:
    """The truth Fourier-cropped to the stage's pixel size and boxed to its box."""
    truth, pixel = read_mrc(sim / "truth.mrc")
    return rescale_map(
        torch.from_numpy(np.asarray(truth, dtype=np.float64)),
        pixel_size_angst=float(pixel),
        new_pixel_size_angst=pixel_size_angst,
        new_box=box,
    )


def judge_refined(args, sim: Path, folder: Path) -> dict[str, float]:
    """Resolution vs truth, angular and position errors of one refinement."""
    refined, true, refined_xyz, true_xyz = matched_poses(
        folder / "run_data.star", sim / "truth_particles.star"
    )
    refined_m = euler_to_matrix(torch.from_numpy(refined))
    true_m = euler_to_matrix(torch.from_numpy(true))
    group = point_group(args.sym, device="cpu").rotations
    frame = best_global_frame(refined_m, true_m, group, start=reference_rotation_of(sim))
    errors = symmetric_angular_distance_deg(refined_m @ frame, true_m, group).numpy()
    volume, pixel = read_mrc(folder / "run_class001.mrc")
    truth = truth_on_grid(sim, pixel_size_angst=float(pixel), box=volume.shape[0])
    _, resolution, _ = compare_map_to_truth(
        torch.from_numpy(np.asarray(volume)), truth.float(), frame, pixel_size_angst=float(pixel)
    )
    return {
        "pixel_size_angst": float(pixel),
        "resolution_vs_truth_angst": resolution,
        "median_angular_error_deg": float(np.median(errors)),
        "median_position_error_angst": float(
            np.median(np.linalg.norm(refined_xyz - true_xyz, axis=1))
        ),
        "printed_resolution_angst": float(
            read_star(folder / "run_model.star")["model_general"]["rlnCurrentResolution"]
        ),
        "iterations": len(re.findall(r"iter=\d+ resolution", (folder / "run.log").read_text())),
    }


def true_poses(args, sim: Path, work: Path, binning: int, box: int) -> dict[str, float]:
    """Reconstruct with the true poses at a binning; its resolution against the truth."""
    # Beside the picks' set: its entries are written as they were, relative to sim/.
    truth_set = sim / "truth_optimisation_set.star"
    if not truth_set.exists():
        picks = load_optimisation_set(sim / "optimisation_set.star")
        write_optimisation_set(
            picks.replace(particles_file=(sim / "truth_particles.star").resolve()), truth_set
        )
    folder = work / "Reconstruct" / f"true_bin{binning}"
    seconds = run(
        ["reconstruct", "--ios", str(truth_set), "--o", str(folder), "--bin", str(binning),
         "--box", str(box), "--sym", args.sym, "--ctf", *(["--gpu"] if args.gpu else [])]
    )  # fmt: skip
    volume, pixel = read_mrc(folder / "merged.mrc")
    truth = truth_on_grid(sim, pixel_size_angst=float(pixel), box=volume.shape[0])
    _, resolution, _ = compare_map_to_truth(
        torch.from_numpy(np.asarray(volume)),
        truth.float(),
        torch.eye(3, dtype=torch.float64),
        pixel_size_angst=float(pixel),
    )
    return {
        "pixel_size_angst": float(pixel),
        "resolution_vs_truth_angst": resolution,
        "median_angular_error_deg": 0.0,
        "median_position_error_angst": 0.0,
        "seconds": seconds,
    }


def chain(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Steps 1-5 of the module docstring; one row per stage."""
    work, gpu = args.work, (["--gpu"] if args.gpu else [])
    sim = work / "sim"
    rows: dict[str, dict[str, float]] = {}
    simulate_seconds = run(
        ["simulate", "--o", str(sim), "--format", "tilt_series", "--sym", args.sym,
         "--box", str(2 * args.box), "--angpix", str(args.angpix),
         "--n_particles", str(args.n_particles), "--per_tomogram", str(args.per_tomogram),
         "--tilt_step", str(args.tilt_step), "--snr", str(args.snr), "--seed", str(args.seed),
         *gpu]
    )  # fmt: skip
    sources = {4: sim / "optimisation_set.star"}
    references = {4: sim / "reference.mrc"}
    for binning, box in ((4, args.box // 2), (2, args.box)):
        folder = work / "Refine" / f"bin{binning}"
        folder.mkdir(parents=True, exist_ok=True)
        extract = work / "Extract" / f"bin{binning}"
        reference = work / f"reference_bin{binning}.mrc"
        seconds = run(
            ["extract", "--ios", str(sources[binning]), "--o", str(extract),
             "--bin", str(binning), "--box", str(box), *gpu]
        )  # fmt: skip
        seconds += run(
            ["image-handler", "--i", str(references[binning]), "--o", str(reference),
             "--rescale_angpix", str(binning * args.angpix), "--new_box", str(box)]
        )  # fmt: skip
        seconds += run(refine_command(args, folder, reference, binning == 4) + gpu)
        rows[f"refined_bin{binning}"] = {**judge_refined(args, sim, folder), "seconds": seconds}
        sources[2] = folder / "run_optimisation_set.star"
        references[2] = folder / "run_class001.mrc"
        rows[f"true_poses_bin{binning}"] = true_poses(args, sim, work, binning, box)
    rows["simulate"] = {"seconds": simulate_seconds}
    return rows


def main() -> None:
    args = parse_arguments()
    start = time.perf_counter()
    rows = chain(args)
    ratio = (
        rows["refined_bin2"]["resolution_vs_truth_angst"]
        / rows["true_poses_bin2"]["resolution_vs_truth_angst"]
    )
    columns = [
        "pixel_size_angst", "resolution_vs_truth_angst", "median_angular_error_deg",
        "median_position_error_angst", "seconds",
    ]  # fmt: skip
    lines = ["stage | " + " | ".join(columns)]
    for stage in ("refined_bin4", "true_poses_bin4", "refined_bin2", "true_poses_bin2"):
        lines.append(f"{stage} | " + " | ".join(f"{rows[stage][c]:.3g}" for c in columns))
    summary = {
        "device": torch.cuda.get_device_name() if args.gpu else "CPU",
        "options": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "ratio_refined_to_true_poses_bin2": ratio,
        "criterion": CRITERION,
        "criterion_met": bool(ratio <= 1.10),
        "total_seconds": time.perf_counter() - start,
    }
    lines += [
        f"ratio refined / true poses at bin 2: {ratio:.3f} ({CRITERION}: "
        f"{'met' if ratio <= 1.10 else 'NOT met'})",
        f"device: {summary['device']}; total seconds: {summary['total_seconds']:.0f}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
