"""How precisely the data fix the poses, and what each noise rule believes, at the truth.

    python3 bench/pose_information.py SIM_FOLDER [--out pose_information.json]

For a RELION-4 simulation (``cryorefine simulate --format relion4``) with its truth,
true poses and known noise (the tilt images' noise power ``s2``: a voxel's noise
variance is ``s2 W / n^2``, W its CTF² weight), the Fisher information of each
particle's rotation and offset (six parameters) is summed over the coefficients of
shells 1 to n/2, from the truth projected at the true pose and at turns of 0.02 degree
about x, y and z:

- ``crb``: the Cramér-Rao bound, with the true noise;
- for each score weight ``1 / (2 sigma2 V)`` (``sigma2`` as the M-step estimates it,
  ``sum |noise|^2 / (2 sum M)`` per shell), with ``V = M`` (RELION-4) or ``V`` of
  ``refine.subtomo_noise`` (the default here): ``estimator``, the spread of the poses
  that maximise that likelihood (the sandwich ``I^-1 J I^-1``), ``belief``, the spread
  the likelihood itself implies (``I^-1``), and ``accuracy``, the turn about one axis at
  which the weighted SNR reaches ln 100 (RELION's test: ``sqrt(2 ln 100 / I_axis)``,
  averaged over particles and axes).

Each spread is printed as the median angular error it gives (degrees), drawn from the
particles' 3 x 3 rotation covariances. The ratio ``c(r)`` of ``V`` is taken from the
particles given, as refine takes it from the first 100 of each optics group.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from cryorefine.fourier import (
    frequency_indices,
    friedel_redundant,
    prepare_reference,
    rotate_volume,
    shell_index,
)
from cryorefine.fourier.ctf import ctf_volume_to_half_complex
from cryorefine.fourier.shells import shell_sums
from cryorefine.geometry import euler_to_matrix
from cryorefine.io import load_particles, read_mrc
from cryorefine.likelihood.subtomo_noise import MULTIPLICITY_MIN
from cryorefine.refine.accuracy import SNR_THRESHOLD
from cryorefine.refine.subtomo_noise import noise_scale_grid

TURN_RAD = math.radians(0.02)


def _generator(axis: int) -> torch.Tensor:
    matrix = torch.zeros(3, 3, dtype=torch.float64)
    i, j = (axis + 1) % 3, (axis + 2) % 3
    matrix[j, i], matrix[i, j] = 1.0, -1.0
    return matrix


def particle_terms(sim: Path) -> dict[str, torch.Tensor]:
    """Gradients ``(b, 6, n, n, nh)`` of ``W P`` in rotation (per radian) and offset (per
    pixel), with ``W``, ``M`` and the noise variance ``(b, n, n, nh)``."""
    record = json.loads((sim / "simulation.json").read_text())
    truth, _ = read_mrc(sim / "truth.mrc")
    n = truth.shape[0]
    reference = prepare_reference(torch.as_tensor(np.asarray(truth), dtype=torch.float64))
    particles = load_particles(sim / "truth_particles.star", check_images=False)
    poses = euler_to_matrix(torch.from_numpy(particles.angles_deg()))
    k = frequency_indices(n, 3).to(torch.float64)  # (n, n, nh, 3): x, y, z
    turns = [
        torch.linalg.matrix_exp(sign * TURN_RAD * _generator(a))
        for a in range(3)
        for sign in (1, -1)
    ]
    gradients, ctf2, multiplicity = [], [], []
    for pose, image in zip(poses, particles.image_paths(), strict=True):
        weights, _ = read_mrc(Path(str(image).replace("_data.mrc", "_weights.mrc")))
        w, m = ctf_volume_to_half_complex(
            torch.as_tensor(np.asarray(weights), dtype=torch.float64),
            box_size=n,
            ctf_premultiplied=True,
        )
        assert m is not None
        poses_turned = torch.stack([pose] + [pose @ turn for turn in turns])
        views = rotate_volume(reference, poses_turned, out_size=n)
        model = w * views[0]
        rotation = [w * (views[1 + 2 * a] - views[2 + 2 * a]) / (2 * TURN_RAD) for a in range(3)]
        offset = [-2j * math.pi * k[..., a] / n * model for a in range(3)]
        gradients.append(torch.stack(rotation + offset))
        ctf2.append(w)
        multiplicity.append(m)
    w, m = torch.stack(ctf2), torch.stack(multiplicity)
    variance = w * record["noise_power_per_coefficient"] / n**2  # simulate.images
    return {"gradients": torch.stack(gradients), "ctf2": w, "multiplicity": m, "variance": variance}


def spreads(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The figures of the module docstring, in degrees."""
    g, w, m, variance = terms["gradients"], terms["ctf2"], terms["multiplicity"], terms["variance"]
    n = w.shape[-2]
    shells = shell_index(n, 3)
    scored = (shells >= 1) & (shells <= n // 2) & ~friedel_redundant(n, 3)
    used = scored & (m > MULTIPLICITY_MIN)
    sigma2 = shell_sums(torch.where(used, variance, 0.0), n, 3).sum(0) / (
        2 * shell_sums(torch.where(used, m, 0.0), n, 3).sum(0).clamp(min=1e-300)
    )
    ratio = shell_sums(torch.where(used, w, 0.0), n, 3).sum(0) / shell_sums(
        torch.where(used, m, 0.0), n, 3
    ).sum(0).clamp(min=1e-300)
    per_voxel_sigma2 = sigma2[shells.clamp(max=n // 2)]
    flat = g.flatten(2)

    def information(weight: torch.Tensor) -> torch.Tensor:  # 2 Re sum w g g^H, (b, 6, 6)
        weight = torch.where(scored, weight, 0.0).flatten(1).to(flat.dtype)
        return 2 * torch.einsum("bik,bjk,bk->bij", flat.conj(), flat, weight).real

    def median_error(covariance: torch.Tensor) -> float:
        root = torch.linalg.cholesky(covariance[:, :3, :3])
        draws = torch.randn(
            256, len(root), 3, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )
        return math.degrees(float((root @ draws).squeeze(-1).norm(dim=-1).median()))

    out = {"crb": median_error(torch.linalg.inv(information(1.0 / variance.clamp(min=1e-300))))}
    rules = {"relion4": torch.where(m > MULTIPLICITY_MIN, m, 1.0)}
    rules["ctf2"] = noise_scale_grid(w, m, ratio.expand(len(w), -1))
    for name, scale in rules.items():
        weight = torch.where(used, 1.0 / (2 * per_voxel_sigma2 * scale), 0.0)
        fisher = information(weight)
        inverse = torch.linalg.inv(fisher)
        sandwich = inverse @ information(weight**2 * variance) @ inverse
        axes = torch.diagonal(fisher, dim1=1, dim2=2)[:, :3]
        out[f"{name}_estimator"] = median_error(sandwich)
        out[f"{name}_belief"] = median_error(inverse)
        out[f"{name}_accuracy"] = math.degrees(float((2 * SNR_THRESHOLD / axes).sqrt().mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sim", type=Path, help="a relion4 simulation folder")
    parser.add_argument("--out", type=Path, default=Path("pose_information.json"))
    args = parser.parse_args()
    figures = spreads(particle_terms(args.sim))
    values = " | ".join(f"{value:.3f}" for value in figures.values())
    sys.stdout.write(" | ".join(figures) + "\n" + values + "\n")
    args.out.write_text(json.dumps({"sim": str(args.sim), **figures}, indent=1))


if __name__ == "__main__":
    main()
