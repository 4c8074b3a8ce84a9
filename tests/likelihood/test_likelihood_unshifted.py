"""likelihood.unshifted: sums over a particle's translations without arrays of every translation."""

import textwrap

import pytest
import torch
from likelihood_cases import U32, gamma, needs_triton_interpreter, run_in_triton_interpreter

from cryorefine.likelihood import unshifted as module
from cryorefine.likelihood.unshifted import (
    unshifted_combination,
    weighted_shifts,
)

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
