"""Flow-matching VLA (pi0, arXiv 2410.24164) with the two RL likelihoods of pi_RL (arXiv 2510.25889;
METHODS.md section 2).

Convention: x_t = t * eps + (1 - t) * a; t = 1 is noise, t = 0 the action; the action expert predicts the
velocity v(x_t, t, obs) with target u = eps - a. Inference integrates t_k = linspace(1, 1/K, K), then 0.

- ODE (evaluation): x_{k+1} = x_k - delta_k * v.
- Flow-SDE (hybrid ODE-SDE): one step k* per sample is the SDE transition
  mean = x - delta v - (sigma^2 delta / (2 t)) (x + (1 - t) v),  std = sqrt(delta) sigma,
  sigma(t) = a sqrt(t / (1 - t)) (t_1 in the denominator at t = 1); every other step is the ODE step. The
  action's log-prob is the Gaussian log-density of that one transition.
- Flow-Noise: every step is x_{k+1} ~ N(x - delta v, sigma_theta^2) with sigma from a learned head bounded
  to [s_min, s_max]; the chain's log-likelihood [log N(x_0; 0, I), log p(x_1|x_0), ...] is AVERAGED over
  its K + 1 terms, as in pi_RL's reference (``logprob_reduction: mean``), or SUMMED, as VLA-RFT does
  (``logprob_reduction: sum``; the ratio's log then moves K + 1 times as far for the same change, so the
  clip binds sooner).

Log-probs sum over the executed entries only: the first ``execute_steps`` steps and the real action dims.
The action expert is a transformer decoder over the H noisy action tokens that cross-attends to the
backbone's fused tokens, so the backbone runs once per observation and only the expert runs K times.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from reinforge.policies.backbone import masked, masked_mean
from reinforge.policies.base import LogProb, Normalizer, Policy, PolicyConfig
from reinforge.types import Observation, PolicyOutput

LOG_2PI = math.log(2 * math.pi)
SAMPLER_IDS = {"sde": 0, "noise": 1}


# ---------------------------------------------------------------- pure functions

def time_grid(num_steps: int, device: torch.device | None = None) -> torch.Tensor:
    """(K + 1,) t_k = linspace(1, 1/K, K) followed by 0."""
    K = num_steps
    return torch.cat([torch.linspace(1.0, 1.0 / K, K), torch.zeros(1)]).to(device)


def sde_sigma(grid: torch.Tensor, noise_level: float) -> torch.Tensor:
    """(K,) sigma(t_k) = a * sqrt(t / (1 - t)), using t_1 in the denominator where t = 1."""
    t = grid[:-1]
    denom_t = torch.where(t >= 1.0, grid[1].expand_as(t), t)
    return noise_level * torch.sqrt(t / (1 - denom_t))


def ode_step(x: torch.Tensor, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x_{k+1} = x_k - delta * v. ``delta`` broadcasts against x."""
    return x - delta * v


def flow_sde_step(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, delta: torch.Tensor, sigma: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the Flow-SDE transition from x at time t over a step delta (all broadcast)."""
    mean = x - delta * v - (sigma**2 * delta / (2 * t)) * (x + (1 - t) * v)
    return mean, torch.sqrt(delta) * sigma


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mean, std)."""
    return -torch.log(std) - 0.5 * LOG_2PI - 0.5 * ((x - mean) / std) ** 2


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Element-wise entropy 0.5 * log(2 pi e std^2)."""
    return 0.5 * (LOG_2PI + 1) + torch.log(std)


def bounded_sigma(raw: torch.Tensor, s_min: float, s_max: float) -> torch.Tensor:
    """Flow-Noise's bounded std: logvar = log s_min^2 + (log s_max^2 - log s_min^2) (tanh(raw) + 1) / 2."""
    lo, hi = 2 * math.log(s_min), 2 * math.log(s_max)
    logvar = lo + (hi - lo) * (torch.tanh(raw) + 1) / 2
    return torch.exp(logvar / 2)


def _sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    ang = t[:, None] * freqs[None] * 100.0
    return torch.cat([ang.sin(), ang.cos()], -1)


# ---------------------------------------------------------------- modules

class ActionExpert(nn.Module):
    """Velocity (and Flow-Noise sigma) of H noisy action tokens, cross-attending to the backbone tokens."""

    def __init__(self, d_model: int, heads: int, layers: int, horizon: int, action_dim: int, dropout: float):
        super().__init__()
        self.inp = nn.Linear(action_dim, d_model)
        self.time = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.pos = nn.Parameter(torch.randn(horizon, d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(d_model)
        self.velocity = nn.Linear(d_model, action_dim)
        self.noise = nn.Linear(d_model, action_dim)  # Flow-Noise std head, on detached features: the
        # entropy and std gradients shape the exploration noise, not the velocity field
        self.d_model = d_model

    def forward(self, x: torch.Tensor, t: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor,
                memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, H, D), t (N,), memory (N, T, d) -> velocity (N, H, D), hidden (N, H, d). ``memory_kv``
        (from ``project_memory``) reuses the cross-attention keys and values of ``memory`` across calls."""
        h = self.inp(x) + self.pos + self.time(_sinusoidal(t, self.d_model))[:, None]
        if memory_kv is None:
            h = self.decoder(h, memory, memory_key_padding_mask=memory_pad)
        else:
            h = self._decode_cached(h, memory_kv, memory_pad)
        h = self.norm(h)
        return self.velocity(h), h

    def project_memory(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, the cross-attention keys and values (N, heads, T, d / heads) of ``memory``: the
        denoising loop calls the expert K times on the same memory, so they are projected once."""
        out = []
        for layer in self.decoder.layers:
            mha = layer.multihead_attn
            d = mha.embed_dim
            w, b = mha.in_proj_weight, mha.in_proj_bias
            k = F.linear(memory, w[d: 2 * d], b[d: 2 * d])
            v = F.linear(memory, w[2 * d:], b[2 * d:])
            out.append((self._heads(k, mha.num_heads), self._heads(v, mha.num_heads)))
        return out

    @staticmethod
    def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
        N, T, d = x.shape
        return x.view(N, T, heads, d // heads).transpose(1, 2)

    def _decode_cached(self, h: torch.Tensor, memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
                       memory_pad: torch.Tensor) -> torch.Tensor:
        """The decoder (pre-norm layers, no dropout: inference only) with precomputed cross-attention K/V."""
        if self.training:
            raise RuntimeError("cached cross-attention is an inference path: call it in eval mode")
        keep = ~memory_pad[:, None, None, :]  # (N, 1, 1, T): True = attend
        for layer, (k, v) in zip(self.decoder.layers, memory_kv):
            y = layer.norm1(h)
            h = h + layer.self_attn(y, y, y, need_weights=False)[0]
            mha = layer.multihead_attn
            d, heads = mha.embed_dim, mha.num_heads
            q = self._heads(F.linear(layer.norm2(h), mha.in_proj_weight[:d], mha.in_proj_bias[:d]), heads)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            h = h + mha.out_proj(a.transpose(1, 2).reshape(h.shape))
            h = h + layer.linear2(layer.activation(layer.linear1(layer.norm3(h))))
        return h


class FlowPolicy(Policy):
    """Flow-matching action expert on the shared backbone; ODE / Flow-SDE / Flow-Noise sampling."""

    def __init__(self, config: PolicyConfig, normalizer: Normalizer | None = None):
        super().__init__(config, normalizer)
        c = config
        self.expert = ActionExpert(c.d_model, c.heads, c.expert_layers, c.horizon, c.action_dim, c.dropout)

    cacheable_prefix = True  # the action expert cross-attends to the fused tokens only
    unbounded_actions = True  # a flow regresses the normalised actions: standardised ones are fine
    # dims the expert denoises beyond the action's (LeRobot pads actions to max_action_dim and integrates the padding
    # from noise too): drawn as noise, always moved by the ODE step, never scored, never acted on
    latent_dims: int = 0

    def _full(self, mask: torch.Tensor) -> torch.Tensor:
        """An (…, D) entry mask extended with False over the latent dims."""
        return F.pad(mask, (0, self.latent_dims), value=False) if self.latent_dims else mask

    def _noise_std(self, h: torch.Tensor) -> torch.Tensor:
        """Flow-Noise's std (…, D), extended with ones over the latent dims (which take the ODE step)."""
        c = self.config
        std = bounded_sigma(self.expert.noise(h.detach()), c.noise_min, c.noise_max)
        return F.pad(std, (0, self.latent_dims), value=1.0) if self.latent_dims else std

    def _ode_on_latent(self, x: torch.Tensor, ode: torch.Tensor) -> torch.Tensor:
        """x with the latent dims replaced by the ODE step's."""
        if not self.latent_dims:
            return x
        return torch.cat([x[..., : self.config.action_dim], ode[..., self.config.action_dim:]], -1)

    def encode(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        prefix, pad = self.fused(obs)
        return prefix, pad, self.value(masked_mean(prefix, pad))

    @torch.no_grad()
    def predict_value(self, obs: Observation) -> torch.Tensor | None:
        return self.encode(obs)[2]

    def _grid(self, device) -> torch.Tensor:
        return time_grid(self.config.num_steps, device)

    def sft_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss mean ||v - (eps - a)||^2 over unpadded steps and real action dims."""
        prefix, pad, _ = self.encode(batch)
        mask = self.loss_mask(batch)  # unpadded steps x the dims (unified: the embodiment's slots) that count
        # padded steps and unfilled slots carry no information: zero them so they cannot leak into the inputs
        a = self.normalize_actions(batch["actions"].to(prefix.device))
        a = torch.where(mask, a, torch.zeros_like(a))
        B = a.shape[0]
        if self.config.time_beta:
            t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(a.device) * 0.999 + 0.001
        else:
            t = torch.rand(B, device=a.device) * 0.999 + 0.001
        eps = torch.randn_like(a)
        x_t = t[:, None, None] * eps + (1 - t[:, None, None]) * a
        v, _ = self.expert(x_t, t, prefix, pad)
        err = masked((v - (eps - a)) ** 2, mask).sum() / mask.sum().clamp(min=1)
        return err, {"sft/loss": float(err.detach())}

    @torch.no_grad()
    def act(self, obs: Observation, *, mode: Literal["sample", "greedy"] = "greedy", temperature: float = 1.0,
            sampler: Literal["sde", "noise"] | None = None, generator: torch.Generator | None = None,
            logprob: LogProb = "chunk") -> PolicyOutput:
        """Denoise an action chunk. ``greedy``: deterministic ODE from the initial noise. ``sample``:
        Flow-SDE or Flow-Noise (``sampler``, default from the config) with the chain kept for ``evaluate``."""
        if mode not in ("sample", "greedy"):
            raise ValueError(f"mode must be 'sample' or 'greedy', got {mode!r}")
        self.check_logprob(logprob)
        sampler = sampler or self.config.flow_sampler
        if sampler not in SAMPLER_IDS:
            raise ValueError(f"sampler must be 'sde' or 'noise', got {sampler!r}")
        c = self.config
        prefix, pad, value = self.encode(obs)
        B, dev = prefix.shape[0], prefix.device
        grid = self._grid(dev)
        K = c.num_steps

        def randn(*shape):
            return torch.randn(*shape, generator=generator, device=dev) if generator is not None else torch.randn(
                *shape, device=dev)

        x = randn(B, c.horizon, c.action_dim + self.latent_dims)
        chain = [x]
        mask = self._full(self.entry_mask(obs))
        log_prob = torch.zeros(B, device=dev)
        k_star = torch.randint(0, K, (B,), generator=generator, device=dev) if generator is not None else \
            torch.randint(0, K, (B,), device=dev)
        if mode == "sample" and sampler == "noise":
            log_prob = masked(gaussian_log_prob(x, torch.zeros_like(x), torch.ones_like(x)), mask).sum((1, 2))
        sig = sde_sigma(grid, c.noise_level)
        kv = None if self.expert.training else self.expert.project_memory(prefix)
        for k in range(K):
            t, delta = grid[k].expand(B), grid[k] - grid[k + 1]
            v, h = self.expert(x, t, prefix, pad, kv)
            ode = ode_step(x, v, delta)
            if mode == "greedy":
                x = ode
            elif sampler == "sde":
                mean, std = flow_sde_step(x, v, grid[k], delta, sig[k])
                x_sde = mean + std * randn(*x.shape)
                here = k_star == k
                lp = masked(gaussian_log_prob(x_sde, mean, std.expand_as(mean)), mask).sum((1, 2))
                log_prob = torch.where(here, lp, log_prob)
                x = self._ode_on_latent(torch.where(here[:, None, None], x_sde, ode), ode)
            else:
                std = self._noise_std(h)
                x = self._ode_on_latent(ode + std * randn(*x.shape), ode)
                log_prob = log_prob + masked(gaussian_log_prob(x, ode, std), mask).sum((1, 2))
            chain.append(x)
        if mode == "sample" and sampler == "noise":
            log_prob = self._reduce_chain(log_prob)
        actions = self.to_native(self.unnormalize_actions(x[..., : c.action_dim])[:, : c.execute_steps])
        if mode == "greedy":
            return PolicyOutput(actions=actions, log_prob=None, value=value, replay={})
        replay = {"chain": torch.stack(chain, 1), "k_star": k_star,
                  "sampler": torch.full((B,), SAMPLER_IDS[sampler], device=dev)}
        return PolicyOutput(actions=actions, log_prob=log_prob, value=value, replay=replay)

    def evaluate(self, obs: Observation, replay: dict[str, torch.Tensor], *, logprob: LogProb = "chunk"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Recompute the log-prob (B,) of the stored denoising chain, the entropy (B,) and the value."""
        self.check_logprob(logprob)
        prefix, pad, value = self.encode(obs)
        chain = replay["chain"].to(prefix.device)
        sampler = int(replay["sampler"][0])
        if not bool((replay["sampler"] == sampler).all()):
            raise ValueError("a replay batch mixes Flow-SDE and Flow-Noise chains; evaluate them separately")
        mask = self._full(self.entry_mask(obs))
        if sampler == SAMPLER_IDS["sde"]:
            lp, ent = self._sde_log_prob(prefix, pad, chain, replay["k_star"].to(prefix.device), mask)
        else:
            lp, ent = self._noise_log_prob(prefix, pad, chain, mask)
        return lp, ent, value

    def _sde_log_prob(self, prefix, pad, chain, k_star, mask):
        c = self.config
        B = chain.shape[0]
        grid = self._grid(prefix.device)
        ar = torch.arange(B, device=prefix.device)
        x, x_next = chain[ar, k_star], chain[ar, k_star + 1]
        t = grid[k_star]
        delta = (grid[k_star] - grid[k_star + 1])[:, None, None]
        sigma = sde_sigma(grid, c.noise_level)[k_star][:, None, None]
        v, _ = self.expert(x, t, prefix, pad)
        mean, std = flow_sde_step(x, v, t[:, None, None], delta, sigma)
        std = std.expand_as(mean)
        lp = masked(gaussian_log_prob(x_next, mean, std), mask).sum((1, 2))
        return lp, masked(gaussian_entropy(std), mask).sum((1, 2))

    def _reduce_chain(self, total: torch.Tensor) -> torch.Tensor:
        """The Flow-Noise chain's log-likelihood from the sum of its K + 1 terms: their mean or their sum."""
        return total / (self.config.num_steps + 1) if self.config.logprob_reduction == "mean" else total

    def _noise_log_prob(self, prefix, pad, chain, mask):
        c = self.config
        B, K = chain.shape[0], c.num_steps
        grid = self._grid(prefix.device)
        xs = chain[:, :K].flatten(0, 1)  # (B*K, H, D)
        t = grid[:K].repeat(B)
        delta = (grid[:K] - grid[1:]).repeat(B)[:, None, None]
        mem = prefix.repeat_interleave(K, 0)
        mem_pad = pad.repeat_interleave(K, 0)
        v, h = self.expert(xs, t, mem, mem_pad)
        mean = ode_step(xs, v, delta)
        std = self._noise_std(h)
        step_mask = mask.repeat_interleave(K, 0) if mask.dim() == 3 else mask
        steps = masked(gaussian_log_prob(chain[:, 1:].flatten(0, 1), mean, std), step_mask).sum((1, 2)).view(B, K)
        x0 = chain[:, 0]
        first = masked(gaussian_log_prob(x0, torch.zeros_like(x0), torch.ones_like(x0)), mask).sum((1, 2))
        lp = self._reduce_chain(first + steps.sum(1))
        ent = masked(gaussian_entropy(std), step_mask).sum((1, 2)).view(B, K).mean(1)
        return lp, ent
