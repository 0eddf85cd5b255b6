"""LeRobot's pi0, pi0.5 and SmolVLA behind the Policy contract (``kind: lerobot``), with OUR denoising loop over
their ``denoise_step``.

LeRobot (>= 0.6, Python >= 3.12: ``make test-lerobot`` builds that environment) implements pi0 as
``PI0Pytorch``: ``embed_prefix`` (SigLIP image tokens + language tokens), a PaliGemma pass over the prefix that
fills a KV cache, and ``denoise_step(state, prefix_pad_masks, past_key_values, x_t, t)`` -> the velocity from the
Gemma action expert. Its convention is ours (t = 1 noise, t = 0 action, u = eps - a, x <- x - delta v), so the
flow policy's samplers run unchanged on top of it: greedy ODE, Flow-SDE (one stochastic step, exact Gaussian
log-prob, the chain stored for replay) and Flow-Noise (a noise head on the action expert's hidden state, read
before ``action_out_proj``). LeRobot denoises actions padded to ``max_action_dim``, the padding from noise too:
those dims are the flow's latent dims (moved by the ODE step only, never scored). SFT uses LeRobot's own
flow-matching loss (``PI0Pytorch.forward``). A value head on the mean prefix hidden state serves PPO (and the
monitors, ``pooled_features``). With a frozen vision tower, rollouts keep each view's ``embed_image`` tokens.

Inputs are prepared as LeRobot's processors and ``_preprocess_images`` prepare them: the VLM's tokenizer from a
local folder (``lerobot_tokenizer``) with LeRobot's prompt formats and padding (hashed words for tiny models),
views resized with padding and scaled to [-1, 1], the checkpoint's extra cameras blank and masked. The
normaliser is the policy's (``reinforge convert lerobot`` copies the checkpoint's statistics into it:
policies/convert_lerobot.py).

Tiny random models build offline (``lerobot_*`` sizes: PaliGemma width = ``d_model``, a Gemma expert of
``lerobot_expert_width``, a small SigLIP); a real checkpoint loads from a local folder (``lerobot_path``,
``PI0Policy.from_pretrained(local_files_only=True)``); a policy saved from it keeps the LeRobot config (and SmolVLA's
SmolVLM config, and the tokenizer) under ``lerobot/`` and is rebuilt from that, without the source folder. pi0.5
(``lerobot_model: pi05``) differs in three places, all LeRobot's: an adaRMS time-conditioned expert,
``denoise_step`` without a state argument, and the state given as 256-bin tokens in the prompt. SmolVLA
(``smolvla``): SmolVLM with a smaller expert (cross-attention to the prefix), the state as the last prefix token;
its tiny build gives it a SmolVLM config of our sizes instead of the one it reads from the Hub by name.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reinforge.config import ConfigError
from reinforge.policies.backbone import HashTokenizer, masked, masked_mean
from reinforge.policies.base import Normalizer, Policy, PolicyConfig
from reinforge.policies.flow import FlowPolicy, gaussian_entropy, gaussian_log_prob, ode_step
from reinforge.types import OBS_IMAGE_FEATURES, Observation

NUM_HEADS = 8  # LeRobot's pi0 training forward assumes 8 attention heads


MODELS = {"pi0": ("pi0", "PI0Pytorch", "PI0Config", "PI0Policy"),
          "pi05": ("pi05", "PI05Pytorch", "PI05Config", "PI05Policy"),
          "smolvla": ("smolvla", "VLAFlowMatching", "SmolVLAConfig", "SmolVLAPolicy")}


def _lerobot(model: str = "pi0") -> Any:
    """LeRobot's modeling module of ``model`` (pi0 | pi05)."""
    import importlib
    import os
    import sys

    if "lerobot" not in sys.modules:  # offline unless the user says otherwise: no Hub retries before an error
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return importlib.import_module(f"lerobot.policies.{MODELS[model][0]}.modeling_{MODELS[model][0]}")
    except ImportError as e:
        raise ImportError(f"policy kind 'lerobot' needs LeRobot >= 0.6 on Python >= 3.12 ({e}): `make test-lerobot` "
                          "builds .venv-lerobot with it, or pip install 'lerobot[pi]==0.6.1'") from None


@contextlib.contextmanager
def _tiny_pi0(pi0: Any, c: PolicyConfig):  # pi0's and pi0.5's modules alike
    """While building ``PI0Pytorch``: Gemma configs of our sizes and a PaliGemma with a small SigLIP tower and
    vocabulary (LeRobot knows only gemma_300m / gemma_2b with a 400M-parameter SigLIP and a 257k vocabulary)."""
    from transformers import CONFIG_MAPPING

    head_dim = c.lerobot_head_dim

    def gemma(variant: str):  # PI0Config's defaults name the PaliGemma (gemma_2b) and the expert (gemma_300m)
        width = c.d_model if variant == "gemma_2b" else c.lerobot_expert_width
        return pi0.GemmaConfig(width=width, depth=c.lerobot_depth, mlp_dim=2 * width, num_heads=NUM_HEADS,
                               num_kv_heads=1, head_dim=head_dim)

    base = pi0.PaliGemmaWithExpertModel

    class TinyPaliGemmaWithExpert(base):
        def __init__(self, vlm_config, action_expert_config, use_adarms=None, precision="float32", image_size=224,
                     freeze_vision_encoder=False, train_expert_only=False):
            nn.Module.__init__(self)
            self.freeze_vision_encoder, self.train_expert_only = freeze_vision_encoder, train_expert_only
            vlm = CONFIG_MAPPING["paligemma"]()
            vlm._vocab_size = c.lerobot_vocab  # noqa: SLF001
            vlm.image_token_index = c.lerobot_vocab
            t = vlm.text_config
            t.hidden_size, t.intermediate_size = vlm_config.width, vlm_config.mlp_dim
            t.num_attention_heads, t.head_dim = vlm_config.num_heads, vlm_config.head_dim
            t.num_hidden_layers, t.num_key_value_heads = vlm_config.depth, vlm_config.num_kv_heads
            t.hidden_activation, t.dtype, t.vocab_size = "gelu_pytorch_tanh", "float32", c.lerobot_vocab
            t.use_adarms, t.adarms_cond_dim = bool(use_adarms and use_adarms[0]), None
            v = vlm.vision_config
            v.image_size, v.patch_size = image_size, c.lerobot_patch_size
            v.hidden_size, v.intermediate_size = c.lerobot_vision_dim, 2 * c.lerobot_vision_dim
            v.num_hidden_layers, v.num_attention_heads = 1, 2
            v.projection_dim, v.projector_hidden_act, v.dtype = vlm_config.width, "gelu_fast", "float32"
            expert = CONFIG_MAPPING["gemma"](
                head_dim=action_expert_config.head_dim, hidden_size=action_expert_config.width,
                intermediate_size=action_expert_config.mlp_dim, num_attention_heads=action_expert_config.num_heads,
                num_hidden_layers=action_expert_config.depth, num_key_value_heads=action_expert_config.num_kv_heads,
                vocab_size=c.lerobot_vocab, hidden_activation="gelu_pytorch_tanh", dtype="float32",
                use_adarms=bool(use_adarms and use_adarms[1]),  # pi0.5 conditions its expert on time by adaRMS
                adarms_cond_dim=action_expert_config.width if use_adarms and use_adarms[1] else None)
            self.paligemma = pi0.PaliGemmaForConditionalGenerationWithPiGemma(config=vlm)
            self.gemma_expert = pi0.PiGemmaForCausalLM(config=expert)
            self.gemma_expert.model.embed_tokens = None
            self.to_bfloat16_for_selected_params("float32")
            self._set_requires_grad()

    saved = pi0.get_gemma_config, pi0.PaliGemmaWithExpertModel
    pi0.get_gemma_config, pi0.PaliGemmaWithExpertModel = gemma, TinyPaliGemmaWithExpert
    try:
        yield
    finally:
        pi0.get_gemma_config, pi0.PaliGemmaWithExpertModel = saved


@contextlib.contextmanager
def _smolvlm(cfg: Any, fake_image_token_id: int, global_image_token_id: int):
    """While building SmolVLA's ``VLAFlowMatching``: the SmolVLM config ``cfg`` instead of the one it reads by name
    from the Hub, and the two image-marker token ids it reads from the processor's tokenizer (our prompt is
    tokenised by reinforge, so no processor is needed)."""
    import types

    import lerobot.policies.smolvla.smolvlm_with_expert as sw

    processor = types.SimpleNamespace(tokenizer=types.SimpleNamespace(fake_image_token_id=fake_image_token_id,
                                                                      global_image_token_id=global_image_token_id))
    saved = sw.AutoConfig, sw.AutoProcessor
    sw.AutoConfig = types.SimpleNamespace(from_pretrained=lambda *a, **k: cfg)
    sw.AutoProcessor = types.SimpleNamespace(from_pretrained=lambda *a, **k: processor)
    try:
        yield
    finally:
        sw.AutoConfig, sw.AutoProcessor = saved


def _tiny_smolvla(c: PolicyConfig):
    """``_smolvlm`` with a SmolVLM config of our sizes."""
    from transformers import SmolVLMConfig

    V = c.lerobot_vocab
    H = c.image_size[0]
    cfg = SmolVLMConfig(
        vision_config={"hidden_size": c.lerobot_vision_dim, "intermediate_size": 2 * c.lerobot_vision_dim,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": H,
                       "patch_size": c.lerobot_patch_size},
        text_config={"model_type": "llama", "hidden_size": c.d_model, "intermediate_size": 2 * c.d_model,
                     "num_hidden_layers": c.lerobot_depth, "num_attention_heads": c.heads,
                     "num_key_value_heads": max(1, c.heads // 2), "head_dim": c.lerobot_head_dim, "vocab_size": V,
                     "max_position_embeddings": 1024},
        scale_factor=2, image_token_id=V - 1, vocab_size=V)
    return _smolvlm(cfg, V - 2, V - 3)


# pi0's published sizes: PaliGemma's Gemma 2B (width 2048, vocabulary 257,152) with SigLIP So400m (1152 wide)
FULL_SIZE = {"d_model": 2048, "lerobot_vocab": 257152, "lerobot_vision_dim": 1152}


def checkpoint_sizes(weights: str | Path) -> dict[str, int] | None:
    """The sizes of the pi0 / pi0.5 network whose weights are in ``weights`` (a safetensors file; only its header is
    read), as ``PolicyConfig`` fields, when they differ from the published ones; None for a full-size network (or a
    file without pi0's tensors). LeRobot rebuilds a checkpoint from its config.json, which can only name the full
    sizes, so a smaller saved network (a smoke-test checkpoint) is rebuilt at the size its weights have."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, ValueError, RuntimeError):
        return None

    def one(suffix: str) -> tuple[int, ...] | None:
        return next((v for k, v in shapes.items() if k.endswith(suffix)), None)

    embed = one("paligemma.model.language_model.embed_tokens.weight")
    q = one("paligemma.model.language_model.layers.0.self_attn.q_proj.weight")
    expert_q = one("gemma_expert.model.layers.0.self_attn.q_proj.weight")
    patch = one("vision_tower.vision_model.embeddings.patch_embedding.weight")
    if None in (embed, q, expert_q, patch):
        return None
    layers = {k.split("language_model.layers.")[1].split(".")[0] for k in shapes if "language_model.layers." in k}
    sizes = {"d_model": embed[1], "lerobot_vocab": embed[0], "lerobot_vision_dim": patch[0]}
    if sizes == FULL_SIZE:
        return None
    return {**sizes, "lerobot_depth": len(layers), "lerobot_head_dim": q[0] // NUM_HEADS,
            "lerobot_expert_width": expert_q[1], "lerobot_patch_size": patch[2]}


def at_checkpoint_size(mod: Any, model: str, c: PolicyConfig, weights: str | Path):
    """A context that builds LeRobot's pi0 / pi0.5 at the size of the weights in ``weights`` (``checkpoint_sizes``):
    the tiny build's swaps with those sizes, or nothing for a full-size network (and for SmolVLA, whose kept SmolVLM
    config carries its size)."""
    from dataclasses import replace

    sizes = checkpoint_sizes(weights) if model in ("pi0", "pi05") else None
    return _tiny_pi0(mod, replace(c, **sizes)) if sizes else contextlib.nullcontext()


KEPT = "lerobot"  # a saved policy's folder of the LeRobot config(s) its network is rebuilt from
TOKENIZER = "tokenizer"  # ... and of the VLM's tokenizer (``KEPT/TOKENIZER``)


def _auto_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer from {path!r} (a local Hugging Face folder): {e}") from None
SMOLVLM = "smolvlm"  # ... and, for SmolVLA, of the SmolVLM config (``KEPT/SMOLVLM``) and its image-marker ids
IMAGE_TOKENS = "image_tokens.json"


def _kept(saved: Any) -> Path | None:
    """The ``lerobot/`` folder of a saved policy that holds its LeRobot config, else None."""
    if saved is None:
        return None
    kept = Path(saved) / KEPT
    return kept if (kept / "config.json").is_file() else None


def _from_kept(mod: Any, net: str, kept: Path, model: str) -> nn.Module:
    """The network of a saved policy, built from the LeRobot config it keeps (no source folder is read and no
    pretrained weights are loaded: they come from the policy's model.safetensors)."""
    from lerobot.configs.policies import PreTrainedConfig

    try:
        pc = PreTrainedConfig.from_pretrained(kept, local_files_only=True)
        if model == "smolvla":
            from transformers import AutoConfig

            vlm = AutoConfig.from_pretrained(kept / SMOLVLM, local_files_only=True, trust_remote_code=False)
            ids = json.loads((kept / SMOLVLM / IMAGE_TOKENS).read_text())
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"the saved policy's LeRobot config {kept} cannot be read: {e}") from None
    if model == "smolvla":
        pc.load_vlm_weights = False  # the weights come from our model.safetensors, not from the Hub
        with _smolvlm(vlm, ids["fake_image_token_id"], ids["global_image_token_id"]):
            return getattr(mod, net)(pc)
    return getattr(mod, net)(pc)


@dataclass
class _Prefix:
    """What the action expert conditions on: the prefix KV cache, its padding, pi0's (padded) state."""

    cache: Any
    pad_masks: torch.Tensor  # (B, P) True = a real prefix token (LeRobot's convention)
    state: torch.Tensor  # (B, max_state_dim) (pi0.5 reads its state from the prompt instead)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.state.shape

    @property
    def device(self) -> torch.device:
        return self.state.device


class _Expert:
    """The flow policy's ``expert`` interface over pi0's ``denoise_step``: (x (B, H, D), t (B,)) -> velocity and
    the expert's hidden state at the action positions (for the Flow-Noise head)."""

    def __init__(self, policy: LeRobotFlowPolicy):
        self.policy = policy

    @property
    def training(self) -> bool:
        return self.policy.training

    def project_memory(self, prefix: Any) -> None:
        return None

    def noise(self, h: torch.Tensor) -> torch.Tensor:
        return self.policy.noise_head(h)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, prefix: _Prefix, pad: Any = None, kv: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.policy
        model = p.model
        B, H, D = x.shape
        xp = torch.zeros(B, H, model.config.max_action_dim, device=x.device, dtype=x.dtype)
        xp[..., :D] = x
        seen: list[torch.Tensor] = []
        hook = model.action_out_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            t = t.to(x.dtype).expand(B)
            if p.config.lerobot_model in ("pi05", "smolvla"):
                v = model.denoise_step(prefix.pad_masks, prefix.cache, xp, t)
            else:
                v = model.denoise_step(prefix.state, prefix.pad_masks, prefix.cache, xp, t)
        finally:
            hook.remove()
        return v[..., :D], seen[-1]


class LeRobotFlowPolicy(FlowPolicy):
    """``kind: lerobot`` (``lerobot_model: pi0 | pi05``). ``d_model`` is PaliGemma's width."""

    builtin_backbone = False
    cacheable_prefix = False
    # with a frozen vision tower, rollouts store each view's ``embed_image`` tokens and ``embed_prefix`` is handed
    # those instead of running the tower again (``_cached_images``)
    feature_cache = True

    def __init__(self, config: PolicyConfig, normalizer: Normalizer | None = None, saved: Any = None,
                 network: nn.Module | None = None):
        """``saved``: the saved policy being loaded; ``network``: a LeRobot network already loaded from
        ``lerobot_path`` (the converter's; not read again)."""
        Policy.__init__(self, config, normalizer)
        c = config
        if c.lerobot_model not in MODELS:
            raise ConfigError(f"config field 'lerobot_model': {c.lerobot_model!r} is not one of {sorted(MODELS)}")
        mod = _lerobot(c.lerobot_model)
        _, net, conf, pol = MODELS[c.lerobot_model]
        self.from_lerobot = bool(c.lerobot_path)  # keep the LeRobot config(s) when saved (``write_files``)
        kept = _kept(saved)
        if network is not None:
            self.model = network
        elif kept is not None:  # a saved policy: its network from the kept config, its weights from ours
            with at_checkpoint_size(mod, c.lerobot_model, c, Path(saved) / "model.safetensors"):
                self.model = _from_kept(mod, net, kept, c.lerobot_model)
        elif c.lerobot_path:
            try:
                with at_checkpoint_size(mod, c.lerobot_model, c, Path(c.lerobot_path) / "model.safetensors"):
                    self.model = getattr(mod, pol).from_pretrained(c.lerobot_path, local_files_only=True).model
            except (OSError, ValueError) as e:  # a missing folder reads as a malformed Hub repo id (ValueError)
                why = e if Path(c.lerobot_path).exists() else "no such folder"
                raise ValueError(f"cannot load {c.lerobot_model} from {c.lerobot_path!r} (a local LeRobot folder): "
                                 f"{why}") from None
        else:
            import importlib

            cfg_cls = getattr(importlib.import_module(f"lerobot.policies.{MODELS[c.lerobot_model][0]}."
                                                      f"configuration_{MODELS[c.lerobot_model][0]}"), conf)
            common = {"chunk_size": c.horizon, "n_action_steps": c.execute_steps, "device": "cpu",
                      "max_state_dim": max(32, c.state_dim), "max_action_dim": max(32, c.action_dim)}
            if c.lerobot_model == "smolvla":  # reinforge's optimizer decides what trains (freeze_vision)
                pc = cfg_cls(num_steps=c.num_steps, load_vlm_weights=False,
                             resize_imgs_with_padding=tuple(c.image_size), num_vlm_layers=c.lerobot_depth,
                             train_expert_only=False, freeze_vision_encoder=False, **common)
                with _tiny_smolvla(c):
                    self.model = getattr(mod, net)(pc)
            else:
                pc = cfg_cls(num_inference_steps=c.num_steps, image_resolution=tuple(c.image_size), dtype="float32",
                             **common)
                with _tiny_pi0(mod, c):
                    self.model = getattr(mod, net)(pc)
        mc = self.model.config
        if mc.chunk_size != c.horizon or mc.max_action_dim < c.action_dim or mc.max_state_dim < c.state_dim:
            raise ValueError(f"the pi0 model (chunk {mc.chunk_size}, max action / state dims {mc.max_action_dim} / "
                             f"{mc.max_state_dim}) does not fit policy horizon={c.horizon}, action_dim={c.action_dim}, "
                             f"state_dim={c.state_dim}")
        # LeRobot denoises max_action_dim dims, the padding from noise too: those are the flow's latent dims
        self.latent_dims = mc.max_action_dim - c.action_dim
        width = self.model.action_out_proj.in_features
        self.noise_head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, c.action_dim))
        self.expert = _Expert(self)
        text = self._vlm().config.text_config
        if self.value_head is not None and text.hidden_size != c.d_model:
            raise ValueError(f"policy d_model={c.d_model} must equal the {c.lerobot_model} VLM's width "
                             f"{text.hidden_size} (its value head reads the prefix states)")
        vocab = text.vocab_size
        kept_tok = Path(saved) / KEPT / TOKENIZER if saved is not None else None
        if kept_tok is not None and kept_tok.is_dir():
            self.tokenizer = _auto_tokenizer(str(kept_tok))
        elif c.lerobot_tokenizer not in ("", "hash"):
            self.tokenizer = _auto_tokenizer(c.lerobot_tokenizer)
        elif c.lerobot_path and not c.lerobot_tokenizer:
            raise ValueError(f"a {c.lerobot_model} checkpoint reads its prompt with its VLM's tokenizer: pass "
                             "policy.lerobot_tokenizer=FOLDER (a local copy of PaliGemma's for pi0 / pi0.5, "
                             "SmolVLM2's for SmolVLA), or 'hash' to hash words instead (its language goes unused)")
        else:
            self.tokenizer = HashTokenizer(vocab, c.max_words)

    def write_files(self, folder: Path) -> None:
        """The policy's files and, for a network loaded from ``lerobot_path``, its LeRobot config under
        ``lerobot/`` (SmolVLA's also its SmolVLM config under ``lerobot/smolvlm``), so that ``load_pretrained``
        rebuilds the network from those and never reads ``lerobot_path`` again."""
        super().write_files(folder)
        kept = Path(folder) / KEPT
        if not isinstance(self.tokenizer, HashTokenizer):
            self.tokenizer.save_pretrained(kept / TOKENIZER)
        if not self.from_lerobot:  # a tiny random network is rebuilt from the policy config alone
            return
        self.model.config.save_pretrained(kept)
        if self.config.lerobot_model == "smolvla":
            self.model.vlm_with_expert.config.save_pretrained(kept / SMOLVLM)
            ids = {"fake_image_token_id": int(self.model.fake_image_token),
                   "global_image_token_id": int(self.model.global_image_token)}
            (kept / SMOLVLM / IMAGE_TOKENS).write_text(json.dumps(ids, indent=2))

    # ------------------------------------------------------------ the prefix

    @property
    def image_feature_dim(self) -> int:
        return self.config.d_model  # embed_image projects into the VLM's width

    def _image_embedder(self) -> nn.Module:
        """The module whose ``embed_image`` ``embed_prefix`` calls once per view."""
        m = self.model
        return m.vlm_with_expert if self.config.lerobot_model == "smolvla" else m.paligemma_with_expert

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) uint8 -> (B, V' * N, d): ``embed_image`` of every view the model takes (V' >= V: the
        checkpoint's blank extra cameras too), as ``embed_prefix`` would compute them."""
        views, _ = self._views(images.to(self.action_low.device))
        embed = self._image_embedder()
        return torch.cat([embed.embed_image(v) for v in views], 1)

    @contextlib.contextmanager
    def _cached_images(self, feats: torch.Tensor, n_views: int):
        """While ``embed_prefix`` runs: its per-view ``embed_image`` calls return the cached tokens, in order."""
        chunks = iter(feats.chunk(n_views, dim=1))
        embed = self._image_embedder()
        embed.embed_image = lambda image: next(chunks)  # an instance attribute shadows the method
        try:
            yield
        finally:
            del embed.embed_image

    def _vlm(self) -> nn.Module:
        if self.config.lerobot_model == "smolvla":
            return self.model.vlm_with_expert.vlm
        return self.model.paligemma_with_expert.paligemma

    def vision_parameters(self) -> list[nn.Parameter]:
        if self.config.lerobot_model == "smolvla":
            return list(self.model.vlm_with_expert.get_vlm_model().vision_model.parameters())
        return list(self.model.paligemma_with_expert.paligemma.model.vision_tower.parameters())

    def _views(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """LeRobot's image preparation: each view resized with padding to the model's resolution (pi0 / pi0.5:
        centred; SmolVLA: its own padding), scaled to [-1, 1]; cameras the checkpoint expects beyond the env's
        views are blank (-1) and masked out."""
        mod, mc = _lerobot(self.config.lerobot_model), self.model.config
        smolvla = self.config.lerobot_model == "smolvla"
        size = tuple(mc.resize_imgs_with_padding or ()) if smolvla else tuple(mc.image_resolution)
        B, V = images.shape[:2]
        views, masks = [], []
        for v in range(V):
            x = images[:, v].float() / 255.0
            if smolvla and size:
                x = mod.resize_with_pad(x, size[1], size[0], pad_value=0)
            elif not smolvla and tuple(x.shape[-2:]) != size:
                x = mod.resize_with_pad_torch(x.permute(0, 2, 3, 1), *size).permute(0, 3, 1, 2)
            views.append(x * 2 - 1)
            masks.append(torch.ones(B, dtype=torch.bool, device=images.device))
        for _ in range(self._model_views() - V):
            views.append(-torch.ones_like(views[-1]))
            masks.append(torch.zeros_like(masks[-1]))
        return views, masks

    def _prompt(self, texts: list[str], state: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and attention mask (True = a real token). With the VLM's tokenizer: LeRobot's prompts
        (pi0 / SmolVLA: the task and a newline; pi0.5: "Task: ..., State: <256-bin normalised state>;\nAction: "),
        padded as its processors pad them. With hashed words: the same content, lower-cased."""
        c, mc = self.config, self.model.config
        if isinstance(self.tokenizer, HashTokenizer):
            if c.lerobot_model == "pi05":  # pi0.5 reads the state as 256-bin tokens in its prompt
                bins = ((state.clamp(-1, 1) + 1) / 2 * 255).round().long().tolist()
                texts = [f"task: {t.lower()}, state: {' '.join(map(str, b))}; action:" for t, b in zip(texts, bins)]
            ids, pad = self.tokenizer([t.lower() for t in texts], dev)
            return ids, ~pad
        if c.lerobot_model == "pi05":
            edges = torch.linspace(-1, 1, 257, device=state.device)[:-1]
            bins = (torch.bucketize(state.contiguous(), edges, right=True) - 1).tolist()
            texts = [f"Task: {t.strip().replace('_', ' ').replace(chr(10), ' ')}, State: {' '.join(map(str, b))};"
                     "\nAction: " for t, b in zip(texts, bins)]
        else:
            texts = [t if t.endswith("\n") else t + "\n" for t in texts]
        padding = mc.pad_language_to if c.lerobot_model == "smolvla" else "max_length"
        enc = self.tokenizer(texts, max_length=mc.tokenizer_max_length, truncation=True, padding=padding,
                             padding_side="right", return_tensors="pt")
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev).bool()

    def _inputs(self, obs: Observation):
        """Views (or, for cached features, placeholders whose ``embed_image`` is the cache: see ``encode``), their
        masks, prompt ids and mask, the padded state."""
        images, texts, state = self.prepare(obs)
        mc, dev = self.model.config, self.action_low.device
        B = images.shape[0]
        if OBS_IMAGE_FEATURES in obs:  # the cache holds every camera the model takes, real ones first
            n = self._model_views()
            views = [images.new_zeros(B, 3, 1, 1) for _ in range(n)]
            masks = [torch.full((B,), i < self.config.num_views, dtype=torch.bool, device=dev) for i in range(n)]
        else:
            views, masks = self._views(images)
        ids, lang_masks = self._prompt(texts, state, dev)
        s = torch.zeros(B, mc.max_state_dim, device=dev)
        s[:, : state.shape[1]] = state
        return views, masks, ids, lang_masks, s

    def _model_views(self) -> int:
        """The cameras the model takes: the env's views and the checkpoint's blank extra ones."""
        mc, V = self.model.config, self.config.num_views
        missing = max(0, len(getattr(mc, "image_features", None) or {}) - V)
        return V + (min(missing, mc.empty_cameras) if self.config.lerobot_model == "smolvla" else missing)

    def encode(self, obs: Observation) -> tuple[_Prefix, None, torch.Tensor | None]:
        views, masks, ids, lang_masks, state = self._inputs(obs)
        if OBS_IMAGE_FEATURES not in obs:
            return self._encode(views, masks, ids, lang_masks, state)
        with self._cached_images(obs[OBS_IMAGE_FEATURES].to(state.device), len(views)):
            return self._encode(views, masks, ids, lang_masks, state)

    def _encode(self, views, masks, ids, lang_masks, state) -> tuple[_Prefix, None, torch.Tensor | None]:
        mod = _lerobot(self.config.lerobot_model)
        m = self.model
        if self.config.lerobot_model == "smolvla":  # its state is the last prefix token; a 2-D attention mask
            embs, pad_masks, att_masks = m.embed_prefix(views, masks, ids, lang_masks, state=state)
            att = mod.make_att_2d_masks(pad_masks, att_masks)
            pos = torch.cumsum(pad_masks, dim=1) - 1
            (out, _), cache = m.vlm_with_expert.forward(attention_mask=att, position_ids=pos, past_key_values=None,
                                                        inputs_embeds=[embs, None], use_cache=True)
        else:
            embs, pad_masks, att_masks = m.embed_prefix(views, masks, ids, lang_masks)
            att = mod.prepare_attention_masks_4d(mod.make_att_2d_masks(pad_masks, att_masks))
            pos = torch.cumsum(pad_masks, dim=1) - 1
            m.paligemma_with_expert.paligemma.model.language_model.config._attn_implementation = "eager"  # noqa: SLF001
            (out, _), cache = m.paligemma_with_expert.forward(attention_mask=att, position_ids=pos,
                                                              past_key_values=None, inputs_embeds=[embs, None],
                                                              use_cache=True)
        self._pooled = masked_mean(out.float(), ~pad_masks)  # the prefix summary (value head, monitors)
        return _Prefix(cache, pad_masks, state), None, self.value(self._pooled)

    @torch.no_grad()
    def pooled_features(self, obs: Observation) -> torch.Tensor:
        """(B, d_model) the VLM's prefix states (images, prompt, state) averaged: the input of the value head and of
        the OOD / progress monitors."""
        self.encode(obs)
        return self._pooled

    # ------------------------------------------------------------ losses

    def sft_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """LeRobot's flow-matching loss (``PI0Pytorch.forward``) over unpadded steps and real action dims."""
        if OBS_IMAGE_FEATURES in batch:  # cached vision features stand in for the views (frozen tower)
            with self._cached_images(batch[OBS_IMAGE_FEATURES].to(self.action_low.device), self._model_views()):
                return self._sft_loss(batch)
        return self._sft_loss(batch)

    def _sft_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        views, masks, ids, lang_masks, state = self._inputs(batch)
        mask = self.loss_mask(batch)
        a = self.normalize_actions(batch["actions"].to(state.device))
        a = torch.where(mask, a, torch.zeros_like(a))
        B, H, D = a.shape
        mc = self.model.config
        ap = torch.zeros(B, H, mc.max_action_dim, device=a.device)
        ap[..., :D] = a
        t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(a.device) * 0.999 + 0.001
        noise = torch.randn_like(ap)
        if self.config.lerobot_model == "pi05":
            err = self.model.forward(views, masks, ids, lang_masks, ap, noise, t)[..., :D]
        elif self.config.lerobot_model == "smolvla":
            err = self.model.forward(views, masks, ids, lang_masks, state, ap, noise=noise, time=t)[..., :D]
        else:
            err = self.model.forward(views, masks, ids, lang_masks, state, ap, noise, t)[..., :D]
        loss = masked(err, mask).sum() / mask.sum().clamp(min=1)
        return loss, {"sft/loss": float(loss.detach())}

    def _noise_log_prob(self, prefix, pad, chain, mask):
        """Flow-Noise log-likelihood of a stored chain: one expert call per denoising step (the KV cache of the
        prefix cannot be tiled like the built-in expert's memory)."""
        c = self.config
        B, K = chain.shape[0], c.num_steps
        grid = self._grid(chain.device)
        steps, ents = [], []
        for k in range(K):
            x = chain[:, k]
            v, h = self.expert(x, grid[k].expand(B), prefix)
            mean = ode_step(x, v, grid[k] - grid[k + 1])
            std = self._noise_std(h)
            steps.append(masked(gaussian_log_prob(chain[:, k + 1], mean, std), mask).sum((1, 2)))
            ents.append(masked(gaussian_entropy(std), mask).sum((1, 2)))
        x0 = chain[:, 0]
        first = masked(gaussian_log_prob(x0, torch.zeros_like(x0), torch.ones_like(x0)), mask).sum((1, 2))
        return (first + torch.stack(steps, 1).sum(1)) / (K + 1), torch.stack(ents, 1).mean(1)


__all__ = ["LeRobotFlowPolicy"]
