"""Both half sets scored at once on one GPU (``--concurrent_half_sets``) give the serial result.

Each half set's E-step runs in a thread of its own on a CUDA stream of its own
(``refine.streams``), with the memory budget it has when scored alone, so its batches
and fine groups are the same as one after the other. The bar is the shared-GPU test's
(its docstring says why a GPU run is not bit for bit repeatable): an FSC above 0.99
between the two runs' maps in every shell up to the final resolution, and final
resolutions within one Fourier shell.
"""

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
    pytest.mark.skipif(not torch.cuda.is_available(), reason="concurrent half sets need a GPU"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("concurrent")
    sim = simulate_tiny_spa(folder / "sim")
    outputs = {}
    for name, extra in (("serial", []), ("concurrent", ["--concurrent_half_sets"])):
        root = folder / name / "run"
        arguments = [*refine_arguments(sim, root), "--gpu", "0", *extra]
        result = run_cryorefine(1, arguments, cwd=folder, timeout_s=600.0)
        assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
        outputs[name] = root.parent
    return outputs


def test_both_half_sets_at_once_give_the_serial_maps(runs) -> None:
    serial, concurrent = runs["serial"], runs["concurrent"]
    shell = final_shell(serial)
    assert abs(final_shell(concurrent) - shell) <= 1
    assert shell >= 2, "the run reached no resolution worth comparing"
    for name in FINAL_MAPS:
        curve = maps_fsc(final_map(serial / name), final_map(concurrent / name))
        assert float(curve[1 : shell + 1].min()) > 0.99, name


def test_each_half_set_logs_its_own_e_step(runs) -> None:
    log = (runs["concurrent"] / "run.log").read_text()
    for half in (1, 2):
        assert f"half_set={half} particles=" in log
