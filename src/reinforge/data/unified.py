"""Demonstrations in the unified action space (Green-VLA, arXiv 2602.00919): every dataset's native actions,
expert labels and states scattered into the 64 semantic slots of its embodiment (``reinforge.envs.embodiment``),
each frame tagged with its embodiment's position in a policy's table, so that one policy trains on several
robots at once. Normalisation statistics are taken per slot over the frames of the embodiments that fill it
(a slot no embodiment fills is constant and masked out by the policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from reinforge.data.dataset import ACTION_KEY, LABEL_KEY, STATE_KEY, DatasetError, DemoDataset, compute_stats
from reinforge.envs.embodiment import UNIFIED_DIM, get_embodiment, registered_embodiments


def dataset_embodiment(ds: DemoDataset) -> str:
    """The embodiment a dataset was recorded with: the recorded name, or (older datasets) the registered
    embodiment whose action and state names match the recorded layout."""
    rec = ds.recorded_in
    if rec.get("embodiment"):
        return str(rec["embodiment"])
    layout = (tuple(rec.get("action_names") or ()), tuple(rec.get("state_names") or ()))
    for name, e in registered_embodiments().items():
        if layout == (e.action_names, e.state_names):
            return name
    raise DatasetError(f"{ds.root} records no embodiment and its layout {layout} matches none of "
                       f"{sorted(registered_embodiments())}; re-record it with `reinforge demos` (which records the "
                       "env's embodiment) or register its embodiment")


def to_unified(ds: DemoDataset, table: Sequence[str]) -> DemoDataset:
    """``ds`` with states, actions and labels as (F, 64) unified vectors and ``embodiment_id`` its position in
    ``table``."""
    name = dataset_embodiment(ds)
    if name not in table:
        raise DatasetError(f"{ds.root} is {name!r} data but the policy knows only {list(table)}")
    e = get_embodiment(name)
    if (ds.action_dim, ds.state_dim) != (e.action_dim, e.state_dim):
        raise DatasetError(f"{ds.root}: actions/states have {ds.action_dim}/{ds.state_dim} dims but embodiment "
                           f"{name!r} has {e.action_dim}/{e.state_dim}; the dataset is inconsistent")
    return replace(ds, states=e.to_unified(ds.states, "state"), actions=e.to_unified(ds.actions, "action"),
                   labels=e.to_unified(ds.labels, "action"),
                   embodiment_id=torch.full((ds.num_frames,), list(table).index(name), dtype=torch.int64))


def _slot_stats(datasets: Sequence[DemoDataset], attr: str, kind: str) -> dict[str, list[float]]:
    cols: list[dict[str, list[float]]] = []
    for slot in range(UNIFIED_DIM):
        parts = [getattr(ds, attr)[:, slot] for ds in datasets
                 if slot in get_embodiment(dataset_embodiment(ds)).slots(kind)]
        x = torch.cat(parts)[:, None] if parts else torch.zeros(1, 1)
        cols.append(compute_stats(x))
    return {k: [c[k][0] for c in cols] for k in cols[0]}


def unified_stats(datasets: Sequence[DemoDataset]) -> dict[str, dict[str, list[float]]]:
    """Per-slot statistics of unified datasets, over the frames whose embodiment fills the slot."""
    return {STATE_KEY: _slot_stats(datasets, "states", "state"), ACTION_KEY: _slot_stats(datasets, "actions", "action"),
            LABEL_KEY: _slot_stats(datasets, "labels", "action")}
