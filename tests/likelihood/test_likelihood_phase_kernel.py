"""likelihood.phase_kernel: the window's phases as products of per-axis factors, in one pass."""

import math
import textwrap

import pytest
import torch
from likelihood_cases import U32, needs_triton_interpreter, run_in_triton_interpreter

from cryorefine.likelihood.phase_kernel import phase_products
from cryorefine.likelihood.window import fourier_window

# (rows of shifts, ndim, side of the window): 2D and 3D, a window not a multiple of the block
CASES = [(5, 2, 12), (3, 3, 10), (1, 3, 24), (0, 3, 8)]


def _factors(rows: int, ndim: int, size: int, box: int, seed: int):
    """Each axis's factors ``exp(-2 pi i k s / box)`` at ``k`` in ``[-size/2, size/2]``,
    complex64 from float64 as ``window.window_phases`` makes them, the shifts, and the
    window's indices into them."""
    gen = torch.Generator().manual_seed(seed)
    shifts = (torch.rand(rows, ndim, generator=gen, dtype=torch.float64) - 0.5) * 12
    half = size // 2
    axis = torch.arange(-half, half + 1, dtype=torch.float64)
    angle = shifts[:, :, None] * axis * (-2 * math.pi / box)
    factors = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)
    window = fourier_window(size, ndim, device=torch.device("cpu"))
    return factors, shifts, window.frequencies + half, window.frequencies


def _check(got, shifts, frequencies, box):
    """Each factor is within u of the exact one (rounded from float64), each complex
    product adds at most 2 u on unit numbers: within ``4 ndim u`` of ``exp(-2 pi i k.s/n)``."""
    want = torch.exp(-2j * math.pi * (shifts @ frequencies.T.to(torch.float64)) / box)
    assert got.shape == want.shape
    assert got.dtype == torch.complex64
    assert ((got.to(torch.complex128) - want).abs() <= 4 * shifts.shape[1] * U32).all()


@pytest.mark.parametrize("shape", CASES)
def test_the_torch_route_is_the_phase_of_each_shift_at_each_coefficient(shape):
    factors, shifts, at, frequencies = _factors(*shape, box=20, seed=1)
    _check(phase_products(factors, at), shifts, frequencies, 20)


_INTERPRETED = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.phase_kernel import kernel_applies, phase_products
    factors, at = torch.load(sys.argv[1])
    assert kernel_applies(factors)
    torch.save(phase_products(factors, at), sys.argv[2])
    """
)


@pytest.mark.parametrize("shape", CASES)
def test_the_kernel_in_tritons_interpreter_matches_the_phases(tmp_path, shape):
    needs_triton_interpreter()
    factors, shifts, at, frequencies = _factors(*shape, box=20, seed=2)
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED, (factors, at))
    _check(got, shifts, frequencies, 20)
    # the same products in the same order as the torch route: equal up to fused multiply-adds
    assert ((got - phase_products(factors, at)).abs() <= 4 * U32).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [*CASES, (2664, 3, 96)])
def test_the_kernel_on_the_gpu_matches_the_phases(shape):
    pytest.importorskip("triton")
    factors, shifts, at, frequencies = _factors(*shape, box=96, seed=3)
    got = phase_products(factors.cuda(), at.cuda())
    _check(got.cpu(), shifts, frequencies, 96)
