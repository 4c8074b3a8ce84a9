"""Prior weights of each particle's coarse orientations for one iteration.

Global searches: the orientational pdf of the half set (or flat). Local
searches (auto-refine's local phase, or ``--sigma_ang``/``--sigma_rot``/
``--sigma_tilt``/``--sigma_psi``): Gaussians about each particle's current angles
as RELION's ``selectOrientationsWithNonZeroPriorProbability``
(``geometry.local_search``), and only the orientations inside the cut-offs.
"""

import math

import numpy as np
import torch
from torch import Tensor

from cryorefine.geometry import (
    SIGMA_CUTOFF,
    local_angle_prior,
    local_direction_prior,
    local_psi_prior,
    pixel_rot_tilt_deg,
)
from cryorefine.likelihood import ExpectationPlan, OrientationGrid
from cryorefine.likelihood.search import compact
from cryorefine.refine.model import RefineState

__all__ = ["DENSE_FRACTION_INVERSE", "orientation_priors", "prior_centres_deg", "search_order"]

DENSE_FRACTION_INVERSE = 4
"""Lists longer than 1/4 of the grid are scored as the whole grid with -inf outside."""


def prior_centres_deg(
    angles_deg: np.ndarray, angle_priors_deg: np.ndarray, *, use_priors: bool
) -> np.ndarray:
    """``(b, 3)`` angles the local priors are centred on, as RELION chooses them.

    Each angle's ``rlnAngle*Prior`` where the table defines it (finite and not
    RELION's 999 for "unset") and ``use_priors``; otherwise the current angle.
    Auto-refine's own local searches (from ``--auto_local_healpix_order``) are
    centred on the current angles: ``use_priors`` False.
    """
    defined = np.isfinite(angle_priors_deg) & (np.abs(angle_priors_deg - 999.0) > 0.01)
    return np.where(defined & use_priors, angle_priors_deg, angles_deg)


def _direction_prior(
    grid: OrientationGrid, state: RefineState, operators: Tensor, angles_deg: Tensor
) -> Tensor:
    """``(b, m)`` prior weights of the directions about the particles' (rot, tilt).

    As RELION: a prior on both angles is one on the angle between directions
    with the larger sigma; on one angle alone, on that angle (``--sigma_tilt``
    of the tutorial); on neither, every direction alike.
    """
    rot_tilt = pixel_rot_tilt_deg(grid.healpix_order, grid.pixels)
    sigma_rot, sigma_tilt = state.sigma_rot_deg, state.sigma_tilt_deg
    if sigma_rot > 0 and sigma_tilt > 0:
        return local_direction_prior(
            angles_deg[:, :2], rot_tilt, sigma_deg=max(sigma_rot, sigma_tilt), operators=operators
        )
    if sigma_rot > 0 or sigma_tilt > 0:
        angle, column, sigma = ("rot", 0, sigma_rot) if sigma_rot > 0 else ("tilt", 1, sigma_tilt)
        return local_angle_prior(
            angles_deg[:, column], rot_tilt, angle=angle, sigma_deg=sigma, operators=operators
        )
    flat = torch.ones_like(angles_deg[:, :1]).expand(-1, rot_tilt.shape[0])
    return flat / rot_tilt.shape[0]


def orientation_priors(
    plan: ExpectationPlan,
    state: RefineState,
    orientation_pdf: Tensor | None,
    operators: Tensor,
    angles_deg: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Log priors ``(b, c)`` of coarse orientations and their ids ``(b, c)`` (None: all).

    Global: the half set's ``orientation_pdf`` over directions (or flat). Local: Gaussians about
    ``angles_deg (b, 3)``, over the (direction, psi) pairs inside the cut-offs;
    when those lists reach a quarter of the grid, over the whole grid with
    ``-inf`` outside them instead (the same posterior, scored as a global search).
    """
    b = angles_deg.shape[0]
    grid = plan.orientations
    p = grid.psi_deg.shape[0]
    if not state.local_searches:
        pdf = orientation_pdf
        if pdf is None or pdf.shape[0] != grid.pixels.shape[0]:
            log_dir = torch.zeros(
                grid.pixels.shape[0], dtype=torch.float64, device=angles_deg.device
            )
        else:
            log_dir = torch.log(pdf.to(angles_deg.device).clamp(min=1e-300))
        return log_dir.repeat_interleave(p).expand(b, -1).contiguous(), None
    directions = _direction_prior(grid, state, operators, angles_deg)
    psis = torch.ones((b, p), dtype=angles_deg.dtype, device=angles_deg.device) / p
    if state.sigma_psi_deg > 0:
        psis = local_psi_prior(
            angles_deg[:, 2], grid.psi_deg.to(angles_deg), sigma_deg=state.sigma_psi_deg
        )
    # Only the (direction, psi) pairs inside both cut-offs: (b, ld * lp), never (b, m * p).
    inside_dir, inside_psi = directions > 0, psis > 0
    # both lists' widths in one transfer (one host sync, not two)
    widths = torch.stack([inside_dir.sum(dim=1).max(), inside_psi.sum(dim=1).max()]).tolist()
    dir_ids, dir_valid = compact(inside_dir, max(1, widths[0]))
    psi_ids, psi_valid = compact(inside_psi, max(1, widths[1]))
    log_dir = torch.where(dir_valid, torch.log(torch.gather(directions, 1, dir_ids)), -math.inf)
    log_psi = torch.where(psi_valid, torch.log(torch.gather(psis, 1, psi_ids)), -math.inf)
    ids = (dir_ids[:, :, None] * p + psi_ids[:, None, :]).reshape(b, -1)
    log_prior = (log_dir[:, :, None] + log_psi[:, None, :]).reshape(b, -1)
    if ids.shape[1] * DENSE_FRACTION_INVERSE < grid.count:
        return log_prior, ids
    # Long lists (a prior on tilt alone, wide cut-offs): the whole grid, scored once
    # for all particles, is cheaper than gathering each particle's own projections.
    # Padding ids are orientations outside the cut-offs, distinct from the kept ones.
    dense = log_prior.new_full((b, grid.count), -math.inf)
    return dense.scatter_(1, ids, log_prior), None


def search_order(
    plan: ExpectationPlan,
    state: RefineState,
    operators: Tensor,
    angles_deg: Tensor,
) -> np.ndarray:
    """An order of the particles in which neighbours search nearly the same orientations.

    Local searches only (identity otherwise): particles sorted by the band of
    their largest psi prior (``2 ceil(SIGMA_CUTOFF sigma / step) + 1`` grid psi,
    a little wider than a list's psi, which lie strictly within the cut-off; one
    band without a psi prior; bands do not wrap at 360), then by the grid
    direction of their largest direction prior, then by that psi. Grid
    directions are NESTED HEALPix pixels, so ascending ids are near on the
    sphere, and symmetry mates share a direction. Batches and fine groups taken
    in this order project each orientation for many particles at once: the
    union of their candidate lists is a few particles' lists, not one list per
    particle. On the tutorial job's own poses at HEALPix order 4 (4,719
    particles, lists of 167), batches of 133 had unions of 3,498 rows in bands
    of 7 psi (lists of 5-6 psi; bands of 5: 3,700, of 8: 3,459) against 5,941
    sorted by direction first. ``angles_deg (n, 3)``: the centres of the priors.
    """
    n = angles_deg.shape[0]
    if not state.local_searches or n == 0:
        return np.arange(n)
    grid = plan.orientations
    # (chunk, m) float64 priors and ~5 temporaries of their size within a quarter budget
    chunk = max(1, min(4096, plan.max_bytes // 4 // (6 * 8 * grid.pixels.shape[0])))
    direction = torch.empty(n, dtype=torch.int64, device=angles_deg.device)
    psi = torch.zeros(n, dtype=torch.int64, device=angles_deg.device)
    for lo in range(0, n, chunk):  # (chunk, m) priors at a time
        part = angles_deg[lo : lo + chunk]
        direction[lo : lo + chunk] = _direction_prior(grid, state, operators, part).argmax(dim=1)
        if state.sigma_psi_deg > 0:
            weights = local_psi_prior(
                part[:, 2], grid.psi_deg.to(part), sigma_deg=state.sigma_psi_deg
            )
            psi[lo : lo + chunk] = weights.argmax(dim=1)
    p = grid.psi_deg.shape[0]
    band = p
    if state.sigma_psi_deg > 0:
        reach = math.ceil(SIGMA_CUTOFF * state.sigma_psi_deg / grid.psi_step_deg)
        band = min(p, 2 * reach + 1)
    key = ((psi // band) * grid.pixels.shape[0] + direction) * p + psi
    return torch.argsort(key, stable=True).cpu().numpy()
