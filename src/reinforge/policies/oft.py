"""OpenVLA-OFT's architecture built from stock ``transformers`` classes (``kind: oft``; arXiv 2502.19645).

Layer for layer what a released OpenVLA-OFT checkpoint computes (``reinforge convert openvla-oft`` turns one into
this policy; policies/convert_openvla.py), at any size:

- vision: DINOv2 with registers and SigLIP (``Dinov2WithRegistersModel``, ``SiglipVisionModel``); each view is
  resized to the towers' resolution and normalised per tower (ImageNet mean/std for DINOv2, 0.5/0.5 for SigLIP),
  the patch tokens of the second-to-last layer's output (``oft_feature_layer``; no final norm, CLS and registers
  dropped) are concatenated channel-wise, views one after the other;
- Prismatic's fused projector (fc1: d_vis -> 4 d_vis, GELU, fc2 -> d, GELU, fc3) and OFT's proprio projector
  (one token);
- a ``LlamaForCausalLM`` over ``[BOS] [patches] [proprio] [prompt] [prompt end] [H x D placeholders] [STOP]``,
  the placeholders' input embeddings zeroed, with bidirectional attention (a 4-D additive mask, which
  transformers uses as given; OpenVLA-OFT patches Llama's attention to the same effect);
- action token k of the chunk is read from the hidden state one position before its placeholder (the causal-LM
  shift OpenVLA was trained with): its logits over OpenVLA's 256 action tokens (vocabulary ids end-1 ... end-256,
  ``oft_action_token_end``) are the token head, bins decoded as OpenVLA's action tokenizer does (uniform edges on
  [-1, 1], 255 bin centres); or the H x D hidden states go through OFT's L1-regression head (an MLP-ResNet over
  each step's D hidden states).

Sampling, greedy decoding, log-prob replay (chunk / token level) and the SFT loss are the built-in token
policy's (``TokenPolicy``): only the forward pass and the bins differ. Tiny random configs build offline; real
weights load from local folders (``oft_llm``, ``oft_dinov2``, ``oft_siglip``, ``oft_tokenizer``: HF-format
folders, read with ``local_files_only=True`` and without remote code) or from a converted OpenVLA-OFT checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reinforge.policies.backbone import HashTokenizer, masked_mean
from reinforge.policies.base import Normalizer, Policy, PolicyConfig
from reinforge.policies.token import TokenPolicy
from reinforge.types import OBS_IMAGE, Observation, PolicyOutput

PROMPT = "In: What action should the robot take to {}?\nOut:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2's input normalisation
BOS_ID, STOP_ID, FIRST_WORD_ID = 1, 2, 3  # the hashed-prompt layout (Llama's BOS / EOS ids; words from 3 on)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("policy kind 'oft' needs transformers: pip install 'reinforge[oft]'") from None
    return transformers


def _pretrained(cls: Any, path: str, what: str, **kw: Any) -> Any:
    try:
        return cls.from_pretrained(path, local_files_only=True, trust_remote_code=False, **kw)
    except OSError as e:
        raise ValueError(f"cannot load the {what} from {path!r} (a local Hugging Face folder): {e}") from None


def _from_saved(cls: Any, folder: Path, what: str) -> Any:
    """A tower built from the config a saved policy keeps of it (its weights come from model.safetensors)."""
    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"the saved policy's {what} config {folder} cannot be read: {e}") from None
    return _build(cls, config)


def _build(cls: Any, config: Any) -> Any:
    """A randomly initialised float32 model of ``config`` (a dtype the config names, e.g. OpenVLA's bfloat16, is not
    followed: precision is the trainer's), through an Auto class's ``from_config`` or the class itself."""
    config.dtype = torch.float32
    return (cls.from_config(config) if hasattr(cls, "from_config") else cls(config)).float()


TOWERS = (("llm", "language model"), ("dino", "DINOv2 encoder"), ("siglip", "SigLIP encoder"))


class FusedProjector(nn.Module):
    """Prismatic's projector for fused (DINOv2 + SigLIP) patch features: d_vis -> 4 d_vis -> d -> d."""

    def __init__(self, d_vis: int, d: int):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_vis, 4 * d_vis), nn.Linear(4 * d_vis, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class ProprioProjector(nn.Module):
    """OFT's proprio projector: the normalised state -> one token."""

    def __init__(self, state_dim: int, d: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(state_dim, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ResidualMLPBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    """OFT's L1-regression head: per chunk step, the D action tokens' hidden states (D * d) -> D actions."""

    def __init__(self, d_in: int, d: int, d_out: int, blocks: int = 2):
        super().__init__()
        self.layer_norm1, self.fc1 = nn.LayerNorm(d_in), nn.Linear(d_in, d)
        self.mlp_resnet_blocks = nn.ModuleList(ResidualMLPBlock(d) for _ in range(blocks))
        self.layer_norm2, self.fc2 = nn.LayerNorm(d), nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class OFTPolicy(TokenPolicy):
    """``kind: oft``. ``d_model`` is the language model's hidden size.

    A saved oft policy is self-contained: next to its weights it keeps each tower's config (``oft/llm``,
    ``oft/dino``, ``oft/siglip``) and the tokenizer (``oft/tokenizer``), and loading it builds the towers from
    those (``saved``), so the folders named in ``oft_llm`` etc. are needed only to start from them."""

    token_logprobs = True
    builtin_backbone = False

    def __init__(self, config: PolicyConfig, normalizer: Normalizer | None = None, saved: Path | None = None):
        Policy.__init__(self, config, normalizer)  # normalisation, value head; no built-in backbone
        tf = _transformers()
        c = config
        saved = Path(saved) / "oft" if saved is not None and (Path(saved) / "oft").is_dir() else None
        tiny = saved is None and not (c.oft_dinov2 and c.oft_siglip)
        if tiny:  # the random towers see the env's images as they are
            H, W = c.image_size
            if H != W or H % c.oft_patch_size:
                raise ValueError(f"tiny oft towers need square images whose side oft_patch_size={c.oft_patch_size} "
                                 f"divides, got image_size {c.image_size}")

        def tower(name: str, cls: Any, source: str, what: str, tiny_config: Any) -> Any:
            """The saved policy's tower (from its kept config), else the named local folder, else tiny random."""
            if saved is not None:
                return _from_saved(cls, saved / name, what)
            return _pretrained(cls, source, what, dtype=torch.float32) if source else _build(cls, tiny_config)

        self.llm = tower("llm", tf.AutoModelForCausalLM, c.oft_llm, "language model", tf.LlamaConfig(
            vocab_size=c.oft_vocab_size, hidden_size=c.d_model, intermediate_size=4 * c.d_model,
            num_hidden_layers=c.oft_llm_layers, num_attention_heads=c.heads, num_key_value_heads=c.heads,
            max_position_embeddings=c.oft_max_tokens, tie_word_embeddings=False))
        llm_cfg = self.llm.config
        if llm_cfg.hidden_size != c.d_model:
            raise ValueError(f"policy d_model={c.d_model} must equal the language model's hidden size "
                             f"{llm_cfg.hidden_size}")
        end = c.oft_action_token_end or llm_cfg.vocab_size
        if not c.num_bins + 8 <= end <= llm_cfg.vocab_size:
            raise ValueError(f"the action tokens (oft_action_token_end={c.oft_action_token_end}, num_bins="
                             f"{c.num_bins}) must lie inside the language model's vocabulary of "
                             f"{llm_cfg.vocab_size} above the special tokens")
        self.register_buffer("action_token_ids", end - 1 - torch.arange(c.num_bins), persistent=False)
        vision = {"hidden_size": c.oft_vision_dim, "num_hidden_layers": c.oft_vision_layers, "num_attention_heads": 2,
                  "intermediate_size": 4 * c.oft_vision_dim, "patch_size": c.oft_patch_size,
                  "image_size": c.image_size[0]}
        self.dino = tower("dino", tf.AutoModel, c.oft_dinov2, "DINOv2 encoder", tf.Dinov2WithRegistersConfig(
            num_register_tokens=c.oft_registers, **{k: v for k, v in vision.items() if k != "intermediate_size"}))
        self.siglip = tower("siglip", tf.SiglipVisionModel, c.oft_siglip, "SigLIP encoder",
                            tf.SiglipVisionConfig(vision_use_head=False, hidden_act="gelu", **vision))
        grids = [(t.config.image_size // t.config.patch_size) for t in (self.dino, self.siglip)]
        if grids[0] != grids[1]:
            raise ValueError(f"the DINOv2 and SigLIP towers must cut images into the same patch grid to fuse them, "
                             f"got {grids[0]}^2 and {grids[1]}^2 patches")
        for t in (self.dino, self.siglip):
            n = t.config.num_hidden_layers
            if not -n - 1 <= c.oft_feature_layer <= n:
                raise ValueError(f"oft_feature_layer={c.oft_feature_layer} does not index the {n + 1} hidden states "
                                 f"of the {n}-layer {type(t).__name__}")
        d_vis = self.image_feature_dim
        d = c.d_model
        self.projector = FusedProjector(d_vis, d)
        self.proprio = ProprioProjector(c.state_dim, d) if c.oft_proprio else None
        self.view_embed = nn.Parameter(torch.zeros(c.num_views, d))
        if c.oft_action_head == "l1":  # OFT's continuous head over each chunk step's D action hidden states
            self.l1_head = MLPResNet(c.action_dim * d, d, c.action_dim)
        if saved is not None and (saved / "tokenizer").is_dir():
            self.tokenizer = _pretrained(tf.AutoTokenizer, str(saved / "tokenizer"), "tokenizer")
        elif c.oft_tokenizer:
            self.tokenizer = _pretrained(tf.AutoTokenizer, c.oft_tokenizer, "tokenizer")
        else:  # the prompt's words hash into the ids between the special tokens and the action tokens
            self.tokenizer = HashTokenizer(end - c.num_bins - FIRST_WORD_ID + 1, c.oft_max_prompt)
        if isinstance(self.tokenizer, HashTokenizer):
            self.bos_id, self.stop_id = BOS_ID, STOP_ID
        else:
            if self.tokenizer.pad_token is None:  # any id will do: padded positions are masked out
                self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
            self.bos_id, self.stop_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
            if self.bos_id is None or self.stop_id is None:
                raise ValueError("the oft tokenizer needs BOS and EOS tokens (OpenVLA's sequence starts with BOS and "
                                 "ends with EOS as its stop token)")
        self.register_buffer("prompt_end_ids", torch.tensor(c.oft_prompt_end_ids, dtype=torch.long), persistent=False)
        self.register_buffer("dino_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("dino_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def write_files(self, folder: Path) -> None:
        super().write_files(folder)
        for name, _ in TOWERS:
            getattr(self, name).config.save_pretrained(folder / "oft" / name)
        if not isinstance(self.tokenizer, HashTokenizer):
            self.tokenizer.save_pretrained(folder / "oft" / "tokenizer")

    # ------------------------------------------------------------ bins (OpenVLA's action tokenizer)

    def to_bins(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised actions -> bin b (action token end-1-b): ``np.digitize`` on num_bins uniform edges, minus 1."""
        edges = torch.linspace(-1, 1, self.config.num_bins, device=x.device)
        return (torch.bucketize(x.clamp(-1, 1).contiguous(), edges, right=True) - 1).clamp(0, self.config.num_bins - 1)

    def from_bins(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bin b -> the centre of edges b, b+1 (the last bin, reached only at exactly +1, shares the last centre)."""
        n = self.config.num_bins - 1
        return -1 + (2 * tokens.clamp(0, n - 1).float() + 1) / n

    # ------------------------------------------------------------ the forward pass

    @property
    def image_feature_dim(self) -> int:
        return self.dino.config.hidden_size + self.siglip.config.hidden_size

    def vision_parameters(self) -> list[nn.Parameter]:
        return [*self.dino.parameters(), *self.siglip.parameters()]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._vision(images.to(self.action_low.device))

    def _tower(self, tower: Any, x: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float
               ) -> torch.Tensor:
        """Patch tokens (B', N, d) of one tower at ``oft_feature_layer`` for images x in [0, 1]."""
        size = tower.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        out = tower(pixel_values=(x - mean) / std, output_hidden_states=True)
        h = out.hidden_states[self.config.oft_feature_layer]
        prefix = h.shape[1] - (size // tower.config.patch_size) ** 2  # CLS and register tokens
        return h[:, prefix:]

    def _vision(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) uint8 -> (B, V * N, d_dino + d_siglip) fused patch features."""
        B, V = images.shape[:2]
        x = images.flatten(0, 1).float() / 255.0
        if self.config.oft_center_crop > 0:  # OFT's LIBERO models trained on random crops see the centre crop
            H, W = x.shape[-2:]
            side = self.config.oft_center_crop ** 0.5
            h, w = max(1, round(H * side)), max(1, round(W * side))
            top, left = (H - h) // 2, (W - w) // 2
            x = F.interpolate(x[..., top:top + h, left:left + w], size=(H, W), mode="bilinear", align_corners=False)
        feats = torch.cat([self._tower(self.dino, x, self.dino_mean, self.dino_std),
                           self._tower(self.siglip, x, 0.5, 0.5)], -1)
        return feats.view(B, V * feats.shape[1], -1)

    def _prompt(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) prompt token ids without BOS, left-padded, and the padding mask (True = padding)."""
        prompts = [PROMPT.format(t.lower()) for t in texts]  # as OpenVLA-OFT: lower-cased, nothing stripped
        if isinstance(self.tokenizer, HashTokenizer):
            ids, pad = self.tokenizer(prompts, device)
            ids = torch.where(pad, ids, ids + FIRST_WORD_ID - 1)
        else:
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.config.oft_max_prompt, add_special_tokens=False)
            ids, pad = enc["input_ids"].to(device), ~enc["attention_mask"].bool().to(device)
        order = torch.argsort((~pad).long(), dim=1, stable=True)  # padding first, the words in order after it
        return ids.gather(1, order), pad.gather(1, order)

    def features(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, H, D, num_bins) of the action tokens and value (B,) of one bidirectional forward pass."""
        if self.config.oft_action_head != "tokens":
            raise ValueError(self._deterministic)
        h, value = self.hidden(obs)
        c = self.config
        head = self.llm.get_output_embeddings()
        logits = F.linear(h, head.weight[self.action_token_ids],
                          None if head.bias is None else head.bias[self.action_token_ids])
        return logits.view(h.shape[0], c.horizon, c.action_dim, c.num_bins), value

    def hidden(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The language model's last hidden states that predict the H x D action tokens (B, H * D, d_model: one
        position before each placeholder) and the value (B,) of one bidirectional forward pass."""
        images, texts, state = self.prepare(obs)
        c, dev = self.config, self.action_low.device
        feats = images if OBS_IMAGE not in obs else self._vision(images)  # cached features arrive projected-free
        B = feats.shape[0]
        n_per_view = feats.shape[1] // c.num_views
        vis = self.projector(feats) + self.view_embed.repeat_interleave(n_per_view, 0)
        ids, pad = self._prompt(texts, dev)
        embed = self.llm.get_input_embeddings()
        n_act = c.horizon * c.action_dim
        special = torch.tensor([self.bos_id, self.stop_id], device=dev)
        bos, stop = embed(special).to(vis.dtype).unsqueeze(0).expand(B, -1, -1).split(1, dim=1)
        parts = [bos, vis, *([self.proprio(state)[:, None]] if self.proprio is not None else []), embed(ids),
                 embed(self.prompt_end_ids)[None].expand(B, -1, -1),
                 torch.zeros(B, n_act, c.d_model, device=dev, dtype=vis.dtype), stop]
        x = torch.cat(parts, 1)
        n_pre = 1 + vis.shape[1] + (self.proprio is not None)
        keep = torch.cat([torch.ones(B, n_pre, dtype=torch.bool, device=dev), ~pad,
                          torch.ones(B, x.shape[1] - n_pre - pad.shape[1], dtype=torch.bool, device=dev)], 1)
        if x.shape[1] > self.llm.config.max_position_embeddings:
            raise ValueError(f"the sequence has {x.shape[1]} tokens, more than the language model's "
                             f"{self.llm.config.max_position_embeddings} positions: raise oft_max_tokens or use "
                             "fewer views / larger patches")
        # bidirectional: every token attends to every kept token (a 4-D additive mask is used as given)
        mask = torch.zeros(B, 1, x.shape[1], x.shape[1], dtype=x.dtype, device=dev)
        mask = mask.masked_fill(~keep[:, None, None, :], torch.finfo(x.dtype).min)
        pos = (keep.long().cumsum(1) - 1).clamp(min=0)
        h = self.llm.model(inputs_embeds=x, attention_mask=mask, position_ids=pos).last_hidden_state
        context = h[:, : -n_act - 1]  # everything before the placeholders
        return h[:, -n_act - 2:-2], self.value(masked_mean(context, ~keep[:, : -n_act - 1]))

    # ------------------------------------------------------------ the L1-regression head (oft_action_head: l1)

    _deterministic = ("an oft policy with the L1-regression head (policy.oft_action_head=l1) is deterministic: it "
                      "has no log-probs for RL; train it with SFT and evaluate it, or use oft_action_head=tokens")

    @property
    def stochastic(self) -> bool:
        return self.config.oft_action_head == "tokens"

    def regress(self, obs: Observation) -> torch.Tensor:
        """Normalised actions (B, H, D) from the L1 head."""
        h, _ = self.hidden(obs)
        c = self.config
        return self.l1_head(h.reshape(h.shape[0], c.horizon, c.action_dim * c.d_model))

    def sft_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.config.oft_action_head == "tokens":
            return super().sft_loss(batch)
        pred = self.regress(batch)
        target = self.normalize_actions(batch["actions"].to(pred.device)).clamp(-1, 1)
        mask = self.loss_mask(batch)
        loss = ((pred - target).abs() * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"sft/loss": float(loss.detach()), "sft/l1": float(loss.detach())}

    @torch.no_grad()
    def act(self, obs: Observation, *, mode: str = "greedy", temperature: float = 1.0,
            generator: torch.Generator | None = None, logprob: str = "chunk") -> PolicyOutput:
        if self.config.oft_action_head == "tokens":
            return super().act(obs, mode=mode, temperature=temperature, generator=generator, logprob=logprob)
        if mode != "greedy":
            raise ValueError(self._deterministic)
        pred = self.regress(obs)  # not clipped: OFT's head extrapolates past the q01 / q99 bounds
        actions = self.to_native(self.unnormalize_actions(pred, clip=False))
        zeros = torch.zeros(pred.shape[0], device=pred.device)
        return PolicyOutput(actions=actions[:, : self.config.execute_steps], log_prob=zeros,
                            value=self.predict_value(obs), replay={})

    @torch.no_grad()
    def predict_value(self, obs: Observation) -> torch.Tensor | None:
        return self.hidden(obs)[1]

    @torch.no_grad()
    def pooled_features(self, obs: Observation) -> torch.Tensor:
        images, texts, state = self.prepare(obs)
        feats = images if OBS_IMAGE not in obs else self._vision(images)
        return F.normalize(self.projector(feats).mean(1), dim=-1)
