"""VLA policies: a shared vision-language-state backbone with a token head or a flow-matching head."""

from __future__ import annotations

import json
from pathlib import Path

from reinforge.config import from_dict
from reinforge.policies.base import STATS_NAME, Normalizer, Policy, PolicyConfig, load_weights, read_config
from reinforge.policies.flow import FlowPolicy
from reinforge.policies.token import TokenPolicy

POLICIES: dict[str, type[Policy]] = {"token": TokenPolicy, "flow": FlowPolicy}


def make_policy(config: PolicyConfig, normalizer: Normalizer | None = None) -> Policy:
    """Build the policy of ``config.kind`` (token | flow)."""
    if config.kind not in POLICIES:
        raise ValueError(f"unknown policy kind {config.kind!r}; known: {sorted(POLICIES)}")
    return POLICIES[config.kind](config, normalizer)


def load_pretrained(path: str | Path, expect: PolicyConfig | None = None) -> Policy:
    """Restore a policy saved with ``save_pretrained``. With ``expect``, refuse a checkpoint whose config
    differs from it (naming the fields that differ)."""
    path = Path(path)
    config = read_config(path)
    if expect is not None and expect != config:
        diff = {k: (getattr(config, k), getattr(expect, k)) for k in config.__dataclass_fields__
                if getattr(config, k) != getattr(expect, k)}
        raise ValueError(f"checkpoint {path} has a different policy config: {diff} (checkpoint, expected)")
    stats_file = path / STATS_NAME
    if not stats_file.is_file():
        raise ValueError(f"{path}: {STATS_NAME} is missing")
    normalizer = from_dict(Normalizer, json.loads(stats_file.read_text()))
    policy = make_policy(config, normalizer)
    load_weights(policy, path)
    return policy


__all__ = ["FlowPolicy", "Normalizer", "Policy", "PolicyConfig", "TokenPolicy", "load_pretrained", "make_policy"]
