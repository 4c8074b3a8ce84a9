"""bench/run_log_tables: the job's tables from run.log, each half set counted once."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run_log_tables

# iteration 2's half set 1 was cut by a call's time limit after its phases were logged,
# then run again from the carried iteration 1; each iteration's parts have a line of their own
LOG = """\
2026-11-27 05:50:00 iter=001 half_set=1 phase_seconds mask=0.50 fine_sum=3.00
2026-11-27 05:50:00 iter=001 half_set=1 particles=10 e_step_seconds=4.0 particles_per_second=2.5
2026-11-27 05:50:10 iter=001 half_set=2 phase_seconds mask=0.40 fine_sum=2.00
2026-11-27 05:50:10 iter=001 half_set=2 particles=10 e_step_seconds=3.0 particles_per_second=3.3
2026-11-27 05:50:11 iter=001 phase_seconds references=0.10 e_step=7.00 m_step=0.50 files=0.20
2026-11-27 05:50:11 iter=001 resolution_angst=30.00 current_size=40 converged=0 seconds=7.9
2026-11-27 05:50:20 iter=002 half_set=1 phase_seconds mask=0.70 fine_sum=4.00
2026-11-27 05:55:00 iter=002 half_set=1 phase_seconds mask=0.60 fine_sum=3.50
2026-11-27 05:55:00 iter=002 half_set=1 particles=10 e_step_seconds=5.0 particles_per_second=2.0
2026-11-27 05:55:10 iter=002 half_set=2 phase_seconds mask=0.30 fine_sum=1.50
2026-11-27 05:55:10 iter=002 half_set=2 particles=10 e_step_seconds=2.0 particles_per_second=5.0
2026-11-27 05:55:11 iter=002 phase_seconds references=0.10 accuracy=0.80 e_step=7.00 m_step=0.40
2026-11-27 05:55:11 iter=002 resolution_angst=20.00 current_size=60 converged=0 seconds=8.4
"""


def test_phase_totals_count_each_half_set_of_each_iteration_once_at_its_last_run():
    totals = run_log_tables.phase_totals(LOG)
    assert totals.keys() == {"mask", "fine_sum"}
    assert abs(totals["mask"] - (0.50 + 0.40 + 0.60 + 0.30)) < 1e-12
    assert abs(totals["fine_sum"] - (3.00 + 2.00 + 3.50 + 1.50)) < 1e-12


def test_each_iteration_has_its_seconds_its_half_sets_e_step_and_its_parts():
    rows = run_log_tables.iteration_table(LOG)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert [r["seconds"] for r in rows] == [7.9, 8.4]
    assert [r["e_step_seconds"] for r in rows] == [4.0 + 3.0, 5.0 + 2.0]
    assert rows[1]["parts"] == {"references": 0.1, "accuracy": 0.8, "e_step": 7.0, "m_step": 0.4}
    totals = run_log_tables.part_totals(rows)
    assert totals.keys() == {"references", "accuracy", "e_step", "m_step", "files"}
    assert abs(totals["m_step"] - (0.50 + 0.40)) < 1e-12
    assert totals["accuracy"] == 0.8
