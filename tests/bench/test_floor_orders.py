"""bench/floor_orders: a floor table's rows summed per HEALPix order, with and without insert."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import floor_orders


def _rows(iteration: int, order: int, seconds: dict[str, tuple[float, float]]) -> list[dict]:
    return [
        {"iteration": iteration, "half_set": half, "healpix_order": order, "phase": phase,
         "measured_seconds": measured, "floor_seconds": floor}
        for half in (1, 2)
        for phase, (measured, floor) in seconds.items()
    ]  # fmt: skip


def test_phases_are_summed_over_the_iterations_and_half_sets_of_each_order():
    seconds = {"load": (0.5, 0.25), "mask": (0.4, 0.1), "coarse": (2.0, 1.0),
               "fine": (6.0, 1.0), "insert": (3.0, 4.0), "e_step": (11.5, 6.1)}  # fmt: skip
    rows = _rows(22, 6, seconds) + _rows(23, 6, seconds) + _rows(5, 2, seconds)
    totals = floor_orders.order_totals(rows)
    assert [t["healpix_order"] for t in totals] == [2, 6]
    order6 = totals[1]
    assert order6["iterations"] == [22, 23]
    fine = order6["phases"]["fine"]
    assert fine["measured_seconds"] == pytest.approx(4 * 6.0)
    assert fine["floor_seconds"] == pytest.approx(4 * 1.0)
    assert fine["ratio"] == pytest.approx(6.0)
    # without the insert: (11.5 - 3.0) measured against mask + coarse + fine floors (2.1)
    without = order6["e_step_without_insert"]
    assert without["measured_seconds"] == pytest.approx(4 * 8.5)
    assert without["floor_seconds"] == pytest.approx(4 * 2.1)
    assert without["ratio"] == pytest.approx(8.5 / 2.1)


def test_the_table_names_each_order_with_its_iterations():
    seconds = dict.fromkeys(floor_orders.PHASES, (1.0, 0.5))  # measured, floor
    text = floor_orders.format_orders(floor_orders.order_totals(_rows(3, 2, seconds) +
                                                                _rows(4, 2, seconds)))  # fmt: skip
    last = text.splitlines()[-1]
    assert last.startswith("2 | 3-4 | ")
    assert "4/2=2" in last  # two iterations of two half sets
