"""Ray scale-out (reinforge.distributed): the config, the import boundary, and (marker ``ray``) env workers and
rollout workers reproducing the in-process run, surviving killed workers, and resuming exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reinforge.config import ConfigError, load_config
from reinforge.distributed import DistributedConfig
from reinforge.train.logging import read_metrics
from reinforge.train.rl import RLConfig, RLTrainer

SRC = Path(__file__).resolve().parents[1] / "src" / "reinforge"


def test_only_the_distributed_package_imports_ray():
    offenders = []
    for path in SRC.rglob("*.py"):
        if "distributed" in path.parts:
            continue
        text = path.read_text()
        if "import ray" in text or "from ray" in text:
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_an_in_process_run_never_imports_ray(tiny_init, tmp_path):
    code = ("import sys; import reinforge.cli; from reinforge.config import load_config; "
            "from reinforge.train.rl import RLConfig, RLTrainer; "
            f"cfg = load_config(RLConfig, None, ['init={tiny_init}', 'out={tmp_path}', 'rollout.num_groups=1', "
            "'rollout.group_size=2', 'rollout.max_episode_steps=3', 'grpo.dynamic_sampling=false']); "
            "t = RLTrainer(cfg); t.train_iteration(); t.close(); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_distributed_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="distributed.backend"):
        DistributedConfig(backend="dask")
    with pytest.raises(ConfigError, match="collocated.*rollout_workers"):
        DistributedConfig(backend="ray", placement="collocated")
    with pytest.raises(ConfigError, match="multiple of distributed.rollout_workers"):
        DistributedConfig(backend="ray", env_workers=3, rollout_workers=2)
    with pytest.raises(ConfigError, match="rollout.pipeline_stages"):
        load_config(RLConfig, None, ["init=x", "rollout.num_groups=3", "rollout.group_size=2",
                                     "rollout.pipeline_stages=4"])


def test_pipelining_needs_envs_in_workers(tiny_init, tmp_path):
    with pytest.raises(ValueError, match=r"pipeline_stages=2 .*\(distributed.backend: ray\)"):
        RLTrainer(_cfg(tiny_init, tmp_path, "rollout.pipeline_stages=2"))


def test_missing_ray_is_one_clear_error(monkeypatch):
    from reinforge.distributed.runtime import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'reinforge\[ray\]'"):
        import_ray()


# ------------------------------------------------------------------------------------------------ with Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    from reinforge.distributed import RayInitConfig
    from reinforge.distributed.runtime import init_ray

    init_ray(RayInitConfig(num_cpus=4))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    from test_rl import tiny_policy

    path = tmp_path_factory.mktemp("init") / "policy"
    tiny_policy().save_pretrained(path)
    return path


RAY = ["distributed.backend=ray", "distributed.ray.num_cpus=4"]


def _cfg(init, out, *extra):
    return load_config(RLConfig, None, [
        f"init={init}", f"out={out}", "rollout.num_groups=4", "rollout.group_size=2", "rollout.max_episode_steps=9",
        "grpo.dynamic_sampling=false", "grpo.minibatch_size=8", "eval.every=0", "eval.final_episodes_per_task=1",
        "eval.heldout=false", "eval.videos=0", "checkpoint_every=1", "optim.lr=3e-3", *extra])


def _iterations(cfg, n):
    with RLTrainer(cfg) as trainer:
        return [trainer.train_iteration() for _ in range(n)]


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time", "distributed")) and "per_s" not in k}
            for r in rows]


PPO = ["algo=ppo", "rollout.mode=autoreset", "rollout.num_envs=4", "rollout.chunks_per_rollout=3",
       "ppo.minibatch_size=4", "ppo.epochs=1"]


@pytest.mark.ray
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_two_env_workers_reproduce_the_in_process_run(ray_local, tiny_init, tmp_path, algo):
    """Same seeds: the same rollouts (every tensor of the batch: images, replay, log-probs, values) and, PPO, the
    same updates (its critic learns even where no episode succeeds, so the second rollout follows an update)."""
    extra = PPO if algo == "ppo" else []
    runs = {}
    for name, more in (("local", []), ("ray", [*RAY, "distributed.env_workers=2"])):
        with RLTrainer(_cfg(tiny_init, tmp_path / name, *extra, *more)) as trainer:
            batch = trainer.collector.collect()
            runs[name] = batch, [trainer.train_iteration() for _ in range(2)]
    (a, ma), (b, mb) = runs["local"], runs["ray"]
    for key in ("log_prob", "reward", "valid", "terminated", "truncated", "episode_success", "episode_length"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert all(torch.equal(a.obs[k], b.obs[k]) for k in a.obs) and all(
        torch.equal(a.replay[k], b.replay[k]) for k in a.replay)
    assert _strip(mb) == _strip(ma)
    if algo == "ppo":
        assert ma[1]["train/grad_norm"] > 0


@pytest.mark.ray
def test_a_killed_env_worker_drops_its_episodes_and_training_goes_on(ray_local, tiny_init, tmp_path):
    cfg = _cfg(tiny_init, tmp_path, *RAY, "distributed.env_workers=2", "rollout.pipeline_stages=2")
    with RLTrainer(cfg) as trainer:
        env = trainer.collector.env
        first = trainer.train_iteration()
        old_pid, calls = env.pids[0], []
        submit = env.step_chunk_async

        def kill_during_the_rollout(actions, active=None):
            pending = submit(actions, active)
            calls.append(1)
            if len(calls) == 3:  # stage 0's second chunk is in flight: worker 0 dies under it
                os.kill(old_pid, signal.SIGKILL)
            return pending

        env.step_chunk_async = kill_during_the_rollout
        hit = trainer.train_iteration()
        env.step_chunk_async = submit
        after = trainer.train_iteration()
    assert first["rollout/failed_episodes"] == 0
    # worker 0 held envs 0-3 (groups 0 and 1): their episodes were running and are lost, their groups dropped;
    # GRPO's refill took a second round on the restarted worker to fill the batch
    assert hit["rollout/failed_episodes"] == 4 and hit["rollout/rounds"] == 2
    assert hit["train/num_samples"] == 24 and hit["distributed/env_worker_restarts"] == 1
    assert env.pids[0] != old_pid
    assert after["rollout/failed_episodes"] == 0 and after["rollout/kept_groups"] == 4
    assert after["train/num_samples"] == 24 and after["distributed/env_worker_restarts"] == 1


@pytest.mark.ray
def test_workers_the_cluster_cannot_hold_are_one_clear_error(ray_local, tiny_init, tmp_path):
    with pytest.raises(ValueError, match=r"cannot place the workers .*'GPU': 2.0"):
        RLTrainer(_cfg(tiny_init, tmp_path, *RAY, "distributed.rollout_workers=2", "distributed.rollout_worker_gpus=1"))


@pytest.mark.ray
def test_a_hung_env_worker_is_killed_and_replaced(ray_local, tiny_init, tmp_path):
    cfg = _cfg(tiny_init, tmp_path, *RAY, "distributed.env_workers=2")
    with RLTrainer(cfg) as trainer:
        env = trainer.collector.env
        trainer.train_iteration()  # warm: workers built, renderer loaded (a busy 2-core machine is slow at first)
        old = env.pids[1]
        # worker 1's env now takes 10 s per env step: its next call outlives the worker timeout (3 s here)
        ray_local.get(env.workers[1].__ray_call__.remote(lambda self: setattr(self.envs[0], "step_delay_s", 10.0)))
        env.timeout_s = 3.0
        hung = trainer.train_iteration()
        env.timeout_s = cfg.distributed.worker_timeout_s
        after = trainer.train_iteration()
    assert hung["rollout/failed_episodes"] == 4 and hung["distributed/env_worker_restarts"] == 1
    assert env.pids[1] != old and after["rollout/failed_episodes"] == 0  # the rebuilt env has no delay


@pytest.mark.ray
def test_a_worker_past_max_restarts_stops_the_run_with_a_clear_error(ray_local, tiny_init, tmp_path):
    cfg = _cfg(tiny_init, tmp_path, *RAY, "distributed.env_workers=2", "distributed.max_restarts=0")
    with RLTrainer(cfg) as trainer:
        os.kill(trainer.collector.env.pids[0], signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"env worker 0 died and could not be restarted.*max_restarts=0"):
            trainer.train_iteration()


@pytest.mark.ray
@pytest.mark.parametrize("placement", ["disaggregated", "collocated"])
def test_rollout_workers_run_the_learners_weights(ray_local, tiny_init, tmp_path, placement):
    # PPO: its critic and actor move even where no episode succeeds, so the synced weights are new ones
    cfg = _cfg(tiny_init, tmp_path, *PPO, *RAY, "distributed.rollout_workers=2", f"distributed.placement={placement}",
               "distributed.env_workers=2", "freeze_vision=true")
    with RLTrainer(cfg) as trainer:
        rows = [trainer.train_iteration() for _ in range(2)]
        coll = trainer.collector
        names = [n for n, p in trainer.policy.named_parameters() if id(p) in coll.trained]
        assert names and not any(n.startswith("backbone.vision") for n in names)  # frozen vision is not sent
        mine = {n: p.detach() for n, p in trainer.policy.named_parameters()}
        coll._sync()
        for w in coll.rollout_workers:
            theirs = ray_local.get(w.__ray_call__.remote(lambda self: dict(self.policy.named_parameters())))
            assert all(torch.equal(theirs[n].detach(), mine[n]) for n in mine)
        # a killed rollout worker comes back (new pid), gets the current weights and rolls out again
        os.kill(coll.pids[0], signal.SIGKILL)
        time.sleep(0.5)
        hit = trainer.train_iteration()
        after = trainer.train_iteration()
    assert [r["distributed/weight_version"] for r in rows] == [0.0, 1.0]
    assert rows[0]["train/num_samples"] == 12 and rows[1]["train/grad_norm"] > 0  # 4 envs x 3 chunks
    assert hit["distributed/rollout_worker_restarts"] == 1
    assert hit["rollout/failed_episodes"] >= 2 and hit["train/num_samples"] == 6  # worker 0's 2 envs are gone
    assert after["train/num_samples"] == 12 and after["distributed/weight_version"] == 3.0


@pytest.mark.ray
def test_ray_autoreset_run_resumes_exactly(ray_local, tiny_init, tmp_path):
    # val-bank evaluations at every iteration (the cut run evaluates where it stops, the straight run must too; the
    # cut run's final point adds the eval bank there, which the straight run has only at its end)
    extra = [*PPO, *RAY, "distributed.env_workers=2", "eval.every=1", "eval.episodes_per_task=1", "eval.tasks=[0]"]
    for out, n in (("straight", 3), ("cut", 2), ("cut", 3)):
        with RLTrainer(_cfg(tiny_init, tmp_path / out, *extra, f"iterations={n}")) as trainer:
            trainer.run(progress=False)

    def rows(out):
        return [{k: v for k, v in r.items() if not k.startswith(("time", "distributed", "eval/")) and "per_s" not in k
                 and k != "time"} for r in read_metrics(out / "metrics.jsonl")]

    assert rows(tmp_path / "cut") == rows(tmp_path / "straight")
    with pytest.raises(ValueError, match="distributed.env_workers"):
        RLTrainer(_cfg(tiny_init, tmp_path / "cut", *PPO, *RAY, "distributed.env_workers=1", "iterations=4"))


@pytest.mark.ray
def test_rollout_workers_split_uneven_env_shards(ray_local, tiny_init, tmp_path):
    """6 envs, 2 rollout workers over 4 env workers: each rollout worker's 3 envs are spread 2 + 1 over its own
    env workers."""
    cfg = _cfg(tiny_init, tmp_path, *RAY, "rollout.num_groups=2", "rollout.group_size=3",
               "distributed.rollout_workers=2", "distributed.env_workers=4", "distributed.env_worker_cpus=0.5",
               "distributed.rollout_worker_cpus=0.5")
    with RLTrainer(cfg) as trainer:
        m = trainer.train_iteration()
    assert m["rollout/episodes"] == 6 and m["rollout/failed_episodes"] == 0


@pytest.mark.ray
def test_an_env_worker_that_cannot_start_says_why(ray_local, tiny_init):
    from reinforge.distributed import make_distributed_collector
    from reinforge.envs import EnvConfig
    from reinforge.policies import load_pretrained
    from reinforge.rollout import RolloutConfig

    with pytest.raises(RuntimeError, match=r"env worker 0 could not start: TypeError: .*bogus"):
        make_distributed_collector(DistributedConfig(backend="ray", env_workers=1), env=EnvConfig(),
                                   env_kwargs={"bogus": 1, "seed": 0}, policy=load_pretrained(tiny_init),
                                   rollout=RolloutConfig(num_groups=1, group_size=2), trained=[])


def test_per_env_slots_of_a_rollout_worker_continue_the_learners_numbering():
    from reinforge.rollout import RolloutConfig
    from test_rl import collector, tiny_policy

    cfg = RolloutConfig(mode="autoreset", num_envs=4, task_assignment="per_env", max_episode_steps=8)
    c = collector(tiny_policy(), cfg)
    c.slot_offset = 4  # the second of two rollout workers with 4 envs each, over a 10-task suite
    assert c.sample_starts(4)[0].tolist() == [4, 5, 6, 7]
