"""Union of a batch's candidate lists under ``search_order``, on a run's own poses.

    python3 bench/search_order_bench.py --data run_it017_data.star[.gz] [--order 4]
        [--sym C6] [--half_set 1] [--batch 133 66] [--out FILE]

A local search at HEALPix ``--order`` (sigma 2 x the fine step in all three
angles, as auto-refine enters it) about each particle's angles in ``--data``
(``rlnAngleRot/Tilt/Psi`` of one half set): the candidate list of every particle
(``orientation_priors``), then for batches of consecutive particles the size of
the union of their lists, for the particles taken in ``search_order``, sorted
by direction then psi (the previous order), and at random. The coarse pass
projects each batch's union once, so its rows per particle are what the
projections cost. Prints a table and writes it as JSON.
"""

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import starfile
import torch

from cryorefine.geometry import (
    SIGMA_CUTOFF,
    angular_step_deg,
    asymmetric_unit_pixels,
    local_psi_prior,
    psi_angles_deg,
    translation_grid,
)
from cryorefine.geometry.symmetry import point_group
from cryorefine.likelihood import ExpectationPlan, OrientationGrid
from cryorefine.refine.model import RefineState
from cryorefine.refine.orientation_priors import _direction_prior, orientation_priors, search_order


def _angles(path: Path, half_set: int) -> torch.Tensor:
    if path.suffix == ".gz":
        with tempfile.NamedTemporaryFile(suffix=".star") as plain:
            plain.write(gzip.decompress(path.read_bytes()))
            plain.flush()
            table = starfile.read(plain.name)["particles"]
    else:
        table = starfile.read(path)["particles"]
    table = table[table.rlnRandomSubset == half_set]
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    return torch.tensor(table[columns].to_numpy(), dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--sym", default="C6")
    parser.add_argument("--half_set", type=int, default=1)
    parser.add_argument("--batch", type=int, nargs="+", default=[133, 66])
    parser.add_argument("--out", type=Path, default=Path("search_order_bench.json"))
    args = parser.parse_args()
    cpu = torch.device("cpu")
    angles = _angles(args.data, args.half_set)
    group = point_group(args.sym, device=cpu)
    fine = angular_step_deg(args.order, oversampling=1)
    state = RefineState(
        iteration=1, healpix_order=args.order, psi_step_deg=2 * fine, offset_range_angst=4.0,
        offset_step_angst=2.0, current_resolution_inv_angst=0.05,
        best_resolution_inv_angst=0.05, current_size=96, coarse_size=96, incr_size=10,
        local_searches=True, sigma_rot_deg=2 * fine, sigma_tilt_deg=2 * fine,
        sigma_psi_deg=2 * fine,
    )  # fmt: skip
    grid = OrientationGrid(
        healpix_order=args.order,
        pixels=asymmetric_unit_pixels(args.order, group),
        psi_deg=psi_angles_deg(state.psi_step_deg, device=cpu),
    )
    plan = ExpectationPlan(
        ori_size=96, current_size=96, coarse_size=96, orientations=grid,
        translations_px=translation_grid(0.96, 0.5, ndim=3, device=cpu), offset_step_px=0.5,
        sigma2_offset_px2=1.0, max_bytes=2**31,
    )  # fmt: skip
    operators = group.rotations
    lists = []
    for lo in range(0, angles.shape[0], 512):
        log_prior, ids = orientation_priors(plan, state, None, operators, angles[lo : lo + 512])
        valid = torch.isfinite(log_prior)
        lists += [ids[i][valid[i]].numpy() for i in range(ids.shape[0])]
    direction = _direction_prior(grid, state, operators, angles).argmax(dim=1).numpy()
    psi_weights = local_psi_prior(
        angles[:, 2], grid.psi_deg.to(angles), sigma_deg=state.sigma_psi_deg
    )
    psi = psi_weights.argmax(dim=1).numpy()
    orders = {
        "search_order": search_order(plan, state, operators, angles),
        "direction_then_psi": np.lexsort((psi, direction)),
        "random": np.random.default_rng(0).permutation(len(lists)),
    }
    rows = []
    for name, order in orders.items():
        for b in args.batch:
            unions = [
                len(np.unique(np.concatenate([lists[j] for j in order[lo : lo + b]])))
                for lo in range(0, len(order), b)
            ]
            per_particle = float(np.sum(unions)) / len(lists)
            rows.append({"order": name, "batch": b, "mean_union": float(np.mean(unions)),
                         "union_rows_per_particle": per_particle})  # fmt: skip
    summary = {
        "data": str(args.data), "order": args.order, "sym": args.sym, "particles": len(lists),
        "grid": grid.count, "mean_list": float(np.mean([len(x) for x in lists])),
        "sigma_deg": state.sigma_psi_deg, "psi_cutoff_sigmas": SIGMA_CUTOFF, "rows": rows,
    }  # fmt: skip
    lines = [
        f"{len(lists)} particles, HEALPix order {args.order} ({grid.count} orientations), "
        f"lists of {summary['mean_list']:.0f} on average",
        "order | batch | mean union | union rows per particle",
    ]
    lines += [
        f"{r['order']} | {r['batch']} | {r['mean_union']:.0f} | {r['union_rows_per_particle']:.1f}"
        for r in rows
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
