"""likelihood.passes: chunked scoring and sums over per-particle orientation lists."""

import pytest
import torch
from likelihood_cases import U32, U64, blob_map, gamma, reference_of, score_magnitudes

from cryorefine.geometry import euler_to_matrix
from cryorefine.likelihood import (
    cross_correlation_per_particle,
    fourier_window,
    squared_differences,
    squared_differences_per_particle,
    window_phases,
)
from cryorefine.likelihood.passes import (
    ParticleWindowData,
    RowProjector,
    held_list_chunk,
    row_chunks,
    score_held_lists,
    score_lists,
    score_shared,
)


def _case(cached: bool):
    gen = torch.Generator().manual_seed(0)
    reference = reference_of(blob_map(12, gen))
    window = fourier_window(8, 2, device=torch.device("cpu"), include_dc=True)
    rotations = euler_to_matrix(torch.rand(20, 3, generator=gen, dtype=torch.float64) * 180)
    projector = RowProjector(reference, rotations, window, 2)
    if cached:
        projector = projector.with_values(2**30)
    b, t = 3, 4
    rows = torch.tensor([[0, 3, 4, 9, 17, 0], [2, 3, 5, 6, 11, 19], [1, 7, 0, 0, 0, 0]])
    valid = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]).bool()
    shifts = (torch.rand(b, t, 2, generator=gen, dtype=torch.float64) - 0.5) * 4
    particles = ParticleWindowData(
        data=torch.randn(b, window.count, dtype=torch.complex64, generator=gen),
        ctf=torch.randn(b, window.count, generator=gen),
        weight=torch.rand(b, window.count, generator=gen),
        phases=window_phases(window, shifts, box_size=12),
    )
    return projector, rows, valid, particles, shifts


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("max_bytes", [2**30, 1])
def test_list_scores_equal_the_per_particle_kernel_and_pad_with_inf(cached, max_bytes):
    projector, rows, valid, particles, _ = _case(cached)
    got = score_lists(
        particles,
        projector,
        rows,
        valid,
        cross_correlation=False,
        precision="float32",
        max_bytes=max_bytes,
    )
    table = projector.project(0, projector.rows)
    want = squared_differences_per_particle(
        particles.data, particles.ctf, particles.weight, table[rows], particles.phases
    )
    mask = valid[:, None, :].expand_as(got)
    # the same float32 terms, batched differently: each side within gamma_(2k+10) M of the
    # exact value (test_likelihood_scores), so within twice that of each other
    bound = (
        2
        * gamma(2 * projector.window.count + 10, U32)
        * score_magnitudes(particles.data, particles.ctf, particles.weight, table[rows])[:, None, :]
    )
    assert ((got - want).abs()[mask] <= bound.expand_as(got)[mask]).all()
    assert torch.isinf(got[~mask]).all()


def test_shared_scores_equal_the_plain_kernel_in_chunks():
    projector, _, _, particles, _ = _case(False)
    phases = particles.phases[:1].expand(3, -1, -1)
    shared = ParticleWindowData(particles.data, particles.ctf, particles.weight, phases)
    got = score_shared(shared, projector, cross_correlation=False, precision="float32", max_bytes=1)
    table = projector.project(0, projector.rows)
    want = squared_differences(particles.data, particles.ctf, particles.weight, table, phases[0])
    bound = (
        2
        * gamma(2 * projector.window.count + 10, U32)
        * score_magnitudes(particles.data, particles.ctf, particles.weight, table)[:, None, :]
    )
    assert ((got - want).abs() <= bound).all()


@pytest.mark.parametrize("max_bytes", [2**30, 1])  # 1: a particle and a row at a time
@pytest.mark.parametrize("cross_correlation", [False, True])
@pytest.mark.parametrize("block_k", [2**13, 16])  # 16: the products cut along 2k
@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("table_rows", [20, 18], ids=["power per slot", "power per row"])
def test_held_list_scores_with_shared_translations_equal_the_exact_per_particle_scores(
    max_bytes, cross_correlation, block_k, precision, table_rows
):
    # 20 rows: more than the 3 x 6 slots, |P|^2 from each particle's slots; 18: from the
    # table's rows
    projector, rows, valid, particles, _ = _case(True)
    values, rows = projector.values[:table_rows], rows.clamp(max=table_rows - 1)
    phases = particles.phases[:1].expand(3, -1, -1)
    shared = ParticleWindowData(particles.data, particles.ctf, particles.weight, phases)
    got = score_held_lists(
        shared,
        values,
        rows,
        valid,
        cross_correlation=cross_correlation,
        precision=precision,
        max_bytes=max_bytes,
        block_k=block_k,
    )
    assert got.dtype == (torch.float64 if precision == "float64" else torch.float32)
    table = values[rows].to(torch.complex128)
    data, ctf = particles.data.to(torch.complex128), particles.ctf.double()
    phases = phases.to(torch.complex128)
    mask = valid[:, None, :].expand_as(got)
    n = 2 * projector.window.count + 10
    # each side within gamma_n of the exact sums: ours in its working precision, the
    # reference in float64
    error = gamma(n, U32 if precision == "float32" else U64) + gamma(n, U64)
    if cross_correlation:
        want = cross_correlation_per_particle(data, ctf, table, phases, precision="float64")
        # -C / (sqrt(A) sqrt(B)): C within error sum|terms| <= error sqrt(A B)
        # (Cauchy-Schwarz), A and B within error relative each
        bound = torch.tensor(3 * error)
    else:
        want = squared_differences_per_particle(
            data, ctf, particles.weight.double(), table, phases, precision="float64"
        )
        magnitudes = score_magnitudes(particles.data, particles.ctf, particles.weight, table)
        bound = error * magnitudes[:, None, :].expand_as(got)
    assert ((got.double() - want).abs()[mask] <= bound.expand_as(got)[mask]).all()
    assert torch.isinf(got[~mask]).all()


def test_held_list_scores_need_shared_translations():
    projector, rows, valid, particles, _ = _case(True)
    with pytest.raises(ValueError, match="shared"):
        score_held_lists(
            particles, projector.values, rows, valid,
            cross_correlation=False, precision="float32", max_bytes=2**30,
        )  # fmt: skip


class _CountingTable:
    """A projection table whose row ``i`` is the constant ``i``; counts its projections."""

    def __init__(self, rows: int) -> None:
        self.rows, self.values, self.projected = rows, None, []

    def project(self, lo: int, hi: int) -> torch.Tensor:
        self.projected.append((lo, hi))
        return torch.arange(lo, hi).to(torch.complex64)[:, None].expand(-1, 3)

    def bytes_per_row(self) -> int:
        return 0


def test_row_chunks_bound_the_slots_per_list_even_when_one_row_holds_many():
    # particle 0: six pairs on row 1 (one orientation, six translations), then row 4
    rows = torch.tensor([[1, 1, 1, 1, 1, 1, 4], [0, 2, 3, 4, 4, 4, 4]])
    valid = torch.tensor([[True] * 7, [True] * 6 + [False]])
    table = _CountingTable(5)
    seen = torch.zeros(rows.shape, dtype=torch.int64)
    for part in row_chunks(table, rows, valid, 2):
        assert part.slots.shape[1] <= 2  # the budget's slots per list
        owner = torch.arange(2)[:, None].expand_as(part.slots)
        seen.index_put_((owner[part.inside], part.slots[part.inside]), torch.tensor(1),
                        accumulate=True)  # fmt: skip
        # each slot gets its own row's projection
        want = part.rows[part.inside].to(torch.complex64)
        torch.testing.assert_close(part.projections[part.inside][:, 0], want)
    assert torch.equal(seen, valid.to(torch.int64))  # every valid slot exactly once
    assert table.projected == [(0, 2), (2, 4), (4, 5)]  # each row projected once


def test_held_list_chunks_budget_the_gathered_copy_only_where_the_rows_are_gathered():
    # the tutorial's final coarse pass: 180 slots, 27 translations, 239k coefficients
    r, t, k, size, budget = 180, 27, 238_869, 4, 16 * 2**30
    z_bytes, copy_bytes = 4 * t * k * size, 4 * r * k * size
    assert held_list_chunk(r, t, k, size, budget, gathered=True) == (budget // 2) // (
        z_bytes + copy_bytes
    )
    assert held_list_chunk(r, t, k, size, budget, gathered=False) == (budget // 2) // z_bytes
    assert held_list_chunk(r, t, k, size, 1, gathered=False) == 1  # never empty


def test_held_projections_carry_their_powers_where_both_fit():
    projector, *_ = _case(False)
    count, rows = projector.window.count, projector.rows
    values_bytes = rows * count * 8  # complex64
    held = projector.with_values(values_bytes + values_bytes // 2, powers=True)
    pairs = torch.view_as_real(held.values).double()
    exact = pairs.square().sum(-1)
    # each square and the sum rounded once to float32: within 2u + u^2, relative
    assert held.powers.dtype == torch.float32
    assert ((held.powers.double() - exact).abs() <= (2 * U32 + U32 * U32) * exact).all()
    torch.testing.assert_close(held.values, projector.with_values(2**30).values, rtol=0, atol=0)
    assert projector.with_values(2**30).powers is None  # not asked for
    alone = projector.with_values(values_bytes + values_bytes // 2 - 1, powers=True)
    assert alone.values is not None  # the projections fit, their powers with them do not
    assert alone.powers is None
    # a room of their own for the powers (the fine groups': an eighth of the budget beside
    # the projections' quarter): held whenever their float32 half of the table fits it
    beside = projector.with_values(values_bytes, powers=True, powers_bytes=values_bytes // 2)
    assert beside.powers is not None
    torch.testing.assert_close(beside.powers, held.powers, rtol=0, atol=0)
    short = projector.with_values(values_bytes, powers=True, powers_bytes=values_bytes // 2 - 1)
    assert short.values is not None
    assert short.powers is None


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_held_list_scores_from_the_held_powers_equal_those_squared_here(precision):
    projector, rows, valid, particles, _ = _case(False)
    held = projector.with_values(2**30, powers=True)
    values, rows = held.values[:18], rows.clamp(max=17)  # 18 rows: the table's powers
    phases = particles.phases[:1].expand(3, -1, -1)
    shared = ParticleWindowData(particles.data, particles.ctf, particles.weight, phases)
    options = {"cross_correlation": False, "precision": precision, "max_bytes": 2**30}
    got = score_held_lists(shared, values, rows, valid, powers=held.powers[:18], **options)
    want = score_held_lists(shared, values, rows, valid, **options)
    mask = valid[:, None, :].expand_as(got)
    zero = torch.zeros_like(held.powers[:18])
    without = score_held_lists(shared, values, rows, valid, powers=zero, **options)
    if precision == "float64":  # float32 powers are not taken: squared here, in float64
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(without, want, rtol=0, atol=0)
        return
    # |P|^2 within 2u + u^2 (held) or 6.5 eps = 13u (squared here) of the exact, relative:
    # the power term sum_k w K^2 |P|^2 differs by at most 15u (and u^2) times its size; the
    # products and sums after it round within gamma_n of the scores' magnitudes on each side
    table = values[rows].to(torch.complex128)
    power = particles.weight.double()[:, None] * particles.ctf.double()[:, None] ** 2
    power = (power * table.abs() ** 2).sum(-1)  # (b, r)
    n = 2 * projector.window.count + 10
    magnitudes = score_magnitudes(particles.data, particles.ctf, particles.weight, table)
    bound = 16 * U32 * power[:, None, :] + 2 * gamma(n, U32) * magnitudes[:, None, :]
    assert ((got.double() - want.double()).abs()[mask] <= bound.expand_as(got)[mask]).all()
    # the powers given are the ones taken: zero powers take the power term out of the scores
    taken = (want.double() - without.double() - power[:, None, :]).abs()
    assert (taken[mask] <= bound.expand_as(got)[mask]).all()
    assert (power > bound.amax()).any()  # a term the check above could not miss
