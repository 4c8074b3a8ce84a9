"""likelihood.held_cross: each particle's cross terms against its own rows of a held table."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from likelihood_cases import U32, gamma

from cryorefine.likelihood import held_cross as module
from cryorefine.likelihood.held_cross import held_cross

# (particles, translations, rows per particle, table rows, 2k): t below, at and above 16,
# rows beyond one block of 64, 2k not a multiple of the kernel's block of 32
CASES = [(3, 7, 5, 11, 100), (2, 16, 70, 40, 64), (4, 24, 9, 30, 333), (1, 1, 1, 1, 2)]


def _case(b, t, r, n, k2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shifted = torch.randn(b, t, k2, generator=gen)
    table = torch.randn(n, k2, generator=gen)
    rows = torch.randint(0, n, (b, r), generator=gen)  # repeats included
    return shifted, table, rows


def _check(got, shifted, table, rows):
    """Within float32's bound of a 2k-term sum in any order: gamma_2k sum |z p|."""
    want = torch.einsum("btk,brk->btr", shifted.double(), table.double()[rows])
    magnitude = torch.einsum("btk,brk->btr", shifted.double().abs(), table.double().abs()[rows])
    assert got.shape == want.shape
    assert ((got.double() - want).abs() <= gamma(shifted.shape[2], U32) * magnitude).all()


@pytest.mark.parametrize("shape", CASES)
def test_the_torch_route_is_each_particles_product_with_its_own_rows(shape):
    shifted, table, rows = _case(*shape)
    _check(held_cross(shifted, table, rows), shifted, table, rows)


def test_float64_stays_float64():
    shifted, table, rows = _case(2, 3, 4, 5, 20)
    got = held_cross(shifted.double(), table.double(), rows, precision="float64")
    assert got.dtype == torch.float64


_INTERPRETED = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.held_cross import kernel_cross
    shifted, table, rows, split = torch.load(sys.argv[1])
    torch.save(kernel_cross(shifted, table, rows, split=split), sys.argv[2])
    """
)


@pytest.mark.parametrize("split", [1, 3, None], ids=["whole k", "three ranges", "chosen"])
@pytest.mark.parametrize("shape", CASES)
def test_the_kernel_in_tritons_interpreter_matches_the_product(tmp_path, shape, split):
    pytest.importorskip("triton")
    shifted, table, rows = _case(*shape, seed=1)
    # a strided view of Z, as the callers pass (a slice of a wider array)
    shifted = torch.cat([shifted, shifted], dim=0)[::2]
    torch.save((shifted, table, rows, split), tmp_path / "in.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = [sys.executable, "-c", _INTERPRETED, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    _check(torch.load(tmp_path / "out.pt"), shifted, table, rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [*CASES, (8, 24, 120, 700, 477_738)])
def test_the_kernel_on_the_gpu_matches_the_product(monkeypatch, shape):
    pytest.importorskip("triton")
    monkeypatch.setattr(module, "KERNEL", True)
    shifted, table, rows = (x.cuda() for x in _case(*shape, seed=2))
    got = held_cross(shifted, table, rows)
    _check(got.cpu(), shifted.cpu(), table.cpu(), rows.cpu())


_WIRED = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    import test_likelihood_pairs as case_pairs, test_likelihood_passes as case_passes
    from cryorefine.likelihood import data_terms, held_cross, pairs, passes
    from cryorefine.likelihood.passes import ParticleWindowData
    calls = []
    def counted(*args, **kwargs):
        calls.append(1)
        return held_cross.kernel_cross(*args, **kwargs)
    pairs.kernel_cross = passes.kernel_cross = counted
    projector, significant, _, (data, ctf, weight, phases) = case_pairs._case(True)
    lists = pairs.pair_lists(significant)
    terms = data_terms(data, ctf, weight, phases)
    held, rows, valid, particles, _ = case_passes._case(True)
    values, rows = held.values[:18], rows.clamp(max=17)
    shared = ParticleWindowData(
        particles.data, particles.ctf, particles.weight, particles.phases[:1].expand(3, -1, -1)
    )
    out = {}
    for on in (False, True):
        held_cross.KERNEL = on
        out["pairs", on] = pairs.score_pairs(
            terms, projector, lists.slots, lists, children=case_pairs.G,
            cross_correlation=False, max_bytes=2**30,
        )
        out["lists", on] = passes.score_held_lists(
            shared, values, rows, valid, cross_correlation=False, precision="float32",
            max_bytes=2**30,
        )
    from likelihood_cases import score_magnitudes
    table = projector.projector.project(0, projector.projector.rows)  # (C F, k)
    r_index = (lists.slots[:, :, None] * case_pairs.F + torch.arange(case_pairs.F))
    pair_magnitude = score_magnitudes(data, ctf, weight, table)[
        torch.arange(3)[:, None, None], r_index
    ][:, :, None, :]  # (b, q, 1, f)
    list_magnitude = score_magnitudes(
        particles.data, particles.ctf, particles.weight, values[rows]
    )[:, None, :]  # (b, 1, r)
    magnitudes = {"pairs": pair_magnitude, "lists": list_magnitude}
    valids = {"pairs": lists.valid[:, :, None, None], "lists": valid[:, None, :]}
    torch.save((out, len(calls), magnitudes, valids, held.window.count), sys.argv[2])
    """
)


def test_the_fine_pairs_and_held_lists_score_alike_with_the_kernel(tmp_path):
    # both callers, kernel on (Triton's interpreter, on the CPU) against their own route:
    # each within gamma_(2k+10) M of the exact scores (their own tests; M the score
    # magnitudes), so the two within twice that
    pytest.importorskip("triton")
    here = os.path.dirname(__file__)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = [sys.executable, "-c", _WIRED, here, str(tmp_path / "out.pt")]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out, calls, magnitudes, valids, k = torch.load(tmp_path / "out.pt")
    assert calls == 2  # the kernel served both callers when on, and neither when off
    for name in ("pairs", "lists"):
        off, on = out[name, False], out[name, True]
        mask = valids[name].expand_as(off)
        assert torch.isinf(on[~mask]).all()
        assert torch.isinf(off[~mask]).all()
        bound = 2 * gamma(2 * k + 10, U32) * magnitudes[name].expand_as(off)
        assert ((on - off).abs()[mask] <= bound[mask]).all()
