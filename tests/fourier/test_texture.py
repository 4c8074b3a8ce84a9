"""Sampling through the GPU's texture units stays within its 8-bit fractions of trilinear,
and float16 texels, of the values.

The texture unit keeps each axis's interpolation fraction in 8 fractional bits
(CUDA C++ Programming Guide, "Linear filtering"). Moving the fraction of axis
``a`` by at most ``2**-8`` moves a multilinear value by at most ``2**-8`` times
the largest difference between two corners along ``a``; the three axes add.
The texels hold the values over a power of two in float16: each part rounded
to within ``2**-11`` of itself, or ``2**-25`` of the scale below float16's
normal range, so a blend of corners moves by at most ``2**-11`` of the largest
corner's modulus plus ``2**-24`` of the scale.
"""

import pytest
import torch
from test_rotated_samples import U32, _coordinate_bound
from test_rotated_samples import _case as _device_case

from cryorefine.fourier import sample_rotated, trilinear_kernels
from cryorefine.fourier.interpolation import _fold
from cryorefine.fourier.texture import (
    ReferenceTexture,
    available,
    reference_texture,
    registered_texture,
    sample_texture,
    storage_scale,
)

FRACTION = 2.0**-8  # the texture unit's fraction step
HALF_RELATIVE, HALF_ABSOLUTE = 2.0**-11, 2.0**-24  # float16 texels: of a corner, of the scale
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="textures need a CUDA GPU")


def _case(seed: int, n: int, pad: int):
    """``test_rotated_samples``' random reference, rotations and frequencies, on the CPU."""
    return _device_case(seed, n, pad, torch.device("cpu"))


def _corner_values(reference: torch.Tensor, q: torch.Tensor, p: int):
    """Float64 corners ``(..., z, y, x)`` of each point (conjugated where folded), fractions."""
    base, frac, flip = _fold(q)
    ph = p // 2 + 1
    table = reference.to(torch.complex128)
    corners = torch.zeros((*q.shape[:-1], 2, 2, 2), dtype=torch.complex128)
    for dz in (0, 1):
        iz = torch.remainder(base[..., 2] + dz + p // 2, p)
        for dy in (0, 1):
            iy = torch.remainder(base[..., 1] + dy + p // 2, p)
            for dx in (0, 1):
                ix = base[..., 0] + dx
                value = table[iz, iy, ix.clamp(max=ph - 1)]
                corners[..., dz, dy, dx] = torch.where(ix < ph, value, 0)
    corners = torch.where(flip[..., None, None, None], corners.conj(), corners)
    return corners, frac


def _trilinear(corners: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    wx, wy, wz = (torch.stack([1 - t, t], dim=-1).to(corners.dtype) for t in frac.unbind(-1))
    return torch.einsum("...zyx,...z,...y,...x->...", corners, wz, wy, wx)


def _fraction_bound(corners: torch.Tensor, p: int, scale: float | None) -> torch.Tensor:
    """Per point: the fraction step plus the coordinate's rounding, times the summed largest
    edge differences, plus the blend's own float32 rounding, plus the float16 texels'.

    The normalised coordinate ``(q + c) / side`` is rounded twice in float32 (the sum, the
    quotient: each ``u`` relative) and scaled back by ``side <= p``: at most ``2 p u``
    texels, which moves the fraction by as much. The blend of 8 corners by 3 products and
    7 additions rounds at most ``16 u`` of the largest corner. ``scale`` is the texture's
    (None: float32 texels, not rounded). The texture blends the rounded corners, each within
    ``stored`` of its value: that moves the blend by ``stored``, each axis's largest
    difference by ``2 stored`` (the three axes' sum by ``6 stored``) and the largest corner
    by ``stored``.
    """
    edges = sum(corners.diff(dim=axis).abs().amax(dim=(-1, -2, -3)) for axis in (-1, -2, -3))
    largest = corners.abs().amax(dim=(-1, -2, -3))
    stored = 0.0 if scale is None else HALF_RELATIVE * largest + HALF_ABSOLUTE * scale
    fraction = (FRACTION + 2 * p * U32) * (edges + 6 * stored)
    return fraction + 16 * U32 * (largest + stored) + stored


def test_on_the_cpu_no_texture_is_made_and_sampling_is_unchanged():
    reference, rotations, frequencies, _ = _case(1, 8, 2)
    exact = sample_rotated(reference, rotations, frequencies, padding_factor=2, max_radius=4.0)
    assert not available(reference)
    with reference_texture(reference) as texture:
        assert texture is None
        assert registered_texture(reference) is None
        inside = sample_rotated(reference, rotations, frequencies, padding_factor=2, max_radius=4.0)
    assert torch.equal(inside, exact)


def test_the_corner_reference_is_the_exact_sampler():
    """The float64 reference of these tests against the exact float32 path (on the CPU)."""
    reference, rotations, frequencies, p = _case(2, 10, 1)
    exact = sample_rotated(reference, rotations, frequencies, padding_factor=1, max_radius=5.0)
    corners, frac = _corner_values(reference, frequencies.to(torch.float64) @ rotations, p)
    inside = frequencies.to(torch.float64).square().sum(dim=-1) <= 25.0
    expected = torch.where(inside, _trilinear(corners, frac), 0)
    bound = _coordinate_bound(p) * float(reference.abs().max())  # float32 coordinates, sums
    torch.testing.assert_close(exact.to(torch.complex128), expected, rtol=0, atol=bound)


def test_the_storage_scale_is_the_power_of_two_at_or_above_the_largest_part():
    def scale(*values: complex) -> float:
        return storage_scale(torch.tensor(values, dtype=torch.complex64))

    assert scale(3.0 + 0.5j, -1.0j) == 4.0
    assert scale(4.0, 1.0) == 4.0  # a power of two stays: dividing by it is exact
    assert scale(0.1 - 0.3j) == 0.5
    assert scale(2.0e6) == 2.0**21  # far beyond float16's largest, 65,504
    assert scale(0j, 0j) == 1.0
    assert scale(2.0, complex(float("inf"), 0.0)) == 1.0  # not finite: no scale to take
    assert scale(2.0, complex(float("nan"), 1.0)) == 1.0


def test_a_texture_needs_a_single_precision_gpu_tensor():
    with pytest.raises(ValueError, match="complex64 CUDA tensor"):
        ReferenceTexture(torch.zeros((8, 8, 5), dtype=torch.complex64))


@cuda_only
def test_texels_are_float16_or_float32():
    with pytest.raises(ValueError, match="texels must be"):
        ReferenceTexture(torch.zeros((8, 8, 5), dtype=torch.complex64, device="cuda"),
                         texels=torch.bfloat16)  # fmt: skip


@cuda_only
def test_float32_texels_are_within_the_fraction_bound_alone():
    """``texels=torch.float32`` (comparisons' baseline): nothing rounded, scale 1."""
    reference, rotations, frequencies, p = _case(14, 12, 2)
    device = torch.device("cuda")
    gpu = reference.to(device)
    texture = ReferenceTexture(gpu, texels=torch.float32)
    assert texture.scale == 1.0
    values = sample_texture(
        texture, rotations.to(device), frequencies.to(device),
        padding_factor=2, max_radius=6.0, scale=1.0,
    ).cpu()  # fmt: skip
    texture.close()
    corners, frac = _corner_values(reference, (frequencies.to(torch.float64) * 2) @ rotations, p)
    inside = frequencies.to(torch.float64).square().sum(dim=-1) <= 36.0
    expected = torch.where(inside, _trilinear(corners, frac), 0)
    error = (values.to(torch.complex128) - expected).abs()
    assert bool((error <= _fraction_bound(corners, p, None)).all())


@cuda_only
@pytest.mark.parametrize(("n", "pad", "magnitude"), [(12, 2, 1.0), (10, 1, 1.0), (16, 2, 3.0e6)])
def test_texture_samples_are_trilinear_within_the_fraction_bound(n, pad, magnitude):
    """Also for values far beyond float16's range (``magnitude``): the scale keeps them."""
    reference, rotations, frequencies, p = _case(n + pad, n, pad)
    reference = reference * magnitude
    radius = n / 2  # the outer shell reaches x = p / 2 (the border) and wraps in y and z
    device = torch.device("cuda")
    gpu = reference.to(device)
    scale = storage_scale(gpu)
    with reference_texture(gpu) as texture:
        assert texture is not None
        values = sample_rotated(
            gpu, rotations.to(device), frequencies.to(device),
            padding_factor=pad, max_radius=radius, scale=3.0,
        ).cpu()  # fmt: skip
        exact = trilinear_kernels.sample_kernel(
            gpu, rotations.to(device), frequencies.to(device),
            padding_factor=pad, max_radius=radius, scale=3.0,
        ).cpu()  # fmt: skip
    assert bool((values != exact).any())  # the texture units sampled, not the exact kernel
    q = (frequencies.to(torch.float64) * pad) @ rotations
    corners, frac = _corner_values(reference, q, p)
    inside = frequencies.to(torch.float64).square().sum(dim=-1) <= radius**2
    expected = torch.where(inside, 3.0 * _trilinear(corners, frac), 0)
    error = (values.to(torch.complex128) - expected).abs()
    assert bool((error <= 3.0 * _fraction_bound(corners, p, scale)).all())
    assert bool((values[:, ~inside] == 0).all())
    # the bound is not vacuous: it is far below the values themselves
    typical = float(expected[:, inside].abs().mean())
    assert float(_fraction_bound(corners, p, scale).mean()) < 0.05 * typical


@cuda_only
def test_rows_sampled_together_are_the_rows_sampled_one_at_a_time():
    """A program samples several rows; a count that is not a multiple of them loses none."""
    reference, rotations, frequencies, _ = _case(5, 12, 2)
    inverses, products = rotations.transpose(-1, -2), rotations[:3] @ rotations[1:4]
    rotations = torch.cat([rotations, inverses, products])
    assert len(rotations) == 13  # one program of 8 rows and a tail of 5
    device = torch.device("cuda")
    gpu, rotations, frequencies = (x.to(device) for x in (reference, rotations, frequencies))
    with reference_texture(gpu):
        together = sample_rotated(gpu, rotations, frequencies, padding_factor=2, max_radius=6.0)
        alone = [
            sample_rotated(gpu, rotations[i : i + 1], frequencies, padding_factor=2, max_radius=6.0)
            for i in range(len(rotations))
        ]
    assert together.shape == (13, frequencies.shape[0])
    torch.testing.assert_close(together, torch.cat(alone), rtol=0.0, atol=0.0)
    assert bool((together.abs().amax(dim=1) > 0).all())  # every row written


@cuda_only
def test_sampling_follows_the_registered_tensor_only_while_it_is_unchanged():
    reference, rotations, frequencies, _ = _case(3, 8, 2)
    device = torch.device("cuda")
    gpu = reference.to(device)
    other = gpu.clone()
    with reference_texture(gpu) as texture:
        assert registered_texture(gpu) is texture
        assert registered_texture(other) is None  # equal values, another tensor
        gpu.mul_(2.0)  # changed in place: the texture no longer holds it
        assert registered_texture(gpu) is None
        doubled = sample_rotated(
            gpu, rotations.to(device), frequencies.to(device), padding_factor=2, max_radius=4.0
        )
    exact = sample_rotated(
        other, rotations.to(device), frequencies.to(device), padding_factor=2, max_radius=4.0
    )
    torch.testing.assert_close(doubled, 2 * exact, rtol=0, atol=0)
    assert registered_texture(gpu) is None
    assert not texture._finalizer.alive  # freed on leaving the block


@cuda_only
def test_a_block_inside_another_for_the_same_tensor_gives_the_outer_texture_back():
    reference, _, _, _ = _case(4, 8, 2)
    gpu = reference.to(torch.device("cuda"))
    with reference_texture(gpu) as outer:
        with reference_texture(gpu) as inner:
            assert registered_texture(gpu) is inner
        assert registered_texture(gpu) is outer
        assert not inner._finalizer.alive
    assert registered_texture(gpu) is None


@cuda_only
def test_texture_samples_written_into_a_given_array_are_the_samples_returned():
    reference, rotations, frequencies, _ = _case(12, 10, 2)
    device = torch.device("cuda")
    gpu, rotations, frequencies = (x.to(device) for x in (reference, rotations, frequencies))
    table = torch.full((7, frequencies.shape[0]), 5 + 5j, dtype=torch.complex64, device=device)
    with reference_texture(gpu) as texture:
        assert texture is not None
        want = sample_rotated(gpu, rotations, frequencies, padding_factor=2, max_radius=5.0)
        got = sample_rotated(
            gpu, rotations, frequencies, padding_factor=2, max_radius=5.0, out=table[1:6]
        )
    assert got.data_ptr() == table[1:6].data_ptr()
    torch.testing.assert_close(table[1:6], want, rtol=0.0, atol=0.0)
    assert bool((table[0] == 5 + 5j).all())
    assert bool((table[6] == 5 + 5j).all())


@cuda_only
def test_texture_powers_are_the_squared_magnitudes_of_the_samples_written():
    # the kernel squares each value as it stores it: the values as without powers, and
    # re^2 + im^2 within two float32 roundings (13 rows: a tail after 8 rows per program)
    reference, rotations, frequencies, _ = _case(15, 10, 2)
    inverses, products = rotations.transpose(-1, -2), rotations[:3] @ rotations[1:4]
    rotations = torch.cat([rotations, inverses, products])
    device = torch.device("cuda")
    gpu, rotations, frequencies = (x.to(device) for x in (reference, rotations, frequencies))
    powers = torch.full((15, frequencies.shape[0]), -1.0, device=device)
    with reference_texture(gpu) as texture:
        assert texture is not None
        want = sample_rotated(gpu, rotations, frequencies, padding_factor=2, max_radius=5.0)
        got = sample_rotated(
            gpu, rotations, frequencies, padding_factor=2, max_radius=5.0, powers=powers[1:14]
        )
    torch.testing.assert_close(got, want, rtol=0.0, atol=0.0)
    exact = torch.view_as_real(got).double().square().sum(-1)
    assert bool(((powers[1:14].double() - exact).abs() <= (2 * U32 + U32 * U32) * exact).all())
    assert bool((powers[0] == -1).all())
    assert bool((powers[14] == -1).all())
