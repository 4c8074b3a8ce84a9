"""Where the angular error of refined poses comes from: the likelihood's optimum about the truth.

    python3 bench/pose_floor.py --formats subtomo3d:C1 relion4:C6 spa:C1 --n_score 60 \\
        [--box 32 --angpix 5.4 --snr 10 --seed 31] [--refined subtomo3d:RUN_DIR ...] \\
        [--work /tmp/posefloor/work] [--out bench/results/pose_floor_cpu.json]

For each ``FORMAT:SYM``: ``cryorefine simulate`` twice with one seed, with noise
(``--snr``) and without (``--snr inf``: the same particles and poses). The first
``--n_score`` particles are read as the refine reads them (``tomo.particle_batches``)
and masked as ``refine.half_pass._masked`` does with ``--zero_mask``; the TRUE map,
prepared as the refine's driver prepares a reference (``fourier.prepare_reference``,
radial gridding correction; or low-passed, or with the simulator's separable
correction), is projected on the E-step's window (``likelihood.passes.RowProjector``)
and scored by the E-step's ``likelihood.squared_differences`` in float64, weight
``1 / (2 sigma2)`` (``sigma2`` from the simulation's noise power; RELION-4: divided by
the multiplicity where it exceeds 0.1, as ``likelihood.expectation._score_weight``).
Rotations ``expm(w) A`` are searched on nested cubic grids of rotation vectors
(+-1.5 deg by 0.5, re-centred; +-0.4 by 0.1; +-0.1 by 0.025), origins fixed at the truth or
also fitted (+-1 px by 0.25, +-0.25 by 0.05, +-0.05 by 0.01, twice, alternating).
Each row gives the angle between the best rotation and the truth (median, 90 %),
the residual power at the true pose over the data power (noise-free: the model
mismatch), the Cramer-Rao prediction of the noise-limited error (sandwich
covariance of the weighted least squares from the noise-free derivatives; rotation
block of the 3x3, or with translations free of the 6x6) and RELION's accuracy
heuristic (``refine.accuracy.estimate_accuracies``) at the truth.

``--refined FORMAT:RUN_DIR`` (a finished ``refine_bench.py`` case, its simulation in
``RUN_DIR/../sim``) also scores that run's last poses with its own final map, from its
poses, and judges both in the frame ``simulate.evaluate.best_global_frame`` fits on all of
the run's particles: the search's share of the error (is the optimum off the grid?).

The evaluation check: ``compare_to_truth`` and ``bench/pose_errors.py`` on the true
poses (in the starting reference's frame, ``A Q^T``) and on them turned by a random
rotation of exactly ``--check_deg`` degrees.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pose_floor_search import (  # bench/ is on sys.path
    Particles,
    Scorer,
    heuristic,
    particle_table,
    predicted_errors,
    quantiles,
    read_particles,
    reference,
    skew_exp,
)
from torch import Tensor

from cryorefine.geometry import (
    angular_distance_deg,
    euler_to_matrix,
    matrix_to_euler,
    point_group,
    symmetric_angular_distance_deg,
)
from cryorefine.io import ParticleSet, load_particles, read_mrc, read_star, write_star
from cryorefine.simulate.evaluate import best_global_frame, compare_to_truth, reference_rotation_of

BENCH = Path(__file__).resolve().parent


def simulate(fmt: str, sym: str, snr: str, args: argparse.Namespace) -> Path:
    """``cryorefine simulate`` into the work folder (kept if already there)."""
    out = Path(args.work) / f"sim_{fmt}_{sym}_snr{snr}"
    if not (out / "simulation.json").exists():
        command = [
            sys.executable, "-m", "cryorefine", "simulate", "--o", str(out), "--format", fmt,
            "--sym", sym, "--n_particles", str(args.n_particles), "--box", str(args.box),
            "--angpix", str(args.angpix), "--snr", snr, "--seed", str(args.seed),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return out


def floor_rows(fmt: str, sym: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """The core experiment for one format: rows per noise, reference and translation mode."""
    rows: list[dict[str, object]] = []
    n = args.box
    size = args.current_size or n
    sims = {
        "noisy": simulate(fmt, sym, str(args.snr), args),
        "noise-free": simulate(fmt, sym, "inf", args),
    }
    record = json.loads((sims["noisy"] / "simulation.json").read_text())
    noise_power = float(record["noise_power_per_coefficient"])
    truth_map, _ = read_mrc(sims["noisy"] / "truth.mrc")
    lowpass_shells = n * args.angpix / args.lowpass_angst
    references = {
        "truth": reference(truth_map, lowpass_shells=None, gridding="radial"),
        f"truth_lp{args.lowpass_angst:g}A": reference(
            truth_map, lowpass_shells=lowpass_shells, gridding="radial"
        ),
        "truth_separable": reference(truth_map, lowpass_shells=None, gridding="separable"),
    }
    rows_idx = np.arange(args.n_score)
    plans = [  # (noise, reference, mask, fit translations)
        ("noise-free", "truth", True, False),
        ("noise-free", "truth", False, False),
        ("noise-free", "truth_separable", False, False),
        ("noise-free", f"truth_lp{args.lowpass_angst:g}A", True, False),
        ("noisy", "truth", True, False),
        ("noisy", "truth", True, True),
        ("noisy", f"truth_lp{args.lowpass_angst:g}A", True, True),
    ]
    if args.quick:  # the unmasked and separable noise-free rows, and the low-pass noise-free
        plans = [plan for i, plan in enumerate(plans) if i not in (1, 2, 3)]
    loaded: dict[tuple[str, bool], Particles] = {}
    for noise, ref_name, mask, fit in plans:
        tic = time.perf_counter()
        key = (noise, mask)
        if key not in loaded:
            table = particle_table(sims[noise])
            loaded[key] = read_particles(
                table,
                rows_idx,
                size=size,
                noise_power=noise_power,
                mask=mask,
                diameter=args.diameter,
            )
        particles = loaded[key]
        scorer = Scorer(particles, references[ref_name], size)
        errors, shifts, residuals, cov_fixed, cov_free = [], [], [], [], []
        for b in range(args.n_score):
            a_true, o_true = particles.rotations[b], particles.origins_px[b]
            best_r, best_o = scorer.search(b, a_true, o_true, fit_translations=fit)
            errors.append(float(angular_distance_deg(best_r, a_true)))
            shifts.append(float((best_o - o_true).norm()))
            at_truth = float(scorer.scores(b, a_true[None], o_true[None])[0, 0])
            power = float((particles.weight[b] * particles.data[b].abs() ** 2).sum())
            residuals.append(at_truth / power)
            if noise == "noise-free" and ref_name == "truth" and mask:
                fixed_cov, free_cov = scorer.covariance(b, a_true, o_true)
                cov_fixed.append(fixed_cov)
                cov_free.append(free_cov)
        errs = np.array(errors)
        row: dict[str, object] = {
            "format": fmt,
            "sym": sym,
            "noise": noise if noise == "noise-free" else f"snr {args.snr:g}",
            "reference": ref_name,
            "mask": mask,
            "translations": "fitted" if fit else "true",
            "particles": args.n_score,
            "current_size": size,
            **quantiles(errs),
            "median_origin_change_px": float(np.median(shifts)),
            "median_residual_over_power_at_truth": float(np.median(residuals)),
            "seconds": time.perf_counter() - tic,
        }
        if cov_fixed:
            fixed = quantiles(predicted_errors(cov_fixed))
            free = quantiles(predicted_errors(cov_free))
            row["predicted_noise_floor_fixed_translations"] = fixed
            row["predicted_noise_floor_fitted_translations"] = free
            row["accuracy_heuristic_acc_rot_deg"] = heuristic(
                particles, references["truth"], args, sims["noise-free"]
            )
        rows.append(row)
        sys.stdout.write(format_row(row) + "\n")
        sys.stdout.flush()
    for row in rows:  # the Cramer-Rao prediction applies to the noisy rows
        if row["reference"] == "truth" and row["noise"] != "noise-free":
            source = next(r for r in rows if "predicted_noise_floor_fixed_translations" in r)
            key = "fixed" if row["translations"] == "true" else "fitted"
            row["predicted_noise_floor"] = source[f"predicted_noise_floor_{key}_translations"]
    return rows


def refined_rows(fmt: str, run_dir: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    """A finished run's share of the error (module docstring), judged in its fitted frame.

    Rows: the run's final poses (all particles, and the scored ones); the scored ones
    re-optimised with the run's final map from the run's poses (is the run at the
    optimum of its own likelihood?), and from the true poses brought into the run's
    frame (where is that optimum?); and with the map ``refine_bench.py`` reconstructed
    from the true poses (``true_poses.mrc``) from the true poses (does the M-step's
    reconstruction move the optimum?).
    """
    refine, sim = run_dir / "Refine", run_dir / "sim"
    run_table = load_particles(refine / "run_data.star")
    truth = load_particles(sim / "truth_particles.star")
    group = point_group("C6", device="cpu").rotations.double()  # the truth's own symmetry

    def keys(t: ParticleSet) -> list[tuple[str, int]]:
        paths = [str(p.resolve()) for p in t.image_paths()]
        return list(zip(paths, t.image_indices().tolist(), strict=True))

    by_image = {key: i for i, key in enumerate(keys(truth))}
    order = np.array([by_image[key] for key in keys(run_table)])
    refined_all = euler_to_matrix(torch.from_numpy(run_table.angles_deg())).double()
    true_all = euler_to_matrix(torch.from_numpy(truth.angles_deg()[order])).double()
    frame = best_global_frame(refined_all, true_all, group, start=reference_rotation_of(sim))
    # the symmetry mate of each true pose nearest the run's, in the run's frame: A_t R G^T
    mates = true_all[:, None] @ group[None]
    traces = ((refined_all @ frame)[:, None] * mates).sum(dim=(-1, -2))
    true_in_run = mates[torch.arange(len(order)), traces.argmax(dim=1)] @ frame.T
    record = json.loads((sim / "simulation.json").read_text())
    noise_power = float(record["noise_power_per_coefficient"])
    rows_idx = np.arange(args.n_score)
    size = args.current_size or args.box

    def load(table: ParticleSet) -> Particles:
        return read_particles(
            table, rows_idx, size=size, noise_power=noise_power, mask=True, diameter=args.diameter
        )

    run_particles, true_particles = load(run_table), load(truth)
    final_map, _ = read_mrc(refine / "run_class001.mrc")
    run_scorer = Scorer(
        run_particles, reference(final_map, lowpass_shells=None, gridding="radial"), size
    )
    errors: dict[str, list[float]] = {"run": [], "from_run": [], "from_truth": [], "true_map": []}
    moved: list[float] = []
    true_scorer = None
    if (run_dir / "true_poses.mrc").exists():
        true_map, _ = read_mrc(run_dir / "true_poses.mrc")
        true_ref = reference(true_map, lowpass_shells=None, gridding="radial")
        true_scorer = Scorer(true_particles, true_ref, size)
    for b in range(args.n_score):
        start, origin = run_particles.rotations[b], run_particles.origins_px[b]

        def error(rotation: Tensor, b: int = b) -> float:
            return float(symmetric_angular_distance_deg(rotation @ frame, true_all[b], group))

        errors["run"].append(error(start))
        best_r, _ = run_scorer.search(b, start, origin, fit_translations=True)
        errors["from_run"].append(error(best_r))
        moved.append(float(angular_distance_deg(best_r, start)))
        best_t, _ = run_scorer.search(b, true_in_run[b], origin, fit_translations=True)
        errors["from_truth"].append(error(best_t))
        if true_scorer is not None:
            a_t = true_particles.rotations[b]
            best_m, _ = true_scorer.search(
                b, a_t, true_particles.origins_px[b], fit_translations=True
            )
            errors["true_map"].append(float(angular_distance_deg(best_m, a_t)))
    all_errors = symmetric_angular_distance_deg(refined_all @ frame, true_all, group).numpy()
    base = {"format": fmt, "run": str(run_dir), "particles": args.n_score}
    rows = [
        {**base, "reference": "-", "poses": "run_data.star, all", **quantiles(all_errors)},
        {**base, "reference": "-", "poses": "run_data.star", **quantiles(np.array(errors["run"]))},
        {**base, "reference": "run_class001.mrc", "poses": "optimum from run_data.star",
         **quantiles(np.array(errors["from_run"])), "median_move_deg": float(np.median(moved))},
        {**base, "reference": "run_class001.mrc", "poses": "optimum from the truth",
         **quantiles(np.array(errors["from_truth"]))},
    ]  # fmt: skip
    if errors["true_map"]:
        rows.append(
            {**base, "reference": "true_poses.mrc", "poses": "optimum from the truth",
             **quantiles(np.array(errors["true_map"]))}
        )  # fmt: skip
    return rows


def evaluation_check(sim: Path, sym: str, check_deg: float, work: Path) -> list[dict[str, object]]:
    """compare_to_truth and pose_errors.py on the true poses, and turned by ``check_deg``."""
    q = reference_rotation_of(sim)
    blocks = read_star(sim / "truth_particles.star")
    name = next(k for k in blocks if k != "optics")
    table = blocks[name].copy() if hasattr(blocks[name], "copy") else blocks[name]
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=np.float64).copy()
    a_true = euler_to_matrix(torch.from_numpy(angles))
    generator = torch.Generator().manual_seed(1)
    axes = torch.nn.functional.normalize(
        torch.randn((len(angles), 3), generator=generator, dtype=torch.float64), dim=1
    )
    out = []
    for label, turn in (("true poses", 0.0), (f"true poses turned {check_deg:g} deg", check_deg)):
        delta = skew_exp(axes * turn)
        poses = delta @ a_true @ q.T  # in the starting reference's frame, as a refinement's
        table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]] = matrix_to_euler(poses).numpy()
        star = sim / f"check_turned_{turn:g}.star"  # image paths stay relative to it
        write_star({**blocks, name: table}, star)
        result = compare_to_truth(
            star, sim / "truth.mrc", sim, symmetry="C6" if sym == "C1" else sym
        )
        pose_json = work / f"check_{sim.name}_{turn:g}_pose_errors.json"
        subprocess.run(
            [sys.executable, str(BENCH / "pose_errors.py"), "--data", str(star), "--sim", str(sim),
             "--sym", "C6" if sym == "C1" else sym, "--out", str(pose_json)],
            check=True, capture_output=True,
        )  # fmt: skip
        pose = json.loads(pose_json.read_text())
        applied = angular_distance_deg(delta @ a_true, a_true)
        out.append(
            {
                "simulation": sim.name,
                "poses": label,
                "applied_deg": float(applied.median()),
                "compare_to_truth_median_deg": result.median_angular_error_deg,
                "compare_to_truth_mean_deg": result.mean_angular_error_deg,
                "pose_errors_median_deg": pose["median_error_deg"],
            }
        )
    return out


def format_row(row: dict[str, object]) -> str:
    """One printed line of a row."""
    parts = []
    for key, value in row.items():
        if isinstance(value, dict):
            value = f"{value['median_deg']:.3f}/{value['p90_deg']:.3f}"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def main() -> None:
    """Parse the options, run the cases, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="*", default=["subtomo3d:C1", "relion4:C6", "spa:C1"])
    parser.add_argument("--n_particles", type=int, default=200)
    parser.add_argument("--n_score", type=int, default=60, help="particles scored per format")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--angpix", type=float, default=5.4)
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--diameter", type=float, default=150.0, help="--particle_diameter (A)")
    parser.add_argument("--current_size", type=int, default=0, help="window size (0: the box)")
    parser.add_argument("--lowpass_angst", type=float, default=14.4)
    parser.add_argument("--check_deg", type=float, default=0.5)
    parser.add_argument(
        "--refined", nargs="*", default=[], help="FORMAT:RUN_DIR of refine_bench.py cases"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="four rows per format, not seven")
    parser.add_argument("--work", default="/tmp/posefloor/work")
    parser.add_argument("--out", default=str(BENCH / "results" / "pose_floor_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {
        "options": vars(args),
        "floor": [],
        "refined": [],
        "evaluation": [],
    }

    def save() -> None:
        Path(args.out).write_text(json.dumps(result, indent=1))

    for case in args.formats:
        fmt, sym = case.split(":")
        for snr in (str(args.snr),):
            for row in evaluation_check(simulate(fmt, sym, snr, args), sym, args.check_deg, work):
                result["evaluation"].append(row)  # type: ignore[union-attr]
                sys.stdout.write(format_row(row) + "\n")
        save()
        result["floor"].extend(floor_rows(fmt, sym, args))  # type: ignore[union-attr]
        save()
    for case in args.refined:
        fmt, run_dir = case.split(":", 1)
        for row in refined_rows(fmt, Path(run_dir), args):
            result["refined"].append(row)  # type: ignore[union-attr]
            sys.stdout.write(format_row(row) + "\n")
        save()
    table = [
        "format | noise | reference | mask | translations | median | p90 | CR pred. median/p90"
    ]
    for row in result["floor"]:  # type: ignore[union-attr]
        pred = row.get("predicted_noise_floor")
        table.append(
            f"{row['format']} | {row['noise']} | {row['reference']} | {row['mask']} | "
            f"{row['translations']} | {row['median_deg']:.3f} | {row['p90_deg']:.3f} | "
            + (f"{pred['median_deg']:.3f}/{pred['p90_deg']:.3f}" if pred else "-")
        )
    sys.stdout.write("\n".join(table) + "\n")
    save()


if __name__ == "__main__":
    main()
