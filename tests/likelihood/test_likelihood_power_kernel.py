"""likelihood.power_kernel: particles' weights against the held rows' squared magnitudes."""

import textwrap

import pytest
import torch
from likelihood_cases import U32, gamma, needs_triton_interpreter, run_in_triton_interpreter

from cryorefine.likelihood.power_kernel import kernel_power_products, power_products

# (particles, rows, coefficients): particles beyond one tile of 128, rows beyond one block
# of 64, coefficients not a multiple of the block of 32
CASES = [(3, 5, 100), (20, 70, 333), (130, 10, 64), (1, 1, 1)]


def _case(b, n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(b, k, generator=gen)  # w K^2 >= 0, as the callers' are
    values = torch.randn(n, k, dtype=torch.complex64, generator=gen)
    return weights, values


def _check(got, weights, values, extra=0.0):
    """Every term is non-negative, so the sum is within a relative bound: ``|P|^2`` within
    7 eps (the torch route's modulus squared, ``scores.squared_magnitude``; 3 roundings in
    the kernel), one rounding of each product and ``gamma_k`` of a ``k``-term sum
    (``extra``: tf32's rounding of both factors)."""
    want = weights.double() @ (values.to(torch.complex128).abs() ** 2).T
    k = weights.shape[1]
    bound = (gamma(k + 1, U32) + 14 * U32 + extra) * want
    assert got.shape == want.shape
    assert got.dtype == torch.float32
    assert ((got.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("block_rows", [1, 4, 1000])
@pytest.mark.parametrize("shape", CASES)
def test_the_torch_route_is_each_particles_weighted_power_of_each_row(shape, block_rows):
    weights, values = _case(*shape, seed=1)
    _check(power_products(weights, values, precision="float32", block_rows=block_rows),
           weights, values)  # fmt: skip


def test_float64_takes_the_torch_route_and_stays_float64():
    weights, values = _case(2, 3, 10, seed=2)
    got = power_products(
        weights.double(), values.to(torch.complex128), precision="float64", block_rows=2
    )
    assert got.dtype == torch.float64


_INTERPRETED = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.power_kernel import kernel_power_products
    weights, values, split = torch.load(sys.argv[1])
    torch.save(kernel_power_products(weights, values, split=split), sys.argv[2])
    """
)


@pytest.mark.parametrize("split", [1, 3, None], ids=["whole k", "three ranges", "chosen"])
@pytest.mark.parametrize("shape", CASES)
def test_the_kernel_in_tritons_interpreter_matches_the_sum(tmp_path, shape, split):
    needs_triton_interpreter()
    weights, values = _case(*shape, seed=3)
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED, (weights, values, split))
    _check(got, weights, values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tf32", [False, True], ids=["float32", "tf32"])
@pytest.mark.parametrize("shape", [*CASES, (133, 700, 238_869)])
def test_the_kernel_on_the_gpu_matches_the_sum(shape, tf32):
    pytest.importorskip("triton")
    weights, values = _case(*shape, seed=4)
    got = kernel_power_products(weights.cuda(), values.cuda(), tf32=tf32)
    # tf32 rounds both factors of each product to 10 bits: 2 * 2^-11 relative, and more
    _check(got.cpu(), weights, values, 2.0**-10 + 2.0**-20 if tf32 else 0.0)
