"""The M-step of the half sets: new models from their sums (REFINE_SPEC §4.5), and helpers.

``m_step`` reconstructs a half set's reference with tau2 from the FSC,
flattens the solvent, and updates the noise spectrum, the offset prior, the
orientation pdf and, with ``--scale``, the groups' intensity scales
(``group_scales``); ``accuracies`` estimates acc_rot and acc_trans (§5.3);
``unregularised_map`` is the map without the tau2 term (``_unfil.mrc``).
"""

import dataclasses

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.fourier import fourier_crop, reconstruct, shell_counts, solvent_flatten
from cryorefine.likelihood import OrientationGrid
from cryorefine.refine.accuracy import estimate_accuracies
from cryorefine.refine.half_sums import HalfSetSums
from cryorefine.refine.initialise import RefineInputs
from cryorefine.refine.maximisation import (
    reconstruction_statistics,
    update_orientation_pdf,
    update_scale_correction,
    update_sigma2_offset,
)
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.noise import update_sigma2_noise
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.subtomo_noise import noise_scale_grid
from cryorefine.tomo import PSEUDO_SUBTOMOGRAM_FLAVOURS, particle_batches

__all__ = ["accuracies", "group_scales", "m_step", "unregularised_map"]


def m_step(
    model: HalfSetModel,
    sums: HalfSetSums,
    fsc: Tensor,
    state: RefineState,
    options: RefineOptions,
    inputs: RefineInputs,
    grid: OrientationGrid,
    *,
    final: bool,
    cc: bool,
    flatten: Tensor | None,
) -> HalfSetModel:
    """New half model from its (symmetrised, joined) sums and the FSC (REFINE_SPEC §4.5)."""
    sigma2_rec, tau2, ssnr, completeness = reconstruction_statistics(
        sums.weight,
        fsc,
        ori_size=inputs.ori_size,
        padding_factor=options.pad,
        current_size=state.current_size,
        tau2_fudge=options.tau2_fudge,
        joined_halves=final,
    )
    volume = reconstruct(
        sums.data,
        sums.weight,
        ori_size=inputs.ori_size,
        padding_factor=options.pad,
        data_dim=inputs.ndim,
        tau2=tau2,
        tau2_fudge=options.tau2_fudge,
        tau2_min_shell=options.minres_map,
        max_radius=inputs.ori_size // 2 if final else state.current_size // 2,
        iterative_gridding=options.dont_skip_gridding,
        gridding_iterations=options.gridding_iter,
    ).to(torch.float32)
    if flatten is not None and not final:
        volume = solvent_flatten(volume, flatten)
    sigma2 = model.sigma2_noise
    if not cc:
        counts = _shell_counts(inputs).to(sums.noise.device)
        sigma2 = update_sigma2_noise(
            model.sigma2_noise.to(sums.noise.device),
            sums.noise,
            sums.weight_per_group,
            counts,
            multiplicity_sums=sums.multiplicity,
            ctf_premultiplied=inputs.particles.ctf_premultiplied,
        )
    scale = model.scale_correction
    if options.scale and not cc:  # RELION keeps the scales in a cross-correlation iteration
        scale = group_scales(sums.scale_sums, model.group_particle_counts)
    total_weight = float(sums.weight_per_group.sum())
    norm_average = model.norm_correction_average
    if options.norm and total_weight > 0:  # RELION: the new corrections over the weights
        norm_average = sums.norm_sum / total_weight
    pdf = model.orientation_pdf
    if not state.local_searches and total_weight > 0:
        pdf = update_orientation_pdf(sums.direction_mass, total_weight)
    return dataclasses.replace(
        model,
        reference=volume.cpu(),
        sigma2_noise=sigma2.cpu(),
        tau2=tau2.cpu(),
        ssnr=ssnr.cpu(),
        fsc=fsc.cpu(),
        sigma2_reconstruction=sigma2_rec.cpu(),
        fourier_completeness=completeness.cpu(),
        orientation_pdf=None if pdf is None else pdf.cpu(),
        sigma2_offset_angst2=update_sigma2_offset(
            sums.offset_moments_angst2,
            total_weight,
            data_is_3d=inputs.ndim == 3,
            min_sigma2_offset=options.min_sigma2_offset,
        )
        if total_weight > 0
        else model.sigma2_offset_angst2,
        average_pmax=sums.pmax_sum / max(sums.count, 1),
        scale_correction=scale.cpu(),
        norm_correction_average=norm_average,
    )


def group_scales(
    scale_sums: Float[Tensor, "2 g s"], counts: tuple[int, ...]
) -> Float[Tensor, " g"]:
    """``rlnGroupScaleCorrection``: ``XA / AA`` per group over the shells summed.

    The E-step adds only the shells where its half's model had SSNR > 3
    (``half_sums.scale_shells``, as RELION masks while summing; in the final
    iteration each half with its own). ``maximisation.update_scale_correction``
    clamps about the median and renormalises to a particle-weighted mean of 1.
    """
    xa, aa = scale_sums.to(torch.float64).sum(dim=2)
    return update_scale_correction(
        xa, aa, torch.tensor(counts, dtype=torch.float64, device=xa.device)
    )


def _shell_counts(inputs: RefineInputs) -> Tensor:
    return shell_counts(inputs.ori_size, inputs.ndim, device=torch.device("cpu")).to(torch.float64)


def accuracies(state, inputs, options, models, reference_ft, *, device, generator) -> RefineState:
    """acc_rot and acc_trans from the first particles of half set 1 (REFINE_SPEC §5.3)."""
    count = (
        100 if inputs.ndim == 2 or inputs.particles.flavour in PSEUDO_SUBTOMOGRAM_FLAVOURS else 10
    )
    rows = np.flatnonzero(inputs.half_sets == 1)[:count]
    loaded = next(
        particle_batches(
            inputs.particles,
            batch_size=len(rows),
            device=device,
            use_ctf=options.ctf,
            rows=rows,
            named_rows=inputs.non_finite_rows,
            cache=inputs.particle_cache,
        )
    )
    finite = loaded.finite.cpu().numpy()
    batch, rows = loaded.select(loaded.finite), rows[finite]  # bad particles left out
    groups = torch.as_tensor(inputs.optics_group[rows], device=device)
    sigma2 = models[0].sigma2_noise.to(device)[groups]
    multiplicity = scale = None
    if batch.multiplicity is not None:
        multiplicity = fourier_crop(batch.multiplicity, state.current_size, ndim=inputs.ndim)
        if inputs.ctf2_per_multiplicity is not None:
            ctf2 = fourier_crop(batch.ctf, state.current_size, ndim=inputs.ndim)
            ratio = inputs.ctf2_per_multiplicity.to(device)[groups]
            scale = noise_scale_grid(ctf2, multiplicity, ratio)
    estimate = estimate_accuracies(
        reference_ft,
        torch.as_tensor(inputs.particles.angles_deg()[rows], device=device),
        fourier_crop(batch.ctf, state.current_size, ndim=inputs.ndim) if options.ctf else None,
        sigma2,
        torch.as_tensor(inputs.particles.pixel_size_angst[rows], device=device),
        current_size=state.current_size,
        ori_size=inputs.ori_size,
        data_dimensionality=inputs.ndim,
        generator=generator,
        padding_factor=options.pad,
        multiplicity=multiplicity,
        noise_scale=scale,
    )
    return dataclasses.replace(
        state, acc_rot_deg=estimate.acc_rot_deg, acc_trans_angst=estimate.acc_trans_angst
    )


def unregularised_map(sums: HalfSetSums, inputs: RefineInputs, options: RefineOptions) -> Tensor:
    return reconstruct(
        sums.data,
        sums.weight,
        ori_size=inputs.ori_size,
        padding_factor=options.pad,
        data_dim=inputs.ndim,
    ).to(torch.float32)
