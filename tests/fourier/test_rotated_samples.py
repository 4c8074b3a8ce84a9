"""Sampling at, and splatting into, rotated frequency lists equal the plain float64 corner loop.

On CUDA with Triton these run the fused kernels (``fourier.trilinear_kernels``);
on the CPU the torch path. Both are held to the same float64 reference.
"""

import pytest
import torch

from cryorefine.fourier import (
    add_packed,
    packed_accumulator,
    sample_rotated,
    splat_rotated,
    trilinear_kernels,
    zero_accumulators,
)
from cryorefine.fourier.interpolation import _interpolate_corners, _splat
from cryorefine.geometry import euler_to_matrix

U32 = 2.0**-24  # float32 unit roundoff


def _case(seed: int, n: int, pad: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    p = n * pad
    reference = torch.randn((p, p, p // 2 + 1), dtype=torch.complex64, generator=gen)
    rotations = euler_to_matrix(torch.rand((5, 3), generator=gen, dtype=torch.float64) * 360)
    half = n // 2
    axes = (torch.arange(0, half + 1), torch.arange(-half, half), torch.arange(-half, half))
    frequencies = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    return reference.to(device), rotations.to(device), frequencies.to(device), p


def _redundant(k: torch.Tensor) -> torch.Tensor:
    return (k[:, 0] == 0) & ((k[:, 2] < 0) | ((k[:, 2] == 0) & (k[:, 1] < 0)))


def _coordinate_bound(p: int) -> float:
    """Float32 rounding of ``q = A.T k pad`` (|q| <= sqrt(3) half pad < p): a few units of
    ``p``, which moves each trilinear weight by as much; the value by that times the sum of
    the 8 corners' magnitudes; plus the float32 sum of 8 terms."""
    return (4 * p * 8 + 8) * U32


@pytest.mark.parametrize(("n", "pad"), [(12, 2), (10, 1)])
def test_sampled_values_equal_the_float64_corner_loop(device, n, pad):
    reference, rotations, frequencies, p = _case(n, n, pad, device)
    radius = n / 2 - 0.5
    values = sample_rotated(
        reference, rotations, frequencies, padding_factor=pad, max_radius=radius, scale=3.0
    )
    q = (frequencies.to(torch.float64) * pad) @ rotations.to(torch.float64)
    table = torch.view_as_real(reference.to(torch.complex128)).reshape(-1, 2)
    expected = torch.view_as_complex(_interpolate_corners(table, q, p, conj_channel=1))
    inside = frequencies.to(torch.float64).square().sum(dim=-1) <= radius**2
    expected = torch.where(inside, expected * 3.0, 0)
    bound = 3.0 * _coordinate_bound(p) * table.abs().max().item()
    assert values.dtype == torch.complex64
    torch.testing.assert_close(values.to(torch.complex128), expected, rtol=0.0, atol=bound)
    assert bool((values[:, ~inside] == 0).all())  # exactly zero beyond the radius


@pytest.mark.parametrize("accumulator_dtype", [torch.float64, torch.float32, "packed"])
def test_splatting_equals_the_float64_corner_loop_and_skips_mates(device, accumulator_dtype):
    """Into float64 or float32 accumulators, or one packed float32 (re, im, weight, 0) grid
    (on GPUs with vector reductions: one per corner)."""
    n, pad = 12, 2
    _, rotations, frequencies, p = _case(3, n, pad, device)
    gen = torch.Generator().manual_seed(4)
    r, k = rotations.shape[0], frequencies.shape[0]
    data = torch.randn((r, k), dtype=torch.complex64, generator=gen).to(device)
    weights = torch.rand((r, k), generator=gen).to(device)
    shape = (p, p, p // 2 + 1)
    radius = 5.0
    if accumulator_dtype == "packed":
        packed = packed_accumulator(n, padding_factor=pad, device=device)
        splat_rotated(
            data, weights, rotations, frequencies, padding_factor=pad,
            accumulator_data=packed, accumulator_weight=None,
            max_radius=radius, skip_redundant=True, ndim=3,
        )  # fmt: skip
        assert bool((packed[..., 3] == 0).all())  # the unused channel
        acc_data = torch.view_as_complex(packed[..., :2].contiguous())
        acc_weight = packed[..., 2]
    else:
        complex_dtype = torch.complex128 if accumulator_dtype == torch.float64 else torch.complex64
        acc_data = torch.zeros(shape, dtype=complex_dtype, device=device)
        acc_weight = torch.zeros(shape, dtype=accumulator_dtype, device=device)
        splat_rotated(
            data, weights, rotations, frequencies, padding_factor=pad,
            accumulator_data=acc_data, accumulator_weight=acc_weight,
            max_radius=radius, skip_redundant=True, ndim=3,
        )  # fmt: skip
    keep = frequencies.to(torch.float64).square().sum(dim=-1) <= radius**2
    keep &= ~_redundant(frequencies)
    q = (frequencies[keep].to(torch.float64) * pad) @ rotations.to(torch.float64)
    want_data = torch.zeros(shape, dtype=torch.complex128, device=device)
    want_weight = torch.zeros(shape, dtype=torch.float64, device=device)
    values = torch.view_as_real(data[:, keep].to(torch.complex128))
    _splat(torch.view_as_real(want_data).reshape(-1, 2), q, values, p, conj_channel=1)
    _splat(want_weight.reshape(-1, 1), q, weights[:, keep, None].double(), p, conj_channel=None)
    # each accumulator element sums up to ~8 r k / p^3 * 8 contributions of <= max|value|:
    # the float32 weights' rounding (coordinate bound) per contribution, and, in float32
    # accumulators, the running sum's rounding, bounded by the number of terms
    terms = 8 * r * int(keep.sum())
    unit = 0.0 if accumulator_dtype == torch.float64 else U32
    scale = data.abs().max().item()
    bound = (_coordinate_bound(p) * 8 + terms * unit) * scale
    torch.testing.assert_close(acc_data.to(torch.complex128), want_data, rtol=0.0, atol=bound)
    torch.testing.assert_close(acc_weight.double(), want_weight, rtol=0.0, atol=bound)
    # a wrong mate rule or radius would leave ~|value| (order 1) differences
    assert bound < 0.01 * scale


def test_packed_sums_move_into_the_float64_accumulators(device):
    gen = torch.Generator().manual_seed(8)
    packed = packed_accumulator(4, padding_factor=2, device=device)
    packed.copy_(torch.randn(packed.shape, generator=gen).to(device))
    want = packed.double().clone()
    data, weight = zero_accumulators(4, padding_factor=2, device=device)
    data += 1.0
    add_packed(packed, data, weight)
    # float32 to float64 is exact, and so is adding it to 1 in float64 (24 + 1 bits fit 53)
    torch.testing.assert_close(
        data, torch.complex(want[..., 0], want[..., 1]) + 1.0, rtol=0, atol=0
    )
    torch.testing.assert_close(weight, want[..., 2], rtol=0, atol=0)
    assert bool((packed == 0).all())  # ready for the next batch


def test_a_packed_accumulator_must_be_a_whole_float32_grid(device):
    _, rotations, frequencies, _ = _case(3, 8, 2, device)
    data = torch.zeros((rotations.shape[0], frequencies.shape[0]), dtype=torch.complex64)
    weights = torch.zeros(data.shape)
    packed = packed_accumulator(8, padding_factor=2, device=device)
    for bad in (packed.double(), packed[:, :, :-1]):  # another dtype; not contiguous
        with pytest.raises(ValueError, match="contiguous float32"):
            splat_rotated(
                data.to(device), weights.to(device), rotations, frequencies, padding_factor=2,
                accumulator_data=bad, accumulator_weight=None, max_radius=4.0,
                skip_redundant=True, ndim=3,
            )  # fmt: skip


def test_splatting_is_the_adjoint_of_sampling(device):
    """``Re <sample(x), y> = Re <x, splat(y)>`` on the half-grid's real inner product."""
    n, pad = 12, 2
    reference, rotations, frequencies, p = _case(5, n, pad, device)
    gen = torch.Generator().manual_seed(6)
    y = torch.randn((rotations.shape[0], frequencies.shape[0]), dtype=torch.complex64,
                    generator=gen).to(device)  # fmt: skip
    sampled = sample_rotated(
        reference, rotations, frequencies, padding_factor=pad, max_radius=n / 2
    )
    acc = torch.zeros(reference.shape, dtype=torch.complex128, device=device)
    acc_weight = torch.zeros(reference.shape, dtype=torch.float64, device=device)
    splat_rotated(
        y, y.real, rotations, frequencies, padding_factor=pad, accumulator_data=acc,
        accumulator_weight=acc_weight, max_radius=n / 2, skip_redundant=False, ndim=3,
    )  # fmt: skip
    left = (sampled.to(torch.complex128).conj() * y).real.sum()
    right = (reference.to(torch.complex128).conj() * acc).real.sum()
    # float32 sampling: each sampled value is off by at most the coordinate bound times
    # max|x| (the corner loop's bound), so the sum of r k products by that times sum |y|
    bound = _coordinate_bound(p) * reference.abs().max().item() * y.abs().sum().item()
    assert abs(left.item() - right.item()) <= bound


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels need CUDA")
def test_cuda_runs_the_fused_kernels():
    reference = torch.zeros((8, 8, 5), dtype=torch.complex64, device="cuda")
    assert trilinear_kernels.available(reference) == (trilinear_kernels.triton is not None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the launch limit is CUDA's")
def test_more_rotations_than_one_cuda_launch_holds_are_all_sampled():
    # CUDA grids hold at most 65,535 blocks in their second dimension (one per rotation)
    reference, _, frequencies, _ = _case(9, 8, 2, torch.device("cuda"))
    gen = torch.Generator().manual_seed(10)
    rotations = euler_to_matrix(torch.rand((70_000, 3), generator=gen, dtype=torch.float64) * 360)
    values = sample_rotated(
        reference, rotations.cuda(), frequencies[:16], padding_factor=2, max_radius=4.0
    )
    last = sample_rotated(
        reference, rotations[-3:].cuda(), frequencies[:16], padding_factor=2, max_radius=4.0
    )
    torch.testing.assert_close(values[-3:], last, rtol=0.0, atol=0.0)
    assert bool(values[-3:].abs().sum() > 0)


def test_values_written_into_a_given_array_are_the_values_returned(device):
    # a slice of a larger table, as passes.RowProjector.with_values fills its rows
    reference, rotations, frequencies, _ = _case(11, 8, 2, device)
    want = sample_rotated(reference, rotations, frequencies, padding_factor=2, max_radius=3.5)
    table = torch.full((7, frequencies.shape[0]), 5 + 5j, dtype=torch.complex64, device=device)
    got = sample_rotated(
        reference, rotations, frequencies, padding_factor=2, max_radius=3.5, out=table[1:6]
    )
    assert got.data_ptr() == table[1:6].data_ptr()
    torch.testing.assert_close(table[1:6], want, rtol=0.0, atol=0.0)
    assert bool((table[0] == 5 + 5j).all())  # the rows around it untouched
    assert bool((table[6] == 5 + 5j).all())


def test_an_array_to_write_into_must_be_contiguous_of_the_output_shape_and_dtype():
    good = torch.zeros((3, 4), dtype=torch.complex64)
    assert trilinear_kernels.output_pairs(good, 3, 4, good.device).data_ptr() == good.data_ptr()
    strided = torch.zeros((3, 8), dtype=torch.complex64)[:, ::2]  # (3, 4), not contiguous
    for bad in (good.T.contiguous(), strided, good.to(torch.complex128)):
        with pytest.raises(ValueError, match="contiguous complex64"):
            trilinear_kernels.output_pairs(bad, 3, 4, good.device)
    # the same rules on every route of sample_rotated, the torch route's included
    reference, rotations, frequencies, _ = _case(12, 6, 2, torch.device("cpu"))
    shape = (rotations.shape[0], frequencies.shape[0])
    strided = torch.zeros((shape[0], 2 * shape[1]), dtype=torch.complex64)[:, ::2]
    for bad in (strided, torch.zeros(shape, dtype=torch.complex128)):
        with pytest.raises(ValueError, match="contiguous"):
            sample_rotated(
                reference, rotations, frequencies, padding_factor=2, max_radius=2.5, out=bad
            )


def _within_two_roundings(powers, values):
    """``powers`` are ``re^2 + im^2`` of ``values`` with each square and the sum rounded
    once to float32 (or fused): within ``2u + u^2`` of the exact sum, relative."""
    pairs = torch.view_as_real(values).double().cpu()
    exact = pairs.square().sum(-1)
    return bool(((powers.double().cpu() - exact).abs() <= (2 * U32 + U32 * U32) * exact).all())


def test_powers_written_with_the_values_are_their_squared_magnitudes(device):
    reference, rotations, frequencies, _ = _case(13, 8, 2, device)
    want = sample_rotated(reference, rotations, frequencies, padding_factor=2, max_radius=3.5)
    powers = torch.full((7, frequencies.shape[0]), -1.0, device=device)
    got = sample_rotated(
        reference, rotations, frequencies, padding_factor=2, max_radius=3.5, powers=powers[1:6]
    )
    torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)  # the values as without them
    assert _within_two_roundings(powers[1:6], got)
    assert bool((powers[0] == -1).all())  # the rows around them untouched
    assert bool((powers[6] == -1).all())


def test_an_array_for_the_powers_must_be_contiguous_real_of_the_output_shape():
    reference, rotations, frequencies, _ = _case(14, 6, 2, torch.device("cpu"))
    shape = (rotations.shape[0], frequencies.shape[0])
    strided = torch.zeros((shape[0], 2 * shape[1]))[:, ::2]
    for bad in (strided, torch.zeros(shape, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"powers must be a contiguous torch\.float32"):
            sample_rotated(
                reference, rotations, frequencies, padding_factor=2, max_radius=2.5, powers=bad
            )
