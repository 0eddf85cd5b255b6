"""Training batches from demonstration datasets: one dataset, or a mixture with fixed shares of every batch.

A batch is a dict of random frames with the next H actions of the same episode (padding past the episode end
is flagged in ``is_pad``), augmented images, states and instructions: what ``Policy.sft_loss`` takes. Used by
SFT (``reinforge sft``, also on a sim + real mixture) and by the SFT anchor of RL co-training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reinforge.data.augment import AugmentConfig, augment_images
from reinforge.data.dataset import LABEL_KEY, DatasetError, DemoDataset, compute_stats
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE


def sample_batch(ds: DemoDataset, batch_size: int, horizon: int, gen: torch.Generator,
                 augment: AugmentConfig, labels: bool = True) -> dict[str, Any]:
    """``batch_size`` random frames of ``ds`` with their action chunks."""
    frames = torch.randint(0, ds.num_frames, (batch_size,), generator=gen)
    actions, is_pad = ds.action_chunk(frames, horizon, labels=labels)
    batch = {OBS_IMAGE: augment_images(ds.images[frames], augment, gen), OBS_STATE: ds.states[frames],
             OBS_INSTRUCTION: [ds.instruction(int(f)) for f in frames], "actions": actions, "is_pad": is_pad}
    if ds.embodiment_id is not None:  # unified action space: which embodiment each row is
        batch["embodiment_id"] = ds.embodiment_id[frames]
    return batch


def shares(batch_size: int, weights: Sequence[float]) -> list[int]:
    """Rows of a batch per dataset: ``batch_size`` split by ``weights`` (largest remainders get the rest), so
    every batch holds the same, exact mixture."""
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    raw = w / w.sum() * batch_size
    n = raw.floor().long()
    rest = batch_size - int(n.sum())
    order = torch.argsort(raw - n, descending=True, stable=True)
    n[order[:rest]] += 1
    return n.tolist()


class MixtureSampler:
    """Batches drawn from several datasets in fixed shares (``weights``, normalised); one dataset is the plain
    case. The datasets must share the embodiment: action/state dims, cameras and image size."""

    def __init__(self, datasets: Sequence[DemoDataset], weights: Sequence[float] | None = None):
        if not datasets:
            raise DatasetError("no dataset to sample from")
        weights = list(weights) if weights else [1.0] * len(datasets)
        if len(weights) != len(datasets) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"data_weights {weights} must be one non-negative weight per dataset "
                             f"({len(datasets)}), not all zero")
        first = datasets[0]
        for ds in datasets[1:]:
            got = (ds.action_dim, ds.state_dim, ds.num_views, tuple(ds.images.shape[-2:]))
            want = (first.action_dim, first.state_dim, first.num_views, tuple(first.images.shape[-2:]))
            if got != want:
                raise DatasetError(f"{ds.root} does not mix with {first.root}: (action dim, state dim, views, image "
                                   f"size) {got} vs {want}; record them for the same embodiment and image size")
        self.datasets, self.weights = list(datasets), weights

    def sample(self, batch_size: int, horizon: int, gen: torch.Generator, augment: AugmentConfig,
               labels: bool = True) -> dict[str, Any]:
        if len(self.datasets) == 1:
            return sample_batch(self.datasets[0], batch_size, horizon, gen, augment, labels)
        parts = [sample_batch(ds, n, horizon, gen, augment, labels)
                 for ds, n in zip(self.datasets, shares(batch_size, self.weights)) if n > 0]
        return {k: (sum((p[k] for p in parts), []) if k == OBS_INSTRUCTION else torch.cat([p[k] for p in parts]))
                for k in parts[0]}

    def stats(self) -> dict[str, dict[str, list[float]]]:
        """Normalisation statistics: the dataset's own, or those of all frames of a mixture pooled (in the unified
        action space: per slot, over the frames of the embodiments that fill it)."""
        if self.datasets[0].embodiment_id is not None:
            from reinforge.data.unified import unified_stats

            return unified_stats(self.datasets)
        if len(self.datasets) == 1:
            return dict(self.datasets[0].stats)
        cat = lambda attr: torch.cat([getattr(ds, attr) for ds in self.datasets])  # noqa: E731
        return {"observation.state": compute_stats(cat("states")), "action": compute_stats(cat("actions")),
                LABEL_KEY: compute_stats(cat("labels"))}
