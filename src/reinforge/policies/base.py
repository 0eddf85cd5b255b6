"""The Policy base class, its config, action/state normalisation and save/load.

Every policy is an ``nn.Module`` with the contract of DESIGN.md:

- ``sft_loss(batch) -> (loss, metrics)``
- ``act(obs, *, mode, temperature) -> PolicyOutput(actions (B, H, D), log_prob, value, replay)``
- ``evaluate(obs, replay) -> (log_prob, entropy, value)``, recomputing ``act``'s log-prob exactly.

Actions are normalised per dimension to [-1, 1] with the dataset's q01/q99 statistics (OpenVLA's choice);
dimensions that never vary in the data (e.g. roll and pitch in the tabletop world) are masked out of
every loss and log-prob and decoded to their constant value. The state is standardised with mean/std; state
dimensions that never vary in the data are standardised to 0 (ignored), whatever value they later read.

``action_space: unified`` (Green-VLA, arXiv 2602.00919) makes one policy for several embodiments: its actions and
states are the 64 semantic slots of ``reinforge.envs.embodiment``. Native states are scattered into the slots,
the prompt starts with the embodiment's tag (``[joint] [scara] put the bowl on the plate``), losses and
log-probs count only the slots the embodiment fills (``unified_mask``; without it, every slot any embodiment
fills counts, with zeros where this one has none: the zero-padded baseline), and ``act`` returns the native
actions of the embodiment it acts as (``bind_env`` sets it from the env's spec). Training batches from several
embodiments carry ``embodiment_id`` (B,) (positions in ``config.embodiments``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from reinforge.config import ConfigError, check, from_dict
from reinforge.fsutil import atomic_dir, write_guard
from reinforge.policies.backbone import Backbone, ValueHead, masked_mean
from reinforge.types import (
    OBS_IMAGE,
    OBS_IMAGE_FEATURES,
    OBS_INSTRUCTION,
    OBS_PREFIX,
    OBS_PREFIX_PAD,
    OBS_STATE,
    Observation,
    PolicyOutput,
)

CONFIG_NAME = "config.json"
LogProb = Literal["chunk", "token"]
WEIGHTS_NAME = "model.safetensors"
STATS_NAME = "normalization.json"


@dataclass
class PolicyConfig:
    """Architecture of a VLA policy. ``kind`` picks the model: ``token`` / ``flow`` (the built-in backbone with a
    token or flow head) or ``oft`` (OpenVLA-OFT style, transformers' Llama + DINOv2 + SigLIP; policies/oft.py)."""

    kind: Literal["token", "flow", "oft", "lerobot"] = "token"
    image_size: tuple[int, int] = (64, 64)
    num_views: int = 2
    state_dim: int = 8
    action_dim: int = 7
    horizon: int = 8  # H: action chunk length predicted per call
    execute_steps: int = 4  # steps of the chunk executed in the env (<= horizon), then re-plan
    d_model: int = 64
    heads: int = 4
    fusion_layers: int = 2
    lang_layers: int = 1
    channels: tuple[int, ...] = (32, 64, 64)
    vocab_size: int = 2048
    max_words: int = 32
    dropout: float = 0.0
    value_head: bool = True
    value_hidden: int = 128
    detach_value_input: bool = True
    # token head
    num_bins: int = 256
    # flow head
    num_steps: int = 5  # K denoising steps
    expert_layers: int = 2
    flow_sampler: Literal["sde", "noise"] = "sde"  # stochastic sampler used by act(mode="sample")
    noise_level: float = 0.5  # Flow-SDE a
    noise_min: float = 0.08  # Flow-Noise sigma bounds
    noise_max: float = 0.16
    # Flow-Noise: the chain's K + 1 log-density terms averaged (pi_RL's reference) or summed (VLA-RFT)
    logprob_reduction: Literal["mean", "sum"] = "mean"
    time_beta: bool = True  # t ~ Beta(1.5, 1) for the flow-matching loss (pi0), else uniform
    # native: the env's own action/state layout; unified: the 64-slot space shared by several embodiments
    action_space: Literal["native", "unified"] = "native"
    unified_mask: bool = True  # unified: mask losses to the embodiment's slots (false: zero-padded, no mask)
    embodiments: tuple[str, ...] = ()  # unified: the embodiments it knows (embodiment ids are positions here)
    embodiment: str = ""  # unified: the embodiment it acts as until bound to an env ("" = the first)
    # oft: d_model is the language model's hidden size and heads its attention heads; tiny random towers unless
    # local Hugging Face folders are named (oft_llm, oft_dinov2, oft_siglip, oft_tokenizer)
    oft_llm_layers: int = 2
    oft_vocab_size: int = 1024  # the action tokens are the num_bins entries below oft_action_token_end
    oft_vision_dim: int = 32
    oft_vision_layers: int = 2
    oft_patch_size: int = 8
    oft_registers: int = 4  # DINOv2's register tokens (OpenVLA's ViT-L/14 has 4)
    oft_feature_layer: int = -2  # the towers' hidden state read (OpenVLA: the second-to-last layer's output)
    oft_max_prompt: int = 32  # prompt tokens
    oft_max_tokens: int = 512  # the language model's positions
    oft_proprio: bool = True  # one proprio token after the image patches (OpenVLA-OFT's proprio projector)
    oft_action_token_end: int = 0  # action token of bin b is (end - 1 - b); 0 = the vocabulary's size
    oft_prompt_end_ids: tuple[int, ...] = ()  # tokens after the prompt (OpenVLA on Llama 2: 29871, the empty word)
    oft_center_crop: float = 0.0  # > 0: views cropped to this centred area fraction and resized back (OFT LIBERO: 0.9)
    oft_llm: str = ""
    oft_dinov2: str = ""
    oft_siglip: str = ""
    oft_tokenizer: str = ""
    oft_action_head: Literal["tokens", "l1"] = "tokens"  # l1: OFT's regression head (SFT / evaluation only)
    # lerobot (policies/lerobot.py, LeRobot >= 0.6 on Python >= 3.12): d_model is PaliGemma's width; a tiny random
    # pi0 of these sizes unless lerobot_path names a local LeRobot checkpoint folder
    lerobot_model: str = "pi0"  # pi0 | pi05
    lerobot_path: str = ""
    # the VLM's tokenizer (a local folder; LeRobot's prompt formats), or "hash" (hashed words: tiny models, tests);
    # a checkpoint from lerobot_path needs its real tokenizer ("" is refused there)
    lerobot_tokenizer: str = ""
    lerobot_expert_width: int = 32
    lerobot_depth: int = 2  # layers of both PaliGemma's Gemma and the action expert (LeRobot pairs them)
    lerobot_head_dim: int = 16
    lerobot_vocab: int = 1024
    lerobot_vision_dim: int = 32
    lerobot_patch_size: int = 8

    def __post_init__(self) -> None:
        self.image_size = tuple(self.image_size)
        self.channels = tuple(self.channels)
        self.embodiments = tuple(self.embodiments)
        self.oft_prompt_end_ids = tuple(self.oft_prompt_end_ids)
        check(self.action_space in ("native", "unified"), "action_space", self.action_space, "must be native|unified")
        if self.action_space == "unified":  # the dims and the table may come from the data (SFT fills them in)
            from reinforge.envs.embodiment import get_embodiment

            for name in self.embodiments:
                try:
                    get_embodiment(name)
                except ValueError as e:
                    raise ConfigError(f"config field 'embodiments': {e}") from None
            check(not self.embodiment or not self.embodiments or self.embodiment in self.embodiments, "embodiment",
                  self.embodiment, f"must be one of embodiments {list(self.embodiments)}")
        check(self.kind in ("token", "flow", "oft", "lerobot"), "kind", self.kind,
              "must be 'token', 'flow', 'oft' or 'lerobot'")
        if self.kind == "oft":
            check(self.oft_action_head in ("tokens", "l1"), "oft_action_head", self.oft_action_head,
                  "must be 'tokens' or 'l1'")
            check(self.oft_llm_layers >= 1 and self.oft_vision_layers >= 1, "oft_llm_layers",
                  (self.oft_llm_layers, self.oft_vision_layers), "must be >= 1")
            check(0 <= self.oft_center_crop <= 1, "oft_center_crop", self.oft_center_crop, "must be in [0, 1]")
            check(-self.oft_vision_layers - 1 <= self.oft_feature_layer <= self.oft_vision_layers,
                  "oft_feature_layer", self.oft_feature_layer,
                  f"must index the towers' {self.oft_vision_layers + 1} hidden states")
        check(self.horizon >= 1, "horizon", self.horizon, "must be >= 1")
        check(1 <= self.execute_steps <= self.horizon, "execute_steps", self.execute_steps,
              f"must be in [1, horizon={self.horizon}]")
        check(self.d_model % self.heads == 0, "d_model", self.d_model, f"must be divisible by heads={self.heads}")
        check(self.num_bins >= 2, "num_bins", self.num_bins, "must be >= 2")
        check(self.num_steps >= 1, "num_steps", self.num_steps, "must be >= 1")
        check(self.flow_sampler in ("sde", "noise"), "flow_sampler", self.flow_sampler, "must be 'sde' or 'noise'")
        check(self.logprob_reduction in ("mean", "sum"), "logprob_reduction", self.logprob_reduction,
              "must be 'mean' (pi_RL) or 'sum' (VLA-RFT)")
        check(0 < self.noise_min < self.noise_max, "noise_min", (self.noise_min, self.noise_max),
              "must satisfy 0 < noise_min < noise_max")
        check(all(c % 8 == 0 for c in self.channels), "channels", self.channels, "must be multiples of 8")


@dataclass
class Normalizer:
    """Per-dimension action range (q01, q99) and state mean/std from a dataset's stats.

    Actions map [low, high] -> [-1, 1] (low > high flips the dim), clamped (``action_clip``: false lets values
    beyond the bounds extrapolate,
    as LeRobot's quantile / min-max normalisation does); with ``action_mean`` / ``action_std`` they are
    standardised instead (LeRobot's MEAN_STD, pi0's and SmolVLA's choice; never clamped). States are standardised
    (``state_clip`` > 0 clips the result, as OpenVLA-OFT's proprio)."""

    action_low: list[float]
    action_high: list[float]
    state_mean: list[float]
    state_std: list[float]
    extra: dict[str, Any] = field(default_factory=dict)
    state_clip: float = 0.0  # > 0: standardised states are clipped to [-state_clip, state_clip] (OpenVLA-OFT: 1)
    action_mean: list[float] = field(default_factory=list)  # non-empty: actions are standardised
    action_std: list[float] = field(default_factory=list)
    action_clip: bool = True

    def __post_init__(self) -> None:
        import math

        for name in ("action_low", "action_high", "state_mean", "state_std", "action_mean", "action_std"):
            v = getattr(self, name)
            if not isinstance(v, list | tuple) or not all(isinstance(x, int | float) and math.isfinite(x) for x in v):
                raise ConfigError(f"normalisation field {name!r} must be a list of finite numbers, got {v!r}")
        if len(self.action_low) != len(self.action_high) or len(self.state_mean) != len(self.state_std):
            raise ConfigError(f"normalisation stats disagree in length: action_low {len(self.action_low)}, "
                              f"action_high {len(self.action_high)}, state_mean {len(self.state_mean)}, "
                              f"state_std {len(self.state_std)}")
        if (self.action_mean or self.action_std) and not (
                len(self.action_mean) == len(self.action_std) == len(self.action_low)):
            raise ConfigError(f"normalisation fields action_mean / action_std must both have the action dim "
                              f"{len(self.action_low)}, got {len(self.action_mean)} / {len(self.action_std)}")

    @property
    def standardized(self) -> bool:
        return bool(self.action_mean)

    @classmethod
    def from_stats(cls, stats: dict[str, dict[str, list[float]]]) -> Normalizer:
        a, s = stats["action"], stats["observation.state"]
        return cls(a["q01"], a["q99"], s["mean"], s["std"])

    @classmethod
    def identity(cls, action_dim: int, state_dim: int) -> Normalizer:
        return cls([-1.0] * action_dim, [1.0] * action_dim, [0.0] * state_dim, [1.0] * state_dim)


class Policy(nn.Module):
    """Base class: backbone, optional value head, normalisation buffers, (de)serialisation."""

    builtin_backbone = True  # False: the subclass builds its own model (no ``self.backbone``)
    unbounded_actions = False  # True: standardised (unbounded) normalised actions are fine (flow policies)
    feature_cache = True  # rollouts may store ``encode_images`` tokens instead of images (frozen vision)

    @property
    def stochastic(self) -> bool:
        """Whether ``act(mode="sample")`` and ``evaluate`` exist (RL needs them)."""
        return True

    def __init__(self, config: PolicyConfig, normalizer: Normalizer | None = None):
        super().__init__()
        self.config = config
        c = config
        norm = normalizer or Normalizer.identity(c.action_dim, c.state_dim)
        if len(norm.action_low) != c.action_dim or len(norm.state_mean) != c.state_dim:
            raise ConfigError(f"normalisation stats have action dim {len(norm.action_low)} / state dim "
                              f"{len(norm.state_mean)} but the policy config says {c.action_dim} / {c.state_dim}")
        if norm.standardized and not self.unbounded_actions:
            raise ConfigError(f"a {c.kind} policy decodes actions in [-1, 1]: it needs bounded normalisation "
                              "(action_low / action_high), not standardised actions (action_mean / action_std)")
        self.normalizer = norm
        for name, value in self.normalization_buffers(norm).items():
            self.register_buffer(name, value)
        # state dims that never vary in the data carry no information: standardised to 0 whatever they read, so an
        # unseen value (e.g. a turned gripper when every demonstration kept it straight) is not amplified 1000x
        self.register_buffer("state_dim_mask", torch.tensor(norm.state_std) > 1e-6, persistent=False)
        if self.builtin_backbone:  # policies built on other models (oft) bring their own
            self.backbone = Backbone(d_model=c.d_model, heads=c.heads, fusion_layers=c.fusion_layers,
                                     lang_layers=c.lang_layers, vocab_size=c.vocab_size, max_words=c.max_words,
                                     channels=c.channels, num_views=c.num_views, image_size=c.image_size,
                                     state_dim=c.state_dim, dropout=c.dropout)
        self.value_head = ValueHead(c.d_model, c.value_hidden, c.detach_value_input) if c.value_head else None
        if self.unified:
            from reinforge.envs.embodiment import UNIFIED_DIM, get_embodiment

            if (c.action_dim, c.state_dim) != (UNIFIED_DIM, UNIFIED_DIM) or not c.embodiments:
                raise ConfigError(f"a unified-space policy needs action_dim = state_dim = {UNIFIED_DIM} and at least "
                                  f"one embodiment, got {c.action_dim} / {c.state_dim} and {list(c.embodiments)}")
            self._embodiments = [get_embodiment(n) for n in c.embodiments]
            self.register_buffer("emb_action_mask", torch.stack([e.slot_mask("action") for e in self._embodiments]),
                                 persistent=False)
            self.register_buffer("emb_state_mask", torch.stack([e.slot_mask("state") for e in self._embodiments]),
                                 persistent=False)
            self.acting = c.embodiments.index(c.embodiment) if c.embodiment else 0

    @staticmethod
    def normalization_buffers(norm: Normalizer) -> dict[str, torch.Tensor]:
        """The saved buffers that hold a normaliser's statistics (part of every policy's weights)."""
        low, high = torch.tensor(norm.action_low), torch.tensor(norm.action_high)
        out = {"action_low": low, "action_high": high, "action_dim_mask": (high - low).abs() > 1e-6,
               "state_mean": torch.tensor(norm.state_mean), "state_std": torch.tensor(norm.state_std).clamp(min=1e-3)}
        if norm.standardized:
            std = torch.tensor(norm.action_std)
            out.update(action_mean=torch.tensor(norm.action_mean), action_std=std, action_dim_mask=std > 1e-6)
        return out

    # ---------------------------------------------------------------- embodiments

    @property
    def unified(self) -> bool:
        return self.config.action_space == "unified"

    def bind_env(self, spec: Any) -> None:
        """Fit the policy to an env (an ``EnvSpec``): a unified-space policy acts as the env's embodiment (an error
        when it does not know it); a native one must match the env's dims. Errors name what differs."""
        c = self.config
        if not self.unified:
            spec.check_policy(action_dim=c.action_dim, state_dim=c.state_dim, num_views=c.num_views,
                              image_size=c.image_size)
            return
        if spec.embodiment not in c.embodiments:
            raise ValueError(f"this unified-space policy knows the embodiments {list(c.embodiments)}, the env "
                             f"{spec.env!r} is {spec.embodiment or 'of an unregistered embodiment'!r}: fine-tune it "
                             "on that embodiment's demonstrations (R1) first")
        self.acting = c.embodiments.index(spec.embodiment)
        e = self._embodiments[self.acting]
        spec.check_policy(action_dim=e.action_dim, state_dim=e.state_dim, num_views=c.num_views,
                          image_size=c.image_size)

    def embodiment_ids(self, obs: Observation, batch: int) -> torch.Tensor:
        """(B,) the embodiment of each row: ``obs["embodiment_id"]``, else the one the policy acts as."""
        ids = obs.get("embodiment_id")
        dev = self.action_low.device
        return ids.to(dev) if ids is not None else torch.full((batch,), self.acting, dtype=torch.int64, device=dev)

    def dim_mask(self, obs: Observation | None = None) -> torch.Tensor:
        """The action dims that count in losses and log-probs: (D,), or (B, D) for a batch of mixed
        embodiments (``obs["embodiment_id"]``)."""
        m = self.action_dim_mask
        if not self.unified or not self.config.unified_mask:
            return m
        if obs is not None and "embodiment_id" in obs:
            return self.emb_action_mask[obs["embodiment_id"].to(m.device)] & m
        return self.emb_action_mask[self.acting] & m

    def to_native(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (..., D) of the policy's space -> those of the embodiment it acts as."""
        return self._embodiments[self.acting].from_unified(actions, "action") if self.unified else actions

    # ---------------------------------------------------------------- normalisation

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        if self.normalizer.standardized:
            x = (actions - self.action_mean) / self.action_std.clamp(min=1e-6)
        else:
            span = self.action_high - self.action_low  # negative: a flipped dim (OpenVLA's gripper on LIBERO)
            span = torch.where(span.abs() < 1e-6, torch.full_like(span, 1e-6), span)
            x = 2 * (actions - self.action_low) / span - 1
            x = x.clamp(-1, 1) if self.normalizer.action_clip else x
        return torch.where(self.action_dim_mask, x, torch.zeros_like(x))

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        x = (state.to(self.state_mean.device).float() - self.state_mean) / self.state_std
        if self.normalizer.state_clip > 0:
            x = x.clamp(-self.normalizer.state_clip, self.normalizer.state_clip)
        return torch.where(self.state_dim_mask, x, torch.zeros_like(x))

    def unnormalize_actions(self, x: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Normalised -> native actions. Bounds: [-1, 1] -> [low, high], values beyond clamped unless ``clip`` is
        false (a regression head's extrapolation) or the normaliser says ``action_clip: false``; standardised
        actions are never clamped. Dims that never vary decode to their constant."""
        if self.normalizer.standardized:
            a = x * self.action_std + self.action_mean
            return torch.where(self.action_dim_mask, a, self.action_mean.expand_as(a))
        x = x.clamp(-1, 1) if clip and self.normalizer.action_clip else x
        a = (x + 1) / 2 * (self.action_high - self.action_low) + self.action_low
        return torch.where(self.action_dim_mask, a, self.action_low.expand_as(a))

    def entry_mask(self, obs: Observation | None = None) -> torch.Tensor:
        """(H, D) bool: the entries that count in log-probs: executed steps x real action dims ((B, H, D) for a
        batch of mixed embodiments)."""
        steps = torch.arange(self.config.horizon, device=self.action_low.device) < self.config.execute_steps
        dims = self.dim_mask(obs)
        return steps[:, None] & dims[None, :] if dims.dim() == 1 else steps[None, :, None] & dims[:, None, :]

    def loss_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, H, D) bool: the entries of a training batch that count: unpadded steps x real action dims."""
        dims = self.dim_mask(batch)
        dims = dims[None, None, :] if dims.dim() == 1 else dims[:, None, :]
        return ~batch["is_pad"].to(dims.device)[..., None] & dims

    def prepare(self, obs: Observation) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Check and move observations: images (B, V, 3, H, W) (or cached vision tokens (B, N, d) when the
        observation carries ``OBS_IMAGE_FEATURES``), instructions, standardised state."""
        state, texts = obs[OBS_STATE], list(obs[OBS_INSTRUCTION])
        c = self.config
        dev = self.action_low.device
        if self.unified:
            texts, state = self._unify(obs, texts, state)
        if OBS_IMAGE_FEATURES in obs:
            feats = obs[OBS_IMAGE_FEATURES]
            if feats.dim() != 3 or feats.shape[-1] != self.image_feature_dim:
                raise ValueError(f"image features must be (B, N, {self.image_feature_dim}), got {tuple(feats.shape)}")
            return feats.to(dev), texts, self._state_input(obs, state)
        images = obs[OBS_IMAGE]
        if images.dim() != 5 or tuple(images.shape[1:]) != (c.num_views, 3, *c.image_size):
            raise ValueError(f"policy expects images of shape (B, {c.num_views}, 3, {c.image_size[0]}, "
                             f"{c.image_size[1]}), got {tuple(images.shape)}; match the env's image_size and views")
        if state.shape[-1] != c.state_dim:
            raise ValueError(f"policy expects a {c.state_dim}-dim state, got {state.shape[-1]}")
        return images.to(dev), texts, self._state_input(obs, state)

    def _unify(self, obs: Observation, texts: list[str], state: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Prompt tags and the unified state: native states (of the embodiment the policy acts as) are scattered."""
        ids = self.embodiment_ids(obs, len(texts))
        if state.shape[-1] != self.config.state_dim:
            state = self._embodiments[self.acting].to_unified(state.float(), "state")
        tags = [self._embodiments[i].prompt_tag for i in ids.tolist()]
        return [f"{tag} {t}" for tag, t in zip(tags, texts)], state

    def _state_input(self, obs: Observation, state: torch.Tensor) -> torch.Tensor:
        x = self.normalize_state(state)
        if self.unified and self.config.unified_mask:  # slots the embodiment does not fill read 0
            keep = self.emb_state_mask[self.embodiment_ids(obs, x.shape[0])]
            x = torch.where(keep, x, torch.zeros_like(x))
        return x

    @property
    def image_feature_dim(self) -> int:
        """The width of ``encode_images``' tokens."""
        return self.config.d_model

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The vision encoder's tokens (B, N, d) of camera images (B, V, 3, H, W); with a frozen vision
        encoder they can stand in for the images (``OBS_IMAGE_FEATURES``)."""
        return self.backbone.vision(images.to(self.action_low.device))

    # whether the action head reads the backbone's fused tokens only, so that with a frozen backbone a rollout can
    # store them (``OBS_PREFIX``) and the update skip the backbone (a token policy fuses its action tokens in it)
    cacheable_prefix: bool = False

    @property
    def prefix_len(self) -> int:
        """The fixed length of a cached prefix: every image token, ``max_words`` words and the state token."""
        c = self.config
        return self.backbone.vision.num_tokens_per_view * c.num_views + c.max_words + 1

    @torch.no_grad()
    def encode_prefix(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's fused tokens (B, prefix_len, d) and padding mask (B, prefix_len) of ``obs``, padded to
        ``prefix_len`` so that prefixes of different instructions stack (padded tokens are masked out)."""
        images, texts, state = self.prepare(obs)
        x, pad = self.backbone(images, texts, state)
        extra = self.prefix_len - x.shape[1]
        if extra < 0:
            raise ValueError(f"a fused prefix of {x.shape[1]} tokens exceeds prefix_len {self.prefix_len}")
        return F.pad(x, (0, 0, 0, extra)), F.pad(pad, (0, extra), value=True)

    def fused(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's fused tokens and padding mask of ``obs``: the cached ones when it carries them."""
        if OBS_PREFIX in obs:
            dev = self.action_low.device
            prefix, pad = obs[OBS_PREFIX].to(dev), obs[OBS_PREFIX_PAD].to(dev)
            keep = ~pad.all(0)  # tokens padded in every row change nothing: drop them (attention gets cheaper)
            return (prefix, pad) if bool(keep.all()) else (prefix[:, keep], pad[:, keep])
        images, texts, state = self.prepare(obs)
        return self.backbone(images, texts, state)

    def vision_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.vision.parameters())

    def predict_value(self, obs: Observation) -> torch.Tensor | None:
        """V(obs) (B,) from the value head, or None without one."""
        raise NotImplementedError

    @torch.no_grad()
    def pooled_features(self, obs: Observation) -> torch.Tensor:
        """(B, d_model) the backbone's fused tokens of ``obs`` averaged (images, instruction, state): the
        policy's summary of its input, for monitors (OOD detection, progress) trained on top of it."""
        return masked_mean(*self.fused(obs))

    def value(self, pooled: torch.Tensor) -> torch.Tensor | None:
        return self.value_head(pooled) if self.value_head is not None else None

    # ---------------------------------------------------------------- contract

    def sft_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    # whether ``logprob="token"`` (one log-prob per action token, (B, H, D)) is supported besides "chunk" (B,)
    token_logprobs: bool = False

    def act(self, obs: Observation, *, mode: Literal["sample", "greedy"] = "greedy",
            temperature: float = 1.0, logprob: LogProb = "chunk") -> PolicyOutput:
        raise NotImplementedError

    def evaluate(self, obs: Observation, replay: dict[str, torch.Tensor], *, logprob: LogProb = "chunk"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def check_logprob(self, logprob: str) -> None:
        if logprob not in ("chunk", "token") or (logprob == "token" and not self.token_logprobs):
            raise ValueError(f"{type(self).__name__} gives log-probs per 'chunk'"
                             + (" or per 'token'" if self.token_logprobs else "") + f", not {logprob!r}")

    # ---------------------------------------------------------------- save / load

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config.json, model.safetensors and normalization.json into ``path`` (atomically). Non-finite
        weights are never written (``FloatingPointError``)."""
        with atomic_dir(path, "policy") as tmp:
            self.write_files(tmp)
        return Path(path)

    def write_files(self, folder: Path) -> None:
        """The policy's files, written into an existing folder (no atomicity: see ``save_pretrained``)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise FloatingPointError(f"the policy's weights hold NaN or inf ({', '.join(bad[:3])}); not saving them")
        (folder / CONFIG_NAME).write_text(json.dumps({"reinforge_policy": asdict(self.config)}, indent=2))
        (folder / STATS_NAME).write_text(json.dumps(asdict(self.normalizer), indent=2))
        with write_guard(folder / WEIGHTS_NAME):
            save_file(state, str(folder / WEIGHTS_NAME))


def read_config(path: str | Path) -> PolicyConfig:
    path = Path(path)
    f = path / CONFIG_NAME
    if not f.is_file():
        raise ValueError(f"{path} is not a policy checkpoint: {CONFIG_NAME} is missing")
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if not isinstance(raw, dict) or "reinforge_policy" not in raw:
        raise ValueError(f"{f} is not a reinforge policy config (no 'reinforge_policy' section)")
    try:
        return from_dict(PolicyConfig, raw["reinforge_policy"])
    except ConfigError as e:
        raise ConfigError(f"{f}: {e}") from None


def read_normalizer(path: str | Path) -> Normalizer:
    f = Path(path) / STATS_NAME
    if not f.is_file():
        raise ValueError(f"{path}: {STATS_NAME} is missing; the checkpoint is incomplete")
    try:
        return from_dict(Normalizer, json.loads(f.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}); the checkpoint is corrupt") from None
    except ConfigError as e:
        raise ConfigError(f"{f}: {e}") from None


def load_weights(policy: Policy, path: str | Path) -> None:
    """Load safetensors weights, refusing missing/unexpected keys or shape mismatches with a clear error."""
    f = Path(path) / WEIGHTS_NAME
    if not f.is_file():
        raise ValueError(f"{path}: {WEIGHTS_NAME} is missing")
    try:
        state = load_file(str(f))
    except Exception as e:  # safetensors raises its own error type (and OSError) for truncated / foreign files
        raise ValueError(f"{f} is not a readable safetensors file ({type(e).__name__}: {e}); the checkpoint is "
                         "corrupt: restore it or train it again") from None
    own = policy.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad:
        raise ValueError(f"{f}: weights do not match the policy config (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatch {bad[:5]}); the checkpoint belongs to another config")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise ValueError(f"{f} holds NaN or inf weights ({', '.join(nonfinite[:3])}); the checkpoint is corrupt")
    policy.load_state_dict(state)
