"""The quickstart pipeline as a library function: expert demos -> one-demo SFT -> RL -> greedy evaluation
before and after, next to an SFT policy trained on 50 demos per task.

Every stage resumes: complete demo recordings and finished SFT policies are reused, a killed RL run resumes
from its checkpoint. ``reinforge quickstart`` parses flags, calls ``run_quickstart`` and prints the table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reinforge.config import load_config
from reinforge.envs import EnvConfig
from reinforge.fsutil import write_text_atomic

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
QUICKSTART_CONFIGS = {("grpo", "token"): "tabletop_grpo_token", ("grpo", "flow"): "tabletop_grpo_flow_sde",
                      ("ppo", "flow"): "tabletop_ppo_flow_sde", ("ppo", "token"): "tabletop_ppo_token"}


# top-level keys only one kind of config has
_ONLY = {"sft": {"data", "policy", "steps", "batch_size", "augment", "eval_split", "use_expert_labels"},
         "rl": {"algo", "init", "iterations", "rollout", "grpo", "ppo", "freeze_vision", "flow_sampler"}}
_COMMANDS = {"sft": "reinforge sft --config", "rl": "reinforge train"}


def resolve_config(spec: str, kind: str | None = None) -> Path:
    """A YAML path, or the name of a shipped config (``tabletop_grpo_token``). With ``kind`` (``sft`` / ``rl``),
    refuse a config of the other kind, naming the command that takes it."""
    p = Path(spec)
    if not p.is_file():
        shipped = CONFIG_DIR / (spec if spec.endswith(".yaml") else spec + ".yaml")
        if not shipped.is_file():
            names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
            raise ValueError(f"config {spec!r} is neither a file nor a shipped config; shipped configs: {names}")
        p = shipped
    if kind is not None:
        import yaml

        try:
            data = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            return p  # load_config reports it
        other = "rl" if kind == "sft" else "sft"
        if isinstance(data, dict) and set(data) & _ONLY[other] and not set(data) & _ONLY[kind]:
            raise ValueError(f"{spec} is an {other.upper()} config, not an {kind.upper()} one: run it with "
                             f"`{_COMMANDS[other]} {spec}`")
    return p


@dataclass
class QuickstartOptions:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: str = "flow"  # token | flow
    algo: str = "ppo"  # grpo | ppo
    out: str = ""  # default: runs/quickstart/SUITE_ALGO_POLICY
    config: str = ""  # RL config (default: the shipped one for algo/policy)
    iterations: int | None = None
    sft_steps: int = 600
    sft50_steps: int = 0  # SFT steps of the 50-demo reference (0 = no reference; the CLI's --reference: 1500)
    episodes_per_task: int = 50
    device: str = "cpu"
    seed: int = 0  # SFT and RL (the demos are the expert's, the evaluation states fixed)
    # torch threads of every phase: CPU numbers depend on it (parallel sums split by thread), so it is fixed by
    # default and the README's figures re-make on any machine with this build of torch; 0 = torch's default
    threads: int = 2
    overrides: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        prefix = "" if self.env.name == "tabletop" else f"{self.env.name}_"
        suffix = f"_seed{self.seed}" if self.seed else ""
        return Path(f"runs/quickstart/{prefix}{self.env.suite}_{self.algo}_{self.policy}{suffix}")


@dataclass
class QuickstartResult:
    out: Path
    rows: dict[str, dict[str, float]]  # "sft1" | "rl" | "sft50" -> eval/<suite>[_heldout]/success_rate
    history: list[dict[str, float]]
    report: Path
    markdown: list[str]
    minutes: dict[str, float] = field(default_factory=dict)  # wall-clock minutes per phase (time_breakdown)


def record_or_reuse_demos(env: EnvConfig, out: Path, per_task: int, say: Callable[[str], None],
                          image_size: int = 64) -> Path:
    """Record (or reuse a complete earlier recording of) ``per_task`` expert demos per task."""
    from reinforge.data import DatasetError, DemoDataset
    from reinforge.data.record import record_demos

    try:
        ds = DemoDataset.load(out, success_only=False, expect_image_size=(image_size, image_size))
        if ds.num_episodes == per_task * len({int(t) for t in ds.task_index.tolist()}):
            return out
    except (DatasetError, ValueError, FileNotFoundError):
        pass
    path = record_demos(env, out, per_task=per_task, overwrite=True, image_size=image_size)
    say(f"recorded {per_task} expert demo(s) per task of {env.suite} -> {path}")
    return path


def sft_or_reuse(data: Path, kind: str, steps: int, out: Path, device: str, say: Callable[[str], None],
                 seed: int = 0, threads: int = 0) -> Path:
    """SFT (resuming a killed run, skipping a finished one); returns the policy folder."""
    from reinforge.train.sft import SFTConfig, SFTTrainer

    if (out / "policy" / "config.json").is_file():
        found = json.loads((out / "policy" / "config.json").read_text()).get("reinforge_policy", {}).get("kind")
        if found != kind:
            raise ValueError(f"{out / 'policy'} holds a {found} policy, not a {kind} one: pass another --out "
                             "or delete that folder")
        return out / "policy"
    cfg = load_config(SFTConfig, CONFIG_DIR / f"tabletop_sft_{kind}.yaml",
                      [f"data={data}", f"out={out}", f"steps={steps}", "eval_episodes_per_task=1", f"device={device}",
                       f"seed={seed}", f"num_threads={threads}"])
    say(f"SFT {kind} policy on {data.name} for {steps} steps -> {out}")
    SFTTrainer(cfg).run(progress=True)
    return out / "policy"


def _success_keys(suite: str, splits: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(suite if s == "train" else f"{suite} {s}", f"eval/{suite}" + ("" if s == "train" else f"_{s}")
             + "/success_rate") for s in splits]


def run_quickstart(opts: QuickstartOptions, say: Callable[[str], None] = log.info) -> QuickstartResult:
    """Run the whole pipeline; returns the before/after success rates and where everything was written."""
    from reinforge.eval import evaluate
    from reinforge.eval.report import write_report
    from reinforge.policies import load_pretrained
    from reinforge.train.rl import RLConfig, RLTrainer

    env, kind, algo = opts.env, opts.policy, opts.algo
    if (algo, kind) not in QUICKSTART_CONFIGS:
        raise ValueError(f"no quickstart recipe for algo={algo!r} policy={kind!r}; known: {sorted(QUICKSTART_CONFIGS)}")
    out = opts.out_dir
    name = opts.config or QUICKSTART_CONFIGS[(algo, kind)]
    if opts.threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = torch's default), got {opts.threads}")
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    clock = [time.perf_counter()]
    minutes: dict[str, float] = {}

    def lap(phase: str) -> None:  # wall minutes of each phase of this invocation
        now = time.perf_counter()
        minutes[phase] = minutes.get(phase, 0.0) + (now - clock[0]) / 60
        clock[0] = now

    demos1 = record_or_reuse_demos(env, out / "demos_1", 1, say)
    lap("demos")
    sft1 = sft_or_reuse(demos1, kind, opts.sft_steps, out / "sft_1demo", opts.device, say, opts.seed, opts.threads)
    lap("sft")
    env_overrides = [f"env.{k}={json.dumps(v) if not isinstance(v, str) else v}"
                     for k, v in (("name", env.name), ("suite", env.suite), ("device", env.device))]
    env_overrides += [f"env.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in env.options.items()]
    overrides = [f"init={sft1}", f"out={out / 'rl'}", *env_overrides, f"device={opts.device}", f"seed={opts.seed}",
                 f"eval.final_episodes_per_task={opts.episodes_per_task}", f"num_threads={opts.threads}",
                 *opts.overrides]
    if opts.iterations is not None:
        overrides.append(f"iterations={opts.iterations}")
    cfg = load_config(RLConfig, resolve_config(name), overrides)
    if cfg.algo != algo:
        raise ValueError(f"config {name} is for {cfg.algo}, not {algo}")
    with RLTrainer(cfg) as trainer:
        trainer.run()
        hist = trainer.history
        splits = ("train", *trainer.collector.env.spec.heldout_splits)
    lap("rl")
    rows: dict[str, dict[str, float]] = {"sft1": hist[0], "rl": hist[-1]}
    if opts.sft50_steps > 0:
        sft50 = sft_or_reuse(record_or_reuse_demos(env, out / "demos_50", 50, say), kind, opts.sft50_steps,
                             out / "sft_50demo", opts.device, say, opts.seed, opts.threads)
        from reinforge.device import resolve_device

        policy = load_pretrained(sft50).to(resolve_device(opts.device)).eval()
        rows["sft50"] = {}
        for split, (_, key) in zip(splits, _success_keys(env.suite, splits)):
            r = evaluate(lambda e: policy, env, split=split, episodes_per_task=opts.episodes_per_task,
                         image_size=policy.config.image_size, progress=True, seed=opts.seed, bank="eval")
            rows["sft50"][key] = r.success_rate
        lap("reference")
    runs = ("sft1", "rl", "sft50") if "sft50" in rows else ("sft1", "rl")
    cols = ["suite", "SFT (1 demo)", "+ RL", "SFT (50 demos)"][: len(runs) + 1]
    md = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for label, key in _success_keys(env.suite, splits):
        if key not in rows["rl"]:
            continue
        cells = [label] + [f"{100 * rows[r][key]:.1f}%" if key in rows.get(r, {}) else "-" for r in runs]
        md.append("| " + " | ".join(cells) + " |")
    report = write_report(out / "rl", hist, suite=env.suite, algo=algo, policy_kind=kind)
    timing = time_breakdown(minutes, hist, out / "rl" / "metrics.jsonl")
    write_text_atomic(out / "summary.md", f"# reinforge quickstart: {env.suite}, {kind} policy, {algo.upper()}\n\n"
                                    + "\n".join(md) + f"\n\nGreedy success on the `{cfg.eval.final_bank}` bank, "
                                    f"{opts.episodes_per_task} episodes per task. "
                                    f"RL: {int(hist[-1]['iteration'])} iterations, "
                                    f"{hist[-1]['train_min']:.1f} training minutes. Curves and videos: rl/report/\n\n"
                                    f"Wall-clock minutes of this run: {format_timing(timing)}\n")
    from reinforge.provenance import provenance

    summary: dict[str, Any] = {k: {m: v for m, v in r.items() if m.endswith("success_rate")} for k, r in rows.items()}
    summary["minutes"] = timing
    summary["bank"] = cfg.eval.final_bank
    summary["episodes_per_task"] = opts.episodes_per_task
    summary["iterations"] = int(hist[-1]["iteration"])
    summary["provenance"] = provenance(seed=opts.seed, rl_config=name, threads_option=opts.threads)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return QuickstartResult(out=out, rows=rows, history=hist, report=report, markdown=md, minutes=timing)


def time_breakdown(minutes: dict[str, float], history: list[dict[str, float]], metrics: Path) -> dict[str, float]:
    """Where the wall clock went: the phases of this invocation, and inside RL the rollouts, the updates and the
    evaluations (before, periodic, after) of the run (a resumed run: its iterations since the start)."""
    from reinforge.train.logging import read_metrics

    rows = read_metrics(metrics) if metrics.is_file() else []
    evals = [h.get("eval_s", 0.0) / 60 for h in history]
    out = {k: round(v, 2) for k, v in minutes.items()}
    out.update({"rl_rollouts": sum(r.get("time/rollout_s", 0.0) for r in rows) / 60,
                "rl_updates": sum(r.get("time/update_s", 0.0) for r in rows) / 60,
                "eval_before": evals[0] if evals else 0.0, "eval_after": evals[-1] if len(evals) > 1 else 0.0,
                "eval_periodic": sum(evals[1:-1])})
    out["total"] = sum(minutes.values())
    return {k: round(v, 2) for k, v in out.items()}


def format_timing(t: dict[str, float]) -> str:
    """One line: ``demos 0.1, SFT 2.2, RL 11.5 (evaluation before 1.5, rollouts 4.0, ...); total 14.0``."""
    inner = (("eval_before", "evaluation before"), ("rl_rollouts", "rollouts"), ("rl_updates", "updates"),
             ("eval_periodic", "periodic evaluations"), ("eval_after", "evaluation after"))
    rl = ", ".join(f"{label} {t[k]:.1f}" for k, label in inner if t.get(k))
    parts = [f"{label} {t[k]:.1f}" for k, label in (("demos", "demos"), ("sft", "SFT")) if k in t]
    if "rl" in t:
        parts.append(f"RL {t['rl']:.1f}" + (f" ({rl})" if rl else ""))
    if t.get("reference"):
        parts.append(f"50-demo reference {t['reference']:.1f}")
    return ", ".join(parts) + f"; total {t.get('total', 0.0):.1f}"
