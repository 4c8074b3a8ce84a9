"""likelihood.squares: |z|^2 of a complex64 array in one pass, within its rounding bound."""

import math
import textwrap

import pytest
import torch
from likelihood_cases import needs_triton_interpreter, run_in_triton_interpreter

from cryorefine.likelihood import squares
from cryorefine.likelihood.scores import squared_magnitude

# each square and the sum rounded once to float32 (or the sum fused with one square):
# within 2u + u^2 of re^2 + im^2, relative, with u = 2^-24 (both terms positive)
U = 2.0**-24
BOUND = 2 * U + U * U

# shapes: fewer values than a program's block, not a multiple of it, several dimensions
SHAPES = [(5,), (3, 1000), (2, 3, 700), (squares._BLOCK,)]


def _values(shape, seed):
    """Fresh complex64 values over 30 decades of modulus (squares within float32's range),
    and zeros; with their exact ``|z|^2`` from the stored values, in float64."""
    generator = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    magnitude = 10.0 ** (torch.rand(n, generator=generator, dtype=torch.float64) * 30 - 15)
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
    z = torch.polar(magnitude, angle).to(torch.complex64)
    z[:2] = 0
    stored = z.to(torch.complex128)
    return z.reshape(shape), (stored.real.square() + stored.imag.square()).reshape(shape)


def _check(got, want):
    assert got.dtype == torch.float32
    assert got.shape == want.shape
    assert torch.all((got.cpu().double() - want).abs() <= BOUND * want)


_INTERPRETED = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.squares import kernel_squared_magnitude
    (z,) = torch.load(sys.argv[1])
    torch.save(kernel_squared_magnitude(z), sys.argv[2])
    """
)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_kernel_in_tritons_interpreter_is_re2_plus_im2_within_two_roundings(tmp_path, shape):
    needs_triton_interpreter()
    z, want = _values(shape, seed=int(torch.randint(0, 2**31, ())))
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED, (z,))
    _check(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [*SHAPES, (4096, 2000)])  # and 8 M values: many programs
def test_the_kernel_on_the_gpu_is_re2_plus_im2_within_two_roundings(shape):
    z, want = _values(shape, seed=int(torch.randint(0, 2**31, ())))
    z = z.cuda()
    _check(squares.kernel_squared_magnitude(z), want)
    _check(squared_magnitude(z), want)  # the scores' squares take the kernel on a GPU
    assert squares.kernel_applies(z)


def test_the_kernel_takes_only_contiguous_complex64_on_a_gpu(monkeypatch):
    monkeypatch.setattr(squares, "_INTERPRETED", False)
    monkeypatch.setattr(squares, "triton", object())  # Triton stood in for: routing only
    z = torch.zeros(4, 6, dtype=torch.complex64)
    assert not squares.kernel_applies(z)  # the CPU, not interpreted
    monkeypatch.setattr(squares, "_INTERPRETED", True)  # CPU tensors allowed, as on a GPU
    assert squares.kernel_applies(z)
    assert not squares.kernel_applies(z[:, ::2])  # strided
    assert not squares.kernel_applies(z.to(torch.complex128))
    assert not squares.kernel_applies(z[:0])  # empty
    monkeypatch.setattr(squares, "triton", None)
    assert not squares.kernel_applies(z)  # no Triton


def test_the_kernel_refuses_what_it_does_not_take():
    strided = torch.zeros(4, 6, dtype=torch.complex64)[:, ::2]
    with pytest.raises(ValueError, match="contiguous complex64"):
        squares.kernel_squared_magnitude(strided)
