"""bench/final_iteration_ab: settings parsed, and an iteration's work counted from its run.log."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import final_iteration_ab


def test_a_setting_gives_its_environment_and_the_bench_options():
    name, env, options = final_iteration_ab.parse_setting(
        "p4=CRYOREFINE_FINE_PADDING=4,--batch_size=256,--torch_profile"
    )
    assert name == "p4"
    assert env == {"CRYOREFINE_FINE_PADDING": "4"}
    assert options == ["--batch_size", "256", "--torch_profile"]
    assert final_iteration_ab.parse_setting("base") == ("base", {}, [])
    with pytest.raises(SystemExit, match="NAME=VAR=VALUE"):
        final_iteration_ab.parse_setting("bad=NOVALUE")


def test_work_counts_sum_the_half_sets_last_lines_of_the_iteration():
    log = "\n".join([
        "t iter=004 half_set=1 work fine_groups=9 fine_groups_closed_by_budget=8",
        "t iter=004 half_set=1 work fine_groups=5 fine_groups_closed_by_budget=3 "
        "fine_groups_closed_by_end=2",  # run again from the state: this line counts
        "t iter=004 half_set=2 work fine_groups=4 fine_groups_closed_by_padding=3 "
        "fine_groups_closed_by_end=1",
        "t iter=005 half_set=1 work fine_groups=100",
        "t iter=004 half_set=2 particles=10 e_step_seconds=1.0",
    ])  # fmt: skip
    assert final_iteration_ab.work_counts(log, 4) == {
        "fine_groups": 9,
        "fine_groups_closed_by_budget": 3,
        "fine_groups_closed_by_end": 3,
        "fine_groups_closed_by_padding": 3,
    }
    assert final_iteration_ab.work_counts(log, 6) == {}
