"""Current resolution, image sizes, the low-resolution join and the gold-standard FSC.

RELION's rules (REFINE_SPEC §4.6-4.8; ``n`` box side, ``p`` pixel size, shells ``r``
of frequency ``r / (n p)``, ``ROUND`` half away from zero):

Current resolution (``updateCurrentResolution``, end of each iteration)
    At iteration 0 (and 1 with ``--firstiter_cc``) with ``ini_high``: shell
    ``ROUND(n p / ini_high)``. Otherwise the first shell ``r >= 1`` (below
    ``n / 2``) with ``SSNR < 1``, minus one; in gold-standard auto-refine, if
    the last shell below ``n / 2`` with ``SSNR > 1`` is more than 3 shells higher,
    that one ("FSC dipped below 0.5 and rose again"); never below ``minres_map``.
    No gain (counter + 1) when the new resolution is at most the previous one
    plus 1e-4 (1/Angstrom), else the counter resets.
Image sizes (``updateImageSizeAndResolutionPointers``, start of the E-step)
    ``current_size = min(n, 2 (maxres + d))``, ``maxres = ROUND(res n p)``,
    ``d = ROUND(0.25 n / 2)`` if ``average_pmax > 0.1`` and ``has_high_fsc_at_limit``,
    else ``incr_size``; ``n`` in the final iteration. Coarse size (oversampling
    > 0): ``2 ceil(n p / (d_rot / 1.2))`` with ``d_rot = (step / 360) pi
    particle_diameter`` for the coarse angular step of the order *then* in
    use, capped by ``--coarse_size`` and by ``current_size``. For optics groups
    with another box or pixel, both scale by ``remap = (p_o n_o) / (p n)``.
After the FSC (``ml_optimiser_mpi.cpp iterate``)
    ``incr_size = max(incr_size, i(0.143) - i(0.5) + 5)`` with ``i(t)`` the first
    shell with FSC below ``t`` (-1 if none); ``has_high_fsc_at_limit`` becomes
    (and stays) true when the FSC at shell ``current_size / 2 - 1`` exceeds 0.2.
Low-resolution join (``joinTwoHalvesAtLowResolution``)
    Radius ``ceil(n p / max(low_resol_join_halves, 1 / res))`` unpadded shells;
    inside ``|K| <= ROUND(pad r)`` both halves' data and weights become their average.
Gold-standard FSC (``compareTwoHalves``)
    FSC of the unregularised averages ``B / W`` on the unpadded grid
    (``fourier.downsampled_average``) over the coefficients with
    ``|k| <= current_size / 2``, shell 0 set to 1, 0 above. With a solvent mask and
    ``--solvent_correct_fsc``: the phase-randomised masked FSC of the
    unregularised half maps (``fourier.fsc_true``, clipped at 0), from the first
    shell ``> 0`` with unmasked FSC below 0.8 (unmasked FSC if none); 0 above
    ``current_size / 2``.
"""

import dataclasses
import math

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier import (
    centred_half_frequencies,
    downsampled_average,
    first_shell_below,
    frequency_indices,
    from_fourier,
    fsc,
    fsc_true,
    padded_size,
    randomise_phases_beyond,
    to_fourier,
)
from cryorefine.geometry import angular_step_deg
from cryorefine.refine.model import RefineState
from cryorefine.refine.options import RefineOptions

__all__ = [
    "gold_standard_fsc",
    "image_sizes",
    "join_halves_at_low_resolution",
    "low_resolution_join_radius",
    "resolution_shell_of",
    "solvent_corrected_fsc",
    "update_current_resolution",
    "update_size_increment",
]


def _round(x: float) -> int:
    """RELION's ``ROUND``: half away from zero."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def resolution_shell_of(
    resolution_inv_angst: float, *, ori_size: int, pixel_size_angst: float
) -> int:
    """Shell ``ROUND(res n p)`` of a resolution in 1/Angstrom (``getPixelFromResolution``)."""
    return _round(resolution_inv_angst * ori_size * pixel_size_angst)


def _ssnr_shell(ssnr: list[float], ori_size: int, gold_standard: bool) -> int:
    half = ori_size // 2
    shell = next((i for i in range(1, half) if ssnr[i] < 1.0), half) - 1
    if gold_standard:
        high = next((i for i in range(half - 1, shell - 1, -1) if ssnr[i] > 1.0), shell - 1)
        if high > shell + 3:
            shell = high
    return shell


def update_current_resolution(
    state: RefineState,
    ssnr: Float[Tensor, " s"],
    *,
    options: RefineOptions,
    ori_size: int,
    pixel_size_angst: float,
    iteration: int,
) -> RefineState:
    """New current and best resolution and the no-gain counter (module docstring).

    ``ssnr`` is half 1's ``rlnSsnrMap`` (equal on both halves in gold-standard
    runs); ``iteration`` the one just done (0 for the start).
    """
    first_cc = iteration == 1 and options.firstiter_cc
    if options.ini_high > 0 and (iteration == 0 or first_cc):
        shell = _round(ori_size * pixel_size_angst / options.ini_high)
    else:
        gold = options.split_random_halves and options.auto_refine
        shell = max(_ssnr_shell(ssnr.tolist(), ori_size, gold), 0, options.minres_map)
    new = shell / (ori_size * pixel_size_angst)
    no_gain = new <= state.current_resolution_inv_angst + 0.0001
    return dataclasses.replace(
        state,
        current_resolution_inv_angst=new,
        best_resolution_inv_angst=max(state.best_resolution_inv_angst, new),
        nr_iter_wo_resol_gain=state.nr_iter_wo_resol_gain + 1 if no_gain else 0,
    )


def image_sizes(
    state: RefineState,
    *,
    options: RefineOptions,
    ori_size: int,
    pixel_size_angst: float,
    average_pmax: float,
    remap: float = 1.0,
    image_size: int | None = None,
) -> tuple[int, int]:
    """``(current_size, coarse_size)`` for the next E-step (module docstring).

    ``average_pmax`` is half 1's ``rlnAveragePmax``. With ``remap`` and
    ``image_size`` (an optics group's ``(p_o n_o) / (p n)`` and box), the sizes
    of that group's images; by default the model's. Call before
    ``update_angular_sampling``, as RELION does: the coarse size follows the
    order used so far. Store them with ``dataclasses.replace(state, ...)``.
    """
    full = ori_size if image_size is None else image_size
    maxres = resolution_shell_of(
        state.current_resolution_inv_angst, ori_size=ori_size, pixel_size_angst=pixel_size_angst
    )
    if average_pmax > 0.1 and state.has_high_fsc_at_limit:
        maxres += _round(0.25 * ori_size / 2)
    else:
        maxres += state.incr_size
    model_size = ori_size if state.has_converged else min(2 * maxres, ori_size)
    current = min(full, 2 * math.ceil(0.5 * remap * model_size))
    coarse = current
    if options.oversampling > 0:
        distance = (
            angular_step_deg(state.healpix_order) / 360.0 * math.pi * options.particle_diameter
        )
        coarse_resolution = distance / 1.2
        coarse = 2 * math.ceil(remap * pixel_size_angst * ori_size / coarse_resolution)
        most = remap * options.coarse_size if options.coarse_size > 0 else full
        coarse = int(min(most, coarse))
    return current, min(current, coarse)


def update_size_increment(state: RefineState, fsc_curve: Float[Tensor, " s"]) -> RefineState:
    """``incr_size`` and ``has_high_fsc_at_limit`` after the gold-standard FSC."""
    values = fsc_curve.tolist()
    below_half = next((i for i, v in enumerate(values) if v < 0.5), -1)
    below_0143 = next((i for i, v in enumerate(values) if v < 0.143), -1)
    increment = max(state.incr_size, below_0143 - below_half + 5)
    limit = state.current_size // 2 - 1
    high = state.has_high_fsc_at_limit or (0 <= limit < len(values) and values[limit] > 0.2)
    return dataclasses.replace(state, incr_size=increment, has_high_fsc_at_limit=high)


def low_resolution_join_radius(
    current_resolution_inv_angst: float,
    *,
    ori_size: int,
    pixel_size_angst: float,
    low_resol_join_halves: float,
) -> int | None:
    """Unpadded radius (shells) below which the halves are averaged; None if not joined.

    ``ceil(n p / max(low_resol_join_halves, 1 / res))``; None when
    ``low_resol_join_halves <= 0`` (RELION's default: no join).
    """
    if low_resol_join_halves <= 0:
        return None
    resolution = max(low_resol_join_halves, 1.0 / current_resolution_inv_angst)
    return math.ceil(ori_size * pixel_size_angst / resolution)


def join_halves_at_low_resolution(
    data_1: Complex[Tensor, "p p ph"],
    weight_1: Float[Tensor, "p p ph"],
    data_2: Complex[Tensor, "p p ph"],
    weight_2: Float[Tensor, "p p ph"],
    *,
    radius: int,
    padding_factor: int,
) -> tuple[
    Complex[Tensor, "p p ph"],
    Float[Tensor, "p p ph"],
    Complex[Tensor, "p p ph"],
    Float[Tensor, "p p ph"],
]:
    """Both halves' accumulators with the average of the two inside ``|K| <= ROUND(pad radius)``.

    Layout ``fourier.interpolation`` (centred half-grid). Returns new tensors
    ``(data_1, weight_1, data_2, weight_2)``; outside the sphere each half keeps its own.
    """
    p = padded_size(data_1.shape)
    k = centred_half_frequencies(p, device=data_1.device)
    limit = _round(padding_factor * radius)
    inside = (k * k).sum(dim=-1) <= limit * limit
    data = (data_1 + data_2) / 2
    weight = (weight_1 + weight_2) / 2
    return (
        torch.where(inside, data, data_1),
        torch.where(inside, weight, weight_1),
        torch.where(inside, data, data_2),
        torch.where(inside, weight, weight_2),
    )


def _zero_beyond(ft: Tensor, radius: int, ndim: int) -> Tensor:
    n = ft.shape[-ndim]
    k = frequency_indices(n, ndim, device=ft.device)
    outside = (k * k).sum(dim=-1) > radius * radius
    return ft.masked_fill(outside, 0)


def gold_standard_fsc(
    data_1: Complex[Tensor, "p p ph"],
    weight_1: Float[Tensor, "p p ph"],
    data_2: Complex[Tensor, "p p ph"],
    weight_2: Float[Tensor, "p p ph"],
    *,
    padding_factor: int,
    current_size: int,
) -> Float[Tensor, " s"]:
    """RELION's ``rlnGoldStandardFsc`` from the two halves' accumulators (module docstring)."""
    radius = current_size // 2
    average_1 = _zero_beyond(
        downsampled_average(data_1, weight_1, padding_factor=padding_factor), radius, 3
    )
    average_2 = _zero_beyond(
        downsampled_average(data_2, weight_2, padding_factor=padding_factor), radius, 3
    )
    curve = fsc(average_1, average_2, ndim=3)
    curve[0] = 1.0
    return curve


def solvent_corrected_fsc(
    map_1: Float[Tensor, "n n n"],
    map_2: Float[Tensor, "n n n"],
    mask: Float[Tensor, "n n n"],
    *,
    current_size: int,
    generator: torch.Generator,
) -> tuple[Float[Tensor, " s"], int | None]:
    """Solvent-corrected FSC of the unregularised half maps, and the randomisation shell.

    Phases are randomised with ``generator`` (half 1 first) from the first
    shell ``> 0`` whose unmasked FSC is below 0.8; ``None`` (and the unmasked
    FSC) if there is none. Shells above ``current_size / 2`` are 0.
    """
    ft_1, ft_2 = to_fourier(map_1, 3), to_fourier(map_2, 3)
    unmasked = fsc(ft_1, ft_2, ndim=3)
    shell = int(first_shell_below(unmasked, 0.8, start=1))
    if shell >= unmasked.shape[0]:
        curve, randomise_from = unmasked, None
    else:
        masked = fsc(to_fourier(map_1 * mask, 3), to_fourier(map_2 * mask, 3), ndim=3)
        n = map_1.shape[-1]
        random_1 = randomise_phases_beyond(ft_1, shell, ndim=3, generator=generator)
        random_2 = randomise_phases_beyond(ft_2, shell, ndim=3, generator=generator)
        random_masked = fsc(
            to_fourier(from_fourier(random_1, n, 3) * mask, 3),
            to_fourier(from_fourier(random_2, n, 3) * mask, 3),
            ndim=3,
        )
        curve = fsc_true(masked, random_masked, randomise_from_shell=shell, clip_negative=True)
        randomise_from = shell
    index = torch.arange(curve.shape[0], device=curve.device)
    return torch.where(index > current_size // 2, 0.0, curve), randomise_from
