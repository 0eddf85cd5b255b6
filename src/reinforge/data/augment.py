"""Image augmentation for small-data SFT: random shift (pad + random crop, DrQ style) and colour jitter."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reinforge.config import check


@dataclass
class AugmentConfig:
    enabled: bool = True
    shift: int = 4  # max pixels of random translation per view
    brightness: float = 0.1  # +- fraction
    contrast: float = 0.1  # +- fraction

    def __post_init__(self) -> None:
        check(self.shift >= 0, "augment.shift", self.shift, "must be >= 0")
        check(0 <= self.brightness < 1, "augment.brightness", self.brightness, "must be in [0, 1)")
        check(0 <= self.contrast < 1, "augment.contrast", self.contrast, "must be in [0, 1)")


def augment_images(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """(B, V, 3, H, W) uint8 -> augmented uint8, independently per sample and view."""
    if not cfg.enabled:
        return images
    B, V, C, H, W = images.shape
    x = images.flatten(0, 1).float()
    n = x.shape[0]

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(x.device)

    if cfg.shift > 0:
        p = cfg.shift
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        # integer shifts through a grid_sample-free gather: build per-sample crop indices
        dx = (rand(n) * (2 * p + 1)).long().clamp(max=2 * p)
        dy = (rand(n) * (2 * p + 1)).long().clamp(max=2 * p)
        rows = (torch.arange(H, device=x.device)[None] + dy[:, None])  # (n, H)
        cols = (torch.arange(W, device=x.device)[None] + dx[:, None])  # (n, W)
        idx_r = rows[:, None, :, None].expand(n, C, H, W + 2 * p)
        x = padded.gather(2, idx_r)
        idx_c = cols[:, None, None, :].expand(n, C, H, W)
        x = x.gather(3, idx_c)
    if cfg.brightness > 0 or cfg.contrast > 0:
        b = 1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.brightness
        c = 1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.contrast
        mean = x.mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean) * b
    return x.round().clamp(0, 255).to(torch.uint8).view(B, V, C, H, W)
