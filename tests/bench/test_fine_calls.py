"""bench/fine_calls: each fine group's scores and M-step sums recorded with its sizes, then
tabled."""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fine_calls

from cryorefine.likelihood import fine


def _call(
    b: int, t: int, q: int, f: int, carried_pairs: int, held: int, k: int, kb: int,
    powers: bool = False,
):  # fmt: skip
    """``fine.sum_pairs`` as the fine pass calls it, with weights on the first
    ``carried_pairs`` pairs' children 0 and 2 of each particle (one translation each); the
    held rows' squares with them where ``powers``."""
    weights = torch.zeros(b, q, 8, f)
    weights[:, :carried_pairs, 3, 0] = 0.5
    weights[:, :carried_pairs, 5, 2] = 0.25
    lists = SimpleNamespace(valid=torch.ones(b, q, dtype=torch.bool))
    squares = torch.zeros(held, k) if powers else None
    held_rows = SimpleNamespace(values=torch.zeros(held, k), powers=squares)
    projector = SimpleNamespace(projector=held_rows)
    particles = (torch.zeros(b, k), torch.zeros(b, k), torch.zeros(b, t, k))
    backprojection = (torch.zeros(b, kb), torch.zeros(b, kb), torch.zeros(b, t, kb))
    rows = torch.zeros(b, q, dtype=torch.long)
    return fine.sum_pairs(
        particles, projector, rows, lists, weights, None, backprojection,
        precision="float32", max_bytes=1,
    )  # fmt: skip


def test_each_call_is_recorded_with_its_group_sizes_and_passed_through(monkeypatch):
    calls = []
    monkeypatch.setattr(fine, "sum_pairs", lambda *a, **o: calls.append(o) or "sums")
    with fine_calls.FineCalls() as recorder:
        assert _call(3, 24, 5, 8, carried_pairs=2, held=40, k=11, kb=13) == "sums"
        _call(2, 8, 4, 8, carried_pairs=4, held=16, k=11, kb=13, powers=True)
    assert calls == [{"precision": "float32", "max_bytes": 1}] * 2  # options passed on
    first, second = recorder.sums
    # q: the widest list of pairs that carry weight (sum_pairs drops the others)
    assert {key: first[key] for key in ("b", "t", "q", "f", "held_rows", "k", "kb")} == {
        "b": 3, "t": 24, "q": 2, "f": 8, "held_rows": 40, "k": 11, "kb": 13
    }  # fmt: skip
    assert second["q"] == 4
    # two carried children per carried pair: 3 particles x 2 pairs, 2 x 4
    assert (first["carried_children"], second["carried_children"]) == (12, 16)
    # whether the rows' squares were held (the kernels' route needs them), and the budget
    assert (first["powers_held"], second["powers_held"]) == (False, True)
    assert first["max_bytes"] == second["max_bytes"] == 1
    assert first["ms"] >= 0
    assert second["ms"] >= 0


def test_each_scores_call_is_recorded_with_its_group_sizes_and_passed_through(monkeypatch):
    monkeypatch.setattr(fine, "score_pairs", lambda *a, **o: ("scores", o["children"]))
    terms = SimpleNamespace(shifted=torch.zeros(3, 152, 22))
    projector = SimpleNamespace(block=8)
    rows = torch.zeros(3, 60, dtype=torch.long)
    with fine_calls.FineCalls() as recorder:
        got = fine.score_pairs(terms, projector, rows, None, children=8, max_bytes=1)
    assert got == ("scores", 8)
    (call,) = recorder.scores
    assert {key: call[key] for key in ("b", "t", "q", "f")} == {"b": 3, "t": 152, "q": 60, "f": 8}
    assert call["ms"] >= 0


def test_leaving_restores_the_fine_pass_own_functions():
    saved = (fine.sum_pairs, fine.score_pairs, fine.window_phases)
    with fine_calls.FineCalls():
        assert fine.sum_pairs is not saved[0]
        assert fine.score_pairs is not saved[1]
        assert fine.window_phases is not saved[2]
    assert (fine.sum_pairs, fine.score_pairs, fine.window_phases) == saved


def test_the_table_sums_calls_by_translations_particles_and_shape():
    recorder = fine_calls.FineCalls()
    base = {"q": 5, "f": 8, "carried_children": 10, "held_rows": 40, "k": 11, "kb": 13}
    recorder.sums = [
        {**base, "b": 3, "t": 24, "ms": 100.0},
        {**base, "b": 3, "t": 24, "ms": 300.0},
        {**base, "b": 20, "t": 72, "ms": 50.0},
    ]
    lines = [line.split() for line in recorder.table().splitlines()]
    assert " ".join(lines[0][:6]) == "fine sums: 3 sum_pairs calls, 0.45"
    by_t = {row[0]: row[1:3] for row in lines[2:4]}  # after the header "t calls s ..."
    assert lines[1][0] == "t"
    assert by_t == {"17-32": ["2", "0.40"], "65-112": ["1", "0.05"]}
    by_b = {row[0]: row[1:3] for row in lines[5:7]}
    assert lines[4][0] == "b"
    assert by_b == {"1-4": ["2", "0.40"], "17-32": ["1", "0.05"]}
    assert lines[7][:3] == ["b", "t", "q"]
    # the costliest shape first: calls, seconds, mean milliseconds
    assert lines[8][:6] == ["3", "24", "5", "2", "0.40", "200.00"]
    assert lines[9][:6] == ["20", "72", "5", "1", "0.05", "50.00"]
    assert len(lines) == 10


def test_the_costliest_shape_gives_its_mean_sizes_and_carried_share():
    recorder = fine_calls.FineCalls()
    base = {"q": 5, "f": 8, "held_rows": 40, "k": 11, "kb": 13}
    recorder.sums = [
        {**base, "b": 3, "t": 24, "carried_children": 12, "ms": 100.0},
        {**base, "b": 3, "t": 24, "carried_children": 18, "ms": 100.0},
        {**base, "b": 20, "t": 72, "carried_children": 400, "ms": 150.0},  # costlier alone
    ]
    got = recorder.costliest_shape()
    assert {key: got[key] for key in ("b", "t", "q", "carried_children")} == {
        "b": 3, "t": 24, "q": 5, "carried_children": 15
    }  # fmt: skip
    assert got["carried"] == 15 / (3 * 5 * 8)


def test_the_scores_table_sums_calls_by_translations():
    recorder = fine_calls.FineCalls()
    recorder.scores = [
        {"b": 3, "t": 24, "q": 5, "f": 8, "ms": 100.0},
        {"b": 9, "t": 152, "q": 60, "f": 8, "ms": 700.0},  # beyond one tile of 128
        {"b": 4, "t": 120, "q": 30, "f": 8, "ms": 200.0},
    ]
    lines = [line.split() for line in recorder.scores_table().splitlines()]
    assert " ".join(lines[0][:5]) == "fine scores: 3 score_pairs calls,"
    assert lines[0][5] == "1.00"
    assert {row[0]: row[1:] for row in lines[2:]} == {
        "17-32": ["1", "0.10", "100.00"],
        "113-128": ["1", "0.20", "200.00"],
        ">128": ["1", "0.70", "700.00"],
    }
