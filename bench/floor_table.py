"""The E-step's floor: measured seconds per phase against what its work needs on this device.

    python3 bench/floor_table.py --refine DIR [--gpu] [--precision float32|tf32] [--out floor.json]

Reads ``DIR/run.log`` (per iteration and half set: the ``phase_seconds`` and
``work`` lines, the ``e_step_seconds`` line; the iteration lines) and each
iteration's ``run_itNNN_data.star``, ``run_itNNN_sampling.star``,
``run_itNNN_optimiser.star`` and ``run_itNNN_half1_model.star``; measures on
the same device, in the same run, the matrix rate and bandwidths
(``floor_rates.measure_rates``); prints, per iteration, half set and phase:
measured seconds, floor seconds, measured / floor; writes the same rows as
JSON. ``floor_rows(refine_dir, rates)`` is the table without the printing,
``iteration_totals`` its sum over half sets, for ``tutorial_bench.py``.

Work per iteration and half set (``p``: its particles)
------------------------------------------------------
``t`` coarse translations (``geometry.translation_grid`` of the log's offset
range and step); ``g = 2**ndim``, ``f = 8`` translation and orientation children
of a coarse pair (oversampling 1); ``k_c``, ``k_f``, ``k_b`` coefficients of the
coarse window (no DC), fine window (DC) and back-projection window (DC and
Friedel mates) (``likelihood.fourier_window``, ``round(|k|) <= size / 2``).
``R`` the coarse orientations any particle of the half set searches (exact):
global, the sampling star's directions x ``ceil(360 / psi_step)``; local, those
of non-zero prior weight (``geometry.local_*_prior``, 3 sigma, symmetry mates,
the model star's ``rlnSigmaPrior*Angle`` about ``run_it(N-1)_data.star``'s
angles, or its ``rlnAngle*Prior`` below ``rlnAutoLocalSearchesHealpixOrder``).

The four counts, from the log's ``work`` line (row field ``counts``:
``"logged"``) or, for logs without one, estimated (``"estimated"``):

- ``S_c`` coarse_samples, particles x translations x orientations scored
  (padding included); estimate ``t sum_p R_p``, ``R_p`` as ``R`` per particle.
- ``S_f`` fine_samples, (particle, orientation child, translation child)
  samples scored (group padding included); estimate ``g f sum_p q_p``,
  ``q_p = rlnNrOfSignificantSamples`` (an upper bound on the pairs).
- ``P`` projected_orientations, child orientations projected at the current
  size (0 where a cache held them); estimate ``C = f min(sum_p q_p, R)``.
- ``I`` inserted_orientations, orientation volumes (3D) or slices (2D)
  inserted into the back-projector; estimate ``C``.

Floors (seconds); ``F = 4`` flops per complex coefficient of a score
(``Re(conj(Z) P)``, two real multiply-adds); ``rate`` the best measured matrix
rate of the chosen precision; ``bw`` the device copy bandwidth (bytes read +
written); ``h2d`` the host-to-device bandwidth; ``G = 8 x 8 + 8`` bytes per
coefficient of a trilinear gather from a complex64 reference (8 corners read,
the value written).

- load (measured ``wait_for_data``): ``sum_p (image + CTF bytes) / h2d``, bytes
  from the MRC headers. Overlapped with scoring: a wait far below it is hidden.
- mask: ``sum_p (48 h + 16 n^3) / bw``, ``h = n^2 (n/2 + 1)``: each grid read and
  written once by the inverse FFT, mask, forward FFT and two phase shifts (FFTs
  as single passes; their flops negligible): an approximation from below.
- coarse: ``(F S_c + 2 S_c / t) k_c / rate + (G R k_c + 16 b k_c) / bw``: the
  scores, the ``|CTF P|^2`` term per (particle, orientation), the coarse
  projections and the particles' coarse data read. Global searches project
  the grid once per half set (``R`` exact); local searches per batch, so with
  several batches ``R`` (the half set's union) is a lower bound.
- fine: ``F S_f k_f / rate + G P k_f / bw``: the children's scores and their
  projections. The back-projection and noise sums of the carried pairs are left
  out (not logged): the floor stays a lower bound.
- insert: ``I k_b (8 x 3 x 16 + 12) / bw``: per coefficient 8 corners x 3
  float64 accumulator values (data re, im, weight) each read and written, and
  the complex64 + float32 sums read. Where the touched accumulator
  (``work["accumulator_bytes_touched"]``) fits in cache the splat can beat it
  (``copy_bytes_per_s_by_size``: copy rates of smaller tensors).
- e_step (measured ``e_step_seconds``): ``max(load, mask + coarse + fine + insert)``.

Compute and memory terms are added (no overlap): at most twice a roofline's max.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import mrcfile
import numpy as np
import torch
from floor_rates import (  # bench/ is on sys.path
    WORK,
    iteration_file,
    measure_rates,
    ndim_of,
    rate_lines,
    rate_shapes,
    read_log,
    read_star,
    sampling,
    translation_count,
    window_count,
)

from cryorefine.geometry import (
    local_angle_prior,
    local_direction_prior,
    local_psi_prior,
    point_group,
    psi_angles_deg,
)
from cryorefine.io import resolve_path
from cryorefine.refine.orientation_priors import prior_centres_deg

__all__ = [
    "PHASES",
    "floor_rows",
    "format_table",
    "format_totals",
    "iteration_totals",
]

PHASES = ("load", "mask", "coarse", "fine", "insert", "e_step")
FLOPS_PER_COEFFICIENT = 4  # Re(conj(Z) P): two real multiply-adds per complex coefficient
GATHER_BYTES_PER_COEFFICIENT = 8 * 8 + 8  # trilinear: 8 complex64 corners read, one written
SPLAT_BYTES_PER_COEFFICIENT = 8 * 3 * 8 * 2 + 12  # 8 corners x 3 float64 read+write; sums read
_LOG_PHASE = {"load": "wait_for_data", "mask": "mask", "coarse": "coarse", "fine": "fine",
              "insert": "insert"}  # fmt: skip


def _general(path: Path, block: str) -> dict:
    value = read_star(path)[block]
    return value if isinstance(value, dict) else value.iloc[0].to_dict()


def _searched(
    refine_dir: Path, it: int, info: dict, rows: np.ndarray, device: torch.device
) -> tuple[np.ndarray, int]:
    """``R_p`` of the particles ``rows`` and ``R`` (module docstring); the priors on
    ``device``, the union as a float32 product (its sums, counts of particles, are exact
    below 2**24)."""
    general, m, psi_count, directions = sampling(refine_dir, it)
    if not info["local_searches"]:
        return np.full(len(rows), m * psi_count, dtype=np.int64), m * psi_count
    model = _general(iteration_file(refine_dir, it, "half1_model.star"), "model_general")
    sigma = [float(model[f"rlnSigmaPrior{a}Angle"]) for a in ("Rot", "Tilt", "Psi")]
    optimiser = _general(iteration_file(refine_dir, it, "optimiser.star"), "optimiser_general")
    local_order = int(optimiser.get("rlnAutoLocalSearchesHealpixOrder", 4))
    previous = read_star(refine_dir / f"run_it{it - 1:03d}_data.star")["particles"].iloc[rows]
    angles = previous[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    labels = ("rlnAngleRotPrior", "rlnAngleTiltPrior", "rlnAnglePsiPrior")
    priors = np.stack([previous[label].to_numpy(float) if label in previous.columns
                       else np.full(len(rows), np.nan) for label in labels], axis=1)  # fmt: skip
    centres = torch.as_tensor(
        prior_centres_deg(angles, priors, use_priors=info["healpix_order"] < local_order),
        device=device,
    )
    rot_tilt = torch.as_tensor(directions, device=device)
    operators = point_group(str(general["rlnSymmetryGroup"]), device=device).operators
    if sigma[0] > 0 and sigma[1] > 0:
        weights = local_direction_prior(
            centres[:, :2], rot_tilt, sigma_deg=max(sigma[:2]), operators=operators
        )
    elif sigma[0] > 0 or sigma[1] > 0:
        column, name = (0, "rot") if sigma[0] > 0 else (1, "tilt")
        weights = local_angle_prior(
            centres[:, column], rot_tilt, angle=name, sigma_deg=sigma[column], operators=operators
        )
    else:
        weights = torch.ones((len(rows), m), dtype=torch.float64, device=device)
    psis = torch.ones((len(rows), psi_count), dtype=torch.bool, device=device)
    if sigma[2] > 0:
        grid_psi = psi_angles_deg(float(general["rlnPsiStep"]), device=device)
        psis = local_psi_prior(centres[:, 2], grid_psi, sigma_deg=sigma[2]) > 0
    kept = weights > 0
    per_particle = (kept.sum(1) * psis.sum(1)).cpu().numpy().astype(np.int64)
    union = (kept.to(torch.float32).T @ psis.to(torch.float32)) > 0  # (direction, psi) searched
    return per_particle, int(union.sum())


def _image_bytes(name: str, star_path: Path, cache: dict[tuple[Path, bool], int]) -> int:
    """Bytes of one image (``i@stack`` or a whole file) from its MRC header, read once per
    file into ``cache``."""
    index, _, path = str(name).rpartition("@")
    resolved = resolve_path(path, star_path)
    key = (resolved, bool(index) or path.endswith(".mrcs"))
    if key not in cache:
        with mrcfile.open(resolved, header_only=True, permissive=True) as mrc:
            header = mrc.header
            mode = {0: 1, 1: 2, 2: 4, 4: 8, 6: 2, 12: 2}.get(int(header.mode), 4)
            nz = 1 if key[1] else int(header.nz)
            cache[key] = int(header.nx) * int(header.ny) * nz * mode
    return cache[key]


def _load_bytes(particles, star_path: Path, cache: dict[tuple[Path, bool], int]) -> np.ndarray:
    """Image and CTF bytes of each particle (``cache``: ``_image_bytes``'s, shared by the
    iterations, whose particles name the same files)."""
    total = np.zeros(len(particles))
    for label in ("rlnImageName", "rlnCtfImage"):
        if label in particles.columns:
            names = particles[label].astype(str)
            total += np.array([_image_bytes(n, star_path, cache) for n in names], dtype=float)
    return total


def _matrix_rate(rates: dict, precision: str) -> float:
    return max(rates[f"matmul_flops_per_s_{precision}"].values())


def _estimated_work(
    searched: np.ndarray, significant: np.ndarray, union: int, *, t: int, ndim: int
) -> dict[str, float]:
    """The four counts from the stars alone (module docstring), for logs without ``work``."""
    g, f, q = 2**ndim, 8, float(significant.sum())
    children = f * min(q, union)
    return {
        "coarse_samples": t * float(searched.sum()),
        "fine_samples": g * f * q,
        "projected_orientations": children,
        "inserted_orientations": children,
    }


def _half_floors(
    info: dict, ndim: int, work: dict, b: int, load_bytes: float, ori_size: int, rates: dict,
    precision: str,
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Floor seconds and the work they count, of one half set (module docstring)."""
    rate, bw = _matrix_rate(rates, precision), float(rates["copy_bytes_per_s"])
    radius = info["padding_factor"] * info["current_size"] / 2
    t = translation_count(info, ndim)
    flops, gather = FLOPS_PER_COEFFICIENT, GATHER_BYTES_PER_COEFFICIENT
    k_c = window_count(info["coarse_size"], ndim, include_dc=False)
    k_f = window_count(info["current_size"], ndim, include_dc=True)
    k_b = window_count(info["current_size"], ndim, include_dc=True, redundant=True)
    n, union = ori_size, info["union"]
    h = n ** (ndim - 1) * (n // 2 + 1)
    counts = {
        "particles": b, "translations": t, "k_coarse": k_c, "k_fine": k_f, "k_backprojection": k_b,
        "orientations_union": union, **{name: float(work[name]) for name in WORK},
        "coarse_flops": (flops * work["coarse_samples"] + 2 * work["coarse_samples"] / t) * k_c,
        "fine_flops": flops * work["fine_samples"] * k_f,
        "load_bytes": load_bytes,
        "mask_bytes": b * (48.0 * h + 16.0 * n**ndim),
        "coarse_bytes": gather * union * k_c + 16.0 * b * k_c,
        "fine_bytes": gather * work["projected_orientations"] * k_f,
        "insert_bytes": float(SPLAT_BYTES_PER_COEFFICIENT) * work["inserted_orientations"] * k_b,
        "accumulator_bytes_touched": 24.0 * 2.0 / 3.0 * math.pi * radius**3,
    }  # fmt: skip
    floors = {
        "load": counts["load_bytes"] / float(rates["h2d_bytes_per_s"]),
        "mask": counts["mask_bytes"] / bw,
        "coarse": counts["coarse_flops"] / rate + counts["coarse_bytes"] / bw,
        "fine": counts["fine_flops"] / rate + counts["fine_bytes"] / bw,
        "insert": counts["insert_bytes"] / bw,
    }
    compute = sum(floors[p] for p in ("mask", "coarse", "fine", "insert"))
    floors["e_step"] = max(floors["load"], compute)
    return floors, counts


def floor_rows(
    refine_dir: Path,
    rates: dict,
    *,
    precision: str = "float32",
    device: torch.device | None = None,
) -> list[dict]:
    """One row per iteration, half set and phase (``PHASES``): measured, floor, their ratio.

    ``rates``: ``measure_rates`` on the device the refine ran on; ``device`` is where the
    searched orientations are counted (the local priors of every particle). Each row also
    carries ``counts`` (``"logged"`` or ``"estimated"``: where the four work
    counts come from) and ``work``, the half set's counts, flops and bytes.
    """
    refine_dir = Path(refine_dir)
    device = torch.device("cpu") if device is None else device
    headers: dict[tuple[Path, bool], int] = {}  # bytes per image file, for every iteration
    rows: list[dict] = []
    logged = read_log(refine_dir)
    for it, info in sorted(logged.items()):
        star_path = iteration_file(refine_dir, it, "data.star")
        own = (refine_dir / f"run_it{it:03d}_data.star").exists() or it == max(logged)
        previous = (refine_dir / f"run_it{it - 1:03d}_data.star").exists()
        if not own or (info["local_searches"] and not previous):
            continue  # a carried state holds only its last iteration's files
        blocks = read_star(star_path)
        particles = blocks["particles"]
        ndim = ndim_of(refine_dir, it)
        optics = blocks.get("optics")
        ori_size = int(optics["rlnImageSize"].iloc[0]) if optics is not None else 0
        model = _general(iteration_file(refine_dir, it, "half1_model.star"), "model_general")
        info = {**info, "padding_factor": float(model.get("rlnPaddingFactor", 2.0))}
        halves = particles["rlnRandomSubset"].to_numpy(int)
        for half, measured in sorted(info["halves"].items()):
            chosen = np.flatnonzero(halves == half)
            searched, union = _searched(refine_dir, it, info, chosen, device)
            work, source = measured["work"], "logged"
            if work is None:
                significant = particles["rlnNrOfSignificantSamples"].to_numpy(float)[chosen]
                t = translation_count(info, ndim)
                work = _estimated_work(searched, significant, union, t=t, ndim=ndim)
                source = "estimated"
            load = float(_load_bytes(particles.iloc[chosen], star_path, headers).sum())
            floors, counts = _half_floors(
                {**info, "union": union}, ndim, work, len(chosen), load, ori_size, rates,
                precision,
            )  # fmt: skip
            seconds = {p: measured.get("phases", {}).get(_LOG_PHASE.get(p, p), math.nan)
                       for p in PHASES}  # fmt: skip
            seconds["e_step"] = measured.get("e_step", math.nan)
            for phase in PHASES:
                floor = floors[phase]
                rows.append({
                    "iteration": it, "half_set": half, "phase": phase,
                    "measured_seconds": seconds[phase], "floor_seconds": floor,
                    "measured_over_floor": seconds[phase] / floor if floor > 0 else math.inf,
                    "current_size": info["current_size"], "coarse_size": info["coarse_size"],
                    "healpix_order": info["healpix_order"],
                    "local_searches": info["local_searches"], "counts": source, "work": counts,
                })  # fmt: skip
    return rows


def iteration_totals(rows: list[dict]) -> list[dict]:
    """``floor_rows`` summed over half sets: per iteration and phase, measured and floor
    seconds and their ratio; ``counts`` "logged" only when every half set's were."""
    totals: dict[tuple[int, str], dict] = {}
    for r in rows:
        key = (r["iteration"], r["phase"])
        total = totals.setdefault(key, {"iteration": key[0], "phase": key[1], "half_sets": 0,
                                        "measured_seconds": 0.0, "floor_seconds": 0.0,
                                        "counts": "logged"})  # fmt: skip
        total["half_sets"] += 1
        total["measured_seconds"] += r["measured_seconds"]
        total["floor_seconds"] += r["floor_seconds"]
        if r["counts"] != "logged":
            total["counts"] = "estimated"
    out = [totals[key] for key in sorted(totals, key=lambda k: (k[0], PHASES.index(k[1])))]
    for total in out:
        floor = total["floor_seconds"]
        total["measured_over_floor"] = total["measured_seconds"] / floor if floor > 0 else math.inf
    return out


def format_table(rows: list[dict]) -> str:
    """``iteration | half | phase | measured s | floor s | measured/floor | counts``, per row."""
    lines = ["iteration | half | phase | measured_s | floor_s | measured/floor | counts"]
    lines += [
        f"{r['iteration']:3d} | {r['half_set']} | {r['phase']:6s} | {r['measured_seconds']:10.4g} "
        f"| {r['floor_seconds']:10.4g} | {r['measured_over_floor']:8.3g} | {r['counts']}"
        for r in rows
    ]
    return "\n".join(lines)


def format_totals(totals: list[dict]) -> str:
    """``iteration_totals`` compactly: per iteration, per phase ``measured/floor=ratio``."""
    lines = ["E-step floor (half sets summed), per phase: measured s / floor s = ratio"]
    for it in sorted({t["iteration"] for t in totals}):
        mine = [t for t in totals if t["iteration"] == it]
        cells = [f"{t['phase']} {t['measured_seconds']:.3g}/{t['floor_seconds']:.3g}"
                 f"={t['measured_over_floor']:.3g}" for t in mine]  # fmt: skip
        lines.append(f"iter {it:3d} ({mine[0]['counts']}): " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refine", type=Path, required=True, help="the refine's output folder")
    parser.add_argument("--gpu", action="store_true", help="measure the rates on cuda:0")
    parser.add_argument(
        "--precision",
        choices=("float32", "tf32"),
        default="float32",
        help="which matrix rate the floors use (the refine's --precision)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (rates and rows)")
    args = parser.parse_args()
    device = torch.device("cuda:0" if args.gpu else "cpu")
    rates = measure_rates(device, rate_shapes(args.refine, gpu=args.gpu), repeats=args.repeats)
    rows = floor_rows(args.refine, rates, precision=args.precision, device=device)
    totals = iteration_totals(rows)
    lines = [*rate_lines(rates, args.precision), format_table(rows), format_totals(totals)]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out is not None:
        payload = {"precision": args.precision, "rates": rates, "rows": rows, "totals": totals}
        args.out.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
