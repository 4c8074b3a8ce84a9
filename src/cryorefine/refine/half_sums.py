"""What one half set's E-step gives to its M-step: the sums, their zero, two joined.

The back-projector's accumulators and the float64 sums of the noise, weights,
offsets, orientation mass and group scales, added batch by batch
(``half_pass``), across ranks (``parallel.communicator``) and, in the final
iteration, across the two half sets (``join_sums``).
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from cryorefine.fourier import zero_accumulators
from cryorefine.refine.model import HalfSetModel

__all__ = ["SCALE_SSNR_THRESHOLD", "HalfSetSums", "empty_sums", "join_sums", "scale_shells"]


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
    scale_sums: Float[Tensor, "2 g s"]
    """Per scale group and shell: ``sum w Re(K P conj X)`` and ``sum w |K P|^2``, the
    group scale divided out (RELION's XA / s and AA / s^2), for ``--scale``."""
    norm_sum: float = 0.0
    """Sum of the particles' new ``rlnNormCorrection`` (``--norm``)."""


def empty_sums(
    model: HalfSetModel, directions: int, *, padding_factor: int, device: torch.device
) -> HalfSetSums:
    """The sums of no particle, to be added to; ``directions`` of the orientation grid."""
    data, weight = zero_accumulators(model.ori_size, padding_factor=padding_factor, device=device)
    nr_groups, shells = model.sigma2_noise.shape

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, dtype=torch.float64, device=device)

    return HalfSetSums(
        data=data,
        weight=weight,
        noise=zeros(nr_groups, shells),
        multiplicity=None,
        weight_per_group=zeros(nr_groups),
        offset_moments_angst2=0.0,
        direction_mass=zeros(directions),
        pmax_sum=0.0,
        count=0,
        scale_sums=zeros(2, len(model.group_names), shells),
    )


SCALE_SSNR_THRESHOLD = 3.0
"""Shells whose SSNR (``rlnSsnrMap``) exceeds this enter the scale sums (RELION)."""


def scale_shells(ssnr: Tensor) -> Tensor:
    """The shells ``(s,)`` that a half set's scale sums take: its model's SSNR above 3."""
    return ssnr > SCALE_SSNR_THRESHOLD


def join_sums(a: HalfSetSums, b: HalfSetSums) -> HalfSetSums:
    """The sums of both half sets (the final iteration reconstructs from them)."""
    multiplicity = (
        None
        if a.multiplicity is None or b.multiplicity is None
        else a.multiplicity + b.multiplicity
    )
    return HalfSetSums(
        data=a.data + b.data,
        weight=a.weight + b.weight,
        noise=a.noise + b.noise,
        multiplicity=multiplicity,
        weight_per_group=a.weight_per_group + b.weight_per_group,
        offset_moments_angst2=a.offset_moments_angst2 + b.offset_moments_angst2,
        direction_mass=a.direction_mass + b.direction_mass,
        pmax_sum=a.pmax_sum + b.pmax_sum,
        count=a.count + b.count,
        scale_sums=a.scale_sums + b.scale_sums,
        norm_sum=a.norm_sum + b.norm_sum,
    )
