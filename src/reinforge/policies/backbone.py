"""The shared vision-language-state backbone of reinforge's VLA policies.

- Vision: a small strided CNN per camera view (weights shared across views) down to a grid of tokens
  (4x4 per 64x64 view by default), plus learned view and 2-D position embeddings.
- Language: a hashed word tokenizer (open vocabulary, no download), embeddings and transformer layers.
- State: a linear projection of the standardised proprio state into one token.
- Fusion: a transformer over [image tokens, language tokens, state token, extra tokens] with
  bidirectional attention; policies append their own query tokens (the token head's action
  placeholders) as ``extra`` tokens.
"""

from __future__ import annotations

import math
import re
import zlib

import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+")


class HashTokenizer:
    """Lower-cases, splits into words and hashes each word into ``vocab_size - 1`` buckets (0 = padding)."""

    def __init__(self, vocab_size: int = 2048, max_words: int = 32):
        self.vocab_size, self.max_words = vocab_size, max_words
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            words = _WORD.findall(text.lower())[: self.max_words]
            self._cache[text] = [1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in words] or [1]
        return self._cache[text]

    def __call__(self, texts: list[str], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) int64 token ids and (B, L) bool padding mask (True = padding)."""
        rows = [self.ids(t) for t in texts]
        L = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids.to(device), (ids == 0).to(device)


def _block(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2), nn.GroupNorm(8, c_out), nn.GELU())


class VisionEncoder(nn.Module):
    """(B, V, 3, H, W) uint8 -> (B, V * h * w, d) tokens with view and position embeddings."""

    def __init__(self, d_model: int, channels: tuple[int, ...], num_views: int, image_size: tuple[int, int]):
        super().__init__()
        layers, c = [], 3
        for i, ch in enumerate(channels):
            layers.append(_block(c, ch, 5 if i == 0 else 3))
            c = ch
        layers.append(nn.Conv2d(c, d_model, 3, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        stride = 2 ** (len(channels) + 1)
        self.grid = (math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride))
        n = self.grid[0] * self.grid[1]
        self.pos = nn.Parameter(torch.randn(1, 1, n, d_model) * 0.02)
        self.view = nn.Parameter(torch.randn(1, num_views, 1, d_model) * 0.02)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)

    @property
    def num_tokens_per_view(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, V = images.shape[:2]
        x = images.flatten(0, 1)
        x = (x.float() / 255.0 - self.mean) / self.std if x.dtype == torch.uint8 else x
        # channels-last convolutions are ~30% faster on CPU (same weights, same results)
        f = self.net(x.contiguous(memory_format=torch.channels_last))  # (B*V, d, h, w)
        f = f.flatten(2).transpose(1, 2).reshape(B, V, -1, f.shape[1])
        return (f + self.pos + self.view).flatten(1, 2)


def transformer(d_model: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class Backbone(nn.Module):
    """Fuses camera views, the instruction and the proprio state into a token sequence."""

    def __init__(self, *, d_model: int, heads: int, fusion_layers: int, lang_layers: int, vocab_size: int,
                 max_words: int, channels: tuple[int, ...], num_views: int, image_size: tuple[int, int],
                 state_dim: int, dropout: float = 0.0):
        super().__init__()
        self.vision = VisionEncoder(d_model, channels, num_views, image_size)
        self.tokenizer = HashTokenizer(vocab_size, max_words)
        self.word = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.word_pos = nn.Parameter(torch.randn(1, max_words, d_model) * 0.02)
        self.lang = transformer(d_model, heads, lang_layers, dropout) if lang_layers > 0 else None
        self.state = nn.Linear(state_dim, d_model)
        self.type_emb = nn.Parameter(torch.randn(4, d_model) * 0.02)  # image, language, state, extra
        self.fusion = transformer(d_model, heads, fusion_layers, dropout)
        self.norm = nn.LayerNorm(d_model)
        self._lang_cache: dict[tuple[str, ...], torch.Tensor] = {}

    def encode_language(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids, pad = self.tokenizer(texts, device)
        x = self.word(ids) + self.word_pos[:, : ids.shape[1]]
        if self.lang is not None:
            x = self.lang(x, src_key_padding_mask=pad)
        return x, pad

    def forward(self, images: torch.Tensor, texts: list[str], state: torch.Tensor,
                extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused tokens (B, T, d) and their padding mask (B, T). ``extra`` (B, E, d) tokens go last.

        ``images`` are camera images (B, V, 3, H, W) or the vision encoder's tokens (B, N, d) computed
        earlier (a frozen vision encoder's cached features)."""
        B = images.shape[0]
        img = (self.vision(images) if images.dim() == 5 else images) + self.type_emb[0]
        lang, lang_pad = self.encode_language(texts, images.device)
        lang = lang + self.type_emb[1]
        st = self.state(state)[:, None] + self.type_emb[2]
        parts = [img, lang, st]
        pads = [torch.zeros(B, img.shape[1], dtype=torch.bool, device=img.device), lang_pad,
                torch.zeros(B, 1, dtype=torch.bool, device=img.device)]
        if extra is not None:
            parts.append(extra + self.type_emb[3])
            pads.append(torch.zeros(B, extra.shape[1], dtype=torch.bool, device=img.device))
        x, pad = torch.cat(parts, 1), torch.cat(pads, 1)
        return self.norm(self.fusion(x, src_key_padding_mask=pad)), pad


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` holds, 0 elsewhere: a NaN or inf in a masked-out entry cannot leak into a sum (as it
    would through ``x * mask``)."""
    keep = torch.broadcast_to(mask.to(x.device), x.shape).bool()
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of (B, T, d) ignoring padded positions (B, T)."""
    keep = (~pad).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class ValueHead(nn.Module):
    """A small MLP critic on pooled features; ``detach`` stops its gradient reaching the policy's features."""

    def __init__(self, d_model: int, hidden: int, detach: bool):
        super().__init__()
        self.detach = detach
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled.detach() if self.detach else pooled).squeeze(-1)
