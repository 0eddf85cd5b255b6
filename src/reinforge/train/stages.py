"""Green-VLA's staged training (arXiv 2602.00919; METHODS.md section 7) as one config and one command:

- demos: expert demonstrations of every embodiment (recorded once; reused by later runs and seeds);
- DataQA (optional): each dataset filtered and temporally aligned (``reinforge.data.dataqa``);
- R0: multi-embodiment pretraining on all embodiments' demonstrations in the unified action space;
- R1: SFT of the R0 policy on the target embodiment's demonstrations;
- R2: RL alignment (the existing PPO / GRPO) of the R1 policy in the target embodiment's env;
- baseline: R1 alone, SFT from scratch on the target's demonstrations in its native action space, with the same
  number of gradient steps as R0 + R1.

Every stage writes its own folder under ``out`` and is skipped once its policy exists; a killed stage resumes from
its checkpoint (SFT and RL resume exactly). After each stage its policy is evaluated greedily in the target's env
(``episodes_per_task`` episodes per task; R0 there is R0 "zero-shot": no target fine-tuning beyond the target's
share of the R0 mixture) and ``results.json`` records the success rate, mean episode length, episodes and
training minutes. Deviations from Green-VLA: no L0/L1 (a web-scale VLM), the tiny built-in policies, three
simulated robots instead of real ones, and datasets mixed in equal shares of every R0 batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reinforge import fsutil
from reinforge.config import check, load_config
from reinforge.envs import EnvConfig

log = logging.getLogger(__name__)

STAGES = ("baseline", "r0", "r1", "r2")


@dataclass
class StagesConfig:
    out: str = "runs/greenvla"
    suite: str = "spatial"
    target: str = "widowx"  # the embodiment R1 and R2 train and every stage is evaluated on
    # expert demonstrations per task of each embodiment (the target's are R1's data and its share of R0)
    demos: dict[str, int] = field(default_factory=lambda: {"franka": 20, "scara": 20, "widowx": 5})
    demos_dir: str = ""  # where the demonstrations live ("" = out/demos); share it across seeds
    image_size: int = 64
    dataqa: str = ""  # a DataQA config (file or shipped name, e.g. dataqa): filter + align every dataset
    sft_config: str = "tabletop_sft_flow"  # the SFT config of R0, R1 and the baseline
    sft_overrides: tuple[str, ...] = ()  # e.g. policy.unified_mask=false (the zero-padded ablation)
    r0_steps: int = 1500
    r1_steps: int = 500
    baseline_steps: int = 0  # 0 = r0_steps + r1_steps (the same gradient steps as R0 -> R1)
    rl_config: str = "tabletop_ppo_flow_sde"  # R2
    rl_overrides: tuple[str, ...] = ("iterations=30",)
    stages: tuple[str, ...] = STAGES  # which stages to run (R1 needs R0, R2 needs R1)
    episodes_per_task: int = 50  # greedy evaluation of every stage's policy on the target
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        from reinforge.envs.embodiment import registered_embodiments

        robots = sorted(registered_embodiments())  # the env checks that it has the robot (env.embodiment)
        self.sft_overrides, self.rl_overrides, self.stages = (tuple(self.sft_overrides), tuple(self.rl_overrides),
                                                              tuple(self.stages))
        check(self.target in robots, "target", self.target, f"must be a registered embodiment {robots}")
        bad = [k for k in self.demos if k not in robots]
        check(not bad, "demos", self.demos, f"names embodiments {bad} that are not registered {robots}")
        check(self.target in self.demos, "demos", self.demos, f"must include the target embodiment {self.target!r}")
        check(all(isinstance(v, int) and v >= 1 for v in self.demos.values()), "demos", self.demos,
              "must give a number >= 1 of demonstrations per task for each embodiment")
        unknown = [s for s in self.stages if s not in STAGES]
        check(not unknown, "stages", list(self.stages), f"must be a subset of {list(STAGES)}")
        check(self.r0_steps >= 1 and self.r1_steps >= 1, "r0_steps", (self.r0_steps, self.r1_steps), "must be >= 1")
        check(self.episodes_per_task >= 1, "episodes_per_task", self.episodes_per_task, "must be >= 1")

    @property
    def target_env(self) -> EnvConfig:
        return EnvConfig.from_mapping({"name": "tabletop", "suite": self.suite, "embodiment": self.target})


class StagedPipeline:
    """Runs the stages of a ``StagesConfig``; ``run()`` returns the results of every stage run so far."""

    def __init__(self, cfg: StagesConfig, say: Callable[[str], None] = log.info, progress: bool = False):
        self.cfg, self.say, self.progress = cfg, say, progress
        self.out = Path(cfg.out)
        self.results_file = self.out / "results.json"
        self.results: dict[str, Any] = json.loads(self.results_file.read_text()) if self.results_file.is_file() else {}

    # ------------------------------------------------------------ stages

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        data = self.demos()
        target = data[self.cfg.target]
        want = self.cfg.stages
        if "baseline" in want:
            steps = self.cfg.baseline_steps or self.cfg.r0_steps + self.cfg.r1_steps
            self._stage("baseline", lambda: self._sft("baseline", [target], steps, ["policy.action_space=native"]))
        if "r0" in want:
            # the target's data first: the SFT run evaluates where its first dataset came from
            mix = [target] + [p for name, p in data.items() if name != self.cfg.target]
            self._stage("r0", lambda: self._sft("r0", mix, self.cfg.r0_steps, [
                "policy.action_space=unified", f"policy.embodiment={self.cfg.target}"]))
        if "r1" in want:
            self._stage("r1", lambda: self._sft("r1", [target], self.cfg.r1_steps, [
                f"init={self._policy('r0')}"]))
        if "r2" in want:
            self._stage("r2", lambda: self._rl("r2", self._policy("r1")))
        return self.results

    def demos(self) -> dict[str, Path]:
        """Each embodiment's demonstrations (recorded if missing), DataQA-filtered when configured."""
        from reinforge.train.quickstart import record_or_reuse_demos

        c = self.cfg
        root = Path(c.demos_dir) if c.demos_dir else self.out / "demos"
        data = {}
        for robot, n in c.demos.items():
            env = EnvConfig.from_mapping({"name": "tabletop", "suite": c.suite, "embodiment": robot})
            data[robot] = record_or_reuse_demos(env, root / f"{robot}_{c.suite}_{n}_{c.image_size}px", n, self.say,
                                                image_size=c.image_size)
        if c.dataqa:
            data = {robot: self._dataqa(robot, path) for robot, path in data.items()}
        return data

    def _dataqa(self, robot: str, path: Path) -> Path:
        from reinforge.data.dataqa import filter_dataset, load_dataqa_config

        dst = self.out / "demos_dataqa" / path.name
        if not (dst / "meta" / "info.json").is_file():
            res = filter_dataset(path, dst, load_dataqa_config(self.cfg.dataqa), align=True, overwrite=True)
            self.say(f"DataQA {robot}: {res}")
        return dst

    def _policy(self, stage: str) -> Path:
        p = self.out / stage / "policy"
        if not (p / "config.json").is_file():
            raise ValueError(f"stage {stage} has no policy at {p}: run it first (stages: {list(STAGES)})")
        return p

    def _stage(self, name: str, train: Callable[[], Path]) -> None:
        if name in self.results and (self.out / name / "policy" / "config.json").is_file():
            self.say(f"{name}: done ({self.results[name]['success_rate']:.1%}), skipped")
            return
        t0 = time.perf_counter()
        policy = train()
        minutes = (time.perf_counter() - t0) / 60
        self.say(f"{name}: trained in {minutes:.1f} min; evaluating on {self.cfg.target}")
        self.results[name] = {**self.evaluate(policy), "train_minutes": minutes}
        if name == "r0":  # what R1 and the table call "R0 zero-shot"
            self.results[name]["note"] = "R0 policy acting as the target, before R1"
        self._save()
        self.say(f"{name}: {self.results[name]['success_rate']:.1%} on {self.cfg.target}/{self.cfg.suite}")

    def _sft(self, stage: str, data: list[Path], steps: int, extra: list[str]) -> Path:
        from reinforge.train.quickstart import resolve_config
        from reinforge.train.sft import SFTConfig, SFTTrainer

        c = self.cfg
        overrides = [f"data={[str(p) for p in data]}", f"out={self.out / stage}", f"steps={steps}", f"seed={c.seed}",
                     "eval_episodes_per_task=1", f"device={c.device}", f"policy.image_size=[{c.image_size},"
                     f"{c.image_size}]", *c.sft_overrides, *extra]
        cfg = load_config(SFTConfig, resolve_config(c.sft_config, "sft"), overrides)
        self.say(f"{stage}: SFT {steps} steps on {', '.join(p.name for p in data)} -> {self.out / stage}")
        SFTTrainer(cfg).run(progress=self.progress)
        return self.out / stage / "policy"

    def _rl(self, stage: str, init: Path) -> Path:
        from reinforge.train.quickstart import resolve_config
        from reinforge.train.rl import RLConfig, RLTrainer

        c = self.cfg
        overrides = [f"init={init}", f"out={self.out / stage}", f"seed={c.seed}", f"device={c.device}",
                     f"env.suite={c.suite}", f"env.embodiment={c.target}", "eval.every=0",
                     "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0", *c.rl_overrides]
        cfg = load_config(RLConfig, resolve_config(c.rl_config, "rl"), overrides)
        self.say(f"{stage}: {cfg.algo.upper()} from {init} in {c.target}/{c.suite} -> {self.out / stage}")
        with RLTrainer(cfg) as trainer:
            trainer.run(progress=self.progress)
        return self.out / stage / "policy"

    def evaluate(self, policy_dir: Path) -> dict[str, Any]:
        from reinforge.eval import evaluate
        from reinforge.policies import load_pretrained

        policy = load_pretrained(policy_dir).eval()
        r = evaluate(lambda env: policy, self.cfg.target_env, episodes_per_task=self.cfg.episodes_per_task,
                     image_size=policy.config.image_size)
        return {"success_rate": r.success_rate, "mean_length": r.mean_length, "episodes": r.num_episodes,
                "per_task": r.per_task, "policy": str(policy_dir)}

    def _save(self) -> None:
        fsutil.write_text_atomic(self.results_file, json.dumps(self.results, indent=2))


STAGE_LABELS = {"baseline": "R1 alone (no R0)", "r0": "R0 zero-shot", "r1": "R0 -> R1", "r2": "R0 -> R1 -> R2"}


def results_table(results: dict[str, Any], target: str, suite: str) -> list[str]:
    """Markdown rows of the stages' results."""
    rows = [f"| stage ({target}, {suite}) | success | mean length | episodes | train min |", "|---|---|---|---|---|"]
    for k in STAGES:
        if k in results:
            r = results[k]
            rows.append(f"| {STAGE_LABELS[k]} | {r['success_rate']:.1%} | {r['mean_length']:.1f} | {r['episodes']} | "
                        f"{r['train_minutes']:.1f} |")
    return rows
