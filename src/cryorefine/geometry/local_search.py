"""Local angular searches: which directions and psi values RELION scores, and their priors.

Facts from ``HealpixSampling::selectOrientationsWithNonZeroPriorProbability``
(REFINE_SPEC.md §4.4, §5.4), for priors on both rot and tilt with one sigma (as
auto-refine sets them: ``sigma_rot = sigma_tilt = sigma_psi`` = twice the fine
angular step):

- direction: the angle ``delta`` between the prior direction and the nearest
  symmetry image ``R.T @ d`` of the sampled direction (every operator of the
  group, improper ones included); kept if ``delta < sigma_cutoff * sigma``
  (``sigma_cutoff`` = 3), with weight ``exp(-delta**2 / (2 sigma**2))``;
- psi: ``delta = |psi - prior_psi|``, replaced by ``|delta - 360|`` above 180
  (no symmetry), same cut and weight;
- weights are normalised to sum 1 over the kept values of each particle; if
  none is kept, the single nearest one gets weight 1.

With a prior on one of rot or tilt alone (``--sigma_rot`` or ``--sigma_tilt``
without the other), the distance is that angle's: ``|tilt(R.T @ d) - prior_tilt|``
or the rot difference on the circle, the smallest over the group; same cut and
weight (``local_angle_prior``). The tutorial's ``--sigma_tilt 10`` is this case.

Results are dense ``(b, m)`` / ``(b, p)`` weights: 0 means "not searched".
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.geometry.asymmetric_unit import symmetry_mate_directions
from cryorefine.geometry.euler import euler_to_direction

__all__ = ["SIGMA_CUTOFF", "local_angle_prior", "local_direction_prior", "local_psi_prior"]

SIGMA_CUTOFF = 3.0
"""RELION's ``sigma_cutoff``: local searches reach 3 sigma from the prior."""

_OPERATOR_BLOCK_BYTES = 2**26  # (b, m, g) angle differences at once in local_angle_prior


def _normalised_gaussian(delta_deg: Tensor, sigma_deg: float, sigma_cutoff: float) -> Tensor:
    """Gaussian weights inside the cut, normalised per row; nearest one if the cut is empty."""
    kept = delta_deg < sigma_cutoff * sigma_deg
    weight = torch.exp(-0.5 * (delta_deg / sigma_deg) ** 2) * kept
    total = weight.sum(-1, keepdim=True)
    nearest = torch.zeros_like(weight).scatter_(-1, delta_deg.argmin(-1, keepdim=True), 1.0)
    empty = total == 0
    return torch.where(empty, nearest, weight / torch.where(empty, 1.0, total))


def local_direction_prior(
    prior_rot_tilt_deg: Float[Tensor, "b 2"],
    rot_tilt_deg: Float[Tensor, "m 2"],
    *,
    sigma_deg: float,
    operators: Float[Tensor, "g 3 3"],
    sigma_cutoff: float = SIGMA_CUTOFF,
) -> Float[Tensor, "b m"]:
    """Prior weight of each sampled direction for each particle's prior direction.

    Parameters
    ----------
    prior_rot_tilt_deg
        Each particle's current ``(rot, tilt)``, degrees.
    rot_tilt_deg
        The sampled directions (e.g. the asymmetric unit of the current order).
    sigma_deg
        Width of the Gaussian prior on the angle between directions, > 0.
    operators
        The point group's operators (``SymmetryGroup.operators``, identity included).
    sigma_cutoff
        Directions at ``sigma_cutoff * sigma_deg`` or more are not searched.

    Returns
    -------
    Float[Tensor, "b m"]
        Weights summing to 1 per particle; 0 outside the searched range.
    """
    if not sigma_deg > 0:
        raise ValueError(f"sigma must be > 0 degrees, got {sigma_deg}")
    prior = euler_to_direction(prior_rot_tilt_deg)  # (b, 3)
    mates = symmetry_mate_directions(euler_to_direction(rot_tilt_deg), operators)  # (m, g, 3)
    mates = mates.to(prior.dtype)
    cos = prior @ mates[:, 0].T
    for g in range(1, mates.shape[1]):  # over operators: (b, m) memory, not (b, m, g)
        cos = torch.maximum(cos, prior @ mates[:, g].T)
    delta = torch.acos(cos.clamp(-1.0, 1.0)) * 180.0 / math.pi
    return _normalised_gaussian(delta, sigma_deg, sigma_cutoff)


def local_psi_prior(
    prior_psi_deg: Float[Tensor, " b"],
    psi_deg: Float[Tensor, " p"],
    *,
    sigma_deg: float,
    sigma_cutoff: float = SIGMA_CUTOFF,
) -> Float[Tensor, "b p"]:
    """Prior weight of each sampled psi for each particle's prior psi (degrees).

    The difference is taken on the circle (at most 180 degrees); weights as
    ``local_direction_prior``.
    """
    if not sigma_deg > 0:
        raise ValueError(f"sigma must be > 0 degrees, got {sigma_deg}")
    delta = (psi_deg[None, :].to(prior_psi_deg.dtype) - prior_psi_deg[:, None]).abs()
    delta = torch.remainder(delta + 180.0, 360.0).sub(180.0).abs()  # RELION's |d - 360| above 180
    return _normalised_gaussian(delta, sigma_deg, sigma_cutoff)


def local_angle_prior(
    prior_deg: Float[Tensor, " b"],
    rot_tilt_deg: Float[Tensor, "m 2"],
    *,
    angle: str,
    sigma_deg: float,
    operators: Float[Tensor, "g 3 3"],
    sigma_cutoff: float = SIGMA_CUTOFF,
) -> Float[Tensor, "b m"]:
    """Prior weight of each sampled direction from a prior on its ``"rot"`` or ``"tilt"`` alone.

    The distance is the difference of that angle between the prior and the
    nearest symmetry image of the direction (rot on the circle); weights as
    ``local_direction_prior``.
    """
    if angle not in ("rot", "tilt"):
        raise ValueError(f"angle must be 'rot' or 'tilt', got {angle!r}")
    if not sigma_deg > 0:
        raise ValueError(f"sigma must be > 0 degrees, got {sigma_deg}")
    mates = symmetry_mate_directions(euler_to_direction(rot_tilt_deg), operators)  # (m, g, 3)
    mates = mates.to(prior_deg.dtype)
    if angle == "tilt":
        values = torch.rad2deg(torch.acos(mates[..., 2].clamp(-1.0, 1.0)))
    else:
        values = torch.rad2deg(torch.atan2(mates[..., 1], mates[..., 0]))
    if mates.shape[1] == 0:
        raise ValueError("operators must hold at least the identity")
    # all operators at once up to _OPERATOR_BLOCK_BYTES of (b, m, g) differences (a batch's
    # few operators: a handful of launches, not five per operator), else a block at a time
    b, (m, g) = prior_deg.shape[0], values.shape
    block = max(1, _OPERATOR_BLOCK_BYTES // max(1, b * m * values.element_size()))
    delta = None
    for lo in range(0, g, block):
        d = (values[None, :, lo : lo + block] - prior_deg[:, None, None]).abs()
        if angle == "rot":
            d = torch.remainder(d + 180.0, 360.0).sub(180.0).abs()
        d = d.amin(dim=2)
        delta = d if delta is None else torch.minimum(delta, d)
    return _normalised_gaussian(delta, sigma_deg, sigma_cutoff)
