"""Image metrics of imagined frames against real ones, all on pixels in [0, 1]: MAE, PSNR, SSIM (Wang et al.
2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, per channel, averaged) and the world model's
perceptual distance. Every function takes (N, ..., 3, H, W) frames and returns (N,) per-frame values
(views are averaged)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per frame; the window is applied without padding (the 'valid' region)."""
    n = a.shape[0]
    x, y = a.float().reshape(-1, 1, *a.shape[-2:]), b.float().reshape(-1, 1, *b.shape[-2:])
    w = _gaussian_window(device=x.device)
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.reshape(n, -1).mean(1)
