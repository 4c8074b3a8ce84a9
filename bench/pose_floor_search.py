"""The likelihood about a pose, as ``bench/pose_floor.py`` measures it (its docstring).

Particles read and masked as the refine reads them, on the E-step's window in float64
(``read_particles``); the refine driver's reference (``reference``); the E-step's
scores at lists of rotations and origins, their search on nested grids and the
Cramer-Rao (sandwich) covariance of the optimum (``Scorer``); Gaussian errors drawn
from those covariances (``predicted_errors``) and RELION's accuracy heuristic
(``heuristic``).
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cryorefine.fourier import (
    fourier_crop,
    from_fourier,
    low_pass,
    mask_with_background,
    prepare_reference,
    shift_fourier,
    soft_sphere_mask,
    to_fourier,
)
from cryorefine.geometry import axis_angle_to_matrix, matrix_to_euler
from cryorefine.io import ParticleSet, load_particles
from cryorefine.likelihood import fourier_window, gather_window, squared_differences, window_phases
from cryorefine.likelihood.passes import RowProjector
from cryorefine.refine.accuracy import estimate_accuracies
from cryorefine.tomo import particle_batches

ROTATION_STAGES = ((1.5, 0.5), (0.4, 0.1), (0.1, 0.025))  # (half width, step) in degrees
SHIFT_STAGES = ((1.0, 0.25), (0.25, 0.05), (0.05, 0.01))  # (half width, step) in pixels
MAX_RECENTRES = 4  # the first rotation stage is repeated while its best lies on its edge
MASK_EDGE_PX = 5.0  # refine's --maskedge default
PADDING = 2  # refine's --pad default


@dataclass(frozen=True)
class Particles:
    """The scored particles on the E-step's window, float64, at their table's poses."""

    data: Tensor  # (b, k) complex, not shifted
    ctf: Tensor  # (b, k) K of X = K P
    weight: Tensor  # (b, k) 1 / (2 sigma2) [/ M]
    variance: Tensor  # (b, k) E|noise|^2 of each coefficient (the simulation's)
    sigma2: Tensor  # (s,) RELION's sigma2 per shell (E|noise|^2 / 2 [/ M])
    rotations: Tensor  # (b, 3, 3)
    origins_px: Tensor  # (b, ndim)
    ndim: int
    box: int


def particle_table(sim: Path, truth: bool = True) -> ParticleSet:
    """The simulation's particles (true poses), or a run's, through the refine's reader."""
    star = sim / "truth_particles.star" if truth else sim
    return load_particles(star)


def read_particles(
    table: ParticleSet,
    rows: np.ndarray,
    *,
    size: int,
    noise_power: float,
    mask: bool,
    diameter: float,
) -> Particles:
    """Particles ``rows`` of ``table`` on the window of ``size`` (module docstring)."""
    batch = next(
        particle_batches(table, batch_size=len(rows), device=torch.device("cpu"), rows=rows)
    )
    ndim = batch.origins_px.shape[1]
    n = batch.data_ft.shape[1]
    data_ft = batch.data_ft.to(torch.complex128)
    if mask:  # refine.half_pass._masked with --zero_mask
        sphere = soft_sphere_mask(
            n,
            ndim,
            radius_px=diameter / (2 * float(table.pixel_size_angst[0])),
            edge_width_px=MASK_EDGE_PX,
            device=None,
            dtype=torch.float64,
        )
        images = from_fourier(shift_fourier(data_ft, batch.origins_px), n, ndim)
        data_ft = shift_fourier(
            to_fourier(mask_with_background(images, sphere), ndim), -batch.origins_px
        )
    window = fourier_window(size, ndim, device=torch.device("cpu"))

    def on_window(grid: Tensor) -> Tensor:
        return gather_window(fourier_crop(grid, size, ndim=ndim), window)

    ctf = on_window(batch.ctf.to(torch.float64))
    # noise variance per coefficient, E|F|^2 (simulate.images): N, or ctf2 N / n^2 for RELION-4
    variance = torch.full_like(ctf, noise_power)
    sigma2 = torch.full((n // 2 + 1,), noise_power / 2, dtype=torch.float64)
    weight = 0.5 / sigma2[window.shell].expand_as(ctf)
    if batch.multiplicity is not None:
        multiplicity = on_window(batch.multiplicity.to(torch.float64))
        variance = ctf.clamp(min=0) * noise_power / n**2
        # the E-step's sigma2 is per shell: the shell mean of variance / M over the particles
        shell = window.shell
        ratio = torch.where(multiplicity > 0.1, variance / multiplicity.clamp(min=0.1), 0.0)
        counts = torch.zeros(n // 2 + 1, dtype=torch.float64).index_add_(
            0, shell, (multiplicity > 0.1).double().sum(0)
        )
        sums = torch.zeros(n // 2 + 1, dtype=torch.float64).index_add_(0, shell, ratio.sum(0))
        sigma2 = 0.5 * sums / counts.clamp(min=1)
        weight = torch.where(
            multiplicity > 0.1, 0.5 / (sigma2[shell] * multiplicity).clamp(min=1e-300), 0.0
        )
        weight = torch.where(sigma2[shell] > 0, weight, 0.0)
    return Particles(
        data=on_window(data_ft),
        ctf=ctf,
        weight=weight,
        variance=variance,
        sigma2=sigma2,
        rotations=batch.rotations.to(torch.float64),
        origins_px=batch.origins_px.to(torch.float64),
        ndim=ndim,
        box=n,
    )


def reference(volume: np.ndarray, *, lowpass_shells: float | None, gridding: str) -> Tensor:
    """The refine driver's projector of a map (``prepare_reference``, padding 2), float64."""
    v = torch.as_tensor(np.asarray(volume, dtype=np.float64))
    if lowpass_shells is not None:
        v = from_fourier(
            low_pass(to_fourier(v, 3), cutoff_shells=lowpass_shells, ndim=3), v.shape[0], 3
        )
    return prepare_reference(v, padding_factor=PADDING, gridding_correction=gridding)  # type: ignore[arg-type]


def skew_exp(vectors_deg: Tensor) -> Tensor:
    """Rotation matrices ``expm([w]x)`` of rotation vectors in degrees (``(..., 3)``).

    ``geometry.axis_angle_to_matrix`` about ``w / |w|`` by ``|w|``; the zero vector
    (any axis, angle 0) gives the identity.
    """
    angles = torch.linalg.vector_norm(vectors_deg, dim=-1)
    axes = torch.where(angles[..., None] > 0, vectors_deg, vectors_deg.new_tensor([0.0, 0.0, 1.0]))
    return axis_angle_to_matrix(axes, angles)


def cube(half: float, step: float, ndim: int) -> Tensor:
    """All points of a cubic grid of ``half`` width and ``step`` (float64, ``(g, ndim)``)."""
    axis = torch.arange(-round(half / step), round(half / step) + 1, dtype=torch.float64) * step
    return torch.cartesian_prod(*([axis] * ndim)).reshape(-1, ndim)


class Scorer:
    """``squared_differences`` of one particle at lists of rotations and origins (float64)."""

    def __init__(self, particles: Particles, reference_ft: Tensor, size: int) -> None:
        self.p = particles
        self.window = fourier_window(size, particles.ndim, device=torch.device("cpu"))
        self.reference_ft = reference_ft

    def projections(self, rotations: Tensor) -> Tensor:
        """The E-step's projections of the reference at ``rotations``."""
        projector = RowProjector(self.reference_ft, rotations, self.window, PADDING)
        return projector.project(0, rotations.shape[0])

    def phases(self, origins: Tensor) -> Tensor:
        """Phases that move the data by ``+origin`` (the E-step's ``prepare``)."""
        return window_phases(self.window, origins, box_size=self.p.box, dtype=torch.complex128)

    def scores(self, b: int, rotations: Tensor, origins: Tensor) -> Tensor:
        """``(t, r)`` scores of particle ``b``."""
        p = self.p
        return squared_differences(
            p.data[b : b + 1],
            p.ctf[b : b + 1],
            p.weight[b : b + 1],
            self.projections(rotations),
            self.phases(origins),
            precision="float64",
        )[0]

    def search(
        self, b: int, start: Tensor, origin: Tensor, *, fit_translations: bool
    ) -> tuple[Tensor, Tensor]:
        """Best rotation and origin on the nested grids about ``start`` and ``origin``.

        Rotation stages (``ROTATION_STAGES``; the first re-centred while its best is on
        its edge), then, with ``fit_translations``, origin stages (``SHIFT_STAGES``), and
        once more the finer rotation and origin stages.
        """
        best_r, best_o = start, origin
        rounds = 2 if fit_translations else 1
        for round_index in range(rounds):
            stages = ROTATION_STAGES if round_index == 0 else ROTATION_STAGES[1:]
            for index, (half, step) in enumerate(stages):
                grid = cube(half, step, 3)
                for _ in range(MAX_RECENTRES if index == 0 and round_index == 0 else 1):
                    s = self.scores(b, skew_exp(grid) @ best_r, best_o[None])[0]
                    best = int(s.argmin())
                    best_r = skew_exp(grid[best]) @ best_r
                    if float(grid[best].abs().max()) < half - 1e-9:
                        break
            if fit_translations:
                for half, step in SHIFT_STAGES:
                    origins = best_o + cube(half, step, self.p.ndim)
                    s = self.scores(b, best_r[None], origins)[:, 0]
                    best_o = origins[int(s.argmin())]
        return best_r, best_o

    def covariance(
        self, b: int, rotation: Tensor, origin: Tensor, h_deg: float = 0.02
    ) -> tuple[Tensor, Tensor]:
        """Sandwich covariances (deg^2) of the rotation, origin known and origin fitted.

        Derivatives of ``K P S(-origin)`` by central differences of the rotation vector
        (degrees) and analytically in the origin (pixels); ``H = 2 sum w Re(D_i* D_j)``,
        ``G = 2 sum w^2 v Re(D_i* D_j)`` (``v`` = E|noise|^2), ``Cov = H^-1 G H^-1``: of
        the rotation block alone (origin known), and the rotation block of the whole.
        """
        p = self.p
        steps = torch.eye(3, dtype=torch.float64) * h_deg
        rotations = torch.cat([skew_exp(steps), skew_exp(-steps)]) @ rotation
        proj = self.projections(rotations) * p.ctf[b]
        # the model moved by -origin: its derivative by the origin is 2 pi i k / n times it
        phase = self.phases(-origin[None])[0]
        centre = self.projections(rotation[None])[0] * p.ctf[b] * phase
        d_rot = (proj[:3] - proj[3:]) * phase / (2 * h_deg)
        k = self.window.frequencies.to(torch.float64)[:, : p.ndim]
        d_shift = (2j * math.pi / p.box) * k.T * centre  # (ndim, k)
        d = torch.cat([d_rot, d_shift])
        w, v = p.weight[b], p.variance[b]
        re = (d.conj()[:, None, :] * d[None, :, :]).real  # (6, 6, k)
        h = 2 * (re * w).sum(-1)
        g = 2 * (re * (w * w * v)).sum(-1)
        h_inv = torch.linalg.inv(h)
        r_inv = torch.linalg.inv(h[:3, :3])
        return r_inv @ g[:3, :3] @ r_inv, (h_inv @ g @ h_inv)[:3, :3]


def predicted_errors(covariances: list[Tensor], draws: int = 4000, seed: int = 0) -> np.ndarray:
    """Angles (deg) of Gaussian rotation-vector errors with these 3x3 covariances, pooled."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for c in covariances:
        chol = torch.linalg.cholesky(c + 1e-18 * torch.eye(3, dtype=c.dtype))
        z = torch.randn((draws, 3), dtype=torch.float64, generator=generator)
        out.append((z @ chol.T).norm(dim=1).numpy())
    return np.concatenate(out)


def quantiles(errors: np.ndarray) -> dict[str, float]:
    """Median, 90 % and mean of a list of angles."""
    return {
        "median_deg": float(np.median(errors)),
        "p90_deg": float(np.quantile(errors, 0.9)),
        "mean_deg": float(np.mean(errors)),
    }


def heuristic(
    particles: Particles, reference_ft: Tensor, args: argparse.Namespace, sim: Path
) -> float:
    """RELION's acc_rot at the true poses with the true map (``refine.accuracy``)."""
    rows = np.arange(args.n_score)
    table = particle_table(sim)
    device = torch.device("cpu")
    batch = next(particle_batches(table, batch_size=len(rows), device=device, rows=rows))
    n, size, ndim = args.box, args.current_size or args.box, particles.ndim
    multiplicity = batch.multiplicity
    estimate = estimate_accuracies(
        reference_ft,
        matrix_to_euler(particles.rotations),
        fourier_crop(batch.ctf.double(), size, ndim=ndim),
        particles.sigma2.expand(len(rows), -1),
        torch.full((len(rows),), args.angpix, dtype=torch.float64),
        current_size=size,
        ori_size=n,
        data_dimensionality=ndim,
        generator=torch.Generator().manual_seed(0),
        multiplicity=None if multiplicity is None else fourier_crop(multiplicity, size, ndim=ndim),
    )
    return estimate.acc_rot_deg
