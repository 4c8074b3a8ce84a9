"""likelihood.plan: what one iteration searches, and what it computes once for every group."""

from dataclasses import replace

import pytest
import torch
from likelihood_cases import make_plan, whole_grid

from cryorefine.geometry import oversampled_translations
from cryorefine.likelihood import plan as plan_module


def test_the_fine_translations_are_the_oversampled_grid_computed_once_per_plan():
    plan = make_plan(whole_grid(0), ndim=3, ori_size=16, current_size=16, coarse_size=12)
    want = oversampled_translations(
        plan.translations_px, offset_step_px=plan.offset_step_px, oversampling=plan.oversampling
    ).reshape(-1, 3)
    with torch.inference_mode():  # first asked inside inference mode: still a normal tensor
        first = plan.fine_translations_px
    assert not first.is_inference()
    assert torch.equal(first, want)
    assert plan.fine_translations_px is first  # kept
    g = 2 ** (plan.oversampling * 3)
    assert first.shape == (plan.translations_px.shape[0] * g, 3)
    moved = replace(plan, translations_px=plan.translations_px + 1.0)
    want_moved = oversampled_translations(
        moved.translations_px, offset_step_px=plan.offset_step_px, oversampling=plan.oversampling
    ).reshape(-1, 3)
    assert torch.equal(moved.fine_translations_px, want_moved)  # a new plan, its own grid
    assert not torch.equal(moved.fine_translations_px, first)


def test_the_budgets_cap_is_16_gib_unless_a_measurement_moves_it(monkeypatch):
    monkeypatch.delenv("CRYOREFINE_BUDGET_CAP_GIB", raising=False)
    assert plan_module._budget_cap() == 16 * 2**30
    monkeypatch.setenv("CRYOREFINE_BUDGET_CAP_GIB", "32")
    assert plan_module._budget_cap() == 32 * 2**30
    for text in ("0.5", "2000", "lots"):  # named, with what was expected
        monkeypatch.setenv("CRYOREFINE_BUDGET_CAP_GIB", text)
        with pytest.raises(ValueError, match=r"CRYOREFINE_BUDGET_CAP_GIB=.*\[1.0, 1024.0\]"):
            plan_module._budget_cap()
