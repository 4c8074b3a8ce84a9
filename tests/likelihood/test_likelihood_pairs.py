"""likelihood.pairs: the fine pass over the children of significant coarse pairs."""

from dataclasses import replace

import pytest
import torch
from likelihood_cases import U32, blob_map, gamma, reference_of, score_magnitudes

from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood import (
    backprojection_sums,
    data_terms,
    fourier_window,
    pair_sums,
    pairs,
    shell_matrix,
    shell_sums,
    squared_differences,
    window_phases,
)
from cryorefine.likelihood.fine import distinct_translations
from cryorefine.likelihood.pair_sums import sum_pairs
from cryorefine.likelihood.pairs import BlockProjector, pair_lists, score_pairs
from cryorefine.likelihood.passes import RowProjector

F, G, T, C = 8, 4, 3, 20  # children per orientation and translation; coarse counts


def _case(cached):
    gen = torch.Generator().manual_seed(0)
    reference = reference_of(blob_map(12, gen))
    window = fourier_window(8, 2, device=torch.device("cpu"), include_dc=True)
    table = euler_to_matrix(torch.rand(C * F, 3, generator=gen, dtype=torch.float64) * 180)
    projector = RowProjector(reference, table, window, 2)
    if cached:
        projector = projector.with_values(2**30)
    significant = torch.rand(3, T, C, generator=gen) < 0.15
    significant[2] = False
    significant[2, 1, 7] = True  # a particle with a single pair
    shifts = (torch.rand(T * G, 2, generator=gen, dtype=torch.float64) - 0.5) * 4
    data = torch.randn(3, window.count, dtype=torch.complex64, generator=gen)
    ctf = torch.randn(3, window.count, generator=gen)
    weight = torch.rand(3, window.count, generator=gen)
    phases = window_phases(window, shifts, box_size=12)
    return BlockProjector(projector, F), significant, shifts, (data, ctf, weight, phases)


def test_pair_lists_hold_each_particles_significant_pairs_by_orientation():
    _, significant, _, _ = _case(False)
    lists = pair_lists(significant)
    for i in range(3):
        want = sorted((c, t) for t, c in significant[i].nonzero().tolist())
        n = len(want)
        got = list(
            zip(lists.slots[i, :n].tolist(), lists.translations[i, :n].tolist(), strict=True)
        )
        assert got == want
        assert lists.valid[i].tolist() == [True] * n + [False] * (lists.valid.shape[1] - n)


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("max_bytes", [2**30, 1])
@pytest.mark.parametrize("widest", [T, 0], ids=["all translations", "own blocks"])
def test_pair_scores_are_the_full_scores_at_the_pairs_children(
    monkeypatch, cached, max_bytes, widest
):
    # both products: each pair's children at every translation of its particle, or
    # at its own translation's block of Z only
    monkeypatch.setattr(pairs, "MAX_TRANSLATIONS_PER_PRODUCT", widest)
    projector, significant, _, (data, ctf, weight, phases) = _case(cached)
    lists = pair_lists(significant)
    terms = data_terms(data, ctf, weight, phases)
    got = score_pairs(
        terms,
        projector,
        lists.slots,
        lists,
        children=G,
        cross_correlation=False,
        max_bytes=max_bytes,
    )
    table = projector.projector.project(0, C * F)
    full = squared_differences(data, ctf, weight, table, phases)  # (b, T G, C F)
    t_index = lists.translations[:, :, None] * G + torch.arange(G)
    r_index = lists.slots[:, :, None] * F + torch.arange(F)
    want = full[
        torch.arange(3)[:, None, None, None], t_index[:, :, :, None], r_index[:, :, None, :]
    ]
    magnitude = score_magnitudes(data, ctf, weight, table)
    bound = (
        2
        * gamma(2 * projector.projector.window.count + 10, U32)
        * magnitude[torch.arange(3)[:, None, None, None], r_index[:, :, None, :]]
    )
    valid = lists.valid[:, :, None, None].expand_as(got)
    assert ((got - want).abs()[valid] <= bound.expand_as(got)[valid]).all()
    assert torch.isinf(got[~valid]).all()


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("max_bytes", [2**30, 1])  # with a budget the held rows' |P|^2 is used
@pytest.mark.parametrize("widest", [T, 0], ids=["all translations", "own blocks"])
def test_pair_sums_are_the_kernel_sums_of_the_scattered_weights(
    monkeypatch, cached, max_bytes, widest
):
    # the data added into a table of the fine rows that carry weight, in one chunk or in
    # chunks of one pair; both products: weights spread over every translation of the
    # particle (only the children with weight made), or each pair's own block of
    # translations added in
    monkeypatch.setattr(pairs, "MAX_TRANSLATIONS_PER_PRODUCT", widest)
    projector, significant, shifts, (data, ctf, _, phases) = _case(cached)
    lists = pair_lists(significant)
    gen = torch.Generator().manual_seed(1)
    weights = torch.rand(*lists.slots.shape, G, F, generator=gen)
    weights = weights * lists.valid[:, :, None, None]
    weights[0, 0, :, 3] = 0.0  # a child without weight is not in play
    # about half the children carry no weight (the second significance cut): the chunks'
    # lists of carried children differ in length between particles
    weights = weights * (torch.rand(*lists.slots.shape, 1, F, generator=gen) < 0.5)
    bp_window = fourier_window(
        8, 2, device=torch.device("cpu"), include_dc=True, include_redundant=True
    )
    y = torch.randn(3, bp_window.count, dtype=torch.complex64, generator=gen)
    v = torch.rand(3, bp_window.count, generator=gen)
    bp_phases = window_phases(bp_window, shifts, box_size=12)
    shells = shell_matrix(projector.projector.window, 5)
    got = sum_pairs(
        (data, ctf, phases),
        projector,
        lists.slots,
        lists,
        weights,
        shells,
        (y, v, bp_phases),
        precision="float32",
        max_bytes=max_bytes,
    )
    dense = torch.zeros(3, T * G, C * F)
    t_index = (lists.translations[:, :, None] * G + torch.arange(G))[:, :, :, None]
    r_index = (lists.slots[:, :, None] * F + torch.arange(F))[:, :, None, :]
    dense[torch.arange(3)[:, None, None, None], t_index, r_index] = weights
    table = projector.projector.project(0, C * F)
    want = shell_sums(dense, data, ctf, table, phases.expand(3, -1, -1), shells)
    # the same float32 products summed in other orders: within 2 gamma_(n) of the magnitudes,
    # n = number of (t, r) terms plus k per shell
    n = T * G * C * F + projector.projector.window.count + 10
    x, kk, p = data.abs(), ctf.abs(), table.abs()
    per_r = dense.sum(1)  # (b, r)
    magnitude = (dense.sum((1, 2))[:, None] * x**2).double() + torch.einsum(
        "br,brk->bk", per_r, (kk[:, None] * p[None] + x[:, None]) ** 2
    ).double()
    for name in ("residual_power", "signal_product", "reference_power"):
        diff = (getattr(got.shell_sums, name) - getattr(want, name)).abs()
        assert (diff <= 2 * gamma(n, U32) * (magnitude @ shells)).all()
    want_data, want_weight = backprojection_sums(dense, y, v, bp_phases.expand(3, -1, -1))
    in_play = (dense.sum(1) > 0).any(0).nonzero().squeeze(1)
    assert got.rows.tolist() == in_play.tolist()
    scale_data = dense.sum().item() * y.abs().max().item()
    scale_weight = dense.sum().item() * v.max().item()
    tol = 2 * gamma(3 * T * G + 10, U32)
    assert ((got.data - want_data[in_play]).abs() <= tol * scale_data).all()
    assert ((got.weight - want_weight[in_play]).abs() <= tol * scale_weight).all()
    torch.testing.assert_close(
        got.translation_weights,
        dense.sum(2),
        rtol=0,
        atol=2 * gamma(C * F, U32) * dense.sum().item(),
    )
    torch.testing.assert_close(got.pair_weights, weights.sum((2, 3)))
    # the work counts: every child of the listed pairs, and those with weight
    assert got.summed_children == int(lists.valid.sum()) * F
    assert got.carried_children == int((weights.sum(dim=2) > 0).sum())


def test_distinct_translations_list_each_particles_translations_and_reindex_its_pairs():
    generator = torch.Generator().manual_seed(23)
    significant = torch.rand((5, 9, 7), generator=generator) < 0.15
    significant[3] = False
    significant[3, 4, 2] = True  # one pair only
    lists = pair_lists(significant)
    distinct, local = distinct_translations(lists, 9)
    for particle in range(5):
        used = sorted({int(t) for t in torch.nonzero(significant[particle])[:, 0]})
        width = len(used)
        assert distinct[particle, :width].tolist() == used  # ascending, then padding
        valid = lists.valid[particle]
        # every pair's local index points at its own translation
        back = distinct[particle, local.translations[particle][valid]]
        assert back.tolist() == lists.translations[particle][valid].tolist()
    assert torch.equal(local.slots, lists.slots)
    assert torch.equal(local.valid, lists.valid)


def test_a_chunk_of_the_sums_counts_only_what_it_makes():
    # box 96's final iteration: 37 particles, g = f = 8, 72 fine translations
    shape, k, kb = (37, 8, 8, 72), 238_869, 451_584
    budget = 12 * 2**30

    def pairs_per_chunk(projected, spread, row_bytes=0, real_bytes=4, budget=budget):
        return pair_sums._chunk_of_sums(
            row_bytes, shape, k, kb, budget, real_bytes=real_bytes, projected=projected,
            spread=spread,
        )  # fmt: skip

    # per pair and particle: 3 f kb + 2 g f, plus T g f (spread) or 4 g kb (own blocks),
    # plus 2 g k + 5 f k where the projections are copied: in bytes, 4 b times that
    made = 4 * 37 * (3 * 8 * kb + 2 * 8 * 8 + 72 * 8)
    assert pairs_per_chunk(False, True) == (budget // 2) // made
    full = 4 * 37 * (3 * 8 * kb + 2 * 8 * 8 + 4 * 8 * kb + 2 * 8 * k + 5 * 8 * k)
    assert pairs_per_chunk(True, False) == (budget // 2) // full
    assert pairs_per_chunk(False, True) >= 4 * pairs_per_chunk(True, False)
    # float64 reals take twice the bytes
    big = 1000 * full
    assert pairs_per_chunk(True, False, real_bytes=8, budget=big) == 250
    assert pairs_per_chunk(True, False, budget=1) == 1
    # the rows a projector projects count only where it projects: with a row as large as
    # the rest of a pair's temporaries, half the pairs
    assert pairs_per_chunk(True, False, row_bytes=full, budget=big) == 250
    assert pairs_per_chunk(False, True, row_bytes=full, budget=big) == big // 2 // made


def test_held_powers_made_with_the_projections_serve_the_fine_pass():
    # the squares the texture kernel wrote with the projections are taken as they are
    # where the working dtype is theirs; float64 work squares the projections anew
    blocks, *_ = _case(False)
    held = blocks.projector.with_values(2**30, powers=True)
    block = BlockProjector(held, F)
    children = held.rows  # no more rows than the pairs' children
    got = pairs._held_row_power(block, children, torch.complex64, 2**30)
    assert got is held.powers
    again = pairs._held_row_power(block, children, torch.complex128, 2**30)
    exact = torch.view_as_real(held.values).double().square().sum(-1)
    assert again.dtype == torch.float64
    # the float64 modulus squared: hypot within 1 ulp, doubled, plus the square's rounding
    assert ((again - exact).abs() <= 2.5 * torch.finfo(torch.float64).eps * exact).all()
    # held squares cost nothing more: taken with more rows than the pairs' children, and
    # with a budget an eighth of which they exceed (the real final iteration's groups hold
    # ~2,000 rows of 238,869 coefficients: 4.0 GB against a budget of 16 GiB)
    assert pairs._held_row_power(block, children - 1, torch.complex64, 2**30) is held.powers
    assert pairs._held_row_power(block, children, torch.complex64, 8) is held.powers
    # without them a table is squared only within those bounds
    bare = BlockProjector(replace(held, powers=None), F)
    assert pairs._held_row_power(bare, children - 1, torch.complex64, 2**30) is None
    assert pairs._held_row_power(bare, children, torch.complex64, 8) is None
    squared = pairs._held_row_power(bare, children, torch.complex64, 2**30)
    # the CPU's hypot within 1 ulp: the square within (2 + 1/2) eps of the float64 one
    assert squared is not held.powers
    assert ((squared - exact).abs() <= 2.5 * torch.finfo(torch.float32).eps * exact).all()


def test_each_carried_row_has_one_first_owner_the_earliest_child_on_it():
    # the carried rows' kernel stores each row's first owner and adds the others after:
    # exactly one owner per row that any child carries, the first in particle-major order
    gen = torch.Generator().manual_seed(31)
    b, c, rows = 5, 12, 9  # the last row is the spare one
    carried = torch.rand(b, c, generator=gen) < 0.5
    carried[3] = False  # a particle that carries nothing
    table_rows = torch.randint(0, rows - 1, (b, c), generator=gen)
    owner = pair_sums._first_owners(carried, table_rows, rows)
    seen = set()
    for i in range(b):
        for j in range(c):
            first = bool(carried[i, j]) and int(table_rows[i, j]) not in seen
            assert bool(owner[i, j]) == first
            if carried[i, j]:
                seen.add(int(table_rows[i, j]))
    assert int(owner.sum()) == len(seen)
