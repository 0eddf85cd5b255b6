"""The ``reinforge`` command: quickstart, demos, sft, train, eval, bench, suites."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reinforge.envs.tabletop.tasks import HELDOUT_SUITES, SUITE_NAMES

console = Console(stderr=True)


def _suites(arg: str) -> list[str]:
    if arg == "all":
        return list(SUITE_NAMES)
    names = [s.strip() for s in arg.split(",")]
    for n in names:
        if n not in SUITE_NAMES:
            raise ValueError(f"unknown suite {n!r}; choose from {list(SUITE_NAMES)} or 'all'")
    return names


def cmd_demos(args: argparse.Namespace) -> int:
    from reinforge.data.record import record_demos
    from reinforge.envs.tabletop.tasks import get_suite
    from reinforge.progress import ProgressBar

    total = args.per_task * get_suite(args.suite, args.split).num_tasks
    bar = ProgressBar(f"demos {args.suite}", total)
    try:
        path = record_demos(args.suite, args.out, per_task=args.per_task, split=args.split,
                            image_size=args.image_size, noise=args.noise, seed=args.seed, overwrite=args.overwrite,
                            progress=lambda done, _: bar.update(done))
    finally:
        bar.close()
    from reinforge.data import DemoDataset

    ds = DemoDataset.load(path, success_only=False)
    ok = sum(e["success"] for e in ds.episodes)
    console.print(f"wrote {ds.num_episodes} episodes ({ok} successful, {ds.num_frames} frames) to {path}")
    return 0


def _result_table(results, title: str) -> Table:
    table = Table(title=title)
    for col in ("suite", "split", "policy", "success", "mean length", "episodes"):
        table.add_column(col, justify="right" if col in ("success", "mean length", "episodes") else "left")
    for policy, r in results:
        table.add_row(r.suite, r.split, policy, f"{100 * r.success_rate:.1f}%", f"{r.mean_length:.1f}",
                      str(r.num_episodes))
    return table


def cmd_eval(args: argparse.Namespace) -> int:
    from reinforge.eval import evaluate, load_actor

    actor = load_actor(args.policy, seed=args.seed)
    results = []
    for suite in _suites(args.suite):
        if args.split == "heldout" and suite not in HELDOUT_SUITES:
            raise ValueError(f"suite {suite!r} has no held-out split (held-out splits: {list(HELDOUT_SUITES)})")
        r = evaluate(actor, suite, split=args.split, episodes_per_task=args.episodes_per_task, max_envs=args.max_envs,
                     image_size=args.image_size, video_dir=args.video, videos_per_task=args.videos_per_task,
                     video_format=args.video_format, device=args.device, progress=not args.json,
                     tasks=[int(t) for t in args.tasks.split(",")] if args.tasks else None)
        results.append((args.policy, r))
    if args.json:
        out = [r.to_dict() for _, r in results]
        print(json.dumps(out[0] if len(out) == 1 else out))
    else:
        for _, r in results:
            t = Table(title=f"{r.suite}/{r.split}: {args.policy}")
            t.add_column("task")
            t.add_column("success", justify="right")
            t.add_column("length", justify="right")
            t.add_column("instruction")
            for name, rate in r.per_task.items():
                t.add_row(name, f"{100 * rate:.0f}%", f"{r.per_task_length[name]:.0f}", r.instructions[name])
            Console().print(t)
        Console().print(_result_table(results, "summary"))
        for _, r in results:
            for v in r.videos:
                console.print(f"[dim]video: {v}[/dim]")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from reinforge.bench import bench_env, bench_policy, bench_rl

    if args.what == "rl":
        freeze = {"both": (True, False), "on": (True,), "off": (False,)}[args.freeze_vision]
        rows = [bench_rl(args.policy, args.algo, iterations=args.iterations, freeze_vision=f, init=args.init)
                for f in freeze]
        if args.json:
            for r in rows:
                print(json.dumps(r))
            return 0
        t = Table(title=f"RL throughput: {args.algo.upper()} on the {args.policy} policy (CPU preset)")
        for k in rows[0]:
            t.add_column(k)
        for r in rows:
            t.add_row(*[str(v) for v in r.values()])
        Console().print(t)
        return 0
    if args.what == "env":
        res = bench_env(num_envs=args.num_envs, image_size=args.image_size, steps=args.steps,
                        render_backend=args.render_backend)
    else:
        rows = [bench_policy(kind, batch=args.batch, image_size=args.image_size) for kind in ("token", "flow")]
        if args.json:
            for r in rows:
                print(json.dumps(r))
            return 0
        res = rows[0]
    if args.json:
        print(json.dumps(res))
    else:
        t = Table(title=f"{args.what} throughput")
        for k in res:
            t.add_column(k)
        t.add_row(*[str(v) for v in res.values()])
        Console().print(t)
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from reinforge.envs.tabletop.tasks import get_suite

    for suite in _suites(args.suite):
        for split in ("train", "heldout") if suite in HELDOUT_SUITES else ("train",):
            s = get_suite(suite, split)
            t = Table(title=f"{suite}/{split} (max {s.max_episode_steps} steps, 50 initial states per task)")
            t.add_column("id")
            t.add_column("instruction")
            for i, task in enumerate(s.tasks):
                t.add_row(str(i), task.instruction)
            Console().print(t)
    return 0


QUICKSTART_CONFIGS = {("grpo", "token"): "tabletop_grpo_token", ("grpo", "flow"): "tabletop_grpo_flow_sde",
                      ("ppo", "flow"): "tabletop_ppo_flow_sde", ("ppo", "token"): "tabletop_ppo_token"}


def _demos(suite: str, out: Path, per_task: int) -> Path:
    """Record (or reuse a complete earlier recording of) ``per_task`` expert demos per task."""
    from reinforge.data import DatasetError, DemoDataset
    from reinforge.data.record import record_demos

    try:
        ds = DemoDataset.load(out, success_only=False)
        if ds.num_episodes == per_task * len({int(t) for t in ds.task_index.tolist()}):
            return out
    except (DatasetError, ValueError, FileNotFoundError):
        pass
    path = record_demos(suite, out, per_task=per_task, overwrite=True)
    console.print(f"recorded {per_task} expert demo(s) per task of {suite} -> {path}")
    return path


def _sft(data: Path, kind: str, steps: int, out: Path) -> Path:
    """SFT (resuming a killed run, skipping a finished one); returns the policy folder."""
    from reinforge.algos.sft import SFTConfig, SFTTrainer
    from reinforge.config import load_config

    if (out / "policy" / "config.json").is_file():
        found = json.loads((out / "policy" / "config.json").read_text()).get("reinforge_policy", {}).get("kind")
        if found != kind:
            raise ValueError(f"{out / 'policy'} holds a {found} policy, not a {kind} one: pass another --out "
                             "or delete that folder")
        return out / "policy"
    cfg = load_config(SFTConfig, CONFIG_DIR / f"tabletop_sft_{kind}.yaml",
                      [f"data={data}", f"out={out}", f"steps={steps}", "eval_episodes_per_task=1"])
    console.print(f"SFT {kind} policy on {data.name} for {steps} steps -> {out}")
    SFTTrainer(cfg).run()
    return out / "policy"


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Expert demos -> one-demo SFT -> RL -> greedy evaluation before/after, next to a 50-demo SFT policy."""
    from reinforge.config import load_config
    from reinforge.eval import evaluate
    from reinforge.eval.report import write_report
    from reinforge.policies import load_pretrained
    from reinforge.train.rl import RLConfig, RLTrainer

    suite, kind, algo = args.suite, args.policy, args.algo
    out = Path(args.out or f"runs/quickstart/{suite}_{algo}_{kind}")
    name = args.config or QUICKSTART_CONFIGS[(algo, kind)]
    console.print(f"[bold]reinforge quickstart[/bold]: {suite} suite, {kind} policy, {algo.upper()} ({name}) -> {out}")
    sft1 = _sft(_demos(suite, out / "demos_1", 1), kind, args.sft_steps, out / "sft_1demo")
    overrides = [f"init={sft1}", f"out={out / 'rl'}", f"suite={suite}",
                 f"eval.final_episodes_per_task={args.episodes_per_task}", *args.overrides]
    if args.iterations is not None:
        overrides.append(f"iterations={args.iterations}")
    cfg = load_config(RLConfig, resolve_config(name), overrides)
    if cfg.algo != algo:
        raise ValueError(f"config {name} is for {cfg.algo}, not {algo}")
    trainer = RLTrainer(cfg)
    trainer.run()
    hist = trainer.history
    rows = {"sft1": hist[0], "rl": hist[-1]}
    if args.sft50_steps > 0:
        sft50 = _sft(_demos(suite, out / "demos_50", 50), kind, args.sft50_steps, out / "sft_50demo")
        policy = load_pretrained(sft50).eval()
        rows["sft50"] = {}
        for split in ("train", "heldout") if suite in HELDOUT_SUITES else ("train",):
            r = evaluate(lambda env: policy, suite, split=split, episodes_per_task=args.episodes_per_task,
                         progress=True)
            rows["sft50"][f"eval/{suite}" + ("" if split == "train" else "_heldout") + "/success_rate"] = r.success_rate
    table = Table(title=f"reinforge quickstart: {suite}, {kind} policy, {algo.upper()} "
                        f"({args.episodes_per_task} greedy episodes per task)")
    cols = ["suite", "SFT (1 demo)", "+ RL", "SFT (50 demos)"]
    for col in cols:
        table.add_column(col, justify="left" if col == "suite" else "right")
    md = ["| " + " | ".join(cols) + " |", "|---|---|---|---|"]
    for label, key in ((suite, f"eval/{suite}/success_rate"),
                       (f"{suite} held-out", f"eval/{suite}_heldout/success_rate")):
        if key not in rows["rl"]:
            continue
        cells = [label] + [f"{100 * rows[r][key]:.1f}%" if key in rows.get(r, {}) else "-"
                           for r in ("sft1", "rl", "sft50")]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    report = write_report(out / "rl", hist, suite=suite, algo=algo, policy_kind=kind)
    minutes = hist[-1]["train_min"]
    (out / "summary.md").write_text(f"# reinforge quickstart: {suite}, {kind} policy, {algo.upper()}\n\n"
                                    + "\n".join(md) + f"\n\nRL: {int(hist[-1]['iteration'])} iterations, "
                                    f"{minutes:.1f} training minutes. Curves and videos: rl/report/\n")
    (out / "summary.json").write_text(json.dumps({k: {m: v for m, v in r.items() if m.endswith("success_rate")}
                                                  for k, r in rows.items()}, indent=2))
    console.print(f"summary: {out / 'summary.md'}; report with curves and videos: {report}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from reinforge.algos.sft import SFTConfig, SFTTrainer
    from reinforge.config import load_config, to_dict

    overrides = list(args.overrides)
    for flag, key in ((args.data, "data"), (args.policy, "policy.kind"), (args.out, "out"), (args.steps, "steps"),
                      (args.batch_size, "batch_size"), (args.lr, "optim.lr"), (args.seed, "seed")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_config(SFTConfig, args.config, overrides)
    trainer = SFTTrainer(cfg)
    if trainer.step:
        console.print(f"resuming {cfg.out} from step {trainer.step}")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "config.yaml").write_text(__import__("yaml").safe_dump(to_dict(cfg), sort_keys=False))
    n_params = sum(p.numel() for p in trainer.policy.parameters())
    console.print(f"SFT {cfg.policy.kind} policy ({n_params / 1e6:.2f} M params) on {trainer.ds.num_episodes} "
                  f"episodes / {trainer.ds.num_frames} frames for {cfg.steps} steps -> {cfg.out}")
    trainer.run(progress=not args.quiet)
    from reinforge.train.logging import read_metrics

    final = {k: v for k, v in read_metrics(Path(cfg.out) / "metrics.jsonl")[-1].items() if k.startswith("eval/")}
    summary = {"policy": str(Path(cfg.out) / "policy"), "steps": trainer.step,
               **{k: round(v, 4) for k, v in final.items()}}
    print(json.dumps(summary))
    return 0


CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config(spec: str) -> Path:
    """A YAML path, or the name of a shipped config (``tabletop_grpo_token``)."""
    p = Path(spec)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (spec if spec.endswith(".yaml") else spec + ".yaml")
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
    raise ValueError(f"config {spec!r} is neither a file nor a shipped config; shipped configs: {names}")


def _before_after_table(history: list[dict], suite: str, title: str) -> Table:
    t = Table(title=title)
    for col in ("split", "before RL", "after RL"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split, key in (("train tasks", f"eval/{suite}/success_rate"),
                       ("held-out", f"eval/{suite}_heldout/success_rate")):
        if key in history[-1]:
            t.add_row(split, f"{100 * history[0][key]:.1f}%", f"{100 * history[-1][key]:.1f}%")
    return t


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from reinforge.config import load_config, to_dict
    from reinforge.train.rl import RLConfig, RLTrainer

    cfg = load_config(RLConfig, resolve_config(args.config), list(args.overrides))
    trainer = RLTrainer(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    verb = f"resuming at iteration {trainer.iteration}" if trainer.iteration else "starting"
    console.print(f"{cfg.algo.upper()} on the {trainer.policy.config.kind} policy, suite {cfg.suite}: {verb}, "
                  f"{cfg.iterations} iterations -> {out}")
    final = trainer.run(progress=not args.quiet)
    Console().print(_before_after_table(trainer.history, cfg.suite, f"{cfg.algo.upper()} {cfg.suite}"))
    console.print(f"report: {out / 'report' / 'summary.md'}")
    print(json.dumps({"out": str(out), "iterations": trainer.iteration,
                      **{k: round(v, 4) for k, v in final.items() if k.endswith("success_rate")}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reinforge", description="RL fine-tuning of Vision-Language-Action policies")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demos", help="record scripted-expert demonstrations into a LeRobot-style dataset")
    d.add_argument("--suite", default="spatial", choices=SUITE_NAMES)
    d.add_argument("--split", default="train", choices=("train", "heldout"))
    d.add_argument("--per-task", type=int, default=1)
    d.add_argument("--out", required=True)
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--noise", type=float, default=0.2, help="std of the expert's translation-action noise")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(fn=cmd_demos)

    e = sub.add_parser("eval", help="success rate of a policy (expert | random | checkpoint folder)")
    e.add_argument("--policy", default="expert")
    e.add_argument("--suite", default="spatial", help="a suite, a comma list, or 'all'")
    e.add_argument("--split", default="train", choices=("train", "heldout"))
    e.add_argument("--episodes-per-task", type=int, default=50)
    e.add_argument("--tasks", default=None, help="comma-separated task ids to evaluate (default: all)")
    e.add_argument("--max-envs", type=int, default=500, help="envs stepped together per batch")
    e.add_argument("--image-size", type=int, default=64)
    e.add_argument("--video", default=None, help="folder for episode videos")
    e.add_argument("--videos-per-task", type=int, default=1)
    e.add_argument("--video-format", default="mp4", choices=("mp4", "gif"))
    e.add_argument("--device", default="cpu", help="torch device of the simulator (cpu, cuda, ...)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.set_defaults(fn=cmd_eval)

    b = sub.add_parser("bench", help="benchmarks that print figures")
    b.add_argument("what", choices=("env", "policy", "rl"))
    b.add_argument("--policy", default="token", choices=("token", "flow"), help="rl benchmark: policy kind")
    b.add_argument("--algo", default="grpo", choices=("grpo", "ppo"), help="rl benchmark: algorithm")
    b.add_argument("--iterations", type=int, default=2, help="rl benchmark: timed iterations (after 1 warm-up)")
    b.add_argument("--freeze-vision", default="both", choices=("both", "on", "off"),
                   help="rl benchmark: with a frozen, cached vision encoder, without, or both")
    b.add_argument("--init", default=None, help="rl benchmark: a fine-tuned policy (default: fresh weights)")
    b.add_argument("--batch", type=int, default=512, help="policy benchmark: observations per act() call")
    b.add_argument("--num-envs", type=int, default=256)
    b.add_argument("--image-size", type=int, default=64)
    b.add_argument("--steps", type=int, default=50)
    b.add_argument("--render-backend", default="auto", choices=("auto", "numba", "torch"))
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_bench)

    f = sub.add_parser("sft", help="supervised fine-tuning of a token or flow VLA on demonstrations")
    f.add_argument("--config", default=None, help="YAML config (fields of SFTConfig); flags and overrides win")
    f.add_argument("--data", default=None, help="dataset folder written by `reinforge demos`")
    f.add_argument("--policy", default=None, choices=("token", "flow"))
    f.add_argument("--out", default=None)
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--batch-size", type=int, default=None)
    f.add_argument("--lr", type=float, default=None)
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. policy.horizon=4 optim.lr=3e-4")
    f.set_defaults(fn=cmd_sft)

    t = sub.add_parser("train", help="online RL (GRPO / PPO) from a fine-tuned policy")
    t.add_argument("config", help="YAML config (fields of RLConfig) or a shipped config name, e.g. "
                                  "tabletop_grpo_token")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. init=runs/sft/policy optim.lr=1e-4")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("suites", help="list the task suites and their instructions")
    s.add_argument("--suite", default="all")
    s.set_defaults(fn=cmd_suites)

    q = sub.add_parser(
        "quickstart", help="the main job: expert demos -> 1-demo SFT -> RL -> evaluation, next to 50-demo SFT")
    q.add_argument("--out", default=None, help="default: runs/quickstart/SUITE_ALGO_POLICY")
    q.add_argument("--suite", default="spatial", choices=SUITE_NAMES)
    q.add_argument("--policy", default="flow", choices=("token", "flow"))
    q.add_argument("--algo", default="ppo", choices=("grpo", "ppo"))
    q.add_argument("--config", default=None, help="RL config (default: the shipped one for --algo/--policy)")
    q.add_argument("--iterations", type=int, default=None, help="RL iterations (default: the config's)")
    q.add_argument("--sft-steps", type=int, default=600, help="SFT steps on the single demo per task")
    q.add_argument("--sft50-steps", type=int, default=1500, help="SFT steps of the 50-demo baseline (0 = skip)")
    q.add_argument("--episodes-per-task", type=int, default=50, help="greedy episodes per task before/after")
    q.add_argument("overrides", nargs="*", help="dotted RL config overrides, e.g. optim.lr=1e-4")
    q.set_defaults(fn=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ValueError, TypeError, ImportError, FileNotFoundError, FloatingPointError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
