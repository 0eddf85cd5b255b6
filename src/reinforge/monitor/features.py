"""What the monitors see: the frozen policy's summary of its input, and demonstration frames as policy inputs.

Both monitors (``ood.OODDetector``, ``progress.ProgressHead``) read the same feature vector per observation::

    features = concat(policy.pooled_features(obs), state_input)    # (B, d_model + S)

the backbone's fused tokens averaged (images, instruction, state) followed by the policy's own state input
(``policy.prepare(obs)``: ``normalize_state(obs["state"])``, and for a unified-space policy the state scattered into
its slots, with the slots the embodiment does not fill at 0). The policy is never trained here: features are
computed under ``torch.no_grad`` in eval mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from reinforge.data import DemoDataset
from reinforge.policies import Policy
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID, Observation


def feature_dim(policy: Policy) -> int:
    """Length of the monitors' feature vector for ``policy``: d_model + state_dim."""
    return policy.config.d_model + policy.config.state_dim


@torch.no_grad()
def policy_features(policy: Policy, obs: Observation) -> torch.Tensor:
    """(B, d_model + S) float32 on the policy's device: pooled backbone features and the standardised state.

    The policy is switched to eval mode for the call (dropout off) and back to its previous mode after."""
    was_training = policy.training
    policy.eval()
    try:
        pooled = policy.pooled_features(obs).float()
        state = policy.prepare(obs)[2].float()
    finally:
        policy.train(was_training)
    return torch.cat([pooled, state.to(pooled.device)], -1)


def dataset_observations(dataset: DemoDataset, frames: torch.Tensor) -> Observation:
    """Frames (N,) of a demonstration dataset as a policy input batch (images (N, V, 3, H, W) uint8, states
    (N, S), instructions, the dataset's task indices, and ``embodiment_id`` (N,) for a unified dataset)."""
    obs: Observation = {OBS_IMAGE: dataset.images[frames], OBS_STATE: dataset.states[frames],
                        OBS_INSTRUCTION: [dataset.instruction(int(f)) for f in frames],
                        OBS_TASK_ID: dataset.task_index[frames]}
    if dataset.embodiment_id is not None:
        obs["embodiment_id"] = dataset.embodiment_id[frames]
    return obs


def _batches(frames: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(frames), batch_size):
        yield frames[start:start + batch_size]


def dataset_features(policy: Policy, dataset: DemoDataset, frames: torch.Tensor | None = None, *,
                     batch_size: int = 256) -> torch.Tensor:
    """(N, d_model + S) CPU features of ``frames`` (N,) of ``dataset`` (default: every frame)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    c = policy.config
    if dataset.num_views != c.num_views or tuple(dataset.images.shape[-2:]) != tuple(c.image_size):
        raise ValueError(f"dataset {dataset.root} has {dataset.num_views} views of "
                         f"{tuple(dataset.images.shape[-2:])} images but the policy expects {c.num_views} of "
                         f"{tuple(c.image_size)}; fit the monitors on the policy's own training data")
    frames = torch.arange(dataset.num_frames) if frames is None else frames
    parts = [policy_features(policy, dataset_observations(dataset, b)).cpu() for b in _batches(frames, batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, feature_dim(policy))


def split_episodes(num_episodes: int, heldout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of episode ids 0..E-1 into (fit, held-out), each sorted and non-empty; held-out gets
    ``round(heldout_fraction * E)`` episodes, at least one. Whole episodes are held out because neighbouring
    frames of one episode are near-duplicates: held-out frames of fitted episodes would look too familiar."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if num_episodes < 2:
        raise ValueError(f"monitors need a dataset of >= 2 episodes (one to fit, one held out), got {num_episodes}; "
                         "record more demonstrations with `reinforge demos --per-task N`")
    n_held = min(num_episodes - 1, max(1, round(heldout_fraction * num_episodes)))
    perm = torch.randperm(num_episodes, generator=torch.Generator().manual_seed(seed))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def episode_frames(dataset: DemoDataset, episodes: torch.Tensor) -> torch.Tensor:
    """(N,) the frame indices of ``episodes`` (dataset episode positions 0..E-1), in dataset order."""
    return torch.isin(dataset.episode_index, episodes).nonzero().flatten()


def policy_fingerprint(policy: Policy) -> str:
    """A short hash of the weights and buffers the features depend on (the backbone and the state statistics):
    a monitor fitted on one policy is meaningless on another one with the same shapes."""
    h = hashlib.sha256()
    stats = [("state_mean", policy.state_mean), ("state_std", policy.state_std)]
    for name, t in [*policy.backbone.state_dict().items(), *stats]:
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
