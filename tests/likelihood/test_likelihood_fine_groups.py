"""likelihood.fine_groups: a batch's particles in groups whose fine arrays fit the budget."""

from dataclasses import replace

import pytest
import torch
from likelihood_cases import make_plan, whole_grid

from cryorefine.likelihood import fine_groups as grouping
from cryorefine.likelihood.fine_groups import fine_groups
from cryorefine.likelihood.search import CoarseOutcome


@pytest.fixture(autouse=True)
def _default_rules(monkeypatch):
    """The rules' defaults, whatever CRYOREFINE_FINE_PADDING/_BUDGET say in this process."""
    monkeypatch.setattr(grouping, "PADDING_LIMIT", 2.0)
    monkeypatch.setattr(grouping, "BUDGET_SHARE", 0.5)
    monkeypatch.setattr(grouping, "ORDER", "pairs")


def test_fine_groups_hold_their_childrens_window_projections_within_a_quarter_budget():
    gen = torch.Generator().manual_seed(8)
    plan = make_plan(whole_grid(1), ndim=3, ori_size=32, current_size=32, coarse_size=16)
    b, t, c = 40, plan.translations_px.shape[0], plan.orientations.count
    significant = torch.rand((b, t, c), generator=gen) < 0.02
    significant[:, 0, 0] = True
    coarse = CoarseOutcome(
        significant, significant.sum(dim=(1, 2)), torch.arange(c).expand(b, c),
        torch.zeros(b, c), torch.zeros(b),
    )  # fmt: skip
    k = 7_000  # complex64 coefficients of one child projection on the fine window
    per_orientation = 8 * 8 * k  # 8 children of 8 bytes per coefficient
    plan = replace(plan, max_bytes=4 * 30 * per_orientation)  # a quarter holds 30 orientations
    groups = fine_groups(coarse, plan, window_values=1, projected_values=k)
    orientations = significant.any(dim=1).sum(dim=1)
    members = [sizes.particles for sizes in groups]
    assert sorted(torch.cat(members).tolist()) == list(range(b))  # each particle once
    for sizes in groups:
        group = sizes.particles
        # orientations shared by particles of the group are projected once
        union = significant[group].any(dim=1).any(dim=0).nonzero().squeeze(1)
        assert union.shape[0] * per_orientation <= plan.max_bytes // 4 or group.numel() == 1
        # the sizes the fine pass pads to, found on the host: exactly the device's own
        assert sizes.orientations.tolist() == union.tolist()
        assert sizes.pair_width == int(significant[group].sum(dim=(1, 2)).max())
        assert sizes.translation_width == int(significant[group].any(dim=2).sum(dim=1).max())
    # closed only when the next particle would not fit: few groups, not one per particle
    assert len(groups) <= 2 * int(orientations.sum()) // 30 + 1
    # each group says why it ended: here the held projections (the windows are 1 value)
    assert len(groups) > 1
    assert [sizes.closed_by for sizes in groups] == ["projections"] * (len(groups) - 1) + ["end"]
    # with no projections to hold: large windows close groups by the budget ...
    windows = fine_groups(coarse, plan, window_values=1_000, projected_values=0)
    assert [sizes.closed_by for sizes in windows] == ["budget"] * (len(windows) - 1) + ["end"]
    assert len(windows) > 1
    # ... and particles with five times the pairs of the others by the padding rule
    dense = (
        significant
        | (torch.rand((b, t, c), generator=gen) < 0.08) * (torch.arange(b) >= 20)[:, None, None]
    )
    wide = replace(coarse, significant=dense, count=dense.sum(dim=(1, 2)))
    padded = fine_groups(wide, replace(plan, max_bytes=2**32), window_values=1, projected_values=0)
    assert [sizes.closed_by for sizes in padded] == ["padding", "end"]
    assert sorted(padded[0].particles.tolist()) == list(range(20))


def test_a_looser_padding_limit_makes_fewer_wider_groups(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    plan = make_plan(whole_grid(1), ndim=3, ori_size=32, current_size=32, coarse_size=16)
    b, t, c = 40, plan.translations_px.shape[0], plan.orientations.count
    significant = torch.rand((b, t, c), generator=gen) < 0.02
    significant[:, 0, 0] = True
    # particles 20-39 with about five times the pairs of 0-19
    significant |= (torch.rand((b, t, c), generator=gen) < 0.08) & (torch.arange(b) >= 20)[
        :, None, None
    ]
    coarse = CoarseOutcome(
        significant, significant.sum(dim=(1, 2)), torch.arange(c).expand(b, c),
        torch.zeros(b, c), torch.zeros(b),
    )  # fmt: skip
    plan = replace(plan, max_bytes=2**32)
    assert len(fine_groups(coarse, plan, window_values=1, projected_values=0)) == 2
    monkeypatch.setattr(grouping, "PADDING_LIMIT", 8.0)  # five times the pairs is within it
    loose = fine_groups(coarse, plan, window_values=1, projected_values=0)
    assert [sizes.closed_by for sizes in loose] == ["end"]
    assert loose[0].pair_width == int(significant.sum(dim=(1, 2)).max())


def test_grouped_by_translations_first_the_groups_pad_fewer_rows_of_phases(monkeypatch):
    # At box 96 a group's rows of phases and Z (every distinct coarse translation's g fine
    # ones, padded to its widest particle) are most of its arrays. 20 particles with one
    # translation and 20 orientations each, 20 with four translations and one orientation:
    # taken by pairs, the first kind joins the second's group within twice its own size and
    # is padded to four translations; taken by translations, the two kinds stay apart.
    plan = make_plan(whole_grid(1), ndim=3, ori_size=32, current_size=32, coarse_size=16)
    plan = replace(plan, max_bytes=2**40)
    b, t, c = 40, plan.translations_px.shape[0], plan.orientations.count
    significant = torch.zeros((b, t, c), dtype=torch.bool)
    significant[:20, 0, :20] = True  # one translation, 20 orientations
    significant[20:, :4, 0] = True  # four translations, one orientation
    coarse = CoarseOutcome(
        significant, significant.sum(dim=(1, 2)), torch.arange(c).expand(b, c),
        torch.zeros(b, c), torch.zeros(b),
    )  # fmt: skip
    rows = {}
    for order in ("pairs", "translations"):
        monkeypatch.setattr(grouping, "ORDER", order)
        groups = fine_groups(coarse, plan, window_values=100_000, projected_values=0)
        members = torch.cat([sizes.particles for sizes in groups])
        assert sorted(members.tolist()) == list(range(b))  # each particle once
        for sizes in groups:  # the widths the fine pass pads to, whatever the order
            group = significant[sizes.particles]
            assert sizes.pair_width == int(group.sum(dim=(1, 2)).max())
            assert sizes.translation_width == int(group.any(dim=2).sum(dim=1).max())
        rows[order] = sum(s.particles.numel() * s.translation_width for s in groups)
    assert rows == {"pairs": 40 * 4, "translations": 20 * 1 + 20 * 4}
