"""likelihood.held_cross: each particle's cross terms against its own rows of a held table."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from likelihood_cases import U32, gamma, needs_triton_interpreter, run_in_triton_interpreter

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


def _check(got, shifted, table, rows, depth=None):
    """Within float32's bound of a 2k-term sum: gamma_n sum |z p|, with n = 2k for any
    order, or the kernel's longest chain of roundings ``depth`` where it is known."""
    want = torch.einsum("btk,brk->btr", shifted.double(), table.double()[rows])
    magnitude = torch.einsum("btk,brk->btr", shifted.double().abs(), table.double().abs()[rows])
    n = shifted.shape[2] if depth is None else depth
    assert got.shape == want.shape
    assert ((got.double() - want).abs() <= gamma(n, U32) * magnitude).all()


def _depth(b, r, k2, split=None, factors=1):
    """The kernel's longest chain of roundings for one output: ``factors`` roundings of a
    term, at most ``BK`` within a tile's sum, one per tile of a range, one per range added
    (the launcher's own choice of ranges where ``split`` is None)."""
    bk = module._BLOCK_K
    if split is None:
        split = module._splits(b, math.ceil(r / module._BLOCK_ROWS), k2)
    span = math.ceil(math.ceil(k2 / split) / bk) * bk
    split = math.ceil(k2 / span)
    return factors + bk + span // bk + split


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
    needs_triton_interpreter()
    shifted, table, rows = _case(*shape, seed=1)
    # a strided view of Z, as the callers pass (a slice of a wider array)
    shifted = torch.cat([shifted, shifted], dim=0)[::2]
    got = run_in_triton_interpreter(tmp_path, _INTERPRETED, (shifted, table, rows, split))
    _check(got, shifted, table, rows)


_BLOCKS = textwrap.dedent(
    """
    import sys, torch
    from cryorefine.likelihood.held_cross import kernel_cross
    shifted, table, rows, block = torch.load(sys.argv[1])
    torch.save(kernel_cross(shifted, table, rows, block_rows=block), sys.argv[2])
    """
)


@pytest.mark.parametrize("block_rows", [16, 128])
def test_the_kernel_with_other_blocks_of_rows_matches_the_product(tmp_path, block_rows):
    needs_triton_interpreter()
    shifted, table, rows = _case(2, 16, 70, 40, 64, seed=7)  # 70 rows: several blocks of 16
    got = run_in_triton_interpreter(tmp_path, _BLOCKS, (shifted, table, rows, block_rows))
    _check(got, shifted, table, rows)


@pytest.mark.parametrize("block_rows", [8, 48])
def test_blocks_of_rows_are_powers_of_two_from_16(block_rows):
    pytest.importorskip("triton")
    shifted, table, rows = _case(1, 2, 3, 4, 8)
    with pytest.raises(ValueError, match="power of 2"):
        module.kernel_cross(shifted, table, rows, block_rows=block_rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [*CASES, (8, 24, 120, 700, 477_738)])
def test_the_kernel_on_the_gpu_matches_the_product(monkeypatch, shape):
    pytest.importorskip("triton")
    monkeypatch.setattr(module, "KERNEL", True)
    shifted, table, rows = (x.cuda() for x in _case(*shape, seed=2))
    got = held_cross(shifted, table, rows)
    depth = _depth(shape[0], shape[2], shape[4])  # IEEE float32: the launcher's own ranges
    _check(got.cpu(), shifted.cpu(), table.cpu(), rows.cpu(), depth)


_WIRED = textwrap.dedent(
    """
    import sys, pytest
    calls = {"pairs": 0, "lists": 0, "combination": 0, "carried": 0}

    class KernelsOn:  # imports the library once pytest's hooks are in place
        @staticmethod
        def pytest_sessionstart(session):
            from cryorefine.likelihood import carried_rows, held_cross, pair_sums, pairs, passes
            from cryorefine.likelihood import unshifted
            def counted(name):
                def cross(*args, **kwargs):
                    calls[name] += 1
                    return held_cross.kernel_cross(*args, **kwargs)
                return cross
            def combination(*args, **kwargs):
                calls["combination"] += 1
                return unshifted.kernel_unshifted_combination(*args, **kwargs)
            def carried(*args, **kwargs):
                calls["carried"] += 1
                return carried_rows.add_carried_rows(*args, **kwargs)
            pairs.kernel_cross, passes.kernel_cross = counted("pairs"), counted("lists")
            pair_sums.kernel_unshifted_combination = combination
            pair_sums.add_carried_rows = carried
            held_cross.KERNEL = True

    code = pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[2:]], plugins=[KernelsOn()])
    with open(sys.argv[1], "w") as out:
        out.write(" ".join(str(int(n)) for n in (code, *calls.values())))
    """
)


def test_the_callers_own_tests_pass_with_the_kernels_on(tmp_path):
    # the fine pairs' scores and sums and the held lists' scores, each test of theirs run
    # again with both kernels on (Triton's interpreter, on the CPU): the same bounds from
    # the same maths, and the kernels really called
    needs_triton_interpreter()
    here = os.path.dirname(__file__)
    tests = [
        os.path.join(here, "test_likelihood_pairs.py"),
        os.path.join(here, "test_likelihood_passes.py") + "::"
        "test_held_list_scores_with_shared_translations_equal_the_exact_per_particle_scores",
        os.path.join(here, "test_likelihood_expectation.py"),  # the fine pass, whole
    ]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = [sys.executable, "-c", _WIRED, str(tmp_path / "calls.txt"), *tests]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    code, pair_calls, list_calls, combination, carried = map(
        int, (tmp_path / "calls.txt").read_text().split()
    )
    assert code == 0
    assert pair_calls > 0  # each route served at least one of its tests
    assert list_calls > 0
    assert combination > 0
    assert carried > 0  # the carried rows' data and weights formed in their table


@pytest.mark.parametrize(
    ("setting", "float32", "tf32"),
    [(None, False, True), (True, True, True), (False, False, False)],
    ids=["default: tf32 only", "CRYOREFINE_HELD_CROSS=1", "CRYOREFINE_HELD_CROSS=0"],
)
def test_the_kernel_is_taken_in_tf32_by_default_and_in_float32_when_asked(
    monkeypatch, setting, float32, tf32
):
    # the routing alone: Triton stood in for, the interpreter's CPU tensors allowed
    monkeypatch.setattr(module, "triton", object())
    monkeypatch.setattr(module, "_INTERPRETED", True)
    monkeypatch.setattr(module, "KERNEL", setting)
    shifted, table, _ = _case(2, 3, 4, 5, 20)
    assert module.kernel_applies(shifted, table, "float32") is float32
    assert module.kernel_applies(shifted, table, "tf32") is tf32
    assert module.kernel_applies(shifted.double(), table.double(), "float64") is False
    wide = torch.randn(2, module.MAX_TILE_ROWS + 1, 20)  # too many rows of Z for one tile
    assert module.kernel_applies(wide, table, "tf32") is False
