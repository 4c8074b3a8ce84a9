"""likelihood.phased_cross: the fine pass's products with Z formed from per-axis phase factors."""

import textwrap

import pytest
import torch
from likelihood_cases import (
    U32,
    exact_phases,
    gamma,
    needs_triton_interpreter,
    run_in_triton_interpreter,
)

from cryorefine.likelihood import phased_cross as module
from cryorefine.likelihood.phased_cross import PhasedTerms, phased_cross, phased_terms
from cryorefine.likelihood.scores import data_terms
from cryorefine.likelihood.window import ShiftFactors

# (particles, translations, rows per particle, table rows, complex coefficients, axes):
# translations below, at and above 16, rows beyond one block of 64, coefficients not a
# multiple of the block of 16, 2D and 3D
CASES = [(3, 7, 5, 11, 50, 3), (2, 16, 70, 40, 33, 3), (2, 24, 9, 30, 167, 2), (1, 1, 1, 1, 1, 3)]


def _unit(shape, gen):
    angle = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 * torch.pi
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)


def _case(b, t, r, n, kc, ndim, seed, shared=False):
    """``w K X``, per-axis factors (``n = 9`` per axis), their indices, a table and rows."""
    gen = torch.Generator().manual_seed(seed)
    weighted = torch.randn(b, kc, generator=gen, dtype=torch.complex64)
    factors = _unit((t, ndim, 9) if shared else (b, t, ndim, 9), gen)
    at = torch.randint(0, 9, (kc, ndim), generator=gen)
    table = torch.randn(n, 2 * kc, generator=gen)
    rows = torch.randint(0, n, (b, r), generator=gen)  # repeats included
    return weighted, factors, at, table, rows


def _terms(weighted, factors, at, precision="float32"):
    b = weighted.shape[0]
    zeros = torch.zeros(b, weighted.shape[1])
    return PhasedTerms(zeros[:, 0], zeros, weighted, ShiftFactors(factors, at), precision)


def _check(got, weighted, factors, at, table, rows, extra=0.0):
    """Against float64 with the phases formed exactly: each entry a sum of ``2k`` products
    of ``Z`` (a complex product of ``w K X`` with a phase that took ``2 (ndim - 1)``
    roundings to form, two more) with ``P``: ``gamma_(2k + 2 ndim)`` of
    ``sum_k (|Re wKX| + |Im wKX|) prod_d (|Re F_d| + |Im F_d|) (|Re P| + |Im P|)``."""
    b, kc = weighted.shape
    t, ndim = factors.shape[-3:-1]
    s, s_abs = exact_phases(factors, at, b)
    z = weighted.to(torch.complex128)[:, None, :] * s  # (b, t, k)
    p = torch.view_as_complex(table.double().unflatten(-1, (-1, 2)))[rows]  # (b, r, k)
    want = torch.einsum("btk,brk->btr", z.real, p.real) + torch.einsum(
        "btk,brk->btr", z.imag, p.imag
    )
    z_abs = (weighted.real.abs() + weighted.imag.abs()).double()[:, None, :] * s_abs
    magnitude = torch.einsum("btk,brk->btr", z_abs, p.real.abs() + p.imag.abs())
    bound = (gamma(2 * kc + 2 * ndim, U32) + extra) * magnitude
    assert got.shape == (b, t, rows.shape[1])
    assert got.dtype == torch.float32
    assert ((got.double() - want).abs() <= bound).all()


def test_dense_terms_are_bit_for_bit_those_of_data_terms():
    gen = torch.Generator().manual_seed(1)
    b, t, kc, ndim = 3, 5, 40, 3
    data = torch.randn(b, kc, generator=gen, dtype=torch.complex64)
    ctf, weight = torch.randn(b, kc, generator=gen), torch.rand(b, kc, generator=gen)
    shifts = ShiftFactors(
        _unit((b, t, ndim, 9), gen), torch.randint(0, 9, (kc, ndim), generator=gen)
    )
    for precision in ("float32", "float64"):
        got = phased_terms(data, ctf, weight, shifts, precision=precision).dense()
        want = data_terms(data, ctf, weight, shifts.dense(), precision=precision)
        for name in ("data_power", "ctf_power", "shifted"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0)


_INTERPRETED = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.phased_cross import PhasedTerms, phased_cross
    from cryorefine.likelihood.window import ShiftFactors
    weighted, factors, at, table, rows = torch.load(sys.argv[1])
    zeros = torch.zeros(weighted.shape, dtype=torch.float32)
    terms = PhasedTerms(zeros[:, 0], zeros, weighted, ShiftFactors(factors, at), "float32")
    torch.save(phased_cross(terms, table, rows), sys.argv[2])
    """
)


@pytest.mark.parametrize("shared", [False, True], ids=["own factors", "shared factors"])
@pytest.mark.parametrize("shape", CASES)
def test_the_kernel_in_tritons_interpreter_matches_the_product(tmp_path, shape, shared):
    needs_triton_interpreter()
    inputs = _case(*shape, seed=2, shared=shared)
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED, inputs)
    _check(got, *inputs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["float32", "tf32"])
@pytest.mark.parametrize("shape", [*CASES, (6, 72, 200, 900, 238_869, 3)])
def test_the_kernel_on_the_gpu_matches_the_product(shape, precision):
    pytest.importorskip("triton")
    weighted, factors, at, table, rows = (x.cuda() for x in _case(*shape, seed=3))
    got = phased_cross(_terms(weighted, factors, at, precision), table, rows)
    extra = 2.0**-10 + 2.0**-20 if precision == "tf32" else 0.0  # tf32: 10-bit factors
    _check(got.cpu(), *(x.cpu() for x in (weighted, factors, at, table, rows)), extra=extra)


def test_the_kernel_refuses_a_table_of_another_width_and_too_many_translations():
    weighted, factors, at, table, rows = _case(2, 3, 4, 5, 6, 3, seed=4)
    with pytest.raises(ValueError, match="reals per row"):
        phased_cross(_terms(weighted, factors, at), table[:, :-2], rows)
    wide = _case(1, module.MAX_TILE_ROWS + 1, 1, 2, 3, 3, seed=5)
    with pytest.raises(ValueError, match="at most"):
        phased_cross(_terms(*wide[:3]), wide[3], wide[4])


def test_the_kernel_applies_only_with_the_kernels_on_and_complex64_terms(monkeypatch):
    weighted, factors, at, table, _ = _case(2, 3, 4, 5, 6, 3, seed=6)
    monkeypatch.setattr(module, "kernels_on", lambda tensor, precision: True)
    assert module.phased_applies(_terms(weighted, factors, at), table)
    double = _terms(weighted.to(torch.complex128), factors, at)
    assert not module.phased_applies(double, table)
    assert not module.phased_applies(_terms(weighted, factors, at), table.double())
    monkeypatch.setattr(module, "kernels_on", lambda tensor, precision: False)
    assert not module.phased_applies(_terms(weighted, factors, at), table)
