"""One half set through the E-step: batches prepared, scored, and their sums accumulated.

For each batch of ``tomo.particle_batches``: the images are masked in the
particle's centred frame (``--particle_diameter``, ``--maskedge``; background
mean with ``--zero_mask``, else noise of the current spectrum), cropped to the
current size, given their noise spectrum, offset and orientation priors, and
passed to ``likelihood.expectation``; the per-orientation sums go into the
half set's back-projector, the rest into ``HalfSetSums`` and the new poses.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.fourier import (
    fourier_crop,
    from_fourier,
    mask_with_background,
    shell_sums,
    shift_fourier,
    soft_sphere_mask,
    to_fourier,
    zero_accumulators,
)
from cryorefine.geometry import local_direction_prior, local_psi_prior, pixel_rot_tilt_deg
from cryorefine.io import ParticleSet
from cryorefine.likelihood import (
    ExpectationPlan,
    ParticleTerms,
    expectation,
    insert_backprojection,
    projection_cache,
)
from cryorefine.likelihood.search import compact
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.particle_noise import particle_noise_images
from cryorefine.tomo import ParticleBatch, particle_batches

__all__ = ["HalfSetSums", "PoseUpdate", "run_half_set"]


@dataclass
class HalfSetSums:
    """What one half set's E-step gives to its M-step (float64 sums, on the device)."""

    data: Tensor
    weight: Tensor
    noise: Float[Tensor, "o s"]
    multiplicity: Float[Tensor, "o s"] | None
    weight_per_group: Float[Tensor, " o"]
    offset_moments_angst2: float
    direction_mass: Float[Tensor, " m"]
    pmax_sum: float
    count: int


@dataclass
class PoseUpdate:
    """New poses and statistics of the half set's particles (rows of the particle set)."""

    rows: np.ndarray
    angles_deg: np.ndarray
    origins_angst: np.ndarray
    pmax: np.ndarray
    significant_samples: np.ndarray
    log_likelihood: np.ndarray


def _masked(
    batch: ParticleBatch,
    mask: Tensor,
    sigma2: Tensor,
    *,
    zero_mask: bool,
    noise_seed: int,
) -> Tensor:
    """Masked transforms: centred by +origin, masked, shifted back (size n).

    ``sigma2``: the batch's noise spectra. The background noise of each particle
    depends on ``noise_seed`` and its row only (``particle_noise``), not on the
    batch, the rank or the device.
    """
    ndim = batch.origins_px.shape[1]
    n = mask.shape[0]
    centred = shift_fourier(batch.data_ft, batch.origins_px)
    images = from_fourier(centred, n, ndim)
    noise = None
    if not zero_mask:
        noise = particle_noise_images(sigma2, batch.rows, n, ndim, seed=noise_seed).to(images)
    masked = to_fourier(mask_with_background(images, mask, noise=noise), ndim)
    return shift_fourier(masked, -batch.origins_px)


def _orientation_priors(
    batch: ParticleBatch,
    plan: ExpectationPlan,
    state: RefineState,
    model: HalfSetModel,
    operators: Tensor,
    angles_deg: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Log priors of coarse orientations: the pdf (global) or Gaussians about the poses (local)."""
    grid = plan.orientations
    p = grid.psi_deg.shape[0]
    b = batch.rows.shape[0]
    if not state.local_searches:
        pdf = model.orientation_pdf
        if pdf is None or pdf.shape[0] != grid.pixels.shape[0]:
            log_dir = torch.zeros(
                grid.pixels.shape[0], dtype=torch.float64, device=angles_deg.device
            )
        else:
            log_dir = torch.log(pdf.to(angles_deg.device).clamp(min=1e-300))
        return log_dir.repeat_interleave(p).expand(b, -1).contiguous(), None
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, grid.pixels)
    directions = local_direction_prior(
        angles_deg[:, :2], rot_tilt, sigma_deg=state.sigma_rot_deg, operators=operators
    )
    psis = local_psi_prior(
        angles_deg[:, 2], grid.psi_deg.to(angles_deg), sigma_deg=state.sigma_psi_deg
    )
    # Only the (direction, psi) pairs inside both cut-offs: (b, ld * lp), never (b, m * p).
    dir_ids, dir_valid = compact(directions > 0)
    psi_ids, psi_valid = compact(psis > 0)
    log_dir = torch.where(dir_valid, torch.log(torch.gather(directions, 1, dir_ids)), -math.inf)
    log_psi = torch.where(psi_valid, torch.log(torch.gather(psis, 1, psi_ids)), -math.inf)
    ids = (dir_ids[:, :, None] * p + psi_ids[:, None, :]).reshape(b, -1)
    log_prior = (log_dir[:, :, None] + log_psi[:, None, :]).reshape(b, -1)
    return log_prior, ids


def run_half_set(
    particles: ParticleSet,
    rows: np.ndarray,
    model: HalfSetModel,
    state: RefineState,
    options: RefineOptions,
    plan: ExpectationPlan,
    *,
    optics_group: np.ndarray,
    operators: Tensor,
    reference_ft: Tensor,
    batch_size: int,
    device: torch.device,
    noise_seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[HalfSetSums, PoseUpdate]:
    """E-step of one half set; returns its sums and the particles' new poses.

    ``noise_seed`` seeds the background noise (``particle_noise``): a particle's
    noise does not depend on the batch, the rank or the order of ``rows``.
    """
    n = model.ori_size
    ndim = 2 if particles.image_dimensionality == 2 else 3
    pixel = model.pixel_size_angst
    radius = (
        options.particle_diameter / (2 * pixel)
        if options.particle_diameter > 0
        else n / 2 - options.maskedge
    )
    mask = soft_sphere_mask(
        n, ndim, radius_px=radius, edge_width_px=options.maskedge, device=device
    )
    data, weight = zero_accumulators(n, padding_factor=options.pad, device=device)
    nr_groups, shells = model.sigma2_noise.shape
    sigma2_all = model.sigma2_noise.to(device)
    angles_all = particles.angles_deg()  # once: the table is not re-read per batch
    noise = torch.zeros(nr_groups, shells, dtype=torch.float64, device=device)
    multiplicity_sums = None
    weight_per_group = torch.zeros(nr_groups, dtype=torch.float64, device=device)
    direction_mass = torch.zeros(
        plan.orientations.pixels.shape[0], dtype=torch.float64, device=device
    )
    offsets = 0.0
    pmax_sum = 0.0
    cache = None
    if not state.local_searches:
        # The fine cache holds 8 children per coarse orientation: for 3D data that is
        # 8 rotated volumes each, too much to keep; it is built for 2D data only.
        cache = projection_cache(reference_ft, plan, ndim=ndim, fine=ndim == 2)
    outputs: dict[str, list[np.ndarray]] = {
        key: [] for key in ("angles", "origins", "pmax", "nsig", "ll")
    }
    done = 0
    m = plan.current_size
    for batch in particle_batches(
        particles,
        batch_size=batch_size,
        device=device,
        use_ctf=options.ctf,
        rows=rows,
        intact_first_peak=options.ctf_intact_first_peak,
    ):
        host_rows = batch.rows.cpu().numpy()  # one transfer per batch
        host_groups = torch.as_tensor(optics_group[host_rows])
        groups = host_groups.to(device)
        sigma2 = sigma2_all[groups]
        masked_full = _masked(
            batch, mask, sigma2, zero_mask=options.zero_mask, noise_seed=noise_seed
        )
        angles = torch.as_tensor(angles_all[host_rows], device=device)
        log_prior, ids = _orientation_priors(batch, plan, state, model, operators, angles)
        terms = ParticleTerms(
            masked_ft=fourier_crop(masked_full, m, ndim=ndim),
            unmasked_ft=fourier_crop(batch.data_ft, m, ndim=ndim),
            ctf=fourier_crop(batch.ctf, m, ndim=ndim),
            sigma2_noise=sigma2,
            origins_px=batch.origins_px,
            offset_priors_px=torch.zeros_like(batch.origins_px),
            log_prior_orientations=log_prior,
            orientation_ids=ids,
            multiplicity=None
            if batch.multiplicity is None
            else fourier_crop(batch.multiplicity, m, ndim=ndim),
            ctf_premultiplied=batch.ctf_premultiplied,
        )
        result = expectation(terms, reference_ft, plan, cache=cache)
        backprojection = result.backprojection
        insert_backprojection(
            backprojection.data,
            backprojection.weight,
            backprojection.rotations,
            backprojection.window,
            accumulator_data=data,
            accumulator_weight=weight,
            padding_factor=options.pad,
        )
        residual = result.shell_sums.residual_power.clone()
        beyond = shell_sums(masked_full.abs() ** 2, n, ndim).to(torch.float64)  # (b, s)
        outside = torch.arange(shells, device=device) > m // 2
        residual[:, outside] = (beyond * result.weight_sums[:, None])[:, outside]
        noise.index_add_(0, groups, residual)
        weight_per_group.index_add_(0, groups, result.weight_sums.to(torch.float64))
        if result.multiplicity_sums is not None:
            full_mult = shell_sums(batch.multiplicity, n, ndim).to(torch.float64)
            mult = result.multiplicity_sums.clone().to(torch.float64)
            mult[:, outside] = (full_mult * result.weight_sums[:, None])[:, outside]
            if multiplicity_sums is None:
                multiplicity_sums = torch.zeros_like(noise)
            multiplicity_sums.index_add_(0, groups, mult)
        offsets += float(result.offset_moments_px2.sum()) * pixel**2
        pmax_sum += float(result.pmax.sum())
        direction_mass += result.direction_mass.to(torch.float64)
        outputs["angles"].append(result.angles_deg.cpu().numpy())
        origins = torch.zeros(len(batch.rows), 3, dtype=torch.float64)
        origins[:, :ndim] = result.origins_px.cpu().double() * pixel
        outputs["origins"].append(origins.numpy())
        outputs["pmax"].append(result.pmax.cpu().numpy())
        outputs["nsig"].append(result.significant_samples.cpu().numpy())
        outputs["ll"].append(result.log_likelihood.cpu().numpy())
        done += len(batch.rows)
        if progress is not None:
            progress(done, len(rows))
    sums = HalfSetSums(
        data=data,
        weight=weight,
        noise=noise,
        multiplicity=multiplicity_sums,
        weight_per_group=weight_per_group,
        offset_moments_angst2=offsets,
        direction_mass=direction_mass,
        pmax_sum=pmax_sum,
        count=len(rows),
    )
    update = PoseUpdate(
        rows=rows,
        angles_deg=np.concatenate(outputs["angles"]),
        origins_angst=np.concatenate(outputs["origins"]),
        pmax=np.concatenate(outputs["pmax"]),
        significant_samples=np.concatenate(outputs["nsig"]),
        log_likelihood=np.concatenate(outputs["ll"]),
    )
    return sums, update
