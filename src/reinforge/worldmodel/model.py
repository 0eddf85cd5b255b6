"""An action-conditioned world model over the policy's camera views (VLA-RFT's learned simulator, METHODS.md
section 6), small enough to train in minutes on two CPU cores.

VLA-RFT (arXiv 2510.00406) tokenises frames with an FSQ tokenizer and predicts the next frames' tokens with a
0.1 B autoregressive transformer over [context frame, (frame tokens + action tokens) x 8]. Ours keeps its
interface (one context frame in, one predicted frame per action out, fed back autoregressively) and replaces
the machinery with what a deterministic, Markov simulator needs and a CPU affords:

- a convolutional frame autoencoder: the V camera views (stacked on channels) -> a continuous latent grid
  (``latent_channels`` x H/8 x W/8) -> the views again, in [0, 1];
- a residual latent dynamics net: z' = z + f(z, cond), a few 3x3 residual blocks on the latent grid, with the
  action and proprio state (``cond``) entering by FiLM and as broadcast channels next to coordinate channels
  (so the net can place the end effector), and a state head s' = s + g(pooled z, s, a) for the proprio.

Why not a transformer over discrete tokens: the built-in world (and LIBERO) are deterministic and Markov in
(frame, proprio), so one context frame carries everything (the reference uses one too) and a sampled
categorical over codes would add noise a verified reward must then average away; a conv predictor over a
continuous latent is one to two orders of magnitude cheaper per frame on a CPU and trains in minutes. The
model is trained on multi-step unrolls (its own predictions fed back) so that imagination over a chunk
degrades gracefully.

``perceptual_distance`` is an LPIPS-form distance (unit-normalised channel features, squared differences,
spatial mean, summed over layers; uniform layer weights, no learned linear heads) over the *frozen* encoder's
feature maps: an offline perceptual metric whose features were trained on exactly these scenes. It stands in for
LPIPS, whose packages download their VGG/AlexNet backbones at run time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from reinforge.config import ConfigError, check, from_dict
from reinforge.fsutil import settle, write_guard

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class WorldModelConfig:
    """Architecture of the world model; ``data`` facts (views, dims, image size) are filled from the dataset."""

    image_size: tuple[int, int] = (64, 64)
    num_views: int = 2
    state_dim: int = 8
    action_dim: int = 7
    channels: tuple[int, ...] = (32, 64, 96)  # encoder stages, each halving the resolution
    latent_channels: int = 32
    dyn_channels: int = 96
    dyn_blocks: int = 3
    cond_dim: int = 64

    def __post_init__(self) -> None:
        self.image_size = tuple(int(x) for x in self.image_size)
        self.channels = tuple(int(x) for x in self.channels)
        check(len(self.channels) >= 1, "wm.channels", self.channels, "must name at least one stage")
        scale = 2 ** len(self.channels)
        check(all(s % scale == 0 for s in self.image_size), "wm.image_size", self.image_size,
              f"must be divisible by {scale} (2 ** number of encoder stages)")
        for name in ("num_views", "state_dim", "action_dim", "latent_channels", "dyn_channels", "cond_dim"):
            check(getattr(self, name) >= 1, f"wm.{name}", getattr(self, name), "must be >= 1")
        check(self.dyn_blocks >= 1, "wm.dyn_blocks", self.dyn_blocks, "must be >= 1")
        check(all(c % 8 == 0 for c in self.channels + (self.dyn_channels,)), "wm.channels",
              self.channels + (self.dyn_channels,), "must be multiples of 8 (GroupNorm groups)")

    @property
    def latent_hw(self) -> tuple[int, int]:
        s = 2 ** len(self.channels)
        return self.image_size[0] // s, self.image_size[1] // s


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, c)


class FrameEncoder(nn.Module):
    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        cin, stages = 3 * cfg.num_views, []
        for c in cfg.channels:
            stages.append(nn.Sequential(nn.Conv2d(cin, c, 4, 2, 1), _norm(c), nn.SiLU()))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv2d(cin, cfg.latent_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, features: bool = False):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        z = self.out(x)
        return (z, feats) if features else z


class FrameDecoder(nn.Module):
    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        chans = list(reversed(cfg.channels))
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, chans[0], 3, 1, 1), _norm(chans[0]), nn.SiLU()]
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), _norm(c_out), nn.SiLU()]
        layers.append(nn.ConvTranspose2d(chans[-1], 3 * cfg.num_views, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


class FiLMBlock(nn.Module):
    """A residual 3x3 conv block whose normalised activations are scaled and shifted by the conditioning."""

    def __init__(self, c: int, cond_dim: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.n1, self.n2 = _norm(c), _norm(c)
        self.film = nn.Linear(cond_dim, 2 * c)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, 1)
        h = F.silu(self.n1(self.conv1(x)) * (1 + scale) + shift)
        return x + self.conv2(F.silu(self.n2(h)))


class LatentDynamics(nn.Module):
    """(z, s, a) -> (z', s'): one control step in latent space (s normalised)."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        h, w = cfg.latent_hw
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([ys, xs])[None], persistent=False)
        self.cond = nn.Sequential(nn.Linear(cfg.action_dim + cfg.state_dim, cfg.cond_dim), nn.SiLU(),
                                  nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.inp = nn.Conv2d(cfg.latent_channels + cfg.cond_dim + 2, cfg.dyn_channels, 1)
        self.blocks = nn.ModuleList(FiLMBlock(cfg.dyn_channels, cfg.cond_dim) for _ in range(cfg.dyn_blocks))
        self.out = nn.Conv2d(cfg.dyn_channels, cfg.latent_channels, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.state = nn.Sequential(nn.Linear(cfg.dyn_channels + cfg.state_dim + cfg.action_dim, 128), nn.SiLU(),
                                   nn.Linear(128, cfg.state_dim))

    def forward(self, z: torch.Tensor, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, h, w = z.shape
        c = self.cond(torch.cat([a, s], -1))
        x = self.inp(torch.cat([z, c[:, :, None, None].expand(B, -1, h, w), self.coords.expand(B, -1, h, w)], 1))
        for block in self.blocks:
            x = block(x, c)
        ds = self.state(torch.cat([x.mean((2, 3)), s, a], -1))
        return z + self.out(F.silu(x)), s + ds


class WorldModel(nn.Module):
    """Frames (B, V, 3, H, W) uint8 or float in [0, 1], proprio state (B, S), actions (B, D) in [-1, 1]."""

    def __init__(self, config: WorldModelConfig, state_mean: torch.Tensor | None = None,
                 state_std: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = FrameEncoder(config), FrameDecoder(config)
        self.dynamics = LatentDynamics(config)
        S = config.state_dim
        self.register_buffer("state_mean", torch.zeros(S) if state_mean is None else state_mean.float().clone())
        self.register_buffer("state_std", torch.ones(S) if state_std is None else state_std.float().clamp(min=1e-3))

    # ------------------------------------------------------------ pieces

    def frames_in(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) uint8/float -> (B, 3V, H, W) float in [0, 1] on the model's device."""
        dev = self.state_mean.device
        x = images.to(dev)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x.flatten(1, 2)

    def frames_out(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3V, H, W) in [0, 1] -> (B, V, 3, H, W)."""
        return x.unflatten(1, (self.config.num_views, 3))

    def norm_state(self, s: torch.Tensor) -> torch.Tensor:
        return (s.to(self.state_mean.device).float() - self.state_mean) / self.state_std

    def denorm_state(self, s: torch.Tensor) -> torch.Tensor:
        return s * self.state_std + self.state_mean

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frames_in(images))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> frames (B, V, 3, H, W) float in [0, 1]."""
        return self.frames_out(self.decoder(z))

    def step(self, z: torch.Tensor, s_norm: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dynamics(z, s_norm, action.to(z.device).float())

    def imagine(self, images: torch.Tensor, state: torch.Tensor, actions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """From one context frame (B, V, 3, H, W) and state (B, S), roll the actions (B, T, D) out: the T
        predicted frames (B, T, V, 3, H, W) in [0, 1] and states (B, T, S). The context frame is not returned."""
        z, s = self.encode(images), self.norm_state(state)
        frames, states = [], []
        for t in range(actions.shape[1]):
            z, s = self.step(z, s, actions[:, t])
            frames.append(self.decode(z))
            states.append(self.denorm_state(s))
        return torch.stack(frames, 1), torch.stack(states, 1)

    # ------------------------------------------------------------ the perceptual distance

    def perceptual_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS-form distance between frames a, b (N, V, 3, H, W) in [0, 1] -> (N,), over the encoder's
        feature maps (unit-normalised over channels, squared difference, spatial mean, sum over layers). a and b
        go through the encoder as two identically shaped batches, so equal frames give exactly 0."""
        _, fa = self.encoder(a.flatten(1, 2), features=True)
        _, fb = self.encoder(b.flatten(1, 2), features=True)
        d = a.new_zeros(a.shape[0])
        for x, y in zip(fa, fb):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            d = d + (x - y).pow(2).sum(1).mean((1, 2))
        return d

    # ------------------------------------------------------------ files

    def save(self, folder: str | Path) -> None:
        """config.json + model.safetensors into an existing folder (callers make it atomic)."""
        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise FloatingPointError(f"the world model's weights hold NaN or inf ({', '.join(bad[:3])}); not saving")
        (folder / CONFIG_NAME).write_text(json.dumps({"reinforge_world_model": asdict(self.config)}, indent=2))
        with write_guard(folder / WEIGHTS_NAME):
            save_file(state, str(folder / WEIGHTS_NAME))


def read_wm_config(path: str | Path) -> WorldModelConfig:
    f = Path(path) / CONFIG_NAME
    if not f.is_file():
        raise ValueError(f"{path} is not a world model (no {CONFIG_NAME}); train one with `reinforge wm train`")
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}); the world model is corrupt, retrain it") from None
    if not isinstance(raw, dict) or "reinforge_world_model" not in raw:
        raise ValueError(f"{f} is not a reinforge world model config (no 'reinforge_world_model' section)")
    try:
        return from_dict(WorldModelConfig, raw["reinforge_world_model"], "wm.")
    except ConfigError as e:
        raise ConfigError(f"{f}: {e}") from None


def load_world_model(path: str | Path, device: str | torch.device = "cpu") -> WorldModel:
    """A world model saved by ``reinforge wm train`` (safetensors only; nothing is unpickled)."""
    path = settle(path)
    if (path / "model" / CONFIG_NAME).is_file():  # the run folder of `wm train`
        path = path / "model"
    model = WorldModel(read_wm_config(path))
    f = path / WEIGHTS_NAME
    if not f.is_file():
        raise ValueError(f"{path}: {WEIGHTS_NAME} is missing; the world model is incomplete, retrain it")
    try:
        state = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
        raise ValueError(f"{f} is corrupt ({type(e).__name__}: {e}); retrain the world model") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{f} does not fit {path / CONFIG_NAME}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{f} holds NaN or inf ({', '.join(bad[:3])}); retrain the world model")
    return model.to(device).eval()


def describe(model: WorldModel) -> dict[str, Any]:
    return {"params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3), **asdict(model.config)}
