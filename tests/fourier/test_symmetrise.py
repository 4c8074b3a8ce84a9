"""Symmetrise: Friedel sums of the kx = 0 plane, point-group sums, invariance."""

import pytest
import torch
from analytic_objects import random_accumulators

from cryorefine.fourier.symmetrise import apply_point_group, enforce_hermitian_symmetry, symmetrise

U = 2.0**-53
IDENTITY = torch.eye(3, dtype=torch.float64)


def _quarter_turns() -> torch.Tensor:
    """C4 about z: rotations by 0, 90, 180, 270 degrees (exact integer matrices)."""
    c = [1, 0, -1, 0]
    s = [0, 1, 0, -1]
    return torch.tensor(
        [[[c[i], -s[i], 0], [s[i], c[i], 0], [0, 0, 1]] for i in range(4)], dtype=torch.float64
    )


def _d2() -> torch.Tensor:
    return torch.stack([torch.diag(torch.tensor(d, dtype=torch.float64)) for d in
                        ([1, 1, 1], [-1, -1, 1], [1, -1, -1], [-1, 1, -1])])  # fmt: skip


def test_hermitian_symmetry_sums_each_kx0_voxel_with_its_friedel_mate(device):
    gen = torch.Generator().manual_seed(20)
    p = 10
    data, weight = random_accumulators(p, gen, radius=p)
    got_data, got_weight = enforce_hermitian_symmetry(data.to(device), weight.to(device))
    want_data, want_weight = data.clone(), weight.clone()
    for iz in range(p):
        for iy in range(p):
            jz, jy = (p - iz) % p, (p - iy) % p  # centred index of -k (p even)
            if (jz, jy) != (iz, iy):
                want_data[iz, iy, 0] = data[iz, iy, 0] + data[jz, jy, 0].conj()
                want_weight[iz, iy, 0] = weight[iz, iy, 0] + weight[jz, jy, 0]
    # Sums of two terms: one rounding each.
    torch.testing.assert_close(got_data.cpu(), want_data, rtol=2 * U, atol=0.0)
    torch.testing.assert_close(got_weight.cpu(), want_weight, rtol=2 * U, atol=0.0)
    index = (p - torch.arange(p)) % p
    mate = got_data.cpu()[index][:, index, 0]
    pair = ~((index[:, None] == torch.arange(p)[:, None]) & (index == torch.arange(p))[None, :])
    torch.testing.assert_close(mate[pair], got_data.cpu()[:, :, 0].conj()[pair], rtol=0.0, atol=0.0)


def test_c4_symmetrisation_equals_the_explicit_sum_of_permuted_arrays(device):
    gen = torch.Generator().manual_seed(21)
    p = 12
    data, weight = random_accumulators(p, gen, radius=p // 2 - 1)
    data, weight = enforce_hermitian_symmetry(data, weight)
    ops = _quarter_turns()
    got_data, got_weight = apply_point_group(data.to(device), weight.to(device), ops.to(device))

    def full(array, kx, ky, kz, conj):  # value at any K of the Hermitian full grid
        if kx < 0:
            value = array[(-kz + p // 2) % p, (-ky + p // 2) % p, -kx]
            return value.conj() if conj else value
        return array[(kz + p // 2) % p, (ky + p // 2) % p, kx]

    want_data, want_weight = torch.zeros_like(data), torch.zeros_like(weight)
    for iz in range(p):
        for iy in range(p):
            for ix in range(p // 2 + 1):
                k = torch.tensor([ix, iy - p // 2, iz - p // 2], dtype=torch.float64)
                for op in ops:
                    kx, ky, kz = (int(v) for v in op @ k)
                    want_data[iz, iy, ix] += full(data, kx, ky, kz, conj=True)
                    want_weight[iz, iy, ix] += full(weight, kx, ky, kz, conj=False)
    # Grid-aligned operators: exact samples; four-term sums in another order, so the
    # rounding is relative to the terms (<= max |value|), not to the sum.
    atol = 8 * 4 * U * data.abs().max().item()
    torch.testing.assert_close(got_data.cpu(), want_data, rtol=0.0, atol=atol)
    atol = 8 * 4 * U * weight.max().item()
    torch.testing.assert_close(got_weight.cpu(), want_weight, rtol=0.0, atol=atol)


@pytest.mark.parametrize("group", ["C4", "D2"])
def test_symmetrised_accumulators_are_invariant_under_each_operator(device, group):
    gen = torch.Generator().manual_seed(22)
    p = 12
    ops = (_quarter_turns() if group == "C4" else _d2()).to(device)
    data, weight = random_accumulators(p, gen, radius=p // 2 - 1)
    data, weight = symmetrise(data.to(device), weight.to(device), ops)
    for op in ops:
        turned = apply_point_group(data, weight, op[None])
        # One exact sample per voxel: equal up to the four-term sums' rounding, which is
        # relative to the terms (up to max |value|), not to their possibly smaller sum.
        atol = 8 * 4 * U * data.abs().max().item()
        torch.testing.assert_close(turned[0], data, rtol=0.0, atol=atol)
        torch.testing.assert_close(
            turned[1], weight, rtol=0.0, atol=8 * 4 * U * weight.max().item()
        )


def test_symmetrise_with_the_identity_alone_is_the_hermitian_sum(device):
    gen = torch.Generator().manual_seed(23)
    data, weight = random_accumulators(12, gen, radius=5)
    data, weight = data.to(device), weight.to(device)
    got = symmetrise(data, weight, IDENTITY[None].to(device))
    want = enforce_hermitian_symmetry(data, weight)
    torch.testing.assert_close(got[0], want[0], rtol=0.0, atol=0.0)
    torch.testing.assert_close(got[1], want[1], rtol=0.0, atol=0.0)
