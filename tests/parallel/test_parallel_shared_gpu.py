"""Two ranks on one GPU (RELION's ``--gpu 0:0``) give the single-process GPU result.

Ranks that share a GPU cannot use NCCL: they take gloo, carry their sums through host
memory, and each keeps to half of the card's memory (``parallel.session``). The tiny
data set of ``parallel_helpers`` is refined to convergence on the GPU by one process
and by two ranks on GPU 0.

Why the results agree, and how closely: with one rank per half set each half set's
batches are scored in the same order as by one process (``test_parallel_refine``'s
docstring), and the sums go to host memory and back by exact copies. But a GPU run is
not bit for bit repeatable: the back-projector's ``index_add_`` adds float32 values by
atomics in whatever order the threads arrive, so two single-process GPU runs already
differ by float32 roundings in the maps, and a pose whose best score ties its neighbour's
within such a rounding may turn. The bar is the parallel tests' bar (docs/parallel.md):
an FSC above 0.99 between the two runs' maps in every shell up to the final resolution,
and final resolutions within one Fourier shell of each other (the half maps' FSC may cross
0.143 one shell sooner or later).
"""

import re
from pathlib import Path

import pytest
import torch
from parallel_helpers import (
    FINAL_MAPS,
    final_map,
    final_shell,
    maps_fsc,
    refine_arguments,
    run_cryorefine,
    simulate_tiny_spa,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="two ranks on one GPU need a GPU"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shared_gpu")
    sim = simulate_tiny_spa(folder / "sim")
    outputs = {}
    for name, ranks, gpu in (("one", 1, "0"), ("shared", 2, "0:0")):
        root = folder / name / "run"
        result = run_cryorefine(
            ranks, [*refine_arguments(sim, root), "--gpu", gpu], cwd=folder, timeout_s=600.0
        )
        assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
        outputs[name] = root.parent
    return outputs


def test_the_ranks_say_they_share_the_gpu_and_split_its_memory(runs) -> None:
    log = (runs["shared"] / "run.log").read_text()
    assert re.search(r"2 ranks share cuda:0: each holds at most 45 % of its memory", log)
    assert "ranks=2 launcher=torchrun" in log


def test_two_ranks_on_one_gpu_give_the_single_process_maps(runs) -> None:
    one, shared = runs["one"], runs["shared"]
    shell = final_shell(one)
    assert abs(final_shell(shared) - shell) <= 1
    assert shell >= 2, "the run reached no resolution worth comparing"
    for name in FINAL_MAPS:
        curve = maps_fsc(final_map(one / name), final_map(shared / name))
        assert float(curve[1 : shell + 1].min()) > 0.99, name
