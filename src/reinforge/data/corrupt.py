"""Defect injection for DataQA experiments: a copy of a dataset in which chosen episodes carry one known defect.

Each corrupted episode's meta records its ``defect`` (``jitter`` | ``blur`` | ``idle`` | ``slow`` | ``fast``; the
untouched ones ``none``): the ground truth that DataQA's precision and recall are scored against
(``bench/dataqa_table.py``). The defects, on disjoint episodes chosen at random with ``seed``:

- ``jitter``: Gaussian noise on the continuous delta dims of the executed actions and, independently, of the
  expert labels (clipped to [-1, 1]);
- ``blur``: a Gaussian blur of every frame of every camera;
- ``idle``: a run of repeated frames inserted mid-episode (the state and image frozen, zero delta actions, the
  gripper command unchanged);
- ``slow``: recorded at 0.5x speed (twice the frames, halved deltas, interpolated states: ``resample_episode``
  with rate 2);
- ``fast``: recorded at 2x speed (every other frame, summed deltas clipped to [-1, 1]: rate 0.5).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from reinforge.data.dataqa import (
    EPS,
    DataLayout,
    DatasetScales,
    Episode,
    dataset_writer,
    episode,
    resample_episode,
    write_episode,
)
from reinforge.data.dataset import DemoDataset

log = logging.getLogger(__name__)

Defect = Literal["jitter", "blur", "idle", "slow", "fast"]
DEFECTS: tuple[Defect, ...] = ("jitter", "blur", "idle", "slow", "fast")


def assign_defects(num_episodes: int, fractions: dict[str, float], seed: int = 0) -> list[str]:
    """A defect name per episode (``none`` for clean ones): ``round(fraction * num_episodes)`` episodes per
    defect, disjoint, chosen at random with ``seed``."""
    for name, f in fractions.items():
        if name not in DEFECTS:
            raise ValueError(f"unknown defect {name!r}; known: {list(DEFECTS)}")
        if not 0 <= f <= 1:
            raise ValueError(f"--{name} must be a fraction of episodes in [0, 1], got {f}")
    counts = {name: round(f * num_episodes) for name, f in fractions.items()}
    if sum(counts.values()) > num_episodes:
        raise ValueError(f"the defect fractions add up to {sum(fractions.values()):.2f} of the episodes "
                         f"({sum(counts.values())} of {num_episodes}); each episode gets at most one defect, so "
                         "they must add up to at most 1")
    order = np.random.default_rng(seed).permutation(num_episodes)
    out, start = ["none"] * num_episodes, 0
    for name in DEFECTS:
        for i in order[start:start + counts.get(name, 0)]:
            out[int(i)] = name
        start += counts.get(name, 0)
    return out


def add_jitter(ep: Episode, std: float, dims: Sequence[int], rng: np.random.Generator) -> Episode:
    """Independent Gaussian noise of ``std`` on action dims ``dims`` of the executed actions and the labels."""

    def noisy(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[:, dims] = np.clip(a[:, dims] + rng.normal(0.0, std, (len(a), len(dims))), -1, 1)
        return out

    return replace(ep, actions=noisy(ep.actions), labels=noisy(ep.labels))


def blur_frames(images: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 frames (T, V, 3, H, W) blurred with a Gaussian of ``sigma`` pixels."""
    T, V = images.shape[:2]
    out = np.empty_like(images)
    blur = ImageFilter.GaussianBlur(sigma)
    for t in range(T):
        for v in range(V):
            img = Image.fromarray(np.ascontiguousarray(images[t, v].transpose(1, 2, 0)))
            out[t, v] = np.asarray(img.filter(blur)).transpose(2, 0, 1)
    return out


def insert_idle(ep: Episode, frames: int, delta_dims: Sequence[int], rng: np.random.Generator) -> Episode:
    """``frames`` copies of a frame from the middle half of ``ep`` inserted before it: the image and state frozen,
    the delta action dims zero and the absolute ones (gripper) repeating the previous command."""
    T = ep.length
    t0 = int(rng.integers(T // 4, max(T // 4, 3 * T // 4) + 1))
    prev = max(t0 - 1, 0)

    def idle_actions(a: np.ndarray) -> np.ndarray:
        rep = np.repeat(a[prev:prev + 1], frames, axis=0)
        rep[:, delta_dims] = 0.0
        return np.concatenate([a[:t0], rep, a[t0:]])

    def frozen(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[:t0], np.repeat(x[t0:t0 + 1], frames, axis=0), x[t0:]])

    return replace(ep, images=frozen(ep.images), states=frozen(ep.states), actions=idle_actions(ep.actions),
                   labels=idle_actions(ep.labels))


def corrupt_dataset(src: str | Path, out: str | Path, *, jitter: float = 0.0, blur: float = 0.0, idle: float = 0.0,
                    slow: float = 0.0, fast: float = 0.0, seed: int = 0, jitter_std: float = 0.3,
                    blur_sigma: float = 1.0, idle_length: float = 0.3, overwrite: bool = False) -> Path:
    """Write a copy of dataset ``src`` at ``out`` in which the given fractions of the episodes (disjoint) carry
    one defect each (see the module docstring); ``jitter_std`` is in action units, ``blur_sigma`` in pixels,
    ``idle_length`` the inserted idle run as a fraction of the episode's length. Every episode's meta records
    its ``defect`` (``none`` when clean); the info records the corruption under ``reinforge.corruption``."""
    if jitter_std <= 0 or blur_sigma <= 0 or not 0 < idle_length <= 2:
        raise ValueError(f"defect strengths must be positive (jitter_std {jitter_std}, blur_sigma {blur_sigma}) and "
                         f"idle_length in (0, 2] (got {idle_length})")
    ds = DemoDataset.load(src, success_only=False)
    fractions = {"jitter": jitter, "blur": blur, "idle": idle, "slow": slow, "fast": fast}
    defects = assign_defects(ds.num_episodes, fractions, seed)
    layout = DataLayout.from_info(ds.info)
    delta = layout.delta_dims
    moving = [d for d in delta if DatasetScales.of(ds).action[d] > EPS]  # constant dims (no rotation) stay so
    rng = np.random.default_rng(seed + 1)
    info = {"corruption": {"source": str(ds.root), "seed": seed, "fractions": fractions, "jitter_std": jitter_std,
                           "blur_sigma": blur_sigma, "idle_length": idle_length,
                           "counts": {d: defects.count(d) for d in ("none", *DEFECTS)}}}
    writer = dataset_writer(ds, out, extra_info=info, overwrite=overwrite)
    try:
        for i, defect in enumerate(defects):
            ep = episode(ds, i)
            if defect == "jitter":
                ep = add_jitter(ep, jitter_std, moving, rng)
            elif defect == "blur":
                ep = replace(ep, images=blur_frames(ep.images, blur_sigma))
            elif defect == "idle":
                ep = insert_idle(ep, max(2, round(idle_length * ep.length)), delta, rng)
            elif defect in ("slow", "fast"):
                ep = resample_episode(ep, 2.0 if defect == "slow" else 0.5, delta_dims=delta)
            write_episode(writer, ep, defect=defect)
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    log.info("corrupted %s -> %s: %s", src, path, info["corruption"]["counts"])
    return path
