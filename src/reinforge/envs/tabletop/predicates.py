"""Success predicates of the tabletop tasks, evaluated for all envs at once.

A task's goal is a conjunction of terms ``(pred, a, b)``:

- ``on(a, b)``:    a rests on b (b's top), not held
- ``in(a, b)``:    a rests inside container b (basket, bowl, drawer), not held
- ``open(a)``:     drawer a is pulled out at least ``DRAWER_OPEN_THRESHOLD``
- ``closed(a)``:   drawer a is pushed in to within ``DRAWER_CLOSED_THRESHOLD``
- ``region(a, r)``: a rests on the table with its centre inside the box r = (x0, x1, y0, y1)
"""

from __future__ import annotations

import torch

from reinforge.envs.tabletop.catalog import DRAWER_CLOSED_THRESHOLD, DRAWER_OPEN_THRESHOLD
from reinforge.envs.tabletop.tasks import PRED_CLOSED, PRED_IN, PRED_ON, PRED_OPEN, PRED_REGION
from reinforge.envs.tabletop.world import WorldState, drawer_opening


def goal_terms_hold(state: WorldState, terms: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(B, G) bool: whether each goal term holds. ``terms`` (B, G, 3) int64, ``regions`` (B, G, 4)."""
    pred, a, b = terms.unbind(-1)
    support_a = state.support.gather(1, a)
    inside_a = state.inside.gather(1, a)
    free_a = state.held[:, None] != a
    opening = drawer_opening(state).gather(1, a)
    xy = state.pos[..., :2].gather(1, a[..., None].expand(-1, -1, 2))
    z = state.pos[..., 2].gather(1, a)
    in_box = ((xy[..., 0] >= regions[..., 0]) & (xy[..., 0] <= regions[..., 1])
              & (xy[..., 1] >= regions[..., 2]) & (xy[..., 1] <= regions[..., 3]))
    holds = torch.zeros_like(free_a)
    holds = torch.where(pred == PRED_ON, (support_a == b) & ~inside_a & free_a, holds)
    holds = torch.where(pred == PRED_IN, (support_a == b) & inside_a & free_a, holds)
    holds = torch.where(pred == PRED_OPEN, opening >= DRAWER_OPEN_THRESHOLD, holds)
    holds = torch.where(pred == PRED_CLOSED, opening <= DRAWER_CLOSED_THRESHOLD, holds)
    holds = torch.where(pred == PRED_REGION, in_box & free_a & (support_a < 0) & (z < 0.01), holds)
    return holds


def task_success(state: WorldState, terms: torch.Tensor, mask: torch.Tensor, regions: torch.Tensor
                 ) -> torch.Tensor:
    """(B,) bool: every (unmasked) goal term holds."""
    return (goal_terms_hold(state, terms, regions) | ~mask).all(dim=1)
