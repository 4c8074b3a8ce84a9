"""The E-step of one batch of particles of one half set (REFINE_SPEC §4.4, §4.5).

Signature::

    expectation(
        particles: ParticleTerms,              # b particles at current_size (plan.py)
        reference_ft: Complex[Tensor, "p p ph"],  # fourier.prepare_reference of the half map
        plan: ExpectationPlan,                 # sizes, grids, priors, options (plan.py)
        *,
        cache: ProjectionCache | None = None,  # projection_cache(...), shared by the batches
    ) -> ExpectationResult                     # best poses, pmax, dLL, M-step sums (plan.py)

Steps, for chunks of particles whose score arrays fit ``plan.max_bytes``:

1. ``prepare``: the window coefficients (``likelihood.window``) of the masked
   data, shifted by ``+origin`` (``window_phases``), at the coarse size (first
   pass, DC left out) and at the current size (DC kept with score weight 0, as
   RELION sums it into the noise); CTF terms; score weights ``1 / (2 sigma2)``,
   divided by the multiplicity where it exceeds 0.1 (RELION-4,
   ``precalculateShiftedImagesCtfsAndInvSigma2s``), or by ``subtomo_noise.noise_scale``
   where ``ctf2_per_multiplicity`` is given; the back-projection terms
   of the unmasked data on the window with DC and Friedel mates
   (``sums.backprojection_inputs``, ``1 / sigma2`` without the multiplicity).
2. ``search.coarse_pass`` (first pass), then ``fine.fine_pass`` (second pass)
   on groups of particles with similar numbers of significant coarse pairs.
3. Results of the groups concatenated in the particles' order; sums added.

The caller batches particles, crops them to ``current_size``, masks them,
folds a scale correction into ``ctf``, gives priors, and afterwards inserts
``result.backprojection`` (``sums.insert_backprojection``), adds the image
power beyond ``current_size`` to the noise sums and accumulates per optics group.
"""

from dataclasses import replace

import torch
from jaxtyping import Complex
from torch import Tensor

from cryorefine.fourier import add_packed, fourier_crop, packed_accumulator, trilinear_kernels
from cryorefine.geometry import matrix_to_euler
from cryorefine.likelihood.fine import fine_pass
from cryorefine.likelihood.fine_groups import BYTES_PER_SAMPLE, fine_groups
from cryorefine.likelihood.passes import ParticleWindowData, RowProjector
from cryorefine.likelihood.plan import (
    BackprojectionSums,
    ExpectationPlan,
    ExpectationResult,
    ParticleTerms,
    ProjectionCache,
)
from cryorefine.likelihood.poses import coarse_rotations, fine_rotations
from cryorefine.likelihood.posterior import log_sigma2_sum
from cryorefine.likelihood.search import FineOutcome, Prepared, coarse_pass, select
from cryorefine.likelihood.subtomo_noise import noise_scale
from cryorefine.likelihood.sums import ShellSums, backprojection_inputs, insert_backprojection
from cryorefine.likelihood.window import (
    FourierWindow,
    fourier_window,
    gather_window,
    shell_matrix,
    window_phases,
)
from cryorefine.timing import PhaseTimes

__all__ = ["coarse_window", "expectation", "prepare", "projection_cache"]


def _check(particles: ParticleTerms, plan: ExpectationPlan) -> None:
    ndim, m = particles.ndim, plan.current_size
    grid = tuple(particles.masked_ft.shape[1:])
    if grid != (m,) * (ndim - 1) + (m // 2 + 1,) or ndim not in (2, 3):
        raise ValueError(f"particle grids {grid} are not half-complex grids of current_size {m}")
    sizes = (plan.coarse_size, plan.current_size, plan.ori_size)
    if any(size % 2 for size in sizes) or not sizes[0] <= sizes[1] <= sizes[2]:
        raise ValueError(f"need even coarse_size <= current_size <= ori_size, got {sizes}")
    if particles.sigma2_noise.shape[1] != plan.ori_size // 2 + 1:
        raise ValueError(
            f"sigma2_noise has {particles.sigma2_noise.shape[1]} shells, "
            f"expected ori_size // 2 + 1 = {plan.ori_size // 2 + 1}"
        )
    if plan.translations_px.shape[1] != ndim or particles.origins_px.shape[1] != ndim:
        raise ValueError(f"translations and origins must have {ndim} components for {ndim}D data")


def _on(window: FourierWindow, grids: Tensor, ndim: int) -> Tensor:
    if grids.shape[1] != window.size:
        grids = fourier_crop(grids, window.size, ndim=ndim)
    return gather_window(grids, window)


def _score_weight(particles: ParticleTerms, window: FourierWindow, sigma2: Tensor) -> Tensor:
    weight = 0.5 / sigma2
    if particles.multiplicity is not None and particles.ctf2_per_multiplicity is not None:
        scale = noise_scale(
            _on(window, particles.ctf, particles.ndim),
            _on(window, particles.multiplicity, particles.ndim),
            particles.ctf2_per_multiplicity[:, window.shell],
        )
        weight = weight / scale
    elif particles.multiplicity is not None:
        multiplicity = _on(window, particles.multiplicity, particles.ndim).to(torch.float64)
        weight = torch.where(multiplicity > 0.1, weight / multiplicity, weight)
    return torch.where(window.shell > 0, weight, 0.0)


def coarse_window(plan: ExpectationPlan, ndim: int, *, device: torch.device) -> FourierWindow:
    """The first pass's window (DC left out, except for cross-correlation as RELION)."""
    return fourier_window(plan.coarse_size, ndim, device=device, include_dc=plan.cross_correlation)


def _fine_window(plan: ExpectationPlan, ndim: int, *, device: torch.device) -> FourierWindow:
    return fourier_window(plan.current_size, ndim, device=device, include_dc=True)


def projection_cache(
    reference_ft: Complex[Tensor, "p p ph"],
    plan: ExpectationPlan,
    *,
    ndim: int,
    coarse: bool = True,
    fine: bool = False,
) -> ProjectionCache:
    """Projections of the whole coarse grid (and of all its children) for ``expectation``.

    They depend only on the reference and the plan: compute them once per half
    set and iteration and pass them to every batch. Memory: ``m p`` coarse rows
    of ``k_coarse`` and ``8**oversampling m p`` fine rows of ``k_fine`` complex
    values (2D, order 2, sizes 24/32: 9 MB and 118 MB in complex64).
    """
    device = reference_ft.device
    grid, pad = plan.orientations, plan.padding_factor
    values = {}
    if coarse:
        table = coarse_rotations(grid).to(device)
        projector = RowProjector(reference_ft, table, coarse_window(plan, ndim, device=device), pad)
        values["coarse"] = projector.with_values(
            max_bytes=2**62, chunk_bytes=plan.max_bytes // 4
        ).values
    if fine:
        ids = torch.arange(grid.count, device=grid.pixels.device)
        table = fine_rotations(grid, ids, oversampling=plan.oversampling).reshape(-1, 3, 3)
        window = _fine_window(plan, ndim, device=device)
        projector = RowProjector(reference_ft, table.to(device), window, pad)
        values["fine"] = projector.with_values(
            max_bytes=2**62, chunk_bytes=plan.max_bytes // 4
        ).values
    return ProjectionCache(**values)


def prepare(particles: ParticleTerms, plan: ExpectationPlan) -> Prepared:
    """Window coefficients of the particles for both passes and the sums (module docstring)."""
    ndim, device = particles.ndim, particles.masked_ft.device
    windows = (
        coarse_window(plan, ndim, device=device),
        _fine_window(plan, ndim, device=device),
        fourier_window(
            plan.current_size, ndim, device=device, include_dc=True, include_redundant=True
        ),
    )
    coarse_w, fine_w, bp_w = windows
    sigma2 = particles.sigma2_noise.to(torch.float64)
    dtype = particles.masked_ft.dtype

    def shifted(window: FourierWindow, grids: Tensor) -> Tensor:
        phase = window_phases(window, particles.origins_px, box_size=plan.ori_size, dtype=dtype)
        return _on(window, grids, ndim) * phase

    b = particles.count
    scale = None if particles.scale is None else particles.scale.to(particles.ctf.dtype)[:, None]

    def scaled_ctf(window: FourierWindow) -> Tensor:  # s K: the group scale (--scale)
        ctf = _on(window, particles.ctf, ndim)
        return ctf if scale is None else ctf * scale

    coarse_phases = window_phases(coarse_w, plan.translations_px, box_size=plan.ori_size)
    coarse = ParticleWindowData(
        data=shifted(coarse_w, particles.masked_ft),
        ctf=scaled_ctf(coarse_w),
        weight=_score_weight(particles, coarse_w, sigma2[:, coarse_w.shell]),
        phases=coarse_phases.expand(b, -1, -1),
    )
    bp_data, bp_weight = backprojection_inputs(
        shifted(bp_w, particles.unmasked_ft),
        _on(bp_w, particles.ctf, ndim),
        1.0 / sigma2[:, bp_w.shell],
        ctf_premultiplied=particles.ctf_premultiplied,
    )
    if scale is not None:  # RELION scales the CTF term once: s Y and s^2 V; premultiplied
        # data (Y = X / sigma2, V = K / sigma2) keep X and take s K
        if particles.ctf_premultiplied:
            bp_weight = bp_weight * scale
        else:
            bp_data, bp_weight = bp_data * scale, bp_weight * scale.square()
    return Prepared(
        coarse=coarse,
        coarse_window=coarse_w,
        fine_data=shifted(fine_w, particles.masked_ft),
        fine_ctf=scaled_ctf(fine_w),
        fine_weight=_score_weight(particles, fine_w, sigma2[:, fine_w.shell]),
        fine_window=fine_w,
        bp_data=bp_data,
        bp_weight=bp_weight,
        bp_window=bp_w,
        log_sigma2=log_sigma2_sum(sigma2[:, fine_w.shell], fine_w.shell > 0),
    )


def _merge(
    fine: list[FineOutcome], order: Tensor, counts: Tensor, window: FourierWindow
) -> ExpectationResult:
    """Concatenate the groups' results and put the particles back in their order."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)

    def joined(name: str, inner: str | None = None) -> Tensor:
        parts = [
            getattr(f, name) if inner is None else getattr(getattr(f, name), inner) for f in fine
        ]
        return torch.cat(parts)[inverse]

    rotations = joined("rotations")
    return ExpectationResult(
        rotations=rotations,
        angles_deg=matrix_to_euler(rotations),
        origins_px=joined("origins_px"),
        pmax=joined("pmax"),
        significant_samples=counts,
        log_likelihood=joined("log_likelihood"),
        weight_sums=joined("weight_sums"),
        shell_sums=ShellSums(
            joined("shell_sums", "residual_power"),
            joined("shell_sums", "signal_product"),
            joined("shell_sums", "reference_power"),
        ),
        multiplicity_sums=None,
        offset_moments_px2=joined("offset_moments_px2"),
        direction_mass=torch.stack([f.direction_mass for f in fine]).sum(dim=0),
        backprojection=BackprojectionSums(
            data=torch.cat([f.bp_data for f in fine]),
            weight=torch.cat([f.bp_weight for f in fine]),
            rotations=torch.cat([f.bp_rotations for f in fine]),
            window=window,
        ),
    )


def _staged(
    accumulators: tuple[Tensor, Tensor], plan: ExpectationPlan
) -> tuple[Tensor, Tensor | None]:
    """Where a batch inserts: float64 sums on a GPU get one packed float32 accumulator.

    Its vector reductions are ~4 times as fast as three double atomics per corner
    (``bench/splat_bench.py``); a batch's sums are added to the float64 ones
    when it ends (RELION's GPU code accumulates in single precision too).
    """
    data = accumulators[0]
    if data.dtype != torch.complex128 or plan.precision == "float64":
        return accumulators
    if not trilinear_kernels.available(data):
        return accumulators
    p = data.shape[0]
    packed = packed_accumulator(
        p // plan.padding_factor, padding_factor=plan.padding_factor, device=data.device
    )
    return packed, None


def _inserted(
    outcome: FineOutcome,
    window: FourierWindow,
    accumulators: tuple[Tensor, Tensor | None],
    plan: ExpectationPlan,
) -> FineOutcome:
    """Insert ``outcome``'s back-projection sums into ``accumulators``; drop them from it."""
    insert_backprojection(
        outcome.bp_data,
        outcome.bp_weight,
        outcome.bp_rotations,
        window,
        accumulator_data=accumulators[0],
        accumulator_weight=accumulators[1],
        padding_factor=plan.padding_factor,
        max_bytes=plan.max_bytes // 4,
    )
    # new empty tensors, not ``[:0]`` views: a view would keep the whole storage alive
    # until the batch ends (one group's sums per group, beyond the budget)
    return replace(
        outcome,
        bp_rotations=outcome.bp_rotations.new_empty((0, *outcome.bp_rotations.shape[1:])),
        bp_data=outcome.bp_data.new_empty((0, *outcome.bp_data.shape[1:])),
        bp_weight=outcome.bp_weight.new_empty((0, *outcome.bp_weight.shape[1:])),
    )


def _multiplicity_sums(particles: ParticleTerms, plan: ExpectationPlan) -> Tensor | None:
    if particles.multiplicity is None:
        return None
    window = fourier_window(
        plan.current_size, particles.ndim, device=particles.masked_ft.device, include_dc=True
    )
    multiplicity = gather_window(particles.multiplicity, window).to(torch.float64)
    return multiplicity @ shell_matrix(window, plan.ori_size // 2 + 1)


def expectation(
    particles: ParticleTerms,
    reference_ft: Complex[Tensor, "p p ph"],
    plan: ExpectationPlan,
    *,
    cache: ProjectionCache | None = None,
    accumulators: tuple[Tensor, Tensor] | None = None,
    times: PhaseTimes | None = None,
) -> ExpectationResult:
    """E-step of one batch: best poses, pmax, significant samples, dLL and the M-step sums.

    See the module docstring; inputs and outputs are documented in
    ``likelihood.plan``. ``cache``: ``projection_cache(reference_ft, plan, ...)``,
    shared by the batches of a half set, or None to project in each call.
    ``accumulators``: the back-projector's ``(data, weight)``
    (``fourier.zero_accumulators``); each group of particles inserts its sums
    into them as soon as they are made, and the result's ``backprojection`` is
    empty. Memory then follows one group, not the batch: for 3D data each
    orientation's sums are a volume. ``times``: where the phases ``coarse``,
    ``fine`` and ``insert`` add their seconds, and the work done is counted
    (``coarse_samples``, ``fine_samples``, ``projected_orientations``,
    ``summed_children``, ``carried_children``, ``inserted_orientations``), or None.
    """
    _check(particles, plan)
    times = PhaseTimes(particles.masked_ft.device) if times is None else times
    cache = ProjectionCache() if cache is None else cache
    candidates = (
        plan.orientations.count
        if particles.orientation_ids is None
        else particles.orientation_ids.shape[1]
    )
    # per particle: the coarse scores and Z with the phases it is made from (16 bytes per
    # translation and coefficient of the coarse window in float32, 32 in float64; half a
    # sphere, about a quarter of the cube in 3D; the fine pass is grouped below), and
    # ``prepare``'s terms (at most 48 bytes per coefficient of the current size's half cube
    # in float32, 80 in float64: 2D windows fill most of it, and some terms are float64).
    # Local searches' lists make Z a few particles at a time (``search._list_scores``),
    # so their chunks count the scores and terms alone.
    device = particles.masked_ft.device
    coarse_values = coarse_window(plan, particles.ndim, device=device).count
    t = plan.translations_px.shape[0]
    wide = plan.precision == "float64"
    half_cube = plan.current_size ** (particles.ndim - 1) * (plan.current_size // 2 + 1)
    prepared = (80 if wide else 48) * half_cube
    z_bytes = 32 if wide else 16
    z_per_particle = 0 if particles.orientation_ids is not None else z_bytes * coarse_values
    per_particle = t * (candidates * BYTES_PER_SAMPLE + z_per_particle) + prepared
    chunk = max(1, (plan.max_bytes // 2) // per_particle)
    fine: list[FineOutcome] = []
    orders: list[Tensor] = []
    counts: list[Tensor] = []
    window = None
    staged = None if accumulators is None else _staged(accumulators, plan)
    for start in range(0, particles.count, chunk):
        part = particles.select(slice(start, start + chunk))
        with times.phase("coarse"):
            with times.phase("coarse_prepare"):
                prep = prepare(part, plan)
            coarse = coarse_pass(prep, part, reference_ft, plan, cache.coarse, times)
        # the children's projections live on the fine window (not the whole grid)
        projected_values = 0 if cache.fine is not None else prep.fine_window.count
        # per fine translation: phases and Z on the fine window, phases and shifted
        # data on the back-projection window (16 bytes per coefficient of each)
        window_values = prep.fine_window.count + prep.bp_window.count
        for sizes in fine_groups(coarse, plan, window_values, projected_values):
            group = sizes.particles
            sub = (select(prep, group), part.select(group), select(coarse, group))
            with times.phase("fine"):
                outcome = fine_pass(*sub, reference_ft, plan, cache.fine, times, sizes)
            times.add_count("fine_groups", 1)
            times.add_count(f"fine_groups_closed_by_{sizes.closed_by}", 1)
            times.add_count("fine_samples", outcome.scored_samples)
            times.add_count("fine_translation_rows", outcome.translation_rows)
            times.add_count("projected_orientations", outcome.projected_orientations)
            times.add_count("summed_children", outcome.summed_children)
            times.add_count("carried_children", outcome.carried_children)
            times.add_count("inserted_orientations", outcome.bp_rotations.shape[0])
            if staged is not None:
                with times.phase("insert"):
                    outcome = _inserted(outcome, prep.bp_window, staged, plan)
            fine.append(outcome)
            orders.append(group + start)
        counts.append(coarse.count)
        times.add_count("coarse_samples", coarse.significant.numel())
        window = prep.bp_window
    if window is None:
        raise ValueError("expectation needs at least one particle")
    if staged is not None and staged[1] is None:  # a packed accumulator: into the sums
        with times.phase("insert"):
            add_packed(staged[0], *accumulators)
    result = _merge(fine, torch.cat(orders), torch.cat(counts), window)
    multiplicity = _multiplicity_sums(particles, plan)
    if multiplicity is None:
        return result
    return replace(result, multiplicity_sums=multiplicity)
