"""likelihood.unshifted: sums over a particle's translations without arrays of every translation."""

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

from cryorefine.likelihood import unshifted as module
from cryorefine.likelihood.unshifted import (
    unshifted_combination,
    weighted_shifts,
)
from cryorefine.likelihood.window import ShiftFactors

# (particles, translations, rows per particle, table rows, complex coefficients): t below, at
# and above 16, rows beyond one block of 32, coefficients not a multiple of the block of 32
CASES = [(3, 7, 5, 11, 50), (2, 16, 70, 40, 32), (4, 24, 9, 30, 167), (1, 1, 1, 1, 1)]


def _phases(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Unit complex64 numbers at random angles, as ``window.window_phases`` makes them."""
    angle = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 * torch.pi
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)


def _case(b, t, r, n, kc, seed=0, shared=False):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(b, t, r, generator=gen)
    table = torch.randn(n, 2 * kc, generator=gen)
    rows = torch.randint(0, n, (b, r), generator=gen)  # repeats included
    phases = _phases((t, kc) if shared else (b, t, kc), gen)
    return weights, table, rows, phases


def _check_unshifted(got, weights, table, rows, phases, extra=0.0):
    """Within float32's bound: each part a sum over ``t`` of two products, each a sum of
    ``r`` products, so ``gamma_(r + 2t + 1)`` of ``sum |w| (|Re S| + |Im S|)(|Re P| + |Im P|)``
    (``extra``: a relative error of the inputs to add, tf32's rounding)."""
    b, t, r = weights.shape
    s = phases.to(torch.complex128).expand(b, t, -1)
    p = torch.view_as_complex(table.double().unflatten(-1, (-1, 2)))[rows]  # (b, r, k)
    w = weights.double().to(torch.complex128)
    want = torch.einsum("btk,btr,brk->bk", s.conj(), w, p)
    s_abs = s.real.abs() + s.imag.abs()
    p_abs = p.real.abs() + p.imag.abs()
    magnitude = torch.einsum("btk,btr,brk->bk", s_abs, weights.double().abs(), p_abs)
    bound = (gamma(r + 2 * t + 1, U32) + extra) * magnitude
    assert got.shape == want.shape
    assert got.dtype == torch.complex64
    error = got.to(torch.complex128) - want
    assert (error.real.abs() <= bound).all()
    assert (error.imag.abs() <= bound).all()


@pytest.mark.parametrize("shared", [False, True], ids=["own phases", "shared phases"])
@pytest.mark.parametrize("shape", CASES)
def test_the_torch_route_is_the_phase_weighted_sum_of_each_particles_rows(shape, shared):
    weights, table, rows, phases = _case(*shape, seed=1, shared=shared)
    got = unshifted_combination(weights, table, rows, phases)
    _check_unshifted(got, weights, table, rows, phases)


_INTERPRETED = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.unshifted import kernel_unshifted_combination
    weights, table, rows, phases = torch.load(sys.argv[1])
    torch.save(kernel_unshifted_combination(weights, table, rows, phases), sys.argv[2])
    """
)


@pytest.mark.parametrize("shared", [False, True], ids=["own phases", "shared phases"])
@pytest.mark.parametrize("shape", CASES)
def test_the_kernel_in_tritons_interpreter_matches_the_sum(tmp_path, shape, shared):
    needs_triton_interpreter()
    weights, table, rows, phases = _case(*shape, seed=2, shared=shared)
    # a strided view of the weights, as callers may pass
    weights = torch.cat([weights, weights], dim=0)[::2]
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED, (weights, table, rows, phases))
    _check_unshifted(got, weights, table, rows, phases)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tf32", [False, True], ids=["float32", "tf32"])
@pytest.mark.parametrize("shape", [*CASES, (8, 72, 23, 700, 238_869)])
def test_the_kernel_on_the_gpu_matches_the_sum(shape, tf32):
    pytest.importorskip("triton")
    weights, table, rows, phases = (x.cuda() for x in _case(*shape, seed=3))
    got = module.kernel_unshifted_combination(weights, table, rows, phases, tf32=tf32)
    # tf32 rounds both factors of each product to 10 bits: 2 * 2^-11 relative, and more
    extra = 2.0**-10 + 2.0**-20 if tf32 else 0.0
    _check_unshifted(got.cpu(), weights.cpu(), table.cpu(), rows.cpu(), phases.cpu(), extra)


def test_float64_takes_the_torch_route_and_stays_float64(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("float64 must not take the kernel")

    monkeypatch.setattr(module, "kernel_unshifted_combination", refuse)
    weights, table, rows, phases = _case(2, 3, 4, 5, 20, seed=4)
    weights, table, phases = weights.double(), table.double(), phases.to(torch.complex128)
    got = unshifted_combination(weights, table, rows, phases, precision="float64")
    assert got.dtype == torch.complex128
    s = phases.conj()
    p = torch.view_as_complex(table.unflatten(-1, (-1, 2)))[rows]
    want = torch.einsum("btk,btr,brk->bk", s, weights.to(torch.complex128), p)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_kernel_refuses_more_translations_than_one_tile_holds():
    weights, table, rows, phases = _case(1, module.MAX_TILE_ROWS + 1, 2, 3, 4, seed=6)
    with pytest.raises(ValueError, match="at most"):
        module.kernel_unshifted_combination(weights, table, rows, phases)


def test_conjugate_views_of_the_phases_are_taken_as_their_values():
    weights, table, rows, phases = _case(2, 5, 3, 4, 9, seed=7)
    conj_view = phases.conj()  # a view with the conjugate bit
    got = unshifted_combination(weights, table, rows, conj_view)
    _check_unshifted(got, weights, table, rows, conj_view.resolve_conj())
    data = torch.randn(2, 9, generator=torch.Generator().manual_seed(8), dtype=torch.complex64)
    torch.testing.assert_close(
        weighted_shifts(weights, data, conj_view),
        weighted_shifts(weights, data, conj_view.resolve_conj()),
        rtol=0.0,
        atol=0.0,
    )


@pytest.mark.parametrize("shared", [False, True], ids=["own phases", "shared phases"])
@pytest.mark.parametrize(("b", "t", "m", "kc"), [(3, 7, 5, 50), (2, 24, 1, 33), (1, 1, 1, 1)])
def test_weighted_shifts_are_the_data_moved_to_each_translation_and_weighted(b, t, m, kc, shared):
    gen = torch.Generator().manual_seed(5)
    weights = torch.rand(b, t, m, generator=gen)
    data = torch.randn(b, kc, generator=gen, dtype=torch.complex64)
    phases = _phases((t, kc) if shared else (b, t, kc), gen)
    got = weighted_shifts(weights, data, phases)
    s = phases.to(torch.complex128).expand(b, t, -1)
    y = data.to(torch.complex128)
    want = torch.einsum("btm,btk->bmk", weights.double().to(torch.complex128), s) * y[:, None]
    # each part a sum over t of two products (float32: gamma_(2t + 1)), then a complex
    # product with Y (two more roundings): sum_t |w| (|Re S| + |Im S|) (|Re Y| + |Im Y|)
    s_abs = s.real.abs() + s.imag.abs()
    magnitude = torch.einsum("btm,btk->bmk", weights.double(), s_abs)
    magnitude = magnitude * (y.real.abs() + y.imag.abs())[:, None]
    bound = gamma(2 * t + 3, U32) * magnitude
    assert got.shape == (b, m, 2 * kc)
    assert got.dtype == torch.float32
    error = torch.view_as_complex(got.double().unflatten(-1, (-1, 2))) - want
    assert (error.real.abs() <= bound).all()
    assert (error.imag.abs() <= bound).all()


# (particles, translations, rows per particle, complex coefficients, axes): translations below,
# at and above 16, rows beyond one block of 32, coefficients not a multiple of 32, 2D and 3D
FACTOR_CASES = [(3, 7, 5, 50, 3), (2, 16, 40, 33, 3), (2, 24, 1, 70, 2), (1, 1, 1, 1, 3)]


def _factor_case(b, t, m, kc, ndim, seed, shared=False):
    """Weights, data and per-axis phase factors (unit complex64, ``n = 9`` per axis)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(b, t, m, generator=gen)
    data = torch.randn(b, kc, generator=gen, dtype=torch.complex64)
    factors = _phases((t, ndim, 9) if shared else (b, t, ndim, 9), gen)
    at = torch.randint(0, 9, (kc, ndim), generator=gen)
    return weights, data, factors, at


def _check_factor_shifts(got, weights, data, factors, at, extra=0.0):
    """``D`` against float64 with the phases formed exactly from the factors. Forming each
    phase in float32 costs ``2 (ndim - 1)`` roundings of ``prod_d (|Re F_d| + |Im F_d|)``,
    the sum over ``t`` and the product with ``Y`` ``2 t + 3`` more (as above)."""
    b, t, m = weights.shape
    ndim = at.shape[1]
    s, s_abs = exact_phases(factors, at, b)
    y = data.to(torch.complex128)
    want = torch.einsum("btm,btk->bmk", weights.double().to(torch.complex128), s) * y[:, None]
    magnitude = torch.einsum("btm,btk->bmk", weights.double(), s_abs)
    magnitude = magnitude * (y.real.abs() + y.imag.abs())[:, None]
    bound = (gamma(2 * t + 3 + 2 * (ndim - 1), U32) + extra) * magnitude
    assert got.shape == (b, m, 2 * at.shape[0])
    assert got.dtype == torch.float32
    error = torch.view_as_complex(got.double().unflatten(-1, (-1, 2))) - want
    assert (error.real.abs() <= bound).all()
    assert (error.imag.abs() <= bound).all()


@pytest.mark.parametrize("shared", [False, True], ids=["own factors", "shared factors"])
@pytest.mark.parametrize("shape", FACTOR_CASES)
def test_weighted_shifts_from_factors_off_the_kernel_are_those_of_the_dense_phases(shape, shared):
    weights, data, factors, at = _factor_case(*shape, seed=9, shared=shared)
    shifts = ShiftFactors(factors, at)
    got = weighted_shifts(weights, data, shifts)
    torch.testing.assert_close(got, weighted_shifts(weights, data, shifts.dense()), rtol=0, atol=0)
    _check_factor_shifts(got, weights, data, factors, at)


_INTERPRETED_SHIFTS = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.unshifted import kernel_weighted_shifts
    from cryorefine.likelihood.window import ShiftFactors
    weights, data, factors, at = torch.load(sys.argv[1])
    torch.save(kernel_weighted_shifts(weights, data, ShiftFactors(factors, at)), sys.argv[2])
    """
)


@pytest.mark.parametrize("shared", [False, True], ids=["own factors", "shared factors"])
@pytest.mark.parametrize("shape", FACTOR_CASES)
def test_the_weighted_shifts_kernel_in_tritons_interpreter_matches_the_sum(tmp_path, shape, shared):
    needs_triton_interpreter()
    weights, data, factors, at = _factor_case(*shape, seed=10, shared=shared)
    weights = torch.cat([weights, weights], dim=0)[::2]  # a strided view, as callers may pass
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED_SHIFTS, (weights, data, factors, at))
    _check_factor_shifts(got, weights, data, factors, at)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tf32", [False, True], ids=["float32", "tf32"])
@pytest.mark.parametrize("shape", [*FACTOR_CASES, (6, 72, 40, 451_584, 3)])
def test_the_weighted_shifts_kernel_on_the_gpu_matches_the_sum(shape, tf32):
    pytest.importorskip("triton")
    weights, data, factors, at = (x.cuda() for x in _factor_case(*shape, seed=11))
    got = module.kernel_weighted_shifts(weights, data, ShiftFactors(factors, at), tf32=tf32)
    extra = 2.0**-10 + 2.0**-20 if tf32 else 0.0  # tf32 rounds W and S to 10 bits
    _check_factor_shifts(got.cpu(), weights.cpu(), data.cpu(), factors.cpu(), at.cpu(), extra)


def test_the_weighted_shifts_kernel_refuses_factors_of_another_shape():
    weights, data, factors, at = _factor_case(2, 3, 4, 5, 3, seed=12)
    with pytest.raises(ValueError, match="complex64 factors"):
        module.kernel_weighted_shifts(weights, data, ShiftFactors(factors[:, :2], at))
    wide = _factor_case(1, module.MAX_TILE_ROWS + 1, 1, 2, 3, seed=13)
    with pytest.raises(ValueError, match="at most"):
        module.kernel_weighted_shifts(wide[0], wide[1], ShiftFactors(wide[2], wide[3]))


def _check_unshifted_factors(got, weights, table, rows, factors, at):
    """As ``_check_unshifted``, with each phase formed in float32 from its factors:
    ``2 (ndim - 1)`` more roundings of ``prod_d (|Re F_d| + |Im F_d|)``."""
    b, t, r = weights.shape
    ndim = at.shape[1]
    s, s_abs = exact_phases(factors, at, b)
    p = torch.view_as_complex(table.double().unflatten(-1, (-1, 2)))[rows]
    want = torch.einsum("btk,btr,brk->bk", s.conj(), weights.double().to(torch.complex128), p)
    p_abs = p.real.abs() + p.imag.abs()
    magnitude = torch.einsum("btk,btr,brk->bk", s_abs, weights.double().abs(), p_abs)
    bound = gamma(r + 2 * t + 1 + 2 * (ndim - 1), U32) * magnitude
    error = got.to(torch.complex128) - want
    assert got.dtype == torch.complex64
    assert (error.real.abs() <= bound).all()
    assert (error.imag.abs() <= bound).all()


def _unshifted_factor_case(b, t, r, n, kc, ndim, seed, shared=False):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(b, t, r, generator=gen)
    table = torch.randn(n, 2 * kc, generator=gen)
    rows = torch.randint(0, n, (b, r), generator=gen)
    factors = _phases((t, ndim, 9) if shared else (b, t, ndim, 9), gen)
    at = torch.randint(0, 9, (kc, ndim), generator=gen)
    return weights, table, rows, factors, at


UNSHIFTED_FACTOR_CASES = [(3, 7, 5, 11, 50, 3), (2, 24, 40, 30, 33, 2), (1, 1, 1, 1, 1, 3)]


@pytest.mark.parametrize("shared", [False, True], ids=["own factors", "shared factors"])
@pytest.mark.parametrize("shape", UNSHIFTED_FACTOR_CASES)
def test_unshifted_sums_from_factors_off_the_kernel_are_those_of_the_dense_phases(shape, shared):
    weights, table, rows, factors, at = _unshifted_factor_case(*shape, seed=14, shared=shared)
    shifts = ShiftFactors(factors, at)
    got = unshifted_combination(weights, table, rows, shifts)
    want = unshifted_combination(weights, table, rows, shifts.dense())
    torch.testing.assert_close(got, want, rtol=0, atol=0)


_INTERPRETED_FACTORS = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.unshifted import kernel_unshifted_combination
    from cryorefine.likelihood.window import ShiftFactors
    weights, table, rows, factors, at = torch.load(sys.argv[1])
    shifts = ShiftFactors(factors, at)
    torch.save(kernel_unshifted_combination(weights, table, rows, shifts), sys.argv[2])
    """
)


@pytest.mark.parametrize("shared", [False, True], ids=["own factors", "shared factors"])
@pytest.mark.parametrize("shape", UNSHIFTED_FACTOR_CASES)
def test_the_unshifted_kernel_from_factors_in_tritons_interpreter_matches_the_sum(
    tmp_path, shape, shared
):
    needs_triton_interpreter()
    inputs = _unshifted_factor_case(*shape, seed=15, shared=shared)
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED_FACTORS, inputs)
    _check_unshifted_factors(got, *inputs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_unshifted_kernel_from_factors_on_the_gpu_matches_the_sum():
    pytest.importorskip("triton")
    inputs = _unshifted_factor_case(8, 72, 23, 700, 238_869, 3, seed=16)
    weights, table, rows, factors, at = (x.cuda() for x in inputs)
    got = module.kernel_unshifted_combination(weights, table, rows, ShiftFactors(factors, at))
    _check_unshifted_factors(got.cpu(), *inputs)
