"""``reinforge convert openvla-oft``: a synthetic checkpoint in OpenVLA-OFT's published layout (Prismatic's keys,
timm ViTs with fused qkv and LayerScale ``scale_factor``, sharded safetensors, dataset_statistics.json, DDP-saved
L1 head and proprio projector, a tokenizer) is converted, and the converted policy must compute what OpenVLA-OFT
computes. The reference below is written independently from OpenVLA-OFT's published inference code
(``predict_action``: BOS, patches + proprio, prompt, the empty word, zeroed action placeholders, STOP; the hidden
states one position before each placeholder; ``vocab_size - token`` -> bin centres -> q01/q99 bounds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

tf = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from reinforge.cli import main  # noqa: E402
from reinforge.policies import load_pretrained  # noqa: E402
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE  # noqa: E402

D_LLM, VOCAB, PAD_TO = 64, 576, 64  # action tokens end at 576 - 64 = 512
DINO_W, SIG_W, SIG_MLP, BLOCKS, IMG, PATCH = 128, 144, 300, 3, 28, 14  # 2 heads each (64 / 72 wide), 2x2 patches
H, A, S, V = 4, 7, 8, 2  # chunk, action dim, proprio dim, views
TEXT_WORDS = "In : What action should the robot take to ? Out pick up black bowl and place it on plate put cream cheese"
WORDS = TEXT_WORDS.split(" ")
DINO_ID, SIG_ID = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"


def _w(*shape, scale=0.05):
    return torch.randn(*shape) * scale


def _timm_vit(width, mlp, dino):
    p = {"patch_embed.proj.weight": _w(width, 3, PATCH, PATCH), "patch_embed.proj.bias": _w(width),
         "pos_embed": _w(1, (IMG // PATCH) ** 2, width, scale=0.5), "norm.weight": 1 + _w(width),
         "norm.bias": _w(width)}
    if dino:
        p |= {"cls_token": _w(1, 1, width, scale=0.5), "reg_token": _w(1, 4, width, scale=0.5)}
    else:  # SigLIP's pooling head: converted away (OpenVLA reads patch tokens)
        p |= {"attn_pool.latent": _w(1, 1, width), "attn_pool.q.weight": _w(width, width)}
    for i in range(BLOCKS):
        b = f"blocks.{i}."
        p |= {b + "norm1.weight": 1 + _w(width), b + "norm1.bias": _w(width), b + "norm2.weight": 1 + _w(width),
              b + "norm2.bias": _w(width), b + "attn.qkv.weight": _w(3 * width, width, scale=0.1),
              b + "attn.qkv.bias": _w(3 * width), b + "attn.proj.weight": _w(width, width, scale=0.1),
              b + "attn.proj.bias": _w(width), b + "mlp.fc1.weight": _w(mlp, width, scale=0.1),
              b + "mlp.fc1.bias": _w(mlp), b + "mlp.fc2.weight": _w(width, mlp, scale=0.1),
              b + "mlp.fc2.bias": _w(width)}
        if dino:
            p |= {b + "ls1.scale_factor": 0.5 + _w(width), b + "ls2.scale_factor": 0.5 + _w(width)}
    return p


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3, **{w: 4 + i for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


TEXT = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": D_LLM, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "pad_token_id": 512, "torch_dtype": "bfloat16"}  # as OpenVLA's (weights in bf16)
STATS = {"action": {"q01": [-0.9, -0.8, -0.7, -0.1, -0.2, -0.3, -1.0], "q99": [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 1.0],
                    "mask": [True] * 6 + [False]},
         "proprio": {"q01": [-0.5, -0.4, 0.0, -3.0, -1.0, -1.0, 0.0, -0.04],
                     "q99": [0.5, 0.4, 1.2, 3.0, 1.0, 1.0, 0.04, 0.0], "mask": [True] * 7 + [False]}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An OpenVLA-OFT checkpoint folder of tiny sizes, in the published layout."""
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("openvla-oft")
    llm = tf.LlamaForCausalLM(tf.LlamaConfig(**{k: v for k, v in TEXT.items() if k != "model_type"}))
    state = {f"language_model.{k}": v.clone() for k, v in llm.state_dict().items()}
    state |= {f"vision_backbone.featurizer.{k}": v for k, v in _timm_vit(DINO_W, 4 * DINO_W, True).items()}
    state |= {f"vision_backbone.fused_featurizer.{k}": v for k, v in _timm_vit(SIG_W, SIG_MLP, False).items()}
    d_vis = DINO_W + SIG_W
    state |= {"projector.fc1.weight": _w(4 * d_vis, d_vis, scale=0.1), "projector.fc1.bias": _w(4 * d_vis),
              "projector.fc2.weight": _w(D_LLM, 4 * d_vis, scale=0.1), "projector.fc2.bias": _w(D_LLM),
              "projector.fc3.weight": _w(D_LLM, D_LLM, scale=0.2), "projector.fc3.bias": _w(D_LLM)}
    state = {k: v.to(torch.bfloat16) if k.startswith("language_model.") else v for k, v in state.items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k].contiguous() for k in ks}, str(src / name))
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    config = {"model_type": "openvla", "vision_backbone_id": "dinosiglip-vit-so-224px",
              "llm_backbone_id": "llama2-7b-pure", "use_fused_vision_backbone": True,
              "timm_model_ids": [DINO_ID, SIG_ID],
              "timm_override_act_layers": [None, None], "image_sizes": [IMG, IMG], "n_action_bins": 256,
              "pad_to_multiple_of": PAD_TO, "text_config": TEXT, "norm_stats": {"libero_spatial_no_noops": STATS}}
    (src / "config.json").write_text(json.dumps(config))
    (src / "dataset_statistics.json").write_text(json.dumps({"libero_spatial_no_noops": STATS}))
    head = {"model.layer_norm1.weight": 1 + _w(A * D_LLM), "model.layer_norm1.bias": _w(A * D_LLM),
            "model.fc1.weight": _w(D_LLM, A * D_LLM, scale=0.1), "model.fc1.bias": _w(D_LLM),
            "model.layer_norm2.weight": 1 + _w(D_LLM), "model.layer_norm2.bias": _w(D_LLM),
            "model.fc2.weight": _w(A, D_LLM, scale=0.3), "model.fc2.bias": _w(A)}
    for i in range(2):
        b = f"model.mlp_resnet_blocks.{i}.ffn."
        head |= {b + "0.weight": 1 + _w(D_LLM), b + "0.bias": _w(D_LLM), b + "1.weight": _w(D_LLM, D_LLM, scale=0.2),
                 b + "1.bias": _w(D_LLM)}
    torch.save({f"module.{k}": v for k, v in head.items()}, src / "action_head--150000_checkpoint.pt")
    proprio = {"fc1.weight": _w(D_LLM, S, scale=0.3), "fc1.bias": _w(D_LLM), "fc2.weight": _w(D_LLM, D_LLM, scale=0.2),
               "fc2.bias": _w(D_LLM)}
    torch.save({f"module.{k}": v for k, v in proprio.items()}, src / "proprio_projector--150000_checkpoint.pt")
    _tokenizer().save_pretrained(src)
    return src, {**state, **{f"head.{k}": v for k, v in head.items()},
                 **{f"proprio.{k}": v for k, v in proprio.items()}}


# ---------------------------------------------------------------- the reference (OpenVLA-OFT's computation)

def _ref_vit(p, x, heads, dino):
    """timm's ViT up to the second-to-last block (``get_intermediate_layers(n={depth - 2})``), patch tokens."""
    x = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = x + p["pos_embed"]
    if dino:  # no_embed_class: class and register tokens get no position
        x = torch.cat([p["cls_token"].expand(len(x), -1, -1), p["reg_token"].expand(len(x), -1, -1), x], 1)
    width = x.shape[-1]
    for i in range(BLOCKS - 1):
        b = lambda n, i=i: p[f"blocks.{i}.{n}"]  # noqa: E731
        y = F.layer_norm(x, (width,), b("norm1.weight"), b("norm1.bias"), eps=1e-6)
        q, k, v = F.linear(y, b("attn.qkv.weight"), b("attn.qkv.bias")).view(*y.shape[:2], 3, heads, -1).permute(
            2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v
        y = F.linear(att.transpose(1, 2).flatten(2), b("attn.proj.weight"), b("attn.proj.bias"))
        x = x + (b("ls1.scale_factor") * y if dino else y)
        y = F.layer_norm(x, (width,), b("norm2.weight"), b("norm2.bias"), eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"),
                     b("mlp.fc2.bias"))
        x = x + (b("ls2.scale_factor") * y if dino else y)
    return x[:, 5:] if dino else x


def _reference(state, images, state_vec, text, l1):
    """OpenVLA-OFT's actions for ONE observation (batch 1, as its predict_action)."""
    sub = lambda pre: {k[len(pre):]: v.float() for k, v in state.items() if k.startswith(pre)}  # noqa: E731
    x = images.float() / 255
    dino_x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    patches = torch.cat([torch.cat([_ref_vit(sub("vision_backbone.featurizer."), dino_x[i:i + 1], 2, True),
                                    _ref_vit(sub("vision_backbone.fused_featurizer."), (x[i:i + 1] - 0.5) / 0.5, 2,
                                             False)], -1) for i in range(V)], 1)
    pj = sub("projector.")
    patches = F.linear(F.gelu(F.linear(F.gelu(F.linear(patches, pj["fc1.weight"], pj["fc1.bias"])), pj["fc2.weight"],
                                       pj["fc2.bias"])), pj["fc3.weight"], pj["fc3.bias"])
    lo, hi = np.array(STATS["proprio"]["q01"]), np.array(STATS["proprio"]["q99"])
    prop = np.clip(np.where(STATS["proprio"]["mask"], 2 * (state_vec - lo) / (hi - lo + 1e-8) - 1, state_vec), -1, 1)
    pp = sub("proprio.")
    ptok = F.linear(F.gelu(F.linear(torch.tensor(prop, dtype=torch.float32), pp["fc1.weight"], pp["fc1.bias"])),
                    pp["fc2.weight"], pp["fc2.bias"])
    patches = torch.cat([patches, ptok.view(1, 1, -1)], 1)
    tok = _tokenizer()
    prompt = [1] + tok(f"In: What action should the robot take to {text.lower()}?\nOut:",
                       add_special_tokens=False)["input_ids"] + [3]
    ids = torch.tensor([prompt + [31] * (H * A) + [2]])
    llm = tf.LlamaForCausalLM(tf.LlamaConfig(**{k: v for k, v in TEXT.items() if k != "model_type"}))
    llm.load_state_dict({k[len("language_model."):]: v.float() for k, v in state.items()
                         if k.startswith("language_model.")})
    emb = llm.get_input_embeddings()(ids)
    is_action = torch.zeros(ids.shape, dtype=torch.bool)
    is_action[0, len(prompt):len(prompt) + H * A] = True
    emb = emb * ~is_action[..., None]
    seq = torch.cat([emb[:, :1], patches, emb[:, 1:]], 1)
    mask = torch.zeros(1, 1, seq.shape[1], seq.shape[1])  # OpenVLA-OFT's attention is bidirectional
    with torch.no_grad():
        out = llm(inputs_embeds=seq, attention_mask=mask, output_hidden_states=True)
    start = patches.shape[1] + len(prompt) - 1  # NUM_PATCHES + NUM_PROMPT_TOKENS
    hidden, logits = out.hidden_states[-1][0, start:start + H * A], out.logits[0, start:start + H * A]
    if l1:
        hd = sub("head.model.")
        z = hidden.reshape(H, A * D_LLM)
        z = F.relu(F.linear(F.layer_norm(z, z.shape[-1:], hd["layer_norm1.weight"], hd["layer_norm1.bias"]),
                            hd["fc1.weight"], hd["fc1.bias"]))
        for i in range(2):
            g = lambda n, i=i: hd[f"mlp_resnet_blocks.{i}.ffn.{n}"]  # noqa: E731
            z = z + F.relu(F.linear(F.layer_norm(z, z.shape[-1:], g("0.weight"), g("0.bias")), g("1.weight"),
                                    g("1.bias")))
        normalized = F.linear(F.layer_norm(z, z.shape[-1:], hd["layer_norm2.weight"], hd["layer_norm2.bias"]),
                              hd["fc2.weight"], hd["fc2.bias"]).numpy()
    else:
        end = VOCAB - PAD_TO
        token = logits[:, end - 256:end].argmax(-1).numpy() + end - 256  # the action tokens' argmax
        centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
        normalized = centers[np.clip(end - token - 1, 0, 254)].reshape(H, A)
    lo, hi = np.array(STATS["action"]["q01"]), np.array(STATS["action"]["q99"])
    actions = np.where(STATS["action"]["mask"], 0.5 * (normalized + 1) * (hi - lo + 1e-8) + lo, normalized)
    return actions, logits[:, VOCAB - PAD_TO - 256:VOCAB - PAD_TO]


def _obs():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, V, 3, IMG, IMG), dtype=torch.uint8, generator=g)
    lo, hi = torch.tensor(STATS["proprio"]["q01"]), torch.tensor(STATS["proprio"]["q99"])
    state = lo + (hi - lo) * (1.4 * torch.rand(2, S, generator=g) - 0.2)  # some beyond the bounds (clipped)
    return {OBS_IMAGE: images, OBS_STATE: state, OBS_INSTRUCTION: ["put the cream cheese in the bowl",
                                                                   "pick up the black bowl and place it on the plate"]}


def _convert(src, out, *extra):  # no centre crop: predict_action sees the image OFT's eval script hands it
    return main(["convert", "openvla-oft", str(src), "--out", str(out), "--image-size", str(IMG), "--horizon", str(H),
                 "--center-crop", "0", *extra])


@pytest.mark.parametrize("head", ["l1", "tokens"])
def test_the_converted_policy_computes_what_openvla_oft_computes(checkpoint, tmp_path, head):
    src, state = checkpoint
    assert _convert(src, tmp_path / "policy", *(["--action-head", "none"] if head == "tokens" else [])) == 0
    policy = load_pretrained(tmp_path / "policy").eval()
    c = policy.config
    assert (c.oft_action_head, c.oft_proprio, c.oft_action_token_end, c.oft_prompt_end_ids) == (head, True, 512, (3,))
    obs = _obs()
    out = policy.act(obs, mode="greedy")
    for i in range(2):  # a batch of two prompts of different lengths (padded) against one-by-one references
        actions, logits = _reference(state, obs[OBS_IMAGE][i], obs[OBS_STATE][i].numpy().astype(np.float64),
                                     obs[OBS_INSTRUCTION][i], l1=head == "l1")
        actions[:, -1] = 1 - 2 * actions[:, -1]  # OFT's LIBERO eval: gripper 0 close..1 open -> -1 open, +1 close
        assert np.allclose(out.actions[i].numpy(), actions, atol=2e-4), np.abs(out.actions[i].numpy() - actions).max()
        if head == "tokens":  # bin b of the policy is OpenVLA's token end-1-b
            ours = policy.features({k: v[i:i + 1] for k, v in obs.items()})[0].reshape(H * A, 256)
            assert torch.allclose(ours, logits.flip(-1), atol=2e-4)
    if head == "tokens":  # a converted token policy is an RL policy: sampled chunks replay exactly
        sample = policy.act(obs, mode="sample", temperature=1.6, generator=torch.Generator().manual_seed(0))
        lp, _, _ = policy.evaluate(obs, sample.replay)
        assert torch.allclose(lp, sample.log_prob, atol=1e-5)


def test_images_are_resized_to_the_towers(checkpoint, tmp_path):
    src, _ = checkpoint
    assert main(["convert", "openvla-oft", str(src), "--out", str(tmp_path / "p"), "--image-size", "32",
                 "--horizon", str(H)]) == 0
    policy = load_pretrained(tmp_path / "p").eval()
    obs = _obs()
    obs[OBS_IMAGE] = F.interpolate(obs[OBS_IMAGE].flatten(0, 1).float(), size=(32, 32)).to(torch.uint8).view(
        2, V, 3, 32, 32)
    out = policy.act(obs, mode="greedy")
    assert out.actions.shape == (2, H, A) and torch.isfinite(out.actions).all()


def test_conversion_errors_are_one_line(checkpoint, tmp_path, capsys):
    src, _ = checkpoint

    def error(*args, match):
        capsys.readouterr()
        assert _convert(*args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and match in " ".join(err.split()), err

    error(tmp_path / "nowhere", tmp_path / "o", match="is not a checkpoint folder")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    stats = json.loads((bad / "dataset_statistics.json").read_text())
    (bad / "dataset_statistics.json").write_text(json.dumps({**stats, "other": stats["libero_spatial_no_noops"]}))
    error(bad, tmp_path / "o", match="choose one with --unnorm-key")
    error(bad, tmp_path / "o", "--unnorm-key", "nope", match="'nope' is not among the checkpoint's datasets")
    (bad / "vision_backbone--150000_checkpoint.pt").write_bytes(b"")
    error(bad, tmp_path / "o", "--unnorm-key", "other", match="FiLM vision backbone")
    (bad / "vision_backbone--150000_checkpoint.pt").unlink()
    (bad / "action_head--150000_checkpoint.pt").write_bytes(b"not a torch file")
    error(bad, tmp_path / "o", "--unnorm-key", "other", match="cannot be read as plain tensors")
    (bad / "action_head--150000_checkpoint.pt").unlink()
    for f in bad.glob("model*"):
        f.unlink()
    (bad / "pytorch_model.bin").write_bytes(b"")
    error(bad, tmp_path / "o", "--unnorm-key", "other", match="does not unpickle checkpoint files")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "llava"}))
    error(bad, tmp_path / "o", match="is not an OpenVLA(-OFT) config")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    error(src, tmp_path / "taken", match="pass --overwrite")
    error(src, tmp_path / "taken", "--overwrite", match="")  # refused: not a reinforge folder
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_a_converted_token_policy_trains_with_ppo(checkpoint, tmp_path):
    """The converted policy is an RL policy as it is: 2 PPO iterations on the built-in world (64 px views resized
    to the towers' 28 px), the rollout's log-probs replayed, the language model updated."""
    from helpers import two_rl_iterations

    src, _ = checkpoint
    assert main(["convert", "openvla-oft", str(src), "--out", str(tmp_path / "p"), "--image-size", "64",
                 "--horizon", str(H), "--execute-steps", "2", "--action-head", "none"]) == 0
    rows, before, after, _ = two_rl_iterations(tmp_path / "p", tmp_path / "rl", "ppo")
    assert all(r["rollout/episodes"] >= 1 and abs(r["train/ratio_mean"] - 1) < 0.2 for r in rows)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("llm."))


def test_lerobot_conversion_errors_are_one_line(tmp_path, capsys):
    """``reinforge convert lerobot`` refuses what it cannot convert before loading anything (its success path is in
    tests/test_lerobot.py, which needs LeRobot's Python 3.12 venv)."""
    import importlib.util

    def error(*args, match):
        capsys.readouterr()
        assert main(["convert", "lerobot", *map(str, args)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "Traceback" not in err and match in err, err

    error(tmp_path / "nowhere", "--out", tmp_path / "o", match="is not a LeRobot checkpoint folder")
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"type": "act"}))
    error(src, "--out", tmp_path / "o", "--tokenizer", "hash", match="holds a LeRobot 'act' policy")
    (src / "config.json").write_text(json.dumps({"type": "pi0"}))
    error(src, "--out", tmp_path / "o", match="pass --tokenizer FOLDER")
    if importlib.util.find_spec("lerobot") is None:
        error(src, "--out", tmp_path / "o", "--tokenizer", "hash", match="needs LeRobot >= 0.6 on Python >= 3.12")
