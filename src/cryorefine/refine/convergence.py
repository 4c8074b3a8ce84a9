"""Changes of the best poses between iterations, and the convergence test of auto-refine.

RELION's ``monitorHiddenVariableChanges``, ``updateOverallChangesInHiddenVariables``
and ``checkConvergence`` (REFINE_SPEC §5.5):

- per particle: the orientation change (``geometry.orientation_change_deg``,
  symmetry-aware), the squared offset change (Angstrom^2, z included for 3D
  data and tilt series) and whether the class changed; summed over particles
  (``hidden_variable_change_sums``, which the caller adds over batches and ranks);
- changes: mean orientation change, RMS offset change per axis
  ``sqrt(S / (2 count))``, fraction of class changes (0 when no particle);
- the counter ``nr_iter_wo_large_hidden_variable_changes`` goes up when
  ``1.03 classes >= smallest classes`` and (offset change below 40 % of the
  fine offset step or ``1.03 offsets >= smallest``) and (orientation change
  below 40 % of the fine angular step or ``1.03 orientations >= smallest``),
  else it resets; then the smallest changes are updated (classes rounded);
- converged, checked at the start of an iteration, when the sampling is fine
  enough, an iteration went by without resolution gain and (with
  ``--auto_ignore_angles`` or) one without large changes. That iteration is the
  final one: halves joined, full image size, no solvent flattening.
"""

import dataclasses
import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cryorefine.geometry import angular_step_deg, orientation_change_deg
from cryorefine.refine.auto_sampling import MAX_ITERATIONS_WITHOUT_GAIN
from cryorefine.refine.model import RefineState
from cryorefine.refine.options import RefineOptions

__all__ = [
    "check_convergence",
    "hidden_variable_change_sums",
    "iteration_limit",
    "update_hidden_variable_changes",
]


def hidden_variable_change_sums(
    old_rotations: Float[Tensor, "b 3 3"],
    new_rotations: Float[Tensor, "b 3 3"],
    old_origins_angst: Float[Tensor, "b d"],
    new_origins_angst: Float[Tensor, "b d"],
    operators: Float[Tensor, "g 3 3"],
    *,
    old_classes: Int[Tensor, " b"] | None = None,
    new_classes: Int[Tensor, " b"] | None = None,
) -> Float[Tensor, "4"]:
    """Summed changes of one batch: ``[orientation_deg, offset_angst2, classes, count]`` float64.

    ``operators`` are the point group's proper rotations, identity included
    (``SymmetryGroup.rotations``); origins are ``(x, y)`` for images and
    ``(x, y, z)`` for subtomograms and tilt series. Classes default to unchanged.
    """
    orientation = orientation_change_deg(
        new_rotations.to(torch.float64),
        old_rotations.to(torch.float64),
        operators.to(torch.float64),
    )
    offset2 = (
        (new_origins_angst.to(torch.float64) - old_origins_angst.to(torch.float64)) ** 2
    ).sum(-1)
    if old_classes is None or new_classes is None:
        classes = torch.zeros((), dtype=torch.float64, device=orientation.device)
    else:
        classes = (old_classes != new_classes).sum().to(torch.float64)
    count = torch.tensor(
        float(orientation.shape[0]), dtype=torch.float64, device=orientation.device
    )
    return torch.stack([orientation.sum(), offset2.sum(), classes, count])


def update_hidden_variable_changes(
    state: RefineState, sums: Float[Tensor, "4"], *, oversampling: int
) -> RefineState:
    """Changes, smallest changes and the no-large-changes counter (module docstring).

    ``sums`` are ``hidden_variable_change_sums`` added over all particles of
    the iteration (RELION uses the particles of both halves).
    """
    orientation, offset2, classes, count = (float(v) for v in sums.tolist())
    if count > 0:
        change_classes = classes / count
        change_orient = orientation / count
        change_offset = math.sqrt(offset2 / (2.0 * count))
    else:
        change_classes = change_orient = change_offset = 0.0
    ratio_orient = change_orient / angular_step_deg(state.healpix_order, oversampling=oversampling)
    ratio_trans = change_offset / (state.offset_step_angst / 2.0**oversampling)
    small = (
        1.03 * change_classes >= state.smallest_changes_classes
        and (ratio_trans < 0.40 or 1.03 * change_offset >= state.smallest_changes_offsets_angst)
        and (ratio_orient < 0.40 or 1.03 * change_orient >= state.smallest_changes_orientations_deg)
    )
    smallest_classes = state.smallest_changes_classes
    if change_classes < smallest_classes:
        smallest_classes = math.floor(change_classes + 0.5)
    return dataclasses.replace(
        state,
        changes_orientations_deg=change_orient,
        changes_offsets_angst=change_offset,
        changes_classes=change_classes,
        smallest_changes_classes=smallest_classes,
        smallest_changes_offsets_angst=min(state.smallest_changes_offsets_angst, change_offset),
        smallest_changes_orientations_deg=min(
            state.smallest_changes_orientations_deg, change_orient
        ),
        nr_iter_wo_large_hidden_variable_changes=(
            state.nr_iter_wo_large_hidden_variable_changes + 1 if small else 0
        ),
    )


def check_convergence(state: RefineState, options: RefineOptions) -> RefineState:
    """Set ``has_converged`` if the run has converged (module docstring).

    Call at the start of an iteration, with the counters of the previous one.
    """
    em_converged = state.nr_iter_wo_resol_gain >= MAX_ITERATIONS_WITHOUT_GAIN and (
        options.auto_ignore_angles
        or state.nr_iter_wo_large_hidden_variable_changes >= MAX_ITERATIONS_WITHOUT_GAIN
    )
    if state.has_fine_enough_angular_sampling and em_converged:
        return dataclasses.replace(state, has_converged=True)
    return state


def iteration_limit(options: RefineOptions) -> int:
    """Last iteration to run: ``--auto_iter_max`` (999) in auto-refine, else ``--iter``.

    RELION stops after the final (converged) iteration or after this one,
    whichever comes first; at the limit the halves are not joined. In
    auto-refine a positive ``--iter`` also stops the run there (cryorefine's
    choice: a short trial run without converging).
    """
    if not options.auto_refine:
        return options.iter
    if options.iter > 0:
        return min(options.iter, options.auto_iter_max)
    return options.auto_iter_max
