"""LeRobot's pi0 and pi0.5 behind the Policy contract (``kind: lerobot``, policies/lerobot.py): our denoising loop
over their ``denoise_step``, Flow-SDE / Flow-Noise log-prob replay, SFT through LeRobot's loss, GRPO / PPO through the
trainer.

Needs LeRobot >= 0.6 on Python >= 3.12, which lives in its own venv: ``make test-lerobot`` (builds
``.venv-lerobot``, ~2 min and ~5 GB, then runs ``pytest -m lerobot``). Skipped where LeRobot is not installed.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("lerobot.policies.pi0.modeling_pi0")

from helpers import two_rl_iterations  # noqa: E402
from reinforge.envs import TabletopEnv  # noqa: E402
from reinforge.policies import Normalizer, PolicyConfig, load_pretrained, make_policy  # noqa: E402
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE  # noqa: E402

pytestmark = pytest.mark.lerobot

TINY = dict(kind="lerobot", image_size=(32, 32), d_model=64, horizon=4, execute_steps=3, num_steps=4)
# roll/pitch/yaw never vary in the tabletop data: constant dims are masked
NORM = Normalizer([-1, -1, -1, 0, 0, 0, -1], [1, 1, 1, 0, 0, 0, 1], [0.0] * 8, [1.0] * 8)


def _obs(n=4):
    env = TabletopEnv("spatial", n, image_size=32)
    return env.reset(torch.arange(n) % 10, torch.arange(n))


MODELS = ["pi0", "pi05", "smolvla"]


def _policy(model="pi0", **kw):
    torch.manual_seed(0)
    return make_policy(PolicyConfig(**{**TINY, "lerobot_model": model, **kw}), NORM).eval()


def test_they_are_lerobots_models_and_read_the_state():
    from lerobot.policies.pi0.modeling_pi0 import PI0Pytorch
    from lerobot.policies.pi05.modeling_pi05 import PI05Pytorch
    from lerobot.policies.smolvla.modeling_smolvla import VLAFlowMatching

    pi0, pi05, smolvla = _policy("pi0"), _policy("pi05"), _policy("smolvla")
    assert isinstance(pi0.model, PI0Pytorch) and isinstance(pi05.model, PI05Pytorch)
    assert isinstance(smolvla.model, VLAFlowMatching)
    assert pi0.model.config.chunk_size == 4 and pi0.model.config.max_action_dim >= 7
    assert pi05.model.paligemma_with_expert.gemma_expert.config.use_adarms  # time enters pi0.5's expert by adaRMS
    obs = _obs()
    moved = {**obs, OBS_STATE: obs[OBS_STATE] + 0.5}
    for policy in (pi0, pi05, smolvla):  # pi0 / SmolVLA: a state token; pi0.5: state tokens in the prompt
        g = torch.Generator().manual_seed(0)
        a = policy.act(obs, mode="greedy", generator=g).actions
        g = torch.Generator().manual_seed(0)
        assert not torch.allclose(a, policy.act(moved, mode="greedy", generator=g).actions)
    with pytest.raises(ValueError, match="lerobot_model.*not one of"):
        _policy("gr00t")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode,sampler", [("sample", "sde"), ("sample", "noise"), ("greedy", None)])
def test_evaluate_recomputes_the_rollout_log_prob(model, mode, sampler):
    policy = _policy(model)
    obs = _obs()
    out = policy.act(obs, mode=mode, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (4, 3, 7) and out.value.shape == (4,)
    assert (out.actions[..., 3:6] == 0).all(), "masked dims decode to their constant value"
    if mode == "greedy":
        again = policy.act(obs, mode="greedy", generator=torch.Generator().manual_seed(0))
        assert torch.equal(out.actions, again.actions)
        return
    lp, ent, value = policy.evaluate(obs, out.replay)
    assert torch.allclose(lp, out.log_prob, atol=1e-5), (lp - out.log_prob).abs().max()
    assert torch.isfinite(ent).all() and torch.allclose(value, out.value, atol=1e-6)
    idx = torch.tensor([3, 0, 2])  # a sub-batch in another order: the replay tensors are all it needs
    sub = {OBS_IMAGE: obs[OBS_IMAGE][idx], OBS_STATE: obs[OBS_STATE][idx],
           OBS_INSTRUCTION: [obs[OBS_INSTRUCTION][i] for i in idx]}
    lp2, _, _ = policy.evaluate(sub, {k: v[idx] for k, v in out.replay.items()})
    assert torch.allclose(lp2, out.log_prob[idx], atol=1e-5)
    policy.train()  # the learner recomputes in train mode: no dropout or state may change the replay
    lp3, _, _ = policy.evaluate(obs, out.replay)
    assert torch.allclose(lp3, out.log_prob, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_sft_uses_lerobots_loss_and_masks_padding_and_constant_dims(model):
    policy = _policy(model).train()
    obs = _obs()
    actions = torch.rand(4, 4, 7) * 2 - 1
    actions[..., 3:6] = 0
    batch = {**obs, "actions": actions, "is_pad": torch.zeros(4, 4, dtype=torch.bool)}
    batch["is_pad"][:, 3:] = True
    torch.manual_seed(0)
    base, _ = policy.sft_loss(batch)
    changed = {**batch, "actions": actions.clone()}
    changed["actions"][:, 3:] = 0.9  # padded steps: anything
    changed["actions"][..., 3:6] = 0.7  # constant dims: anything
    torch.manual_seed(0)
    other, _ = policy.sft_loss(changed)
    assert torch.allclose(base, other)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        torch.manual_seed(0)  # the same noise and time each step: a fixed regression target
        loss, _ = policy.sft_loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("model", MODELS)
def test_save_load_round_trip(tmp_path, model):
    policy = _policy(model)
    obs = _obs()
    policy.save_pretrained(tmp_path / "p")
    loaded = load_pretrained(tmp_path / "p").eval()
    out = policy.act(obs, mode="sample", sampler="noise", generator=torch.Generator().manual_seed(1))
    lp, _, v = loaded.evaluate(obs, out.replay)
    assert torch.allclose(lp, out.log_prob, atol=1e-5) and torch.allclose(v, out.value)


@pytest.mark.parametrize("model,algo", [(m, a) for m in MODELS for a in ("grpo", "ppo")])
def test_two_rl_iterations_on_the_built_in_world(tmp_path, model, algo):
    _policy(model).save_pretrained(tmp_path / "init")
    extra = [] if algo == "ppo" else ["flow_sampler=noise"]
    rows, before, after, vision = two_rl_iterations(tmp_path / "init", tmp_path / "rl", algo, *extra)
    assert all(r["rollout/episodes"] >= 1 for r in rows)
    # (replay exactness is tested above; here the ratio drifts as the minibatches update the policy)
    assert all(torch.isfinite(torch.tensor(r["train/ratio_mean"])) for r in rows)
    moved = [k for k in vision if not torch.equal(before[k], after[k])]
    assert vision and not moved, f"the frozen vision tower stays put: {moved[:3]}"
    if algo == "ppo":
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model."))


@pytest.mark.parametrize("model", ["smolvla", "pi0"])
def test_a_policy_saved_from_a_lerobot_folder_loads_without_it(tmp_path, monkeypatch, model):
    """A policy started from ``lerobot_path`` keeps the LeRobot config under ``lerobot/``: loaded back, it is
    rebuilt from that (and its weights from ours) with the LeRobot folder gone. SmolVLA's kept SmolVLM config makes
    its load need nothing else; pi0 knows only its full-size Gemma variants by name, so its small checkpoint is
    built and loaded inside the tiny build's swaps."""
    import importlib
    import shutil

    import lerobot.policies.smolvla.smolvlm_with_expert as sw

    from reinforge.policies import lerobot as lr

    config = PolicyConfig(**{**TINY, "lerobot_model": model})
    mod = importlib.import_module(f"lerobot.policies.{model}.modeling_{model}")
    swaps = (lambda: lr._tiny_smolvla(config)) if model == "smolvla" else (lambda: lr._tiny_pi0(mod, config))
    torch.manual_seed(0)
    with swaps():  # a small LeRobot checkpoint: LeRobot's policy around the tiny network, saved LeRobot's way
        tiny = make_policy(config, NORM).model
        lerobot_policy = getattr(mod, lr.MODELS[model][3])(tiny.config)
        lerobot_policy.model.load_state_dict(tiny.state_dict())
        lerobot_policy.save_pretrained(tmp_path / "lerobot")
    from_folder = PolicyConfig(**{**TINY, "lerobot_model": model, "lerobot_path": str(tmp_path / "lerobot"),
                                  "lerobot_tokenizer": "hash"})
    torch.manual_seed(1)
    with swaps():
        policy = make_policy(from_folder, NORM).eval()
    for k, v in tiny.state_dict().items():  # the checkpoint's weights, not a fresh random network
        assert torch.equal(policy.model.state_dict()[k], v), k
    policy.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "lerobot" / "config.json").is_file()
    shutil.rmtree(tmp_path / "lerobot")

    def no_hub(*a, **k):
        raise AssertionError("a saved smolvla policy read its SmolVLM config or processor by name")

    monkeypatch.setattr(sw, "AutoConfig", type("NoHub", (), {"from_pretrained": staticmethod(no_hub)}))
    monkeypatch.setattr(sw, "AutoProcessor", type("NoHub", (), {"from_pretrained": staticmethod(no_hub)}))
    with swaps() if model == "pi0" else contextlib.nullcontext():
        loaded = load_pretrained(tmp_path / "p").eval()
    obs = _obs()
    a = policy.act(obs, mode="greedy", generator=torch.Generator().manual_seed(0)).actions
    b = loaded.act(obs, mode="greedy", generator=torch.Generator().manual_seed(0)).actions
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    with pytest.raises(ValueError, match=r"cannot load \w+ from .*\(a local LeRobot folder\): no such folder"):
        make_policy(from_folder, NORM)
    shutil.rmtree(tmp_path / "p" / "lerobot")  # without the kept config the (gone) source folder is needed again
    with pytest.raises(ValueError, match=r"cannot load \w+ from .*\(a local LeRobot folder\): no such folder"):
        load_pretrained(tmp_path / "p")


def _word_tokenizer():
    """A small stand-in for the VLM's tokenizer (PaliGemma's cannot be downloaded here)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = "put pick place the a bowl plate on in of and it up black red blue Task State Action : ; , ."
    words = [*words.split(" "), *map(str, range(-1, 258))]  # the numbers: pi0.5's state bins
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{w: 4 + i for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")


@pytest.mark.parametrize("model", MODELS)
def test_a_converted_lerobot_checkpoint_acts_as_lerobots_own_pipeline(tmp_path, monkeypatch, model):
    """``reinforge convert lerobot``: a small LeRobot checkpoint with its processor pipelines (LeRobot's own
    factories: normalisation statistics, prompt format, tokenizer) is converted; on the same observations and initial
    noise the converted policy's greedy chunk equals LeRobot's preprocessor -> predict_action_chunk -> postprocessor
    (images of another size resized with padding; pi0 / pi0.5 also get a third camera the env lacks, blank and
    masked; pi0.5's state as 256-bin prompt tokens; standardised (pi0, SmolVLA) or quantile (pi0.5) actions)."""
    import importlib
    import shutil

    import lerobot.processor.tokenizer_processor as tp
    from lerobot.configs.types import FeatureType, PolicyFeature

    from reinforge.cli import main
    from reinforge.policies import lerobot as lr

    mod = importlib.import_module(f"lerobot.policies.{model}.modeling_{model}")
    proc = importlib.import_module(f"lerobot.policies.{model}.processor_{model}")
    conf = getattr(importlib.import_module(f"lerobot.policies.{model}.configuration_{model}"), lr.MODELS[model][2])
    tok = _word_tokenizer()
    tok.save_pretrained(tmp_path / "tokenizer")
    monkeypatch.setattr(tp, "AutoTokenizer", type("Local", (), {"from_pretrained": staticmethod(lambda *a, **k: tok)}))
    cams = 2 if model == "smolvla" else 3
    feats = {f"observation.images.cam{i}": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)) for i in range(cams)}
    feats["observation.state"] = PolicyFeature(FeatureType.STATE, (8,))
    common = dict(chunk_size=4, n_action_steps=3, max_state_dim=8, max_action_dim=10, device="cpu",
                  tokenizer_max_length=48, input_features=feats,
                  output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))})
    c = PolicyConfig(**{**TINY, "lerobot_model": model})
    if model == "smolvla":
        pc = conf(num_steps=4, load_vlm_weights=False, resize_imgs_with_padding=(32, 32),
                  num_vlm_layers=c.lerobot_depth, **common)
    else:
        pc = conf(num_inference_steps=4, image_resolution=(32, 32), dtype="float32", **common)
    swaps = (lambda: lr._tiny_smolvla(c)) if model == "smolvla" else (lambda: lr._tiny_pi0(mod, c))
    g = torch.Generator().manual_seed(3)
    stats = {k: {"mean": torch.randn(n, generator=g) * 0.3, "std": torch.rand(n, generator=g) + 0.5,
                 "q01": -1 - torch.rand(n, generator=g), "q99": 1 + torch.rand(n, generator=g),
                 "min": -torch.full((n,), 3.0), "max": torch.full((n,), 3.0)}
             for k, n in (("observation.state", 8), ("action", 7))}
    torch.manual_seed(0)
    with swaps():
        lerobot_policy = getattr(mod, lr.MODELS[model][3])(pc).eval()
    pre, post = getattr(proc, f"make_{model}_pre_post_processors")(pc, stats)
    src = tmp_path / "lerobot"
    for part in (lerobot_policy, pre, post):
        part.save_pretrained(src)

    with swaps():
        assert main(["convert", "lerobot", str(src), "--out", str(tmp_path / "p"), "--tokenizer",
                     str(tmp_path / "tokenizer"), "--image-size", "24", "--num-views", "2"]) == 0
    shutil.rmtree(src)
    shutil.rmtree(tmp_path / "tokenizer")
    with swaps() if model != "smolvla" else contextlib.nullcontext():
        policy = load_pretrained(tmp_path / "p").eval()

    env = TabletopEnv("spatial", 2, image_size=24)
    obs = env.reset(torch.tensor([0, 4]), torch.tensor([0, 1]))
    obs[OBS_STATE] = torch.rand(2, 8, generator=g) * 5 - 2.5  # spread over (and past) the statistics' range
    batch = {f"observation.images.cam{i}": obs[OBS_IMAGE][:, i].float() / 255 for i in range(2)}
    batch |= {"observation.state": obs[OBS_STATE].float(), "task": list(obs[OBS_INSTRUCTION])}
    noise = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(0))  # 3 padding dims, integrated too
    with torch.no_grad():
        expected = post(lerobot_policy.predict_action_chunk(pre(batch), noise=noise))
    ours = policy.act(obs, mode="greedy", generator=torch.Generator().manual_seed(0)).actions
    assert ours.shape == (2, 3, 7)
    assert torch.allclose(ours, expected[:, :3], atol=1e-4), (ours - expected[:, :3]).abs().max()


@pytest.mark.parametrize("model", MODELS)
def test_pooled_features_summarise_the_prefix(model):
    """The OOD / progress monitors' input: the mean prefix state, (B, d_model), moved by the instruction."""
    policy = _policy(model)
    obs = _obs(2)
    f = policy.pooled_features(obs)
    assert f.shape == (2, 64) and torch.isfinite(f).all()
    other = {**obs, OBS_INSTRUCTION: ["open the top drawer and put the bowl inside"] * 2}
    assert not torch.allclose(policy.pooled_features(other), f)


@pytest.mark.parametrize("model", MODELS)
def test_cached_vision_features_give_the_same_chunks_and_log_probs(model):
    """With a frozen vision tower, rollouts store ``encode_images`` (each view's ``embed_image`` tokens) instead of
    images: the policy acting and replaying from them matches the images exactly, and the tower is not run."""
    from reinforge.types import OBS_IMAGE_FEATURES

    policy = _policy(model)
    obs = _obs(3)
    feats = policy.encode_images(obs[OBS_IMAGE])
    assert feats.shape[0] == 3 and feats.shape[2] == policy.image_feature_dim
    cached = {k: v for k, v in obs.items() if k != OBS_IMAGE}
    cached[OBS_IMAGE_FEATURES] = feats
    for sampler in ("sde", "noise"):
        out = policy.act(obs, mode="sample", sampler=sampler, generator=torch.Generator().manual_seed(0))
        again = policy.act(cached, mode="sample", sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out.actions, again.actions, atol=1e-5)
        lp, _, _ = policy.evaluate(cached, out.replay)
        assert torch.allclose(lp, out.log_prob, atol=1e-5)
    calls = []
    tower = (policy.model.vlm_with_expert.get_vlm_model().vision_model if model == "smolvla"
             else policy.model.paligemma_with_expert.paligemma.model.vision_tower)
    handle = tower.register_forward_hook(lambda *a: calls.append(1))
    policy.evaluate(cached, out.replay)
    handle.remove()
    assert not calls, "the vision tower ran on cached features"


@pytest.mark.parametrize("model", ["pi0", "pi05"])
def test_a_tiny_checkpoint_converts_and_evaluates_from_the_command_line(tmp_path, capsys, model):
    """`reinforge lerobot-tiny` writes a small checkpoint LeRobot's way; `convert lerobot` rebuilds it at the size its
    weights have (config.json can only name the full PaliGemma; nothing private is patched here), and `eval --json`
    prints clean JSON on stdout."""
    import json

    from reinforge.cli import main
    from reinforge.policies.lerobot import checkpoint_sizes

    ck, out = tmp_path / "ck", tmp_path / "p"
    assert main(["lerobot-tiny", "--out", str(ck), "--model", model]) == 0
    assert json.loads((ck / "config.json").read_text())["paligemma_variant"] == "gemma_2b"  # what LeRobot records
    assert checkpoint_sizes(ck / "model.safetensors")["d_model"] == 64
    assert main(["convert", "lerobot", str(ck), "--out", str(out), "--tokenizer", "hash"]) == 0
    policy = load_pretrained(out)
    assert sum(p.numel() for p in policy.parameters()) < 2e6  # not a 3B PaliGemma
    capsys.readouterr()
    assert main(["eval", "--policy", str(out), "--suite", "spatial", "--tasks", "0", "--episodes-per-task", "1",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num_episodes"] == 1
    with pytest.raises(SystemExit):  # argparse refuses the choice (SmolVLA reads its VLM's config from the Hub)
        main(["lerobot-tiny", "--out", str(tmp_path / "s"), "--model", "smolvla"])
