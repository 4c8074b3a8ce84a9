"""Symmetrise back-projector accumulators: Friedel pairs of ``kx = 0``, then point-group operators.

Accumulators are padded centred half-grids (layout: ``fourier.interpolation``).
Insertion stores a point with ``q_x < 0`` at ``-q`` (conjugated), so a voxel of
the ``kx = 0`` plane has collected only part of its neighbourhood and its
Friedel mate ``-K`` the rest: ``enforce_hermitian_symmetry`` replaces both by
``B(K) + conj(B(-K))`` (weights ``W(K) + W(-K)``), RELION's
``enforceHermitianSymmetry``. Apply it once to raw accumulators (it sums, so it
is not idempotent); self-mates (the origin, and the Nyquist aliases of the
periodic grid) are left unchanged. Then ``apply_point_group`` replaces ``B`` and
``W`` by the sum over the operators ``R`` (identity included) of ``B`` and
``W`` sampled at ``R @ K`` by trilinear interpolation, with the Friedel mate
where ``(R K)_x < 0`` (RELION's ``applyPointGroupSymmetry``). Voxels with
``|K| > p // 2`` keep their values. ``symmetrise`` does both, in this order.
"""

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from cryorefine.fourier.interpolation import (
    _interpolate_corners,
    _real_dtype,
    centred_half_frequencies,
    padded_size,
)

__all__ = ["apply_point_group", "enforce_hermitian_symmetry", "symmetrise"]

# Points sampled per batch of operators (operators x voxels), to bound memory.
_POINTS_PER_BATCH = 1 << 23


def enforce_hermitian_symmetry(
    data: Complex[Tensor, "p p ph"], weight: Float[Tensor, "p p ph"]
) -> tuple[Complex[Tensor, "p p ph"], Float[Tensor, "p p ph"]]:
    """Sum each ``kx = 0`` voxel with its Friedel mate (returns new tensors).

    After it, ``B(0, -ky, -kz) = conj(B(0, ky, kz))`` and ``W(0, -ky, -kz) =
    W(0, ky, kz)``; both hold the sum of the two collected halves.
    """
    p = padded_size(data.shape)
    index = torch.arange(p, device=data.device)
    mate = torch.remainder(2 * (p // 2) - index, p)  # centred index of -k
    self_mate = (mate[:, None] == index[:, None]) & (mate[None, :] == index[None, :])
    plane, plane_weight = data[:, :, 0], weight[:, :, 0]
    mate_plane = plane[mate][:, mate]
    mate_weight = plane_weight[mate][:, mate]
    data, weight = data.clone(), weight.clone()
    data[:, :, 0] = torch.where(self_mate, plane, plane + mate_plane.conj())
    weight[:, :, 0] = torch.where(self_mate, plane_weight, plane_weight + mate_weight)
    return data, weight


def apply_point_group(
    data: Complex[Tensor, "p p ph"],
    weight: Float[Tensor, "p p ph"],
    operators: Float[Tensor, "g 3 3"],
) -> tuple[Complex[Tensor, "p p ph"], Float[Tensor, "p p ph"]]:
    """Sum of the accumulators sampled at ``R @ K`` over the operators (trilinear, Friedel mates).

    Parameters
    ----------
    data, weight
        Accumulators whose ``kx = 0`` plane is Hermitian (after
        ``enforce_hermitian_symmetry``).
    operators
        The point group's rotation matrices, identity included (``geometry``).
        Batched over operators in groups of at most ``2**23 / voxels``.

    Returns
    -------
    tuple
        New data and weight; voxels with ``|K| > p // 2`` are unchanged.
    """
    p = padded_size(data.shape)
    real_dtype = _real_dtype(data.dtype)
    k = centred_half_frequencies(p, device=data.device).reshape(-1, 3)
    inside = ((k * k).sum(dim=-1) <= (p // 2) ** 2).nonzero().squeeze(1)
    points = k[inside].to(real_dtype)
    table = torch.cat(
        [torch.view_as_real(data).reshape(-1, 2), weight.reshape(-1, 1).to(real_dtype)], dim=1
    )
    total = table.new_zeros((points.shape[0], 3))
    ops = operators.to(data.device, real_dtype)
    batch = max(1, _POINTS_PER_BATCH // max(1, points.shape[0]))
    for start in range(0, ops.shape[0], batch):
        # q = R K, i.e. as a row vector K^T R^T: (v, 3) @ (g, 3, 3) -> (g, v, 3)
        q = points @ ops[start : start + batch].transpose(-1, -2)
        total += _interpolate_corners(table, q, p, conj_channel=1).sum(dim=0)
    out_data = data.clone().reshape(-1)
    out_weight = weight.clone().reshape(-1)
    out_data[inside] = torch.view_as_complex(total[:, :2].contiguous()).to(data.dtype)
    out_weight[inside] = total[:, 2].to(weight.dtype)
    return out_data.reshape(data.shape), out_weight.reshape(weight.shape)


def symmetrise(
    data: Complex[Tensor, "p p ph"],
    weight: Float[Tensor, "p p ph"],
    operators: Float[Tensor, "g 3 3"],
) -> tuple[Complex[Tensor, "p p ph"], Float[Tensor, "p p ph"]]:
    """Hermitian sums of ``kx = 0``, then the point group (RELION's ``BackProjector::symmetrise``).

    Call once on the summed raw accumulators before ``reconstruct``; for C1
    pass the identity alone, ``torch.eye(3)[None]``.
    """
    data, weight = enforce_hermitian_symmetry(data, weight)
    return apply_point_group(data, weight, operators)
