"""``reinforge convert openvla-oft SRC --out OUT``: a released OpenVLA-OFT checkpoint -> a reinforge oft policy.

OpenVLA-OFT (arXiv 2502.19645) publishes its fine-tuned models in Prismatic's Hugging Face layout, whose model
code is remote code (``trust_remote_code``) built on a forked transformers and timm ViTs. This converter reads
the files as data only and writes a self-contained ``kind: oft`` policy (policies/oft.py) that computes the same
function with stock transformers classes:

- ``config.json`` (``model_type: openvla``): the Llama ``text_config``, the timm vision ids and image sizes, the
  number of action bins and the vocabulary padding (``pad_to_multiple_of``: the action tokens end there);
- ``model.safetensors`` or its shards (``model.safetensors.index.json``): the language model, the projector and
  the two timm ViTs (DINOv2 with registers: ``vision_backbone.featurizer``; SigLIP:
  ``vision_backbone.fused_featurizer``); their fused qkv projections are split, LayerScale ``scale_factor``
  becomes ``lambda1``, DINOv2's class token gets a zero position embedding (timm adds none to it);
- ``dataset_statistics.json`` (else ``norm_stats`` in config.json): the action q01/q99 (or min/max) bounds and
  the proprio bounds of one dataset (``--unnorm-key``), mapped onto reinforge's normaliser exactly (dims with
  ``mask: false`` pass through un-normalised);
- ``action_head--*checkpoint.pt`` (the L1-regression MLP-ResNet) and ``proprio_projector--*checkpoint.pt``, read
  with ``torch.load(weights_only=True)``; without an action head the policy decodes OpenVLA's action tokens;
- the tokenizer files (Llama 2's SentencePiece tokenizer), copied into the policy.

Nothing is unpickled: ``pytorch_model.bin`` files are refused. The heads OFT trains for other set-ups (FiLM
vision backbones for ALOHA, the diffusion head) are refused with a clear message. The converted keys and shapes
are checked against the policy built on the ``meta`` device (no memory) before anything is written, and the
folder is written atomically.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from reinforge.fsutil import atomic_dir, write_guard
from reinforge.policies.base import CONFIG_NAME, STATS_NAME, WEIGHTS_NAME, Normalizer, Policy, PolicyConfig
from reinforge.policies.convert import ConversionError, check_out, read_json

# the attention head width of each timm ViT family OpenVLA uses (timm ids are stored, head counts are not)
TIMM_HEAD_DIM = {"vit_large_patch14_reg4_dinov2": 64, "vit_so400m_patch14_siglip_224": 72,
                 "vit_so400m_patch14_siglip_384": 72}
DINO, SIGLIP = "vision_backbone.featurizer.", "vision_backbone.fused_featurizer."
UNSUPPORTED_FILES = {"vision_backbone--": "a FiLM vision backbone (OpenVLA-OFT+ for ALOHA)",
                     "noisy_action_projector--": "the diffusion action head"}


def _pick(src: Path, prefix: str, given: str, what: str) -> Path | None:
    """``given``: 'auto' (the one ``prefix*checkpoint.pt`` in src, if any), 'none', or a path."""
    if given == "none":
        return None
    if given != "auto":
        p = Path(given)
        if not p.is_file():
            raise ConversionError(f"the {what} file {p} does not exist")
        return p
    found = sorted(src.glob(f"{prefix}*checkpoint.pt"))
    if len(found) > 1:
        raise ConversionError(f"{src} holds several {what} files ({', '.join(f.name for f in found)}): name one "
                              f"with --{what.replace(' ', '-')} PATH")
    return found[0] if found else None


def _torch_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict saved with torch.save, read without unpickling anything but tensors; DDP's ``module.`` dropped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files: never fall back to full unpickling
        raise ConversionError(f"{path} cannot be read as plain tensors ({type(e).__name__}: {str(e)[:200]}); "
                              f"the {what} must be a state dict saved with torch.save") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{path} is not a state dict of tensors; the {what} must be saved with "
                              "torch.save(module.state_dict())")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _weights(src: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors from model.safetensors or its shards (safetensors only: nothing is unpickled)."""
    from safetensors import safe_open

    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({src / f for f in read_json(index).get("weight_map", {}).values()})
    else:
        files = [src / WEIGHTS_NAME] if (src / WEIGHTS_NAME).is_file() else sorted(src.glob("model-*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in src.glob("*.bin"))
        raise ConversionError(f"{src} has no safetensors weights" + (
            f" (only {', '.join(pickled)}: reinforge does not unpickle checkpoint files; re-save them as "
            "safetensors with the model's own code)" if pickled else " (model.safetensors or model-*.safetensors)"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ConversionError(f"the shard {f} named by {index.name} is missing")
        try:
            with safe_open(str(f), framework="pt") as g:
                for k in g.keys():  # noqa: SIM118 - safe_open has no __iter__
                    state[k] = g.get_tensor(k)
        except ConversionError:
            raise
        except Exception as e:
            raise ConversionError(f"{f} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    return state


def _dataset_stats(src: Path, config: dict, unnorm_key: str) -> tuple[str, dict]:
    f = src / "dataset_statistics.json"
    stats = read_json(f) if f.is_file() else config.get("norm_stats")
    if not isinstance(stats, dict) or not stats:
        raise ConversionError(f"{src} has no action statistics (dataset_statistics.json or norm_stats in "
                              "config.json): without them the actions cannot be un-normalised")
    if not unnorm_key:
        if len(stats) > 1:
            raise ConversionError(f"the checkpoint has statistics of several datasets ({', '.join(stats)}): "
                                  "choose one with --unnorm-key")
        unnorm_key = next(iter(stats))
    if unnorm_key not in stats:
        raise ConversionError(f"--unnorm-key {unnorm_key!r} is not among the checkpoint's datasets: "
                              f"{', '.join(stats)}")
    return unnorm_key, stats[unnorm_key]


def _bounds(stats: dict, what: str, normalization: str) -> tuple[list[float], list[float], list[bool]]:
    lo_key, hi_key = ("q01", "q99") if normalization == "bounds_q99" else ("min", "max")
    s = stats.get(what)
    if not isinstance(s, dict) or lo_key not in s or hi_key not in s:
        raise ConversionError(f"the dataset statistics have no {what} {lo_key}/{hi_key} (needed for "
                              f"--normalization {normalization})")
    lo, hi = [float(x) for x in s[lo_key]], [float(x) for x in s[hi_key]]
    mask = [bool(m) for m in s.get("mask", [True] * len(lo))]
    if not (len(lo) == len(hi) == len(mask)) or not all(map(math.isfinite, lo + hi)):
        raise ConversionError(f"the {what} statistics are malformed (lengths {len(lo)}/{len(hi)}/{len(mask)} or "
                              "non-finite values)")
    return lo, hi, mask


def normalizer_from_stats(stats: dict, normalization: str, with_state: bool, state_dim: int,
                          gripper: str = "none") -> Normalizer:
    """OpenVLA's bounds normalisation as reinforge's normaliser: actions 2 (a - lo) / (hi - lo) - 1 on the dims
    whose mask is true (the others pass through: bounds -1, 1); the proprio the same way, written as a
    standardisation with mean (lo + hi) / 2 and std (hi - lo) / 2, clipped to [-1, 1].

    ``gripper="libero"``: the last action dim is OpenVLA's LIBERO gripper (trained as 0 = close ... 1 = open, its
    mask false), which OFT's evaluation maps to LIBERO's -1 = open / +1 = close; here that is the affine a = 1 - 2g,
    i.e. bounds (3, -1), which also maps demonstrations back for SFT."""
    lo, hi, mask = _bounds(stats, "action", normalization)
    a_lo = [x if m else -1.0 for x, m in zip(lo, mask)]
    a_hi = [x if m else 1.0 for x, m in zip(hi, mask)]
    if gripper == "libero":
        if mask[-1]:
            raise ConversionError("the last action dim is normalised (its statistics' mask is true): it is not "
                                  "OpenVLA's LIBERO gripper; pass --gripper none")
        a_lo[-1], a_hi[-1] = 3.0, -1.0
    if not with_state:
        return Normalizer(a_lo, a_hi, [0.0] * state_dim, [1.0] * state_dim)
    lo, hi, mask = _bounds(stats, "proprio", normalization)
    mean = [(a + b) / 2 if m else 0.0 for a, b, m in zip(lo, hi, mask)]
    std = [(b - a) / 2 if m else 1.0 for a, b, m in zip(lo, hi, mask)]
    return Normalizer(a_lo, a_hi, mean, std, state_clip=1.0)  # OFT clips the normalised proprio to [-1, 1]


# ---------------------------------------------------------------- tower configs from the weights

def _blocks(state: dict, prefix: str) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    if not ids or ids != set(range(len(ids))):
        raise ConversionError(f"the checkpoint's {prefix}blocks are missing or not numbered 0..n-1")
    return len(ids)


def _heads(timm_id: str, width: int, override: int) -> int:
    if override:
        return override
    base = timm_id.split(".")[0]
    if base not in TIMM_HEAD_DIM:
        raise ConversionError(f"unknown timm vision model {timm_id!r} (known: {', '.join(TIMM_HEAD_DIM)}): pass its "
                              "attention heads with --vision-heads DINO,SIGLIP")
    if width % TIMM_HEAD_DIM[base]:
        raise ConversionError(f"{timm_id} of width {width} is not a multiple of its head width "
                              f"{TIMM_HEAD_DIM[base]}: pass --vision-heads DINO,SIGLIP")
    return width // TIMM_HEAD_DIM[base]


def _ratio(hidden: int, width: int) -> int | float:
    r = hidden / width
    return int(r) if r.is_integer() else r


def tower_configs(tf: Any, config: dict, state: dict, heads: tuple[int, int]) -> tuple[Any, Any, Any]:
    """transformers configs (Llama, DINOv2 with registers, SigLIP vision) of the checkpoint's towers."""
    # the weights' dtype (OpenVLA: bfloat16) is not the policy's: reinforge builds float32 towers (precision is the
    # trainer's), so the dtype fields are dropped
    text = {k: v for k, v in (config.get("text_config") or {}).items()
            if k not in ("model_type", "torch_dtype", "dtype")}
    llm = tf.LlamaConfig(**text)
    if "language_model.model.embed_tokens.weight" not in state:
        raise ConversionError("the checkpoint has no language_model.model.embed_tokens.weight: not an OpenVLA model")
    ids, sizes = config.get("timm_model_ids") or [], config.get("image_sizes") or []
    if len(ids) != 2 or len(sizes) != 2:
        raise ConversionError("config.json must name two timm vision towers and their image sizes (timm_model_ids, "
                              "image_sizes), as OpenVLA's fused DINOv2 + SigLIP backbone does")
    dim = state[DINO + "cls_token"].shape[-1] if DINO + "cls_token" in state else 0
    if not dim or SIGLIP + "pos_embed" not in state:
        raise ConversionError("the checkpoint has no DINOv2 + SigLIP vision towers (vision_backbone.featurizer / "
                              "fused_featurizer): only the fused dinosiglip backbones of OpenVLA(-OFT) convert")
    patch = state[DINO + "patch_embed.proj.weight"].shape[-1]
    dino = tf.Dinov2WithRegistersConfig(
        hidden_size=dim, num_hidden_layers=_blocks(state, DINO), num_attention_heads=_heads(ids[0], dim, heads[0]),
        mlp_ratio=_ratio(state[DINO + "blocks.0.mlp.fc1.weight"].shape[0], dim), patch_size=patch, image_size=sizes[0],
        num_register_tokens=state[DINO + "reg_token"].shape[1] if DINO + "reg_token" in state else 0,
        layerscale_value=1.0, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, use_swiglu_ffn=False)
    sdim = state[SIGLIP + "pos_embed"].shape[-1]
    siglip = tf.SiglipVisionConfig(
        hidden_size=sdim, intermediate_size=state[SIGLIP + "blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_blocks(state, SIGLIP), num_attention_heads=_heads(ids[1], sdim, heads[1]),
        image_size=sizes[1], patch_size=state[SIGLIP + "patch_embed.proj.weight"].shape[-1], hidden_act="gelu",
        layer_norm_eps=1e-6, vision_use_head=False)  # timm's ViTs use exact GELU; the MAP head is unused
    return llm, dino, siglip


# ---------------------------------------------------------------- key mapping

# timm ViT block parameters -> transformers names (alternatives: transformers 5 / 4.x module names)
DINO_BLOCK = {"norm1": ["norm1"], "norm2": ["norm2"], "mlp.fc1": ["mlp.fc1"], "mlp.fc2": ["mlp.fc2"],
              "attn.proj": ["attention.o_proj", "attention.output.dense"],
              "ls1": ["layer_scale1"], "ls2": ["layer_scale2"]}
DINO_QKV = (["attention.q_proj", "attention.attention.query"], ["attention.k_proj", "attention.attention.key"],
            ["attention.v_proj", "attention.attention.value"])
SIGLIP_BLOCK = {"norm1": ["layer_norm1"], "norm2": ["layer_norm2"], "mlp.fc1": ["mlp.fc1"], "mlp.fc2": ["mlp.fc2"],
                "attn.proj": ["self_attn.out_proj"]}
SIGLIP_QKV = (["self_attn.q_proj"], ["self_attn.k_proj"], ["self_attn.v_proj"])


class _Target:
    """Resolves transformers-side names against the policy's own keys (transformers versions differ in module
    names and in SigLIP's ``vision_model.`` level)."""

    def __init__(self, keys: set[str]):
        self.keys = keys

    def __call__(self, tower: str, candidates: list[str], leaf: str) -> str:
        for c in candidates:
            for mid in ("", "vision_model."):
                k = f"{tower}.{mid}{c}.{leaf}" if leaf else f"{tower}.{mid}{c}"
                if k in self.keys:
                    return k
        raise ConversionError(f"the policy has no parameter for {tower}.{candidates[0]}.{leaf}; this transformers "
                              "version names it differently (please report it)")


def _vit(state: dict, prefix: str, tower: str, target: _Target, out: dict, dropped: list[str]) -> None:
    """Map one timm ViT (DINOv2 with registers, or SigLIP) onto the transformers tower ``tower``."""
    dino = tower == "dino"
    block_map, qkv_map = (DINO_BLOCK, DINO_QKV) if dino else (SIGLIP_BLOCK, SIGLIP_QKV)
    layers = "encoder.layer" if dino else "encoder.layers"
    for key in [k for k in state if k.startswith(prefix)]:
        name, t = key[len(prefix):], state[key]
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|scale_factor|gamma)", name):
            i, part, leaf = m.groups()
            if part == "attn.qkv":
                for chunk, cands in zip(t.chunk(3, dim=0), qkv_map):
                    out[target(tower, [f"{layers}.{i}.{c}" for c in cands], leaf)] = chunk.clone()
            elif part in block_map:
                leaf = "lambda1" if leaf in ("scale_factor", "gamma") else leaf
                out[target(tower, [f"{layers}.{i}.{c}" for c in block_map[part]], leaf)] = t
            else:
                raise ConversionError(f"unexpected vision weight {key}")
        elif name.startswith("patch_embed.proj."):
            emb = "embeddings.patch_embeddings.projection" if dino else "embeddings.patch_embedding"
            out[target(tower, [emb], name.rsplit(".", 1)[1])] = t
        elif name == "pos_embed":
            if dino:  # timm adds no position to the class token when its table holds only the (square) patch grid
                n = t.shape[1]
                t = torch.cat([torch.zeros_like(t[:, :1]), t], 1) if math.isqrt(n) ** 2 == n else t
                out[target(tower, ["embeddings.position_embeddings"], "")] = t
            else:
                out[target(tower, ["embeddings.position_embedding"], "weight")] = t[0]
        elif dino and name == "cls_token":
            out[target(tower, ["embeddings.cls_token"], "")] = t
        elif dino and name == "reg_token":
            out[target(tower, ["embeddings.register_tokens"], "")] = t
        elif name.startswith("norm."):
            out[target(tower, ["layernorm" if dino else "post_layernorm"], name.split(".", 1)[1])] = t
        elif name.startswith(("attn_pool.", "head.", "fc_norm.")):
            dropped.append(key)  # SigLIP's pooling head: OpenVLA reads patch tokens only
        else:
            raise ConversionError(f"unexpected vision weight {key}")


def convert_state(state: dict, target: _Target, action_head: dict | None, proprio: dict | None
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Prismatic's keys -> the oft policy's keys. Returns the converted tensors and the source keys dropped."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, t in state.items():
        if key.startswith("language_model."):
            out["llm." + key[len("language_model."):]] = t
        elif key.startswith("projector."):
            if not re.fullmatch(r"projector\.fc[123]\.(weight|bias)", key):
                raise ConversionError(f"unexpected projector weight {key}")
            out[key] = t
        elif not key.startswith((DINO, SIGLIP)):
            raise ConversionError(f"unexpected weight {key} (not the language model, projector or vision towers)")
    if "projector.fc3.weight" not in out:
        raise ConversionError("the projector has no fc3: only the fused DINOv2 + SigLIP projector converts")
    _vit(state, DINO, "dino", target, out, dropped)
    _vit(state, SIGLIP, "siglip", target, out, dropped)
    for prefix, part in (("l1_head.", action_head), ("proprio.", proprio)):
        for k, t in (part or {}).items():
            out[prefix + (k.removeprefix("model.") if prefix == "l1_head." else k)] = t
    return out, dropped


# ---------------------------------------------------------------- the command

def convert_openvla_oft(src: str | Path, out: str | Path, *, unnorm_key: str = "", num_views: int = 2,
                        image_size: int = 224, horizon: int = 8, execute_steps: int = 0,
                        normalization: str = "bounds_q99", action_head: str = "auto", proprio_projector: str = "auto",
                        tokenizer: str = "", prompt_end_ids: str = "auto", vision_heads: tuple[int, int] = (0, 0),
                        gripper: str = "libero", center_crop: float = 0.9, overwrite: bool = False) -> dict[str, Any]:
    """Convert the OpenVLA-OFT checkpoint folder ``src`` into an oft policy at ``out``; returns a summary.
    ``horizon`` must be the chunk the checkpoint was trained with (OFT does not store it: LIBERO 8, ALOHA 25);
    ``center_crop``: the centred area fraction OFT's LIBERO evaluation crops (its models trained on random crops;
    0 = none); ``gripper``: libero (OpenVLA's gripper convention mapped to LIBERO's) or none."""
    from reinforge.policies import make_policy
    from reinforge.policies.backbone import ValueHead
    from reinforge.policies.oft import _transformers

    tf = _transformers()
    src, out = Path(src), Path(out)
    if not (src / CONFIG_NAME).is_file():
        raise ConversionError(f"{src} is not a checkpoint folder ({CONFIG_NAME} is missing)")
    if num_views < 1 or image_size < 1 or horizon < 1 or execute_steps < 0:
        raise ConversionError(f"--num-views, --image-size and --horizon must be >= 1 and --execute-steps >= 0, got "
                              f"{num_views}, {image_size}, {horizon}, {execute_steps}")
    if gripper not in ("libero", "none") or not 0 <= center_crop <= 1:
        raise ConversionError(f"--gripper must be libero or none and --center-crop in [0, 1], got {gripper!r}, "
                              f"{center_crop}")
    if normalization not in ("bounds_q99", "bounds"):
        raise ConversionError(f"--normalization must be bounds_q99 or bounds, got {normalization!r}")
    check_out(out, overwrite)
    config = read_json(src / CONFIG_NAME)
    if config.get("model_type") != "openvla" or not config.get("use_fused_vision_backbone", True):
        raise ConversionError(f"{src / CONFIG_NAME} is not an OpenVLA(-OFT) config (model_type "
                              f"{config.get('model_type')!r}; expected 'openvla' with a fused vision backbone)")
    if any(config.get("timm_override_act_layers") or []):
        raise ConversionError("vision towers with overridden activations (CLIP's quick_gelu) do not convert: only "
                              "the DINOv2 + SigLIP backbones")
    for prefix, what in UNSUPPORTED_FILES.items():
        if any(src.glob(f"{prefix}*checkpoint.pt")):
            raise ConversionError(f"{src} holds {what} ({prefix}*checkpoint.pt), which reinforge does not support; "
                                  "the L1-regression and token heads do")
    head_file = _pick(src, "action_head--", action_head, "action head")
    proprio_file = _pick(src, "proprio_projector--", proprio_projector, "proprio projector")
    head = _torch_file(head_file, "action head") if head_file else None
    proprio = _torch_file(proprio_file, "proprio projector") if proprio_file else None
    if head is not None and not any(k.startswith("model.mlp_resnet_blocks.") for k in head):
        raise ConversionError(f"{head_file} is not OFT's L1-regression head (no model.mlp_resnet_blocks.*): only "
                              "that head converts")

    state = _weights(src)
    llm_cfg, dino_cfg, siglip_cfg = tower_configs(tf, config, state, vision_heads)
    key, stats = _dataset_stats(src, config, unnorm_key)
    action_dim = len(_bounds(stats, "action", normalization)[0])
    lo_key = "q01" if normalization == "bounds_q99" else "min"
    state_dim = proprio["fc1.weight"].shape[1] if proprio is not None else len(stats.get("proprio", {}).get(
        lo_key, [])) or 8
    norm = normalizer_from_stats(stats, normalization, proprio is not None, state_dim, gripper)

    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()  # it warns that config.json's model type (openvla) is not the tokenizer's
    try:
        tok = tf.AutoTokenizer.from_pretrained(tokenizer or src, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConversionError(f"no tokenizer could be read from {tokenizer or src} ({str(e)[:200]}): pass --tokenizer "
                              "FOLDER (OpenVLA's is Llama 2's)") from None
    finally:
        tf.logging.set_verbosity(verbosity)
    if prompt_end_ids == "auto":  # OpenVLA appends the empty SentencePiece word before the action tokens
        end_id = tok.convert_tokens_to_ids("\u2581")
        if end_id is None or end_id == tok.unk_token_id:
            raise ConversionError("the tokenizer has no '\u2581' token (OpenVLA's prompt end): pass "
                                  "--prompt-end-ids IDS (comma list, or 'none')")
        end_ids: tuple[int, ...] = (int(end_id),)
    else:
        try:
            end_ids = () if prompt_end_ids in ("", "none") else tuple(int(x) for x in prompt_end_ids.split(","))
        except ValueError:
            raise ConversionError(f"--prompt-end-ids must be a comma list of token ids or 'none', got "
                                  f"{prompt_end_ids!r}") from None

    vocab = int(llm_cfg.vocab_size)
    pad = int(config.get("pad_to_multiple_of", 0) or 0)
    policy_cfg = PolicyConfig(
        kind="oft", image_size=(image_size, image_size), num_views=num_views, state_dim=state_dim,
        action_dim=action_dim, horizon=horizon, execute_steps=execute_steps or horizon, d_model=llm_cfg.hidden_size,
        heads=llm_cfg.num_attention_heads, num_bins=int(config.get("n_action_bins", 256)),
        oft_llm_layers=llm_cfg.num_hidden_layers, oft_vocab_size=vocab, oft_vision_dim=dino_cfg.hidden_size,
        oft_vision_layers=min(dino_cfg.num_hidden_layers, siglip_cfg.num_hidden_layers),
        oft_patch_size=dino_cfg.patch_size, oft_registers=dino_cfg.num_register_tokens, oft_feature_layer=-2,
        oft_max_prompt=128, oft_max_tokens=llm_cfg.max_position_embeddings, oft_proprio=proprio is not None,
        oft_action_token_end=vocab - pad, oft_prompt_end_ids=end_ids, oft_center_crop=center_crop,
        oft_action_head="l1" if head is not None else "tokens")

    with atomic_dir(out, "policy") as tmp:
        for name, cfg in (("llm", llm_cfg), ("dino", dino_cfg), ("siglip", siglip_cfg)):
            cfg.save_pretrained(tmp / "oft" / name)
        tok.save_pretrained(tmp / "oft" / "tokenizer")
        with torch.device("meta"):  # the policy's keys and shapes, without allocating its weights
            shell = make_policy(policy_cfg, norm, folder=tmp)
        own = shell.state_dict()
        converted, dropped = convert_state(state, _Target(set(own)), head, proprio)
        fresh = {**Policy.normalization_buffers(norm), "view_embed": torch.zeros(num_views, policy_cfg.d_model)}
        if policy_cfg.value_head:  # a new critic (OpenVLA has none); PPO trains it
            value = ValueHead(policy_cfg.d_model, policy_cfg.value_hidden, policy_cfg.detach_value_input)
            fresh.update({f"value_head.{k}": v for k, v in value.state_dict().items()})
        fresh.update({k: torch.zeros(own[k].shape) for k in own if k.endswith("embeddings.mask_token")})
        converted.update({k: v for k, v in fresh.items() if k not in converted})
        missing = sorted(set(own) - set(converted))
        unexpected = sorted(set(converted) - set(own))
        bad = sorted(k for k in set(own) & set(converted) if tuple(own[k].shape) != tuple(converted[k].shape))
        if missing or unexpected or bad:
            raise ConversionError(f"the converted weights do not fit the policy (missing {missing[:4]}, unexpected "
                                  f"{unexpected[:4]}, shape mismatch "
                                  f"{[(k, tuple(converted[k].shape), tuple(own[k].shape)) for k in bad[:3]]})")
        nonfinite = [k for k, v in converted.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if nonfinite:
            raise ConversionError(f"the checkpoint holds NaN or inf weights ({', '.join(nonfinite[:3])})")
        (tmp / CONFIG_NAME).write_text(json.dumps({"reinforge_policy": asdict(policy_cfg)}, indent=2))
        (tmp / STATS_NAME).write_text(json.dumps(asdict(norm), indent=2))
        with write_guard(tmp / WEIGHTS_NAME):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp / WEIGHTS_NAME),
                      metadata={"converted_from": "openvla-oft", "unnorm_key": key})
    return {"out": str(out), "unnorm_key": key, "head": policy_cfg.oft_action_head, "proprio": proprio is not None,
            "params": sum(v.numel() for v in converted.values()), "dropped": len(dropped),
            "action_dim": action_dim, "state_dim": state_dim, "image_size": image_size, "num_views": num_views,
            "horizon": horizon}
