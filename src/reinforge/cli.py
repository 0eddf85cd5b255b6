"""The ``reinforge`` command: demos, sft, eval, bench, quickstart, suites."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
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
    from reinforge.bench import bench_env, bench_policy

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


def cmd_quickstart(args: argparse.Namespace) -> int:
    from reinforge.data.record import record_demos
    from reinforge.eval import evaluate, load_actor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for suite in _suites(args.suite):
        path = record_demos(suite, out / "demos" / suite, per_task=args.per_task, overwrite=True)
        console.print(f"recorded {args.per_task} expert demo(s) per task of {suite} -> {path}")
        for split in ("train", "heldout") if suite in HELDOUT_SUITES else ("train",):
            for policy in ("expert", "random"):
                r = evaluate(load_actor(policy), suite, split=split, episodes_per_task=args.episodes_per_task,
                             progress=True, video_dir=out / "videos" if policy == "expert" and split == "train"
                             else None, videos_per_task=1 if suite == "spatial" else 0)
                rows.append((policy, r))
    Console().print(_result_table(rows, "reinforge quickstart: scripted expert vs random on the tabletop suites"))
    summary = [{"policy": p, **r.to_dict()} for p, r in rows]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"summary written to {out / 'summary.json'}; videos in {out / 'videos'}")
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
    b.add_argument("what", choices=("env", "policy"))
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

    s = sub.add_parser("suites", help="list the task suites and their instructions")
    s.add_argument("--suite", default="all")
    s.set_defaults(fn=cmd_suites)

    q = sub.add_parser("quickstart", help="the main job: demos + evaluation on every suite")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--suite", default="all")
    q.add_argument("--per-task", type=int, default=1)
    q.add_argument("--episodes-per-task", type=int, default=10)
    q.set_defaults(fn=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ValueError, TypeError, ImportError, FileNotFoundError, FloatingPointError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
