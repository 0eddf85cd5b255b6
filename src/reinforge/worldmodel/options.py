"""Options of the ``worldmodel`` env in the ``env`` config section (see ``reinforge.worldmodel.env``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinforge.config import check


@dataclass
class WorldModelOptions:
    model: str = ""  # the world model: a folder written by `reinforge wm train` (its run folder or model/)
    data: str = ""  # start frames + ground-truth continuations; "" = the data the model was trained on
    episodes: Literal["all", "train", "heldout"] = "all"  # which episodes of the data give start frames
    start: Literal["first", "any"] = "any"  # episode starts only, or every frame with a continuation
    mae_weight: float = 1.0
    perceptual_weight: float = 1.0

    def __post_init__(self) -> None:
        check(bool(self.model), "env.model", self.model, "must name a world model folder (reinforge wm train --out)")
        check(self.episodes in ("all", "train", "heldout"), "env.episodes", self.episodes, "must be all|train|heldout")
        check(self.start in ("first", "any"), "env.start", self.start, "must be 'first' or 'any'")
        check(self.mae_weight >= 0 and self.perceptual_weight >= 0, "env.mae_weight", (self.mae_weight,
              self.perceptual_weight), "weights must be >= 0")
        check(self.mae_weight + self.perceptual_weight > 0, "env.mae_weight", (self.mae_weight,
              self.perceptual_weight), "at least one reward weight must be > 0")
