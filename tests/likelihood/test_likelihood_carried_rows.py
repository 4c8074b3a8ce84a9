"""likelihood.carried_rows: the carried fine rows' data and weights formed in their tables."""

import textwrap

import pytest
import torch
from likelihood_cases import U32, gamma, needs_triton_interpreter, run_in_triton_interpreter

from cryorefine.likelihood import carried_rows as module

# (particles, translations, children per particle, table rows, complex coefficients): t
# below, at and above 16 (the least height of the kernel's tile of phases), more carried
# children than one block of 16, coefficients not a multiple of the block of 32; few table
# rows, so that particles share rows
CASES = [(3, 7, 5, 4, 50), (2, 16, 40, 9, 64), (4, 37, 9, 6, 167), (1, 1, 1, 1, 1)]


def _case(b, t, c, n, kc, seed=0, shared=False):
    gen = torch.Generator().manual_seed(seed)
    carried = torch.rand(b, c, generator=gen) < 0.6
    carried[0] = True  # the widest particle carries every child
    if b > 1:
        carried[-1] = False  # and one carries none
    # each child's weights over the translations; children not picked have weights too,
    # so that the kernel is seen to add the first counts[b] picks only
    spread = torch.rand(b, t, c, generator=gen) * (torch.rand(b, t, c, generator=gen) < 0.5)
    table_rows = torch.randint(0, n, (b, c), generator=gen)  # rows shared between particles
    counts = carried.sum(dim=1)
    picks = torch.argsort((~carried).to(torch.int8), dim=1, stable=True)[:, : max(1, c)]
    y = torch.randn(b, kc, dtype=torch.complex64, generator=gen)
    v = torch.rand(b, kc, generator=gen)
    angle = torch.rand((t, kc) if shared else (b, t, kc), generator=gen, dtype=torch.float64)
    phases = torch.polar(torch.ones_like(angle), angle * 2 * torch.pi).to(torch.complex64)
    return spread, table_rows, spread.sum(dim=1), picks, counts, (y, v), phases, n


def _tables(n, kc, device="cpu", fill=0.0):
    return torch.full((n + 1, 2 * kc), fill, device=device), torch.full(
        (n + 1, kc), fill, device=device
    )


def _check(tables, case, extra=0.0):
    """Against float64 sums over each row's owners (carried children of any particle).

    Each part of a child's data is a sum over ``t`` of one product, times ``Y`` (two
    products and a sum): ``gamma_(t + 2)`` of ``sum_t |w| (|Re S| + |Im S|)(|Re Y| +
    |Im Y|)``; a row then adds its owners: ``gamma_(owners)`` more. ``extra``: tf32's
    rounding of the product's inputs. A weight is one product, then the owners' sum.
    """
    data_table, weight_table = tables
    spread, table_rows, child_w, picks, counts, (y, v), phases, n = case
    b, t, c = spread.shape
    kc = y.shape[1]
    s = phases.to(torch.complex128).expand(b, t, kc)
    data = torch.einsum("btc,btk->bck", spread.double().to(torch.complex128), s)
    data = data * y.to(torch.complex128)[:, None]
    s_abs = s.real.abs() + s.imag.abs()
    size = torch.einsum("btc,btk->bck", spread.double(), s_abs)
    size = size * (y.real.abs() + y.imag.abs()).double()[:, None]
    carried = torch.zeros(b, c, dtype=torch.bool)
    for i in range(b):
        carried[i, picks[i, : counts[i]]] = True
    owners = torch.zeros(n + 1, dtype=torch.long)
    want_data = torch.zeros(n + 1, kc, dtype=torch.complex128)
    data_size = torch.zeros(n + 1, kc, dtype=torch.float64)
    want_weight = torch.zeros(n + 1, kc, dtype=torch.float64)
    for i in range(b):
        for j in range(c):
            if carried[i, j]:
                row = table_rows[i, j]
                owners[row] += 1
                want_data[row] += data[i, j]
                data_size[row] += size[i, j]
                want_weight[row] += child_w[i, j].double() * v[i].double()
    assert int(owners.sum()) == int(counts.sum())
    got = torch.view_as_complex(data_table.double().cpu().reshape(n + 1, kc, 2))
    bound = (gamma(t + 2 + int(owners.max()), U32) + extra) * data_size
    assert ((got - want_data).real.abs() <= bound).all()
    assert ((got - want_data).imag.abs() <= bound).all()
    weight_bound = gamma(1 + int(owners.max()), U32) * want_weight
    assert ((weight_table.double().cpu() - want_weight).abs() <= weight_bound).all()
    # rows no particle carries, the spare row included, are untouched
    assert (got[owners == 0] == 0).all()
    assert (weight_table.cpu()[owners == 0] == 0).all()


_INTERPRETED = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.carried_rows import add_carried_rows
    (spread, rows, child_w, picks, counts, bp, phases, n), fill, store = torch.load(sys.argv[1])
    kc = bp[1].shape[1]
    tables = torch.full((n + 1, 2 * kc), fill), torch.full((n + 1, kc), fill)
    add_carried_rows(spread, rows, child_w, picks, counts, bp, phases, tables, store=store)
    torch.save(tables, sys.argv[2])
    """
)


@pytest.mark.parametrize("shared", [False, True], ids=["own phases", "shared phases"])
@pytest.mark.parametrize("shape", CASES)
def test_the_kernel_in_tritons_interpreter_adds_each_carried_childs_data_and_weight(
    tmp_path, shape, shared
):
    needs_triton_interpreter()
    case = _case(*shape, seed=1, shared=shared)
    _check(run_in_triton_interpreter(tmp_path, _INTERPRETED, (case, 0.0, False)), case)


def _own_rows(case):
    """The case with every child on a row of its own (as each row's first owner is listed
    for ``store``): row ``i c + j`` for particle ``i``'s child ``j``."""
    spread, _, child_w, picks, counts, bp, phases, _ = case
    b, _, c = spread.shape
    return spread, torch.arange(b * c).reshape(b, c), child_w, picks, counts, bp, phases, b * c


@pytest.mark.parametrize("shape", CASES)
def test_stored_rows_are_written_whatever_the_table_held(tmp_path, shape):
    # the first owners' pass: the table comes uninitialised (NaN here); the listed rows are
    # written, every other row keeps what it held
    needs_triton_interpreter()
    case = _own_rows(_case(*shape, seed=3))
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED, (case, float("nan"), True))
    listed = torch.zeros(case[-1] + 1, dtype=torch.bool)
    spread, table_rows, _, picks, counts = case[:5]
    for i in range(spread.shape[0]):
        listed[table_rows[i, picks[i, : counts[i]]]] = True
    for table in got:
        assert torch.isnan(table[~listed]).all()
        assert not torch.isnan(table[listed]).any()
    _check([torch.where(listed[:, None], table, 0.0) for table in got], case)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tf32", [False, True], ids=["float32", "tf32"])
@pytest.mark.parametrize("store", [False, True], ids=["added", "stored"])
@pytest.mark.parametrize("shape", [*CASES, (6, 72, 40, 50, 242_499)])
def test_the_kernel_on_the_gpu_adds_each_carried_childs_data_and_weight(shape, tf32, store):
    pytest.importorskip("triton")
    case = _case(*shape, seed=2)
    case = _own_rows(case) if store else case  # stored: one listed child per row
    spread, table_rows, child_w, picks, counts, (y, v), phases, n = case
    tables = _tables(n, shape[4], "cuda")
    module.add_carried_rows(
        spread.cuda(), table_rows.cuda(), child_w.cuda(), picks.cuda(), counts.cuda(),
        (y.cuda(), v.cuda()), phases.cuda(), tables, tf32=tf32, store=store,
    )  # fmt: skip
    # tf32 rounds both factors of each product to 10 bits: 2 * 2^-11 relative, and more
    _check(tables, case, extra=2.0**-10 + 2.0**-20 if tf32 else 0.0)


def test_more_translations_than_one_tile_holds_are_refused():
    case = _case(1, module.MAX_TILE_ROWS + 1, 2, 3, 4)
    spread, table_rows, child_w, picks, counts, bp, phases, n = case
    with pytest.raises(ValueError, match="at most"):
        module.add_carried_rows(
            spread, table_rows, child_w, picks, counts, bp, phases, _tables(n, 4)
        )


def test_the_kernel_applies_to_float32_weights_of_at_most_one_tile_of_translations(monkeypatch):
    monkeypatch.setattr(module, "kernels_on", lambda tensor, precision: True)
    assert module.kernel_applies(torch.zeros(2, module.MAX_TILE_ROWS, 3), "tf32")
    assert not module.kernel_applies(torch.zeros(2, module.MAX_TILE_ROWS + 1, 3), "tf32")
    assert not module.kernel_applies(torch.zeros(2, 4, 3, dtype=torch.float64), "float64")
    monkeypatch.setattr(module, "kernels_on", lambda tensor, precision: False)
    assert not module.kernel_applies(torch.zeros(2, 4, 3), "float32")
