"""OpenVLA-OFT style token policy built from stock ``transformers`` classes (``kind: oft``; arXiv 2502.19645).

The real architecture, at any size: a ``LlamaForCausalLM`` language model; DINOv2 and SigLIP vision towers
(``Dinov2Model``, ``SiglipVisionModel``) whose patch features are concatenated channel-wise and mapped into the
LLM by an MLP projector; a proprio projector (one state token); H x D zeroed placeholder embeddings, one per
action token, decoded in ONE forward pass with bidirectional attention (a 4-D additive mask, which transformers
uses as given); each placeholder's logits over the last ``num_bins`` vocabulary entries are its 256-bin action
token distribution, as OpenVLA's action tokenizer. (OpenVLA-OFT also has an L1-regression head; it is
deterministic, so RL uses the token head here.)

Sampling, greedy decoding, log-prob replay (chunk / token level) and the SFT loss are the built-in token
policy's (``TokenPolicy``): only the forward pass differs. Tiny random configs build offline; real weights load
from local folders (``oft_llm``, ``oft_dinov2``, ``oft_siglip``, ``oft_tokenizer``: HF-format folders, read with
``local_files_only=True`` and without remote code).
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


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError("policy kind 'oft' needs transformers: pip install 'reinforge[oft]'") from None
    return transformers


def _pretrained(cls: Any, path: str, what: str) -> Any:
    try:
        return cls.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except OSError as e:
        raise ValueError(f"cannot load the {what} from {path!r} (a local Hugging Face folder): {e}") from None


def _from_saved(cls: Any, folder: Path, what: str) -> Any:
    """A tower built from the config a saved policy keeps of it (its weights come from model.safetensors)."""
    try:
        return cls(cls.config_class.from_pretrained(folder, local_files_only=True))
    except OSError as e:
        raise ValueError(f"the saved policy's {what} config {folder} cannot be read: {e}") from None


TOWERS = (("llm", "language model"), ("dino", "DINOv2 encoder"), ("siglip", "SigLIP encoder"))


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
        H, W = c.image_size
        saved = Path(saved) / "oft" if saved is not None and (Path(saved) / "oft").is_dir() else None
        def tower(name: str, cls: Any, source: str, what: str, tiny: Any) -> Any:
            """The saved policy's tower (from its kept config), else the named local folder, else tiny random."""
            if saved is not None:
                return _from_saved(cls, saved / name, what)
            return _pretrained(cls, source, what) if source else cls(tiny)

        self.llm = tower("llm", tf.LlamaForCausalLM, c.oft_llm, "language model", tf.LlamaConfig(
            vocab_size=c.oft_vocab_size, hidden_size=c.d_model, intermediate_size=4 * c.d_model,
            num_hidden_layers=c.oft_llm_layers, num_attention_heads=c.heads, num_key_value_heads=c.heads,
            max_position_embeddings=c.oft_max_tokens, tie_word_embeddings=False))
        llm_cfg = self.llm.config
        if llm_cfg.hidden_size != c.d_model:
            raise ValueError(f"policy d_model={c.d_model} must equal the language model's hidden size "
                             f"{llm_cfg.hidden_size}")
        if llm_cfg.vocab_size <= c.num_bins + 2:
            raise ValueError(f"the language model's vocabulary ({llm_cfg.vocab_size}) must exceed num_bins="
                             f"{c.num_bins} + 2 (action bins are its last num_bins entries)")
        vision = {"hidden_size": c.oft_vision_dim, "num_hidden_layers": c.oft_vision_layers, "num_attention_heads": 2,
                  "intermediate_size": 4 * c.oft_vision_dim, "patch_size": c.oft_patch_size}
        self.dino = tower("dino", tf.Dinov2Model, c.oft_dinov2, "DINOv2 encoder",
                          tf.Dinov2Config(image_size=max(H, W), **vision))
        self.siglip = tower("siglip", tf.SiglipVisionModel, c.oft_siglip, "SigLIP encoder",
                            tf.SiglipVisionConfig(image_size=H, **vision))
        d_vis = self.dino.config.hidden_size + self.siglip.config.hidden_size
        d = c.d_model
        self.projector = nn.Sequential(nn.Linear(d_vis, d), nn.GELU(), nn.Linear(d, d))
        self.proprio = nn.Sequential(nn.Linear(c.state_dim, d), nn.GELU(), nn.Linear(d, d))
        self.view_embed = nn.Parameter(torch.zeros(c.num_views, d))
        if c.oft_action_head == "l1":  # OFT's continuous head: an MLP on each action placeholder's hidden state
            self.l1_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        if saved is not None and (saved / "tokenizer").is_dir():
            self.tokenizer = _pretrained(tf.AutoTokenizer, str(saved / "tokenizer"), "tokenizer")
        elif c.oft_tokenizer:
            self.tokenizer = _pretrained(tf.AutoTokenizer, c.oft_tokenizer, "tokenizer")
        else:  # the prompt's words hash into the vocabulary below the action bins
            self.tokenizer = HashTokenizer(llm_cfg.vocab_size - c.num_bins, c.oft_max_prompt)
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def write_files(self, folder: Path) -> None:
        super().write_files(folder)
        for name, _ in TOWERS:
            getattr(self, name).config.save_pretrained(folder / "oft" / name)
        if not isinstance(self.tokenizer, HashTokenizer):
            self.tokenizer.save_pretrained(folder / "oft" / "tokenizer")

    # ------------------------------------------------------------ the forward pass

    @property
    def image_feature_dim(self) -> int:
        return self.dino.config.hidden_size + self.siglip.config.hidden_size

    def vision_parameters(self) -> list[nn.Parameter]:
        return [*self.dino.parameters(), *self.siglip.parameters()]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._vision(images.to(self.action_low.device))

    def _vision(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) uint8 -> (B, V * N, d_dino + d_siglip) fused patch features (DINOv2's CLS and
        register tokens dropped)."""
        B, V = images.shape[:2]
        x = images.flatten(0, 1).float() / 255.0
        x = (x - self.pixel_mean) / self.pixel_std
        dino = self.dino(pixel_values=x).last_hidden_state
        sig = self.siglip(pixel_values=x).last_hidden_state
        dino = dino[:, dino.shape[1] - sig.shape[1]:]  # the patch tokens (same grid as SigLIP's)
        return torch.cat([dino, sig], -1).view(B, V * sig.shape[1], -1)

    def _prompt(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) prompt token ids and padding mask (True = padding)."""
        prompts = [PROMPT.format(t.lower().rstrip(".")) for t in texts]
        if isinstance(self.tokenizer, HashTokenizer):
            return self.tokenizer(prompts, device)
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.config.oft_max_prompt)
        return enc["input_ids"].to(device), ~enc["attention_mask"].bool().to(device)

    def features(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, H, D, num_bins) of the action tokens and value (B,) of one bidirectional forward pass."""
        if self.config.oft_action_head != "tokens":
            raise ValueError(self._deterministic)
        h, value = self.hidden(obs)
        c = self.config
        logits = self.llm.lm_head(h)[..., -c.num_bins:]
        return logits.view(h.shape[0], c.horizon, c.action_dim, c.num_bins), value

    def hidden(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The language model's last hidden states at the H x D action placeholders (B, H * D, d_model) and the
        value (B,) of one bidirectional forward pass."""
        images, texts, state = self.prepare(obs)
        c, dev = self.config, self.action_low.device
        feats = images if OBS_IMAGE not in obs else self._vision(images)  # cached features arrive projected-free
        B = feats.shape[0]
        n_per_view = feats.shape[1] // c.num_views
        vis = self.projector(feats) + self.view_embed.repeat_interleave(n_per_view, 0)
        ids, pad = self._prompt(texts, dev)
        embed = self.llm.get_input_embeddings()
        n_act = c.horizon * c.action_dim
        x = torch.cat([vis, self.proprio(state)[:, None], embed(ids),
                       torch.zeros(B, n_act, c.d_model, device=dev, dtype=vis.dtype)], 1)
        keep = torch.cat([torch.ones(B, vis.shape[1] + 1, dtype=torch.bool, device=dev), ~pad,
                          torch.ones(B, n_act, dtype=torch.bool, device=dev)], 1)
        if x.shape[1] > self.llm.config.max_position_embeddings:
            raise ValueError(f"the sequence has {x.shape[1]} tokens, more than the language model's "
                             f"{self.llm.config.max_position_embeddings} positions: raise oft_max_tokens or use "
                             "fewer views / larger patches")
        # bidirectional: every token attends to every kept token (a 4-D additive mask is used as given)
        mask = torch.zeros(B, 1, x.shape[1], x.shape[1], dtype=x.dtype, device=dev)
        mask = mask.masked_fill(~keep[:, None, None, :], torch.finfo(x.dtype).min)
        pos = (keep.long().cumsum(1) - 1).clamp(min=0)
        out = self.llm.model(inputs_embeds=x, attention_mask=mask, position_ids=pos)
        h = out.last_hidden_state
        return h[:, -n_act:], self.value(masked_mean(h[:, :-n_act], ~keep[:, :-n_act]))

    # ------------------------------------------------------------ the L1-regression head (oft_action_head: l1)

    _deterministic = ("an oft policy with the L1-regression head (policy.oft_action_head=l1) is deterministic: it "
                      "has no log-probs for RL; train it with SFT and evaluate it, or use oft_action_head=tokens")

    @property
    def stochastic(self) -> bool:
        return self.config.oft_action_head == "tokens"

    def regress(self, obs: Observation) -> torch.Tensor:
        """Normalised actions (B, H, D) from the L1 head (one scalar per action placeholder)."""
        h, _ = self.hidden(obs)
        c = self.config
        return self.l1_head(h).view(h.shape[0], c.horizon, c.action_dim)

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
        pred = self.regress(obs).clamp(-1, 1)
        actions = self.to_native(self.unnormalize_actions(pred))
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
