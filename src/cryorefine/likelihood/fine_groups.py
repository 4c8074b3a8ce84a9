"""Groups of a batch's particles for the fine pass, each within the memory budget.

The fine pass (``likelihood.fine``) pads a group's arrays to its widest
particle and keeps the children of its significant coarse orientations
projected: groups of particles with similar numbers of significant pairs,
closed before either would exceed its share of ``plan.max_bytes``.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from cryorefine.likelihood.plan import ExpectationPlan
from cryorefine.likelihood.search import CoarseOutcome
from cryorefine.likelihood.settings import tuning_setting

__all__ = ["BYTES_PER_SAMPLE", "FineGroup", "fine_groups"]

BYTES_PER_SAMPLE = 72  # scores, log priors, weights, sort keys and indices, cumulative sums


PADDING_LIMIT = tuning_setting("CRYOREFINE_FINE_PADDING", 2.0, 1.0, 64.0)
"""A group closes when its padded arrays would exceed this many times its particles' own
sizes. Fewer, wider groups spend device work on padding and save the host the fine pass's
~700 operators per group (``CRYOREFINE_FINE_PADDING`` sets it for measurements)."""

ORDER = os.environ.get("CRYOREFINE_FINE_ORDER", "pairs")
"""The order particles are grouped in: ``"pairs"`` (their significant pairs) or
``"translations"`` (their distinct coarse translations, then pairs: the rows of phases and
``Z`` a group pads to its widest particle are most of its arrays at box 96).
``CRYOREFINE_FINE_ORDER`` sets it for measurements."""
if ORDER not in ("pairs", "translations"):
    raise ValueError(f"CRYOREFINE_FINE_ORDER={ORDER!r}: expected 'pairs' or 'translations'")

BUDGET_SHARE = tuning_setting("CRYOREFINE_FINE_BUDGET", 0.5, 0.05, 0.75)
"""The share of ``plan.max_bytes`` a group's padded arrays may take (``CRYOREFINE_FINE_BUDGET``
sets it for measurements; at most 0.75, as the children's projections take a quarter)."""


@dataclass(frozen=True)
class FineGroup:
    """One group's particles and the sizes the host already knows of them.

    The fine pass pads its lists to these widths instead of asking the device
    for them (each ask waits for the device's queue to drain).

    Attributes
    ----------
    particles
        Rows of the batch, on the batch's device.
    pair_width
        Largest number of significant coarse pairs of a particle of the group.
    translation_width
        Largest number of distinct translations among a particle's significant pairs.
    orientations
        The union of the particles' significant coarse orientation ids, ascending,
        on the device; None where the fine projections are cached (not listed).
    closed_by
        Why the group ended before the next particle: ``"budget"`` (its padded arrays),
        ``"padding"`` (beyond ``PADDING_LIMIT`` times its particles' own sizes), ``"projections"``
        (its children's projections beyond their quarter), or ``"end"`` (the last group).
    """

    particles: Int[Tensor, " n"]
    pair_width: int
    translation_width: int
    orientations: Int[Tensor, " u"] | None
    closed_by: str = "end"


def fine_groups(
    coarse: CoarseOutcome, plan: ExpectationPlan, window_values: int, projected_values: int
) -> list[FineGroup]:
    """Particles grouped by their number of significant coarse pairs, arrays within budget.

    A group's fine arrays are padded to its largest counts: ``(b, q, g, f)``
    samples of ``BYTES_PER_SAMPLE`` and, per distinct fine translation, the
    phases and ``Z`` on the fine and back-projection windows (16 bytes per
    coefficient of ``window_values``). Particles are taken in order of ``q`` (or of
    their distinct translations first: ``ORDER``); a group is closed when its padded
    size would exceed the budget (``BUDGET_SHARE`` of ``plan.max_bytes``) or
    ``PADDING_LIMIT`` times its particles' own sizes, or when the children of its
    particles' significant coarse orientations (``projected_values`` complex64 values
    each; 0 when a cache holds them) would not fit the quarter of ``plan.max_bytes``
    that ``fine._projector`` keeps them in: beyond it every child would be projected
    twice, once to score and once to sum (for 3D data, a rotated volume each).
    Orientations that several particles of a group share are counted once, as
    they are projected once.
    """
    g = 2 ** (plan.oversampling * plan.translations_px.shape[1])
    children = 8**plan.oversampling * g
    pairs = coarse.significant.sum(dim=(1, 2)).tolist()
    distinct = coarse.significant.any(dim=2).sum(dim=1).tolist()
    by_translations = ORDER == "translations"
    order = sorted(
        range(len(pairs)), key=lambda i: (distinct[i], pairs[i]) if by_translations else pairs[i]
    )
    budget = int(plan.max_bytes * BUDGET_SHARE)

    def cost(count: int, widest_pairs: int, widest_distinct: int) -> int:
        per_particle = widest_pairs * children * BYTES_PER_SAMPLE
        return count * (per_particle + widest_distinct * g * 16 * window_values)

    per_orientation = 8**plan.oversampling * 8 * projected_values  # its children, complex64
    held_orientations = plan.max_bytes // 4 // max(1, per_orientation)
    significant_ids: list[list[int]] = [[] for _ in pairs]
    if per_orientation > 0:  # each particle's significant coarse ids (masks index row by row)
        mask = coarse.significant.any(dim=1)
        ids = coarse.ids[mask].cpu().numpy()
        parts = np.split(ids, np.cumsum(mask.sum(dim=1).cpu().numpy())[:-1])
        significant_ids = [part.tolist() for part in parts]
    groups: list[list[int]] = [[]]
    closed_by: list[str] = []
    held: set[int] = set()  # the group's significant coarse orientations: projected once each
    total = widest_distinct = widest_pairs = 0
    for i in order:  # ascending by the order's first key
        wider = max(widest_distinct, distinct[i])
        wider_pairs = max(widest_pairs, pairs[i])
        padded = cost(len(groups[-1]) + 1, wider_pairs, wider)
        too_many = per_orientation > 0 and len(held.union(significant_ids[i])) > held_orientations
        reasons = (
            (padded > budget, "budget"),
            (padded > PADDING_LIMIT * (total + cost(1, pairs[i], wider)), "padding"),
            (too_many, "projections"),
        )
        reason = next((name for closes, name in reasons if closes), None)
        if groups[-1] and reason is not None:
            closed_by.append(reason)
            groups.append([])
            total = 0
            held = set()
            wider, wider_pairs = distinct[i], pairs[i]
        groups[-1].append(i)
        total += cost(1, pairs[i], distinct[i])
        held.update(significant_ids[i])
        widest_distinct, widest_pairs = wider, wider_pairs
    device = coarse.significant.device

    def on_device(values: list[int]) -> Tensor:  # from pageable memory: no wait for the queue
        return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)

    return [
        FineGroup(
            particles=on_device(group),
            pair_width=max(1, max(pairs[i] for i in group)),
            translation_width=max(1, max(distinct[i] for i in group)),
            orientations=on_device(sorted(set().union(*(significant_ids[i] for i in group))))
            if per_orientation > 0
            else None,
            closed_by=reason,
        )
        for group, reason in zip(groups, [*closed_by, "end"], strict=True)
    ]
