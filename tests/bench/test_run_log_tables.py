"""bench/tutorial_bench: the job's tables from run.log, each half set counted once."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import tutorial_bench

# iteration 2's half set 1 was cut by a call's time limit after its phases were logged,
# then run again from the carried iteration 1
LOG = """\
2026-11-27 05:50:00 iter=001 half_set=1 phase_seconds mask=0.50 fine_sum=3.00
2026-11-27 05:50:10 iter=001 half_set=2 phase_seconds mask=0.40 fine_sum=2.00
2026-11-27 05:50:20 iter=002 half_set=1 phase_seconds mask=0.70 fine_sum=4.00
2026-11-27 05:55:00 iter=002 half_set=1 phase_seconds mask=0.60 fine_sum=3.50
2026-11-27 05:55:10 iter=002 half_set=2 phase_seconds mask=0.30 fine_sum=1.50
"""


def test_phase_totals_count_each_half_set_of_each_iteration_once_at_its_last_run():
    totals = tutorial_bench.phase_totals(LOG)
    assert totals.keys() == {"mask", "fine_sum"}
    assert abs(totals["mask"] - (0.50 + 0.40 + 0.60 + 0.30)) < 1e-12
    assert abs(totals["fine_sum"] - (3.00 + 2.00 + 3.50 + 1.50)) < 1e-12
