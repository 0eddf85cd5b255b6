"""Green-VLA monitors: AUROC and shrinkage numerics, OOD calibration and shift detection, the progress head, the
stopping rule, save/load, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from reinforge.cli import main
from reinforge.data import DemoDataset
from reinforge.data.record import record_demos
from reinforge.envs import EnvConfig, make_env
from reinforge.monitor import (
    OODConfig,
    OODDetector,
    ProgressConfig,
    ProgressHead,
    StopRule,
    auroc,
    episode_scores,
    evaluate_monitored,
    fit_monitors,
    load_monitors,
)
from reinforge.monitor.evaluate import stop_streak
from reinforge.monitor.features import dataset_features, episode_frames, policy_features
from reinforge.monitor.ood import ledoit_wolf, mahalanobis, shrunk_gaussian
from reinforge.monitor.storage import TENSORS_NAME
from reinforge.policies import Normalizer, PolicyConfig, make_policy

TINY = dict(kind="flow", image_size=(32, 32), d_model=32, channels=(16, 16), fusion_layers=1, heads=2, horizon=4,
            execute_steps=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = record_demos("spatial", tmp_path_factory.mktemp("d") / "ds", per_task=2, image_size=32, tasks=[0, 1])
    return DemoDataset.load(path)


@pytest.fixture(scope="module")
def policy(data):
    torch.manual_seed(0)
    return make_policy(PolicyConfig(**TINY), Normalizer.from_stats(data.stats)).eval()


@pytest.fixture(scope="module")
def monitors(policy, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "monitors"
    summary = fit_monitors(policy, data, out, progress_config=ProgressConfig(steps=200, batch_size=64))
    progress, ood = load_monitors(out)
    return out, summary, progress, ood


# ------------------------------------------------------------------------------------------ pure numerics


def test_auroc_hand_computed_cases_and_ties():
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])) == 0.5  # all tied: chance
    # pairs (pos, neg): (2,1) 1, (2,2) 0.5, (3,1) 1, (3,2) 1 -> 3.5 / 4
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 3.0])) == pytest.approx(0.875)
    assert auroc(torch.tensor([0.0, 2.0]), torch.tensor([1.0])) == pytest.approx(0.5)
    # rank formula == the pairwise definition, with many ties
    g = torch.Generator().manual_seed(0)
    neg, pos = torch.randint(0, 5, (37,), generator=g).float(), torch.randint(1, 6, (23,), generator=g).float()
    pairs = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    assert auroc(neg, pos) == pytest.approx(float(pairs.mean()), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="finite"):
        auroc(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_episode_scores_ignore_calls_after_the_episode_ended():
    scores = torch.tensor([[1.0, 5.0, 99.0], [2.0, 3.0, 4.0], [7.0, 7.0, 7.0]])
    valid = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    out = episode_scores(scores, valid)
    assert out[:2].tolist() == [5.0, 4.0] and torch.isnan(out[2])
    assert episode_scores(scores, valid, quantile=0.5)[:2].tolist() == [3.0, 3.0]


def test_ledoit_wolf_matches_its_definition_and_mahalanobis_the_inverse():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov, s = ledoit_wolf(x)
    xc = x - x.mean(0)
    emp = xc.T @ xc / 40
    mu = torch.trace(emp) / 6
    d2 = ((emp - mu * torch.eye(6, dtype=x.dtype)) ** 2).sum() / 6
    b2 = sum(((torch.outer(r, r) - emp) ** 2).sum() / 6 for r in xc) / 40**2  # the per-sample loop
    assert s == pytest.approx(float(min(b2, d2) / d2), rel=1e-9) and 0 < s < 1
    assert torch.allclose(cov, (1 - s) * emp + s * mu * torch.eye(6, dtype=x.dtype))
    mix = torch.randn(6, 6, generator=g)
    assert ledoit_wolf(torch.randn(20000, 6, generator=g) @ mix)[1] < 0.01  # plenty of data: little shrinkage
    assert ledoit_wolf(torch.randn(20000, 6, generator=g))[1] > 0.5  # the truth is mu * I: shrink towards it
    mean, cov, _ = shrunk_gaussian(x, shrinkage=0.3)
    q = torch.randn(5, 6, generator=g, dtype=torch.float64)
    want = ((q - mean) @ torch.linalg.inv(cov) * (q - mean)).sum(1).sqrt()
    assert torch.allclose(mahalanobis(q, mean, torch.linalg.cholesky(cov)), want)


def test_threshold_flags_one_percent_of_fresh_in_distribution_samples():
    g = torch.Generator().manual_seed(2)
    mix = torch.randn(10, 10, generator=g)

    def draw(n):
        return torch.randn(n, 10, generator=g) @ mix + 3.0

    det = OODDetector.fit_features(draw(4000), draw(4000), OODConfig(quantile=0.99))
    assert det.meta["heldout_flag_rate"] == pytest.approx(0.01, abs=0.002)
    fresh = det.flag_features(draw(40000)).float().mean()
    assert 0.006 < float(fresh) < 0.015
    var, axes = torch.linalg.eigh(mix.T @ mix)  # the data's covariance is mix^T mix
    shifted = draw(2000) + 8 * var[0].sqrt() * axes[:, 0]  # 8 std along its narrowest axis: never in distribution
    assert float(det.flag_features(shifted).float().mean()) > 0.9
    wide = draw(2000) + 8 * var[-1].sqrt() * axes[:, -1]  # the same in std units along the widest axis
    assert float(det.flag_features(wide).float().mean()) > 0.9


def test_stop_streak_needs_consecutive_hits():
    rule = StopRule(threshold=0.9, patience=2)
    streak, active = torch.zeros(3, dtype=torch.int64), torch.tensor([True, True, False])
    end = torch.zeros(3)
    streak, stop = stop_streak(streak, torch.tensor([0.95, 0.95, 1.0]), end, active, rule)
    assert streak.tolist() == [1, 1, 0] and not stop.any()
    streak, stop = stop_streak(streak, torch.tensor([0.95, 0.5, 1.0]), end, active, rule)
    assert streak.tolist() == [2, 0, 0] and stop.tolist() == [True, False, False]
    _, stop = stop_streak(torch.tensor([1, 0, 0]), torch.zeros(3), torch.tensor([0.6, 0.4, 0.0]), active, rule)
    assert stop.tolist() == [True, False, False]  # the end probability alone counts too


# ------------------------------------------------------------------------------------------ behaviour


def _replay_scores(ood, policy, data, episode: int, domain: str) -> torch.Tensor:
    """OOD scores of the states of a demonstration replayed from its initial state in ``domain``."""
    e = data.episodes[episode]
    env = make_env("tabletop", suite="spatial", num_envs=1, image_size=32, init_bank="train", domain=domain)
    obs, seen = env.reset([e["task_id"]], [e["init_id"]]), []
    for a in data.actions[episode_frames(data, torch.tensor([episode]))]:
        seen.append(obs)
        obs = env.step(a[None]).obs
    batch = {k: torch.cat([o[k] for o in seen]) for k in ("image", "state")}
    batch["instruction"] = [t for o in seen for t in o["instruction"]]
    return ood.score_features(policy_features(policy, batch))


def test_ood_scores_are_higher_on_shifted_views_of_the_same_states(monitors, policy, data):
    _, summary, _, ood = monitors
    assert summary["ood"]["heldout_flag_rate"] <= 0.05
    held = ood.meta["heldout_episodes"][0]
    nominal = ood.score_features(dataset_features(policy, data, episode_frames(data, torch.tensor([held]))))
    replay = _replay_scores(ood, policy, data, held, "sim")  # the same frames again: as familiar
    assert torch.allclose(replay, nominal, atol=1e-3)
    camera = _replay_scores(ood, policy, data, held, "real-camera")  # the same states, seen by a moved camera
    assert auroc(nominal, camera) > 0.8
    assert float(ood.flag_features(dataset_features(policy, data)).float().mean()) < 0.05


def test_progress_head_learns_beyond_the_mean(monitors, policy, data):
    _, summary, head, _ = monitors
    s = summary["progress"]
    assert s["val_mse"] < 0.25 * s["baseline_mse"], s
    held = head.meta["heldout_episodes"][0]
    frames = episode_frames(data, torch.tensor([held]))
    progress, end = head.predict(dataset_features(policy, data, frames))
    assert progress[0] < 0.25 and progress[-1] > 0.75
    assert end[-1] > end[0]


class StepProgress:
    """A fake progress head: 0 for the first ``k`` policy calls of a batch, then 1."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        done = float(self.calls >= self.k)
        self.calls += 1
        B = features.shape[0]
        return torch.full((B,), done), torch.zeros(B)

    def check_policy(self, policy) -> None:
        pass


def test_progress_head_stops_episodes_and_without_it_they_run_to_the_limit(policy, monitors):
    env = EnvConfig(suite="spatial")
    kw = dict(tasks=[0, 1], episodes_per_task=1, max_episode_steps=40)
    r = evaluate_monitored(policy, env, progress=StepProgress(k=3), stop_patience=2, **kw)
    # calls 0-2 read 0, calls 3 and 4 read 1: the episode stops before call 4 acts, after 4 chunks of 4 steps
    assert r.episode_length == [16, 16] and r.stop_rate == 1.0 and r.episode_stopped == [True, True]
    assert r.variant["end_on_success"] is False
    r = evaluate_monitored(policy, env, ood=monitors[3], **kw)
    assert r.episode_length == [40, 40] and r.stop_rate == 0.0 and r.monitors == ["ood"]
    assert len(r.ood_scores) == 2 and 0.0 <= r.ood_call_flag_rate <= 1.0
    with pytest.raises(ValueError, match="patience"):
        evaluate_monitored(policy, env, progress=StepProgress(k=0), stop_patience=0, **kw)


def test_save_load_round_trip_and_corrupt_files(monitors, policy, data, tmp_path):
    out, _, head, ood = monitors
    feats = dataset_features(policy, data, torch.arange(10))
    ood2, head2 = OODDetector.load(out / "ood"), ProgressHead.load(out / "progress")
    assert torch.equal(ood2.score_features(feats), ood.score_features(feats)) and ood2.threshold == ood.threshold
    assert all(torch.equal(a, b) for a, b in zip(head2.predict(feats), head.predict(feats)))
    # a truncated tensor file, a broken JSON, the wrong kind of folder: clear errors
    bad = tmp_path / "bad"
    ood.save(bad)
    (bad / TENSORS_NAME).write_bytes((bad / TENSORS_NAME).read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt"):
        OODDetector.load(bad)
    with pytest.raises(ValueError, match="holds a reinforge ood_detector, not a progress_head"):
        head.save(bad)  # never replaces a monitor of another kind
    head.save(tmp_path / "bad2")
    (tmp_path / "bad2" / "monitor.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        ProgressHead.load(tmp_path / "bad2")
    with pytest.raises(ValueError, match="not a 'ood_detector'"):
        OODDetector.load(out / "progress")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a reinforge monitor folder"):
        ood.save(tmp_path / "mine")
    other = make_policy(PolicyConfig(**{**TINY, "d_model": 16}), Normalizer.from_stats(data.stats))
    with pytest.raises(ValueError, match="d_model=32"):
        ood.check_policy(other)
    with pytest.raises(ValueError, match="reads 40-dim features"):
        head.check_policy(other)


def test_cli_fit_then_eval(policy, data, tmp_path, capsys):
    policy.save_pretrained(tmp_path / "policy")
    m = tmp_path / "monitors"
    assert main(["monitor", "fit", "--policy", str(tmp_path / "policy"), "--data", str(data.root), "--out", str(m),
                 "--steps", "50"]) == 0
    fit = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(fit) == {"ood", "progress"} and fit["ood"]["threshold"] > 0
    argv = ["monitor", "eval", "--policy", str(tmp_path / "policy"), "--monitors", str(m), "--suite", "spatial",
            "--tasks", "0,1", "--episodes-per-task", "1", "--max-steps", "24", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num_episodes"] == 2 and r["monitors"] == ["progress", "ood"] and max(r["episode_length"]) <= 24
    assert len(r["ood_scores"]) == 2
    assert main(argv[:5] + [str(tmp_path)] + argv[6:]) == 2  # a folder without monitors: a one-line error
    assert "holds no monitors" in capsys.readouterr().err
