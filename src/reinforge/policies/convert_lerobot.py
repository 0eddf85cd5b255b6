"""``reinforge convert lerobot SRC --out OUT --tokenizer TOK``: a LeRobot pi0 / pi0.5 / SmolVLA checkpoint -> a
reinforge ``kind: lerobot`` policy that acts as LeRobot's own pipeline does (LeRobot >= 0.6, Python >= 3.12).

A LeRobot checkpoint is the network (``config.json`` + ``model.safetensors``, read with LeRobot's own
``from_pretrained``) plus its processor pipelines (``policy_preprocessor.json`` / ``policy_postprocessor.json``)
whose normaliser steps keep the dataset statistics in safetensors files. The statistics become reinforge's
normaliser exactly: MEAN_STD states and actions are standardised (pi0, SmolVLA), QUANTILES / MIN_MAX map the
bounds to [-1, 1] without clamping (pi0.5). The prompt is tokenised with the VLM's tokenizer from a local folder
(``--tokenizer``; the checkpoint names it by Hub id, which cannot be fetched offline) in LeRobot's formats, and the
images are resized with padding as LeRobot does (policies/lerobot.py). The written policy is self-contained (the
LeRobot config and the tokenizer are kept under ``lerobot/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reinforge.policies.base import Normalizer, PolicyConfig
from reinforge.policies.convert import ConversionError, check_out, read_json


def _step(src: Path, pipeline: str, registry: str) -> tuple[dict, dict[str, list[float]]]:
    """The config and statistics of the ``registry`` step of a saved processor pipeline."""
    from safetensors.torch import load_file

    f = src / f"{pipeline}.json"
    if not f.is_file():
        raise ConversionError(f"{src} has no {f.name}: a LeRobot >= 0.5 checkpoint keeps its normalisation statistics "
                              "in its processor pipelines")
    for step in read_json(f).get("steps", []):
        if step.get("registry_name") == registry:
            if "state_file" not in step:
                raise ConversionError(f"the {registry} step of {f.name} has no statistics (state_file)")
            try:
                stats = load_file(str(src / step["state_file"]))
            except Exception as e:
                raise ConversionError(f"{src / step['state_file']} is not a readable safetensors file ({e})") from None
            return step.get("config", {}), {k: v.flatten().tolist() for k, v in stats.items()}
    raise ConversionError(f"{f.name} has no {registry} step")


def normalizer_from_processors(src: Path, state_key: str, action_key: str) -> Normalizer:
    """LeRobot's normaliser statistics as reinforge's normaliser (states from the preprocessor, actions from the
    postprocessor's un-normaliser)."""
    cfg, stats = _step(src, "policy_preprocessor", "normalizer_processor")
    try:
        _, out_stats = _step(src, "policy_postprocessor", "unnormalizer_processor")
    except ConversionError:
        out_stats = stats
    modes = cfg.get("norm_map", {})

    def get(table: dict, key: str, stat: str) -> list[float]:
        if f"{key}.{stat}" not in table:
            raise ConversionError(f"the processor statistics have no {key}.{stat} (needed for {key}'s normalisation)")
        return table[f"{key}.{stat}"]

    def bounds(table: dict, key: str, mode: str) -> tuple[list[float], list[float]]:
        lo, hi = {"QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90"), "MIN_MAX": ("min", "max")}[mode]
        return get(table, key, lo), get(table, key, hi)

    s_mode, a_mode = modes.get("STATE", "IDENTITY"), modes.get("ACTION", "IDENTITY")
    known = ("IDENTITY", "MEAN_STD", "QUANTILES", "QUANTILE10", "MIN_MAX")
    if s_mode not in known or a_mode not in known:
        raise ConversionError(f"unknown LeRobot normalisation modes STATE={s_mode}, ACTION={a_mode}")
    a_dim = len(out_stats.get(f"{action_key}.mean") or out_stats.get(f"{action_key}.q01") or
                out_stats.get(f"{action_key}.min") or [])
    s_dim = len(stats.get(f"{state_key}.mean") or stats.get(f"{state_key}.q01") or stats.get(f"{state_key}.min") or [])
    if a_mode == "MEAN_STD":
        mean, std = get(out_stats, action_key, "mean"), get(out_stats, action_key, "std")
        lo, hi = [m - 3 * s for m, s in zip(mean, std)], [m + 3 * s for m, s in zip(mean, std)]
        action = {"action_low": lo, "action_high": hi, "action_mean": mean, "action_std": std}
    elif a_mode == "IDENTITY":
        action = {"action_low": [-1.0] * a_dim, "action_high": [1.0] * a_dim, "action_clip": False}
    else:
        lo, hi = bounds(out_stats, action_key, a_mode)
        action = {"action_low": lo, "action_high": hi, "action_clip": False}
    if s_mode == "MEAN_STD":
        state = {"state_mean": get(stats, state_key, "mean"), "state_std": get(stats, state_key, "std")}
    elif s_mode == "IDENTITY":
        state = {"state_mean": [0.0] * s_dim, "state_std": [1.0] * s_dim}
    else:  # 2 (x - lo) / (hi - lo) - 1 is a standardisation with mean (lo + hi) / 2 and std (hi - lo) / 2
        lo, hi = bounds(stats, state_key, s_mode)
        state = {"state_mean": [(a + b) / 2 for a, b in zip(lo, hi)],
                 "state_std": [(b - a) / 2 for a, b in zip(lo, hi)]}
    return Normalizer(**action, **state)


def convert_lerobot(src: str | Path, out: str | Path, *, tokenizer: str, image_size: int = 0, num_views: int = 0,
                    overwrite: bool = False) -> dict[str, Any]:
    """``num_views``: the env's cameras (default: the checkpoint's); cameras the checkpoint expects beyond them are
    given to it blank and masked, as LeRobot does."""
    """Convert the LeRobot checkpoint folder ``src`` into a reinforge policy at ``out``; returns a summary."""
    from reinforge.policies.lerobot import MODELS, LeRobotFlowPolicy, _lerobot, at_checkpoint_size, checkpoint_sizes

    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} is not a LeRobot checkpoint folder (config.json is missing)")
    check_out(out, overwrite)
    kind = read_json(src / "config.json").get("type")
    if kind not in MODELS:
        raise ConversionError(f"{src} holds a LeRobot {kind!r} policy; reinforge converts {', '.join(MODELS)}")
    if not tokenizer:
        raise ConversionError(f"a {kind} checkpoint reads its prompt with its VLM's tokenizer, which cannot be fetched "
                              "offline: pass --tokenizer FOLDER (a local copy of google/paligemma-3b-pt-224 for pi0 / "
                              "pi0.5, of the SmolVLM2 model named in config.json for SmolVLA), or 'hash'")
    mod = _lerobot(kind)
    try:
        # LeRobot rebuilds from config.json, which names only full sizes: a smaller checkpoint at its own size
        with at_checkpoint_size(mod, kind, PolicyConfig(kind="lerobot", lerobot_model=kind), src / "model.safetensors"):
            lerobot_policy = getattr(mod, MODELS[kind][3]).from_pretrained(str(src), local_files_only=True)
    except (OSError, ValueError) as e:
        hint = ""
        if kind == "smolvla":  # LeRobot builds SmolVLA's VLM from its config read by name
            vlm = read_json(src / "config.json").get("vlm_model_name", "its VLM")
            hint = (f" (SmolVLA reads the config of {vlm} from the Hugging Face cache: fetch it once where the Hub is "
                    "reachable, or point HF_HOME at a cache that holds it)")
        raise ConversionError(f"LeRobot cannot load {src}: {e}{hint}") from None
    pc = lerobot_policy.config
    if getattr(pc, "use_relative_actions", False):
        raise ConversionError(f"{src} predicts relative actions (use_relative_actions); reinforge's envs take absolute "
                              "ones: not supported yet")
    state_key = next((k for k, f in pc.input_features.items() if f.type.name == "STATE"), None)
    views = [k for k, f in pc.input_features.items() if f.type.name == "VISUAL"]
    action_key = next((k for k, f in pc.output_features.items() if f.type.name == "ACTION"), None)
    if state_key is None or action_key is None or not views:
        raise ConversionError(f"{src}'s config names no state, action or camera features (input_features / "
                              "output_features)")
    if not 0 <= num_views <= len(views):
        raise ConversionError(f"--num-views {num_views}: the checkpoint takes 1 to {len(views)} cameras "
                              f"({', '.join(views)})")
    norm = normalizer_from_processors(src, state_key, action_key)
    network = lerobot_policy.model
    vlm = network.vlm_with_expert.config if kind == "smolvla" else network.paligemma_with_expert.paligemma.config
    side = image_size or pc.input_features[views[0]].shape[-1]
    sizes = checkpoint_sizes(src / "model.safetensors") if kind in ("pi0", "pi05") else None
    config = PolicyConfig(
        **{k: v for k, v in (sizes or {}).items() if k != "d_model"},  # a smaller checkpoint's sizes
        kind="lerobot", lerobot_model=kind, lerobot_path=str(src.resolve()), lerobot_tokenizer=tokenizer,
        image_size=(side, side), num_views=num_views or len(views), state_dim=len(norm.state_mean),
        action_dim=len(norm.action_low),
        horizon=pc.chunk_size, execute_steps=pc.n_action_steps, d_model=vlm.text_config.hidden_size,
        num_steps=getattr(pc, "num_inference_steps", None) or getattr(pc, "num_steps", 10))
    policy = LeRobotFlowPolicy(config, norm, network=network)
    policy.save_pretrained(out)
    return {"out": str(out), "model": kind, "params": sum(p.numel() for p in policy.parameters()),
            "views": config.num_views, "image_size": side, "state_dim": config.state_dim,
            "action_dim": config.action_dim,
            "horizon": config.horizon, "execute_steps": config.execute_steps,
            "normalization": "standardised" if norm.standardized else "bounds"}


def make_tiny_checkpoint(out: str | Path, *, model: str = "pi0", state_dim: int = 8, action_dim: int = 7,
                         cameras: int = 2, image_size: int = 32, horizon: int = 4, execute_steps: int = 0,
                         width: int = 64, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Write a small LeRobot pi0 / pi0.5 checkpoint with random weights at ``out``, LeRobot's way (its policy's
    ``save_pretrained`` and its own processor pipelines with unit statistics): a stand-in for a real checkpoint in
    smoke tests of ``convert lerobot`` -> ``eval`` / ``train`` (a real pi0 needs ~13 GB to build in fp32). PaliGemma
    and the action expert get 2 layers (``width`` and 32 wide), SigLIP one; the tokenizer is then 'hash'."""
    import importlib

    import torch

    from reinforge.policies.lerobot import MODELS, _lerobot, _tiny_pi0

    if model not in ("pi0", "pi05"):
        raise ConversionError(f"tiny checkpoints are made for pi0 and pi05, not {model!r} (SmolVLA reads its VLM's "
                              "config from the Hub by name)")
    if min(state_dim, action_dim, cameras, horizon) < 1 or image_size < 8 or width % 8:
        raise ConversionError("state/action dims, cameras and horizon must be >= 1, the image side >= 8 and the width "
                              "a multiple of 8")
    out = Path(out)
    check_out(out, overwrite)
    from lerobot.configs.types import FeatureType, PolicyFeature

    mod = _lerobot(model)
    proc = importlib.import_module(f"lerobot.policies.{model}.processor_{model}")
    conf = getattr(importlib.import_module(f"lerobot.policies.{model}.configuration_{model}"), MODELS[model][2])
    feats = {f"observation.images.cam{i}": PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size))
             for i in range(cameras)}
    feats["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    pc = conf(num_inference_steps=4, image_resolution=(image_size, image_size), dtype="float32", chunk_size=horizon,
              n_action_steps=execute_steps or horizon, max_state_dim=max(32, state_dim),
              max_action_dim=max(32, action_dim), device="cpu", input_features=feats,
              output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))})
    c = PolicyConfig(kind="lerobot", lerobot_model=model, d_model=width, image_size=(image_size, image_size))
    stats = {k: {"mean": torch.zeros(n), "std": torch.ones(n), "q01": -torch.ones(n), "q99": torch.ones(n),
                 "min": -torch.ones(n), "max": torch.ones(n)}
             for k, n in (("observation.state", state_dim), ("action", action_dim))}
    torch.manual_seed(seed)
    with _tiny_pi0(mod, c):
        policy = getattr(mod, MODELS[model][3])(pc)
    # LeRobot's tokenizer step loads PaliGemma's tokenizer by Hub id when built; the saved pipeline records only
    # that id, so a small local stand-in serves while it is built (the converted policy tokenises with 'hash')
    import lerobot.processor.tokenizer_processor as tp

    saved = tp.AutoTokenizer
    tp.AutoTokenizer = type("Local", (), {"from_pretrained": staticmethod(lambda *a, **k: _stand_in_tokenizer())})
    try:
        pre, post = getattr(proc, f"make_{model}_pre_post_processors")(pc, stats)
    finally:
        tp.AutoTokenizer = saved
    tmp = out.with_name(out.name + ".partial")
    for part in (policy, pre, post):
        part.save_pretrained(tmp)
    tmp.rename(out)
    return {"out": str(out), "model": model, "params": sum(p.numel() for p in policy.parameters())}


def _stand_in_tokenizer() -> Any:
    """A one-word tokenizer (``tokenizers`` ships with transformers) for building LeRobot's processor offline."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
