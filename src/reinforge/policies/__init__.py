"""VLA policies: a shared vision-language-state backbone with a token head or a flow-matching head, and an
OpenVLA-OFT style token policy built from transformers' Llama, DINOv2 and SigLIP (``kind: oft``, imported
when used)."""

from __future__ import annotations

from pathlib import Path

from reinforge.config import ConfigError
from reinforge.fsutil import settle
from reinforge.policies.base import (
    STATS_NAME,
    Normalizer,
    Policy,
    PolicyConfig,
    load_weights,
    read_config,
    read_normalizer,
)
from reinforge.policies.flow import FlowPolicy
from reinforge.policies.token import TokenPolicy

POLICIES: dict[str, type[Policy]] = {"token": TokenPolicy, "flow": FlowPolicy}


def make_policy(config: PolicyConfig, normalizer: Normalizer | None = None, *, folder: Path | None = None
                ) -> Policy:
    """Build the policy of ``config.kind`` (token | flow | oft). ``folder``: the saved policy it is being loaded
    from (an oft policy builds its towers from the configs saved there, not from their source folders)."""
    if config.kind == "oft":  # transformers is an optional extra: imported only for this kind
        from reinforge.policies.oft import OFTPolicy

        return OFTPolicy(config, normalizer, saved=folder)
    if config.kind == "lerobot":  # LeRobot (Python >= 3.12): imported only for this kind
        from reinforge.policies.lerobot import LeRobotFlowPolicy

        return LeRobotFlowPolicy(config, normalizer, saved=folder)
    if config.kind not in POLICIES:
        raise ValueError(f"unknown policy kind {config.kind!r}; known: {sorted([*POLICIES, 'oft', 'lerobot'])}")
    return POLICIES[config.kind](config, normalizer)


def load_pretrained(path: str | Path, expect: PolicyConfig | None = None) -> Policy:
    """Restore a policy saved with ``save_pretrained``. With ``expect``, refuse a checkpoint whose config
    differs from it (naming the fields that differ)."""
    path = settle(path)
    config = read_config(path)
    if expect is not None and expect != config:
        diff = {k: (getattr(config, k), getattr(expect, k)) for k in config.__dataclass_fields__
                if getattr(config, k) != getattr(expect, k)}
        raise ValueError(f"checkpoint {path} has a different policy config: {diff} (checkpoint, expected)")
    normalizer = read_normalizer(path)
    try:
        policy = make_policy(config, normalizer, folder=path)
    except ConfigError as e:
        raise ConfigError(f"{path / STATS_NAME} does not fit {path / 'config.json'}: {e}") from None
    load_weights(policy, path)
    return policy


__all__ = ["FlowPolicy", "Normalizer", "Policy", "PolicyConfig", "TokenPolicy", "load_pretrained", "make_policy"]
