"""The iteration's M-step over both half sets (REFINE_SPEC §4.3, §4.5).

The unregularised maps where they are written or the FSC is solvent-corrected,
the low-resolution join of the halves' sums, the gold-standard FSC (solvent-corrected
with a reference mask), the image-size increment, each half set's new model (the
joined model in the final iteration) and the current resolution.
"""

import dataclasses

import torch
from torch import Tensor

from cryorefine.likelihood import OrientationGrid
from cryorefine.refine.half_models import m_step, unregularised_map
from cryorefine.refine.half_sums import HalfSetSums, join_sums
from cryorefine.refine.initialise import RefineInputs
from cryorefine.refine.maximisation import flattening_mask
from cryorefine.refine.model import HalfSetModel, RefineState
from cryorefine.refine.options import RefineOptions
from cryorefine.refine.resolution import (
    gold_standard_fsc,
    join_halves_at_low_resolution,
    low_resolution_join_radius,
    solvent_corrected_fsc,
    update_current_resolution,
    update_size_increment,
)

__all__ = ["maximise_half_sets"]


def maximise_half_sets(
    all_sums: tuple[HalfSetSums, HalfSetSums],
    models: tuple[HalfSetModel, HalfSetModel],
    state: RefineState,
    options: RefineOptions,
    inputs: RefineInputs,
    grid: OrientationGrid,
    *,
    final: bool,
    cc: bool,
    device: torch.device,
    generator: torch.Generator,
) -> tuple[RefineState, tuple[HalfSetModel, HalfSetModel], tuple[Tensor, Tensor] | None]:
    """New state and half models from the half sets' sums; with them the unregularised
    maps ``(half 1, half 2)`` where they were made (the final iteration, or a solvent-
    corrected FSC), else None. The sums' back-projections may be joined in place."""
    first, second = all_sums
    unfiltered = None
    if final or (inputs.solvent_mask is not None and options.solvent_correct_fsc):
        unfiltered = (
            unregularised_map(first, inputs, options),
            unregularised_map(second, inputs, options),
        )
    if not final:
        radius = low_resolution_join_radius(
            state.current_resolution_inv_angst,
            ori_size=inputs.ori_size,
            pixel_size_angst=inputs.pixel_size_angst,
            low_resol_join_halves=options.low_resol_join_halves,
        )
        if radius:
            first.data, first.weight, second.data, second.weight = join_halves_at_low_resolution(
                first.data,
                first.weight,
                second.data,
                second.weight,
                radius=radius,
                padding_factor=options.pad,
            )
    fsc = gold_standard_fsc(
        first.data,
        first.weight,
        second.data,
        second.weight,
        padding_factor=options.pad,
        current_size=state.current_size,
    )
    if inputs.solvent_mask is not None and options.solvent_correct_fsc and unfiltered is not None:
        fsc, _ = solvent_corrected_fsc(
            unfiltered[0].to(device),
            unfiltered[1].to(device),
            inputs.solvent_mask,
            current_size=state.current_size,
            generator=generator,
        )
    state = update_size_increment(state, fsc)
    flatten = None
    if options.flatten_solvent:
        flatten = (
            inputs.solvent_mask
            if inputs.solvent_mask is not None
            else flattening_mask(
                options,
                ori_size=inputs.ori_size,
                pixel_size_angst=inputs.pixel_size_angst,
                device=device,
            )
        )
    if final:
        joined = m_step(
            models[0],
            join_sums(first, second),
            fsc,
            state,
            options,
            inputs,
            grid,
            final=True,
            cc=cc,
            flatten=None,
        )
        models = (joined, dataclasses.replace(joined, half_set=2))
    else:
        models = tuple(
            m_step(m, s, fsc, state, options, inputs, grid, final=False, cc=cc, flatten=flatten)
            for m, s in zip(models, all_sums, strict=True)
        )
    state = update_current_resolution(
        state,
        models[0].ssnr,
        options=options,
        ori_size=inputs.ori_size,
        pixel_size_angst=inputs.pixel_size_angst,
        iteration=state.iteration,
    )
    return state, models, unfiltered
