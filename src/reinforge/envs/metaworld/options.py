"""Options of the MetaWorld adapter in the ``env`` config section (importable without MetaWorld installed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinforge.config import check


@dataclass
class MetaWorldOptions:
    # two views, as the policies expect an agentview-like and a wrist-like camera: "corner" looks at the table
    # from the front left, "gripperPOV" looks down from the hand (any camera of MetaWorld's scene works)
    cameras: tuple[str, ...] = ("corner", "gripperPOV")
    # "default": MuJoCo's default look; "fast": shadows and multisampling off (much faster on CPU, but a
    # different look: do not mix the two between training and evaluation)
    render_quality: Literal["default", "fast"] = "fast"
    render: bool = True  # render camera images (off: no images in the observation, for benchmarks and tests)

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        check(len(self.cameras) >= 1, "env.cameras", self.cameras, "must name at least one camera")
        check(self.render_quality in ("default", "fast"), "env.render_quality", self.render_quality,
              "must be 'default' or 'fast'")
