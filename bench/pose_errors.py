"""How a refinement's poses miss the truth: the distribution of angular errors, and for the
particles far off, the residual rotation (angle, and axis against the symmetry axis z).

    python3 bench/pose_errors.py --data run_itNNN_data.star --sim SIMULATION_DIR [--sym C6]
        [--far_deg 30] [--out FILE]

``--sim`` is the folder ``cryorefine simulate`` wrote (truth_particles.star,
simulation.json); particles are matched by image file and index, the refined
frame by ``simulate.evaluate.best_global_frame``. For the particles more than
``--far_deg`` off: the rotation ``D = T^T R G`` that is left (``G`` the symmetry
operator that makes it smallest), its angle and ``|axis_z|`` (1: about the
symmetry axis, 0: about an axis perpendicular to it; a flip of a C_n particle
upside down is 180 degrees about a perpendicular axis), and their true tilts
beside everyone's. For every particle, the same residual as a rotation vector in the
particle's own frame: the spread of its x, y and z components (z the symmetry axis of
C_n and D_n) says about which axis the poses are least determined (a C6 ring's azimuth
about z is the weakest). Prints a table and writes it as JSON.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cryorefine.geometry import euler_to_matrix, point_group, symmetric_angular_distance_deg
from cryorefine.io import load_particles
from cryorefine.simulate.evaluate import best_global_frame, reference_rotation_of


def _keys(particles) -> list[tuple[str, int]]:
    paths = [str(path.resolve()) for path in particles.image_paths()]
    return list(zip(paths, particles.image_indices().tolist(), strict=True))


def residual_vectors_deg(
    refined: torch.Tensor, true: torch.Tensor, group: torch.Tensor
) -> torch.Tensor:
    """``(n, 3)`` rotation vectors (degrees) of ``T^T R G``, ``G`` the operator nearest to 1.

    ``refined`` and ``true`` are ``(n, 3, 3)``, ``group`` ``(g, 3, 3)``; the vector's
    components are in the particle's (the reference's) frame; a half turn's axis is
    that of the symmetric part (its sign is arbitrary).
    """
    candidates = true.transpose(1, 2)[:, None] @ refined[:, None] @ group.transpose(1, 2)[None]
    traces = candidates.diagonal(dim1=-2, dim2=-1).sum(-1)  # (n, g)
    d = candidates[torch.arange(len(refined)), traces.argmax(1)]  # (n, 3, 3)
    angle = torch.arccos(((d.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    axis = torch.stack(
        [d[:, 2, 1] - d[:, 1, 2], d[:, 0, 2] - d[:, 2, 0], d[:, 1, 0] - d[:, 0, 1]], 1
    )
    half_turns = (axis.norm(dim=1) < 1e-6) & (angle > torch.pi / 2)  # the symmetric part's axis
    if bool(half_turns.any()):
        symmetric = (d[half_turns] + d[half_turns].transpose(1, 2)) / 2
        axis[half_turns] = torch.linalg.eigh(symmetric).eigenvectors[:, :, -1]
    return torch.nn.functional.normalize(axis, dim=1) * torch.rad2deg(angle)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sim", type=Path, required=True)
    parser.add_argument("--sym", default="C1")
    parser.add_argument("--far_deg", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("pose_errors.json"))
    args = parser.parse_args()
    refined = load_particles(args.data, check_images=False)
    truth = load_particles(args.sim / "truth_particles.star", check_images=False)
    by_image = {key: i for i, key in enumerate(_keys(truth))}
    order = np.array([by_image[key] for key in _keys(refined)])
    refined_m = euler_to_matrix(torch.from_numpy(refined.angles_deg())).double()
    true_angles = truth.angles_deg()[order]
    true_m = euler_to_matrix(torch.from_numpy(true_angles)).double()
    group = point_group(args.sym, device="cpu").rotations.double()
    frame = best_global_frame(refined_m, true_m, group, start=reference_rotation_of(args.sim))
    aligned = refined_m @ frame.double()
    errors = symmetric_angular_distance_deg(aligned, true_m, group).numpy()
    far = np.nonzero(errors > args.far_deg)[0]
    vectors = residual_vectors_deg(aligned, true_m, group).numpy()
    far_angles = np.linalg.norm(vectors[far], axis=1)
    residuals = np.stack([far_angles, np.abs(vectors[far, 2]) / far_angles], axis=1)

    def q(values: np.ndarray) -> list[float]:  # 10, 50 and 90 % quantiles; none if empty
        return np.quantile(values, [0.1, 0.5, 0.9]).tolist() if len(values) else []

    summary = {
        "data": str(args.data), "particles": len(errors), "sym": args.sym,
        "median_error_deg": float(np.median(errors)), "mean_error_deg": float(errors.mean()),
        "share_above_deg": {str(x): float((errors > x).mean()) for x in (5, 10, 30, 90, 150)},
        "particle_frame_std_deg_xyz": vectors.std(axis=0).tolist(),
        "particle_frame_mean_deg_xyz": vectors.mean(axis=0).tolist(),
        "far_deg": args.far_deg, "far": len(far),
        "far_angle_deg_q10_50_90": q(residuals[:, 0]),
        "far_axis_z_q10_50_90": q(residuals[:, 1]),
        "far_true_tilt_q10_50_90": q(true_angles[far, 1]),
        "all_true_tilt_q10_50_90": q(true_angles[:, 1]),
    }  # fmt: skip
    lines = [f"{len(errors)} particles: median error {summary['median_error_deg']:.2f} deg, "
             f"mean {summary['mean_error_deg']:.2f} deg", "above (deg) | share"]  # fmt: skip
    lines += [f"{key} | {value:.3f}" for key, value in summary["share_above_deg"].items()]
    lines.append("residual rotation in the particle frame, std about x, y, z (deg): "
                 + " ".join(f"{x:.3f}" for x in summary["particle_frame_std_deg_xyz"]))  # fmt: skip
    if len(far):
        lines += [
            f"{len(far)} particles above {args.far_deg:g} deg; quantiles 10/50/90 %:",
            f"  residual angle {np.round(summary['far_angle_deg_q10_50_90'], 1).tolist()} deg",
            f"  |axis z| {np.round(summary['far_axis_z_q10_50_90'], 2).tolist()}",
            f"  true tilt {np.round(summary['far_true_tilt_q10_50_90'], 1).tolist()} deg "
            f"(everyone: {np.round(summary['all_true_tilt_q10_50_90'], 1).tolist()})",
        ]
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
