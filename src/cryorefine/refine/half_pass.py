"""One half set through the E-step: batches prepared, scored, and their sums accumulated.

For each batch of ``tomo.particle_batches``: the images are masked in the
particle's centred frame (``--particle_diameter``, ``--maskedge``; background
mean with ``--zero_mask``, else noise of the current spectrum), cropped to the
current size, given their noise spectrum, offset and orientation priors, and
passed to ``likelihood.expectation``; the per-orientation sums go into the
half set's back-projector, the rest into ``HalfSetSums`` and the new poses.

A particle whose image or CTF volume holds a NaN or an infinity
(``ParticleBatch.finite`` False; named once per run through ``named_rows``) is
taken out of its batch before the E-step: it adds nothing to any sum (the
back-projector, the noise, the weights and counts, the orientation and offset
statistics) and keeps the pose it had, with ``pmax`` 0.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.fourier import (
    fourier_crop,
    mask_transforms,
    shell_sums,
    shift_fourier,
    soft_sphere_mask,
)
from cryorefine.io import ParticleSet
from cryorefine.likelihood import (
    ExpectationPlan,
    ExpectationResult,
    ParticleTerms,
    expectation,
    projection_cache,
)
from cryorefine.refine.batch_results import BatchOnItsWay, receive, send
from cryorefine.refine.half_sums import HalfSetSums, empty_sums, scale_shells
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.orientation_priors import (
    orientation_priors,
    prior_centres_deg,
    search_order,
)
from cryorefine.refine.particle_noise import particle_noise_images
from cryorefine.timing import PhaseTimes
from cryorefine.tomo import ParticleBatch, ParticleCache, particle_batches, prefetched

__all__ = ["PoseUpdate", "run_half_set"]


T = TypeVar("T")


@dataclass
class PoseUpdate:
    """New poses and statistics of the half set's particles (rows of the particle set).

    ``left_out``: the rows (a subset of ``rows``) of particles with NaN or infinity,
    whose poses are the ones they had (module docstring). ``norm_correction``: the
    particles' new ``rlnNormCorrection`` with ``--norm``, else None. ``log_lines``: the
    rank's lines about this half set (phase seconds, work counts, E-step seconds), which
    the writer puts in run.log once every rank's update has reached it.
    """

    rows: np.ndarray
    angles_deg: np.ndarray
    origins_angst: np.ndarray
    pmax: np.ndarray
    significant_samples: np.ndarray
    log_likelihood: np.ndarray
    left_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    norm_correction: np.ndarray | None = None
    log_lines: tuple[str, ...] = ()


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
    noise = None
    if not zero_mask:
        noise = particle_noise_images(sigma2, batch.rows, n, ndim, seed=noise_seed)
    masked = mask_transforms(centred, mask, noise=noise)
    return shift_fourier(masked, -batch.origins_px)


def _cropped(ft: Tensor, current_size: int, ndim: int) -> Tensor:
    """``ft`` cropped to ``current_size``; ``ft`` itself (no copy) where that is its size:
    the E-step only reads its particles' terms."""
    if ft.shape[1] == current_size:
        return ft
    return fourier_crop(ft, current_size, ndim=ndim)


def _on_device(values: np.ndarray, device: torch.device) -> Tensor:
    """A host array's copy on ``device``, queued without waiting for the device's queue to
    drain (a blocking copy to a GPU synchronises its stream first). The array is pageable
    memory: the copy is staged before the call returns, so the array may go at once."""
    return torch.as_tensor(values).to(device, non_blocking=True)


def _timed(items: Iterator[T], times: PhaseTimes, name: str) -> Iterator[T]:
    """The items, with the host time spent waiting for each added to ``times[name]``."""
    iterator = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        times.add_host_seconds(name, time.perf_counter() - start)
        yield item


def _add_batch(
    sums: HalfSetSums,
    result: ExpectationResult,
    batch: ParticleBatch,
    masked_full: Tensor,
    groups: Tensor,
    scale_groups: Tensor,
    scale: Tensor | None,
    *,
    current_size: int,
    shells_for_scales: Tensor,
) -> Tensor:
    """Add one batch's E-step result to the half set's sums, in place.

    The back-projection sums are already in ``sums.data``/``sums.weight``
    (``expectation(accumulators=...)``); the offset moments and ``pmax`` are added on
    the host when the batch's results reach it (``batch_results.receive``). Returns
    each particle's weighted squared difference summed over all shells, those beyond
    the current size taken from the image's power (RELION's
    ``exp_wsum_norm_correction``), float64 ``(b,)``.
    """
    n = masked_full.shape[1]
    ndim = batch.origins_px.shape[1]
    shells = sums.noise.shape[1]
    residual = result.shell_sums.residual_power.clone()
    # the shells beyond the current size; none once it reaches the box (every shell up
    # to Nyquist is in the E-step's sums), and then the image's power is not summed
    outside = torch.arange(shells, device=residual.device) > current_size // 2
    beyond_current = current_size // 2 < shells - 1
    if beyond_current:
        beyond = shell_sums(masked_full.abs() ** 2, n, ndim).to(torch.float64)  # (b, s)
        residual[:, outside] = (beyond * result.weight_sums[:, None])[:, outside]
    sums.noise.index_add_(0, groups, residual)
    sums.weight_per_group.index_add_(0, groups, result.weight_sums.to(torch.float64))
    signal = result.shell_sums.signal_product.to(torch.float64)
    power = result.shell_sums.reference_power.to(torch.float64)
    if scale is not None:  # the sums were made with s K: the group scale divided out
        s = scale.to(torch.float64)[:, None]
        signal, power = signal / s, power / s.square()
    # RELION sums XA and AA only where the model's SSNR exceeds 3 (``half_sums.scale_shells``)
    sums.scale_sums[0].index_add_(0, scale_groups, signal * shells_for_scales)
    sums.scale_sums[1].index_add_(0, scale_groups, power * shells_for_scales)
    if result.multiplicity_sums is not None and batch.multiplicity is not None:
        mult = result.multiplicity_sums.clone().to(torch.float64)
        if beyond_current:
            full_mult = shell_sums(batch.multiplicity, n, ndim).to(torch.float64)
            mult[:, outside] = (full_mult * result.weight_sums[:, None])[:, outside]
        if sums.multiplicity is None:
            sums.multiplicity = torch.zeros_like(sums.noise)
        sums.multiplicity.index_add_(0, groups, mult)
    sums.direction_mass += result.direction_mass.to(torch.float64)
    sums.count += batch.rows.shape[0]
    return residual.sum(dim=1)


def new_norm_corrections(old: Tensor, average: float, residual_sums: Tensor) -> Float[Tensor, " b"]:
    """RELION's ``--norm`` update: ``old / average * sqrt(2 * sum w |diff|^2)``.

    ``sum w |diff|^2`` over a half transform is half the real-space variance of the
    residual of the image as scored (already multiplied by ``average / old``): the
    new value is the particle's noise standard deviation in its own units.
    """
    return old.to(torch.float64) / average * torch.sqrt(2.0 * residual_sums)


def run_half_set(
    particles: ParticleSet,
    rows: np.ndarray,
    model: HalfSetModel,
    state: RefineState,
    options: RefineOptions,
    plan: ExpectationPlan,
    *,
    optics_group: np.ndarray,
    scale_group: np.ndarray,
    operators: Tensor,
    reference_ft: Tensor,
    batch_size: int,
    device: torch.device,
    noise_seed: int,
    progress: Callable[[int, int], None] | None = None,
    named_rows: set[int] | None = None,
    particle_cache: ParticleCache | None = None,
    ctf2_per_multiplicity: Tensor | None = None,
) -> tuple[HalfSetSums, PoseUpdate]:
    """E-step of one half set; returns its sums and the particles' new poses.

    ``noise_seed`` seeds the background noise (``particle_noise``): a particle's
    noise does not depend on the batch, the rank or the order of ``rows``.
    Particles with NaN or infinity are left out (module docstring); ``named_rows``
    is the run's set of those already named (``tomo.particle_batches``); ``particle_cache``
    keeps the particles' files in memory after their first read (``tomo.ParticleCache``).
    ``ctf2_per_multiplicity`` (``initialise.RefineInputs``): RELION-4 pseudo-subtomograms
    are scored with the noise of ``subtomo_noise``; None: RELION's multiplicity rule.
    """
    # phases on the device's clock (timing.PhaseTimes), each half set's set-up among them
    times = PhaseTimes(device)
    with times.phase("setup"):  # the mask, the sums, the tables, the search order
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
        directions = plan.orientations.pixels.shape[0]
        sums = empty_sums(model, directions, padding_factor=options.pad, device=device)
        sigma2_all = model.sigma2_noise.to(device)
        ratio_all = None if ctf2_per_multiplicity is None else ctf2_per_multiplicity.to(device)
        scale_all = model.scale_correction.to(device)  # once per half set, not per batch
        shells_for_scales = scale_shells(model.ssnr.to(device))
        angles_all = particles.angles_deg()  # once: the table is not re-read per batch
        centres_all = prior_centres_deg(
            angles_all,
            particles.angle_priors_deg(),
            use_priors=state.healpix_order < options.auto_local_healpix_order,
        )
        origins_all = particles.origins_angst()
        norms_all = particles.norm_corrections()  # rlnNormCorrection, 1 where absent
        # local searches: neighbouring particles share candidates (``search_order``)
        centres = torch.as_tensor(centres_all[rows], device=device)
        rows = rows[search_order(plan, state, operators, centres)]
        cache = None
        if not state.local_searches:
            # The fine cache holds 8 children per coarse orientation: for 3D data that is
            # 8 rotated volumes each, too much to keep; it is built for 2D data only.
            cache = projection_cache(reference_ft, plan, ndim=ndim, fine=ndim == 2)
    outputs: dict[str, list[np.ndarray]] = {
        key: [] for key in ("angles", "origins", "pmax", "nsig", "ll", "left_out", "norm")
    }
    done = 0
    previous: BatchOnItsWay | None = None

    def _receive(batch: BatchOnItsWay) -> None:
        nonlocal done
        rows_of = batch.all_rows
        receive(batch, sums, outputs, angles_deg=angles_all[rows_of],
                origins_angst=origins_all[rows_of], ndim=ndim, pixel_size_angst=pixel)  # fmt: skip
        done += len(rows_of)
        if progress is not None:
            progress(done, len(rows))

    m = plan.current_size
    batches = particle_batches(
        particles,
        batch_size=batch_size,
        device=device,
        use_ctf=options.ctf,
        rows=rows,
        intact_first_peak=options.ctf_intact_first_peak,
        named_rows=named_rows,
        cache=particle_cache,
    )
    # the next batch is read while this one is scored; the wait for it is timed
    # the host copies of rows and flags are made on the reading thread's stream
    with_flags = ((b, b.rows.cpu().numpy(), b.finite.cpu().numpy()) for b in batches)
    loading = prefetched(with_flags, device=device)
    for loaded, all_rows, finite in _timed(loading, times, "wait_for_data"):
        result = None
        if finite.any():
            batch = loaded if finite.all() else loaded.select(loaded.finite)
            host_rows = all_rows[finite]
            # each batch's host columns go to the device without a wait for its queue
            groups = _on_device(optics_group[host_rows], device)
            scale_groups = _on_device(scale_group[host_rows], device)
            # RELION floors a group's scale at 0.001 (a group too small to estimate)
            scale = scale_all[scale_groups].clamp_min(0.001) if options.scale else None
            sigma2 = sigma2_all[groups]
            if options.norm:  # RELION: the image times avg_norm_correction / its own
                norms = _on_device(norms_all[host_rows], device)
                factor = (model.norm_correction_average / norms).to(batch.data_ft.real.dtype)
                data_ft = batch.data_ft * factor.reshape(-1, *[1] * (batch.data_ft.dim() - 1))
                batch = replace(batch, data_ft=data_ft)
            with times.phase("mask"):
                masked_full = _masked(
                    batch, mask, sigma2, zero_mask=options.zero_mask, noise_seed=noise_seed
                )
            angles = _on_device(centres_all[host_rows], device)
            with times.phase("priors"):
                log_prior, ids = orientation_priors(
                    plan, state, model.orientation_pdf, operators, angles
                )
            with times.phase("crop"):  # the batch's windows at the current size
                terms = ParticleTerms(
                    masked_ft=_cropped(masked_full, m, ndim),
                    unmasked_ft=_cropped(batch.data_ft, m, ndim),
                    ctf=_cropped(batch.ctf, m, ndim),
                    sigma2_noise=sigma2,
                    origins_px=batch.origins_px,
                    offset_priors_px=torch.zeros_like(batch.origins_px),
                    log_prior_orientations=log_prior,
                    orientation_ids=ids,
                    multiplicity=None
                    if batch.multiplicity is None
                    else _cropped(batch.multiplicity, m, ndim),
                    ctf2_per_multiplicity=None if ratio_all is None else ratio_all[groups],
                    ctf_premultiplied=batch.ctf_premultiplied,
                    scale=scale,
                )
            result = expectation(
                terms,
                reference_ft,
                plan,
                cache=cache,
                accumulators=(sums.data, sums.weight),
                times=times,
            )
            with times.phase("batch_sums"):
                residual_sums = _add_batch(
                    sums,
                    result,
                    batch,
                    masked_full,
                    groups,
                    scale_groups,
                    scale,
                    current_size=m,
                    shells_for_scales=shells_for_scales,
                )
        new_norms = None
        if result is not None and options.norm:
            new_norms = new_norm_corrections(norms, model.norm_correction_average, residual_sums)
        with times.phase("batch_poses"):
            # this batch's results go to the host while the next one is prepared
            queued = send(result, new_norms, all_rows, finite, norms_all[all_rows])
            if previous is not None:
                _receive(previous)
            previous = queued
    if previous is not None:
        with times.phase("batch_poses"):
            _receive(previous)
    prefix = f"iter={state.iteration:03d} half_set={model.half_set}"
    phases = " ".join(f"{name}={seconds:.2f}" for name, seconds in times.seconds().items())
    work = " ".join(f"{name}={count}" for name, count in times.counts().items())
    update = PoseUpdate(
        rows=rows,
        angles_deg=np.concatenate(outputs["angles"]),
        origins_angst=np.concatenate(outputs["origins"]),
        pmax=np.concatenate(outputs["pmax"]),
        significant_samples=np.concatenate(outputs["nsig"]),
        log_likelihood=np.concatenate(outputs["ll"]),
        left_out=np.concatenate(outputs["left_out"]).astype(np.int64),
        norm_correction=np.concatenate(outputs["norm"]) if options.norm else None,
        log_lines=(f"{prefix} phase_seconds {phases}", f"{prefix} work {work}"),
    )
    return sums, update
