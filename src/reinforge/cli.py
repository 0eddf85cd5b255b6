"""The ``reinforge`` command: quickstart, demos, sft, train, eval, wm, bench, convert, suites, envs, embodiments.

The CLI parses and prints; the work happens in library functions. Every command reaches environments through
the registry: ``--env NAME`` (default ``tabletop``), ``--suite``, ``--env-device`` and ``--env-opt KEY=VALUE``
for the env's own options (or an ``env`` section in configs)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reinforge import __version__
from reinforge.envs import EnvConfig, known_suites, registered_envs

console = Console(stderr=True)
DEFAULT_SUITES = {"tabletop": "spatial", "libero": "libero_spatial", "metaworld": "mt10"}


def _env_config(args: argparse.Namespace, suite: str | None = None) -> EnvConfig:
    """The env section from ``--env``, ``--suite``, ``--env-device`` and ``--env-opt KEY=VALUE`` flags."""
    import yaml

    opts = {}
    for item in getattr(args, "env_opt", None) or []:
        if "=" not in item:
            raise ValueError(f"--env-opt {item!r} must look like KEY=VALUE, e.g. render_quality=fast")
        key, raw = item.split("=", 1)
        opts[key.strip()] = yaml.safe_load(raw)
    name = args.env
    if name not in registered_envs():
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(registered_envs())}")
    suite = suite or getattr(args, "suite", None) or DEFAULT_SUITES.get(name, "")
    if not suite:
        raise ValueError(f"pass --suite for env {name!r} (its suites: {list(registered_envs().get(name, ()))})")
    return EnvConfig.from_mapping({"name": name, "suite": suite, "device": getattr(args, "env_device", "cpu"),
                                   **opts})


def _suites(args: argparse.Namespace) -> list[str]:
    """``--suite``: one suite, a comma list, or ``all`` (every suite the env declares)."""
    arg = args.suite or DEFAULT_SUITES.get(args.env, "")
    declared = [s for s in registered_envs().get(args.env, ()) if "<" not in s]
    if arg == "all":
        if not declared:
            raise ValueError(f"env {args.env!r} declares no suite list; name one with --suite")
        return declared
    parts = [s.strip() for s in arg.split(",")]
    # a comma list of known suites (declared or runnable by name, e.g. object_v1) is several suites; anything
    # else (e.g. MetaWorld task lists) is one suite
    known = known_suites(args.env)
    return parts if len(parts) > 1 and all(p in known for p in parts) else [arg]


def _add_env_flags(p: argparse.ArgumentParser, suite_help: str = "the suite (default: the env's first)") -> None:
    p.add_argument("--env", default="tabletop", help=f"registered env: {', '.join(registered_envs())}")
    p.add_argument("--suite", default=None, help=suite_help)
    p.add_argument("--env-device", default="cpu", help="where the simulator runs (cpu, cuda; the built-in world "
                                                        "runs on either, real simulators on cpu)")
    p.add_argument("--env-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the env (repeatable), e.g. render_quality=fast num_workers=2")


def cmd_import(args: argparse.Namespace) -> int:
    from reinforge.data import DemoDataset
    from reinforge.data.importers import import_lerobot, import_libero
    from reinforge.progress import ProgressBar

    bar = ProgressBar(f"import {args.format}", None)
    progress = lambda done, total: bar.update(done, total=total)  # noqa: E731
    try:
        if args.format == "libero":
            if not args.suite:
                raise ValueError("import libero needs --suite (libero_spatial, libero_object, libero_goal, libero_10 "
                                 "or libero_90): the suite the files belong to, where SFT evaluates")
            path = import_libero(args.source, args.out, suite=args.suite, image_size=args.image_size or None,
                                 drop_noops=not args.keep_noops, max_demos=args.max_episodes,
                                 overwrite=args.overwrite, progress=progress)
        else:
            if len(args.source) != 1:
                raise ValueError("import lerobot takes one dataset folder (the one holding meta/info.json)")
            split = lambda x: [c.strip() for c in x.split(",") if c.strip()] if x else None  # noqa: E731
            path = import_lerobot(args.source[0], args.out, cameras=split(args.cameras),
                                  camera_names=split(args.camera_names), state_key=args.state_key,
                                  action_key=args.action_key, image_size=args.image_size or None,
                                  env=args.env or "", suite=args.suite or "", max_episodes=args.max_episodes,
                                  overwrite=args.overwrite, progress=progress)
    finally:
        bar.close()
    ds = DemoDataset.load(path, success_only=False)
    console.print(f"imported {ds.num_episodes} episodes ({ds.num_frames} frames, {len(ds.tasks)} tasks, "
                  f"{ds.num_views} cameras at {ds.images.shape[-2]}x{ds.images.shape[-1]}) to {path}")
    return 0


def cmd_demos(args: argparse.Namespace) -> int:
    from reinforge.data.record import record_demos
    from reinforge.progress import ProgressBar

    env = _env_config(args)
    bar = ProgressBar(f"demos {env.suite}", None)
    try:
        path = record_demos(env, args.out, per_task=args.per_task, split=args.split,
                            image_size=args.image_size, noise=args.noise, seed=args.seed, overwrite=args.overwrite,
                            max_envs=args.max_envs, progress=lambda done, total: bar.update(done, total=total))
    finally:
        bar.close()
    from reinforge.data import DemoDataset

    ds = DemoDataset.load(path, success_only=False)
    ok = sum(e["success"] for e in ds.episodes)
    console.print(f"wrote {ds.num_episodes} episodes ({ok} successful, {ds.num_frames} frames) to {path}")
    return 0


def _result_table(results, title: str) -> Table:
    table = Table(title=title)
    for col in ("suite", "split", "bank", "policy", "success", "mean length", "episodes"):
        table.add_column(col, justify="right" if col in ("success", "mean length", "episodes") else "left")
    for policy, r in results:
        table.add_row(r.suite, r.split, r.bank, policy, f"{100 * r.success_rate:.1f}%", f"{r.mean_length:.1f}",
                      str(r.num_episodes))
    return table


def _eval_results(args: argparse.Namespace, load_actor, evaluate) -> list:
    actor = load_actor(args.policy, seed=args.seed, device=args.device)
    policy = getattr(actor, "policy", None)
    image_size = policy.config.image_size if policy is not None else args.image_size
    results = []
    for suite in _suites(args):
        r = evaluate(actor, _env_config(args, suite), split=args.split, episodes_per_task=args.episodes_per_task,
                     max_envs=args.max_envs, image_size=image_size, video_dir=args.video,
                     videos_per_task=args.videos_per_task, video_format=args.video_format, progress=not args.json,
                     tasks=[t.strip() for t in args.tasks.split(",")] if args.tasks else None, seed=args.seed,
                     mode=args.mode, temperature=args.temperature, bank=args.bank, max_envs_setting="--max-envs")
        results.append((args.policy, r))
    return results


def cmd_eval(args: argparse.Namespace) -> int:
    from reinforge.device import resolve_device
    from reinforge.eval import evaluate, load_actor

    resolve_device(args.device)  # also for the expert / random actors, which ignore it
    if args.json:  # stdout carries the JSON only: whatever libraries print while loading and evaluating -> stderr
        with contextlib.redirect_stdout(sys.stderr):
            results = _eval_results(args, load_actor, evaluate)
        out = [r.to_dict() for _, r in results]
        print(json.dumps(out[0] if len(out) == 1 else out))
        return 0
    results = _eval_results(args, load_actor, evaluate)
    for _, r in results:
        temp = "" if args.temperature == 1 else f", T={args.temperature}"
        how = "" if r.mode == "greedy" else f" (sampled{temp})"
        t = Table(title=f"{r.env}/{r.suite}/{r.split} ({r.bank} bank): {args.policy}{how}")
        t.add_column("task")
        t.add_column("success", justify="right")
        t.add_column("length", justify="right")
        t.add_column("instruction")
        for name, rate in r.per_task.items():
            t.add_row(name, f"{100 * rate:.0f}%", f"{r.per_task_length[name]:.0f}", r.instructions[name])
        Console().print(t)
    Console().print(_result_table(results, "summary"))
    for _, r in results:
        if r.failed_episodes:
            console.print(f"[yellow]{r.failed_episodes} episode(s) lost to simulator faults (counted as "
                          "failures)[/yellow]")
        for v in r.videos:
            console.print(f"[dim]video: {v}[/dim]")
    return 0


def _print_rows(rows: list[dict], title: str, as_json: bool) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    t = Table(title=title)
    for k in rows[0]:
        t.add_column(k)
    for r in rows:
        t.add_row(*[str(v) for v in r.values()])
    Console().print(t)


def cmd_bench(args: argparse.Namespace) -> int:
    from reinforge.bench import bench_env, bench_policy, bench_rl

    if args.what == "rl":
        freeze = {"both": (True, False), "on": (True,), "off": (False,)}[args.freeze_vision]
        layouts: list[tuple[str, list[str]]] = [("in-process", [])]
        if args.ray:  # the same iterations in process and on Ray with each number of env workers
            freeze = freeze[:1]
            for n in (int(w) for w in args.env_workers.split(",")):
                label = f"ray {n} env worker{'s' if n > 1 else ''}"
                over = ["distributed.backend=ray", f"distributed.env_workers={n}",
                        f"distributed.ray.num_cpus={max(os.cpu_count() or 1, n + args.rollout_workers)}"]
                if args.rollout_workers:
                    label += f", {args.rollout_workers} rollout worker(s) ({args.placement})"
                    over += [f"distributed.rollout_workers={args.rollout_workers}",
                             f"distributed.placement={args.placement}"]
                for stages in sorted({1, args.pipeline_stages}):
                    layouts.append((label + (f", {stages} pipeline stages" if stages > 1 else ""),
                                    [*over, f"rollout.pipeline_stages={stages}"]))
        rows = [bench_rl(args.policy, args.algo, iterations=args.iterations, freeze_vision=f, init=args.init,
                         env=_env_config(args), device=args.device, precision=args.precision,
                         num_envs=args.rl_envs, extra=[*over, *args.set], layout=label)
                for label, over in layouts for f in freeze]
        _print_rows(rows, f"RL throughput: {args.algo.upper()} on the {args.policy} policy ({rows[0]['device']})",
                    args.json)
    elif args.what == "env":
        workers = [int(w) for w in args.workers.split(",")] if args.workers else [None]
        rows = [bench_env(_env_config(args), num_envs=args.num_envs, image_size=args.image_size, steps=args.steps,
                          num_workers=w) for w in workers]
        _print_rows(rows if len(rows) > 1 or not args.json else rows, f"env throughput: {args.env}", args.json)
    else:
        rows = [bench_policy(kind, batch=args.batch, train_batch=min(64, args.batch), image_size=args.image_size,
                             device=args.device) for kind in args.kinds.split(",")]
        _print_rows(rows, "policy throughput", args.json)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from reinforge import results

    root = Path(args.root)
    if not (root / results.RESULTS_DIR).is_dir():
        raise ValueError(f"{root.resolve()} has no {results.RESULTS_DIR}/ folder: run this in the repository "
                         "(or pass --root)")
    if args.check:
        bad = results.stale(root)
        for p in bad:
            console.print(f"out of date: {p} (run `reinforge results` to regenerate it)")
        return 1 if bad else 0
    for p in results.write(root):
        console.print(f"regenerated {p}")
    return 0


def cmd_suites(args: argparse.Namespace) -> int:
    from reinforge.eval.evaluate import env_spec

    for suite in _suites(args):
        first = env_spec(_env_config(args, suite))
        for split in first.splits:
            s = env_spec(_env_config(args, suite), split) if split != "train" else first
            t = Table(title=f"{s.env}/{s.suite}/{split} (max {s.max_episode_steps} steps, "
                            + (f"{s.num_init_states} initial states per task)" if s.num_init_states
                               else "random initial states)"))
            t.add_column("id")
            t.add_column("name")
            t.add_column("instruction")
            for i, task in enumerate(s.tasks):
                t.add_row(str(i), task.name, task.instruction)
            Console().print(t)
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from reinforge.envs.base import ENTRY_POINT_GROUP

    t = Table(title=f"registered environments (plug-ins: entry-point group {ENTRY_POINT_GROUP!r})")
    t.add_column("env")
    t.add_column("suites")
    for name, suites in registered_envs().items():
        t.add_row(name, ", ".join(suites))
    Console().print(t)
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    """Green-VLA's stages R0 -> R1 -> R2 (and the R1-alone baseline) from one config, resumable."""
    import yaml

    from reinforge.config import load_config, to_dict
    from reinforge.train.quickstart import resolve_config
    from reinforge.train.stages import StagedPipeline, StagesConfig, results_table

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config:  # no config file, only overrides
        config, overrides = None, [config, *overrides]
    cfg = load_config(StagesConfig, resolve_config(config) if config else None, overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    results = StagedPipeline(cfg, say=lambda m: console.print(escape(m)), progress=not args.quiet).run()
    if args.json:
        print(json.dumps(results))
    else:
        print("\n".join(results_table(results, cfg.target, cfg.suite)))
    return 0


def cmd_embodiments(args: argparse.Namespace) -> int:
    """Every registered embodiment, one per line, then each one's native layout and its unified-space slots."""
    from reinforge.envs.embodiment import UNIFIED_DIM, registered_embodiments, slot_name

    embs = registered_embodiments()
    if args.json:
        print(json.dumps({n: {**e.describe(), "action_names": list(e.action_names), "state_names": list(e.state_names),
                              "description": e.description} for n, e in embs.items()}))
        return 0
    for name, e in embs.items():
        print(f"{name}  {e.control_mode}  action_dim={e.action_dim}  state_dim={e.state_dim}")
    for name, e in embs.items():
        print(f"\n{name} ({e.control_mode}): {e.description}")
        for kind, names in (("action", e.action_names), ("state", e.state_names)):
            for k, (dim, slot) in enumerate(zip(names, e.slots(kind))):
                print(f"  {kind}[{k}] {dim:<18} -> unified[{slot:2d}] {slot_name(slot)}")
    print(f"\nunified space: {UNIFIED_DIM} slots (Green-VLA layout); a policy with policy.action_space=unified "
          "trains on several embodiments at once")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Expert demos -> one-demo SFT -> RL -> greedy evaluation before/after, next to a 50-demo SFT policy."""
    from reinforge.train.quickstart import QUICKSTART_CONFIGS, QuickstartOptions, run_quickstart

    opts = QuickstartOptions(env=_env_config(args), policy=args.policy, algo=args.algo, out=args.out or "",
                             config=args.config or "", iterations=args.iterations, sft_steps=args.sft_steps,
                             sft50_steps=args.sft50_steps if args.reference else 0,
                             episodes_per_task=args.episodes_per_task, device=args.device, seed=args.seed,
                             threads=args.threads, overrides=list(args.overrides))
    name = args.config or QUICKSTART_CONFIGS.get((args.algo, args.policy), "?")
    console.print(f"[bold]reinforge quickstart[/bold]: {opts.env.name}/{opts.env.suite}, {args.policy} policy, "
                  f"{args.algo.upper()} ({name}) -> {opts.out_dir}")
    res = run_quickstart(opts, say=lambda msg: console.print(msg))
    table = Table(title=f"reinforge quickstart: {opts.env.suite}, {args.policy} policy, {args.algo.upper()} "
                        f"({args.episodes_per_task} greedy episodes per task, eval bank, seed {args.seed})")
    header, _, *body = res.markdown
    cols = [c.strip() for c in header.strip("|").split("|")]
    for col in cols:
        table.add_column(col, justify="left" if col == "suite" else "right")
    for line in body:
        table.add_row(*[c.strip() for c in line.strip("|").split("|")])
    Console().print(table)
    from reinforge.train.quickstart import format_timing

    console.print(f"wall-clock minutes: {format_timing(res.minutes)}")
    console.print(f"summary: {res.out / 'summary.md'}; report with curves and videos: {res.report}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    import yaml

    from reinforge.config import load_config, to_dict
    from reinforge.fsutil import write_text_atomic
    from reinforge.train.checkpoint import describe_changes
    from reinforge.train.quickstart import resolve_config
    from reinforge.train.sft import SFTConfig, SFTTrainer

    overrides = list(args.overrides)
    if args.data:  # --data A [--data B ...]: one dataset, or a mixture (data_weights= sets the shares)
        overrides.append(f"data={args.data[0] if len(args.data) == 1 else json.dumps(args.data)}")
    for flag, key in ((args.policy, "policy.kind"), (args.out, "out"), (args.steps, "steps"),
                      (args.batch_size, "batch_size"), (args.lr, "optim.lr"), (args.seed, "seed"),
                      (args.device, "device")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_config(SFTConfig, resolve_config(args.config, "sft") if args.config else None, overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    trainer = SFTTrainer(cfg)
    if trainer.step:
        console.print(f"resuming {cfg.out} from step {trainer.step}")
    if trainer.resume_changes:
        console.print(f"resuming with changed settings: {escape(describe_changes(trainer.resume_changes))}",
                      soft_wrap=True, highlight=False)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(cfg.out) / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    n_params = sum(p.numel() for p in trainer.policy.parameters())
    fp = trainer._fingerprint()
    console.print(f"SFT {trainer.policy.config.kind} policy ({n_params / 1e6:.2f} M params) on {fp['episodes']} "
                  f"episodes / {fp['frames']} frames for {cfg.steps} steps -> {cfg.out}")
    trainer.run(progress=not args.quiet)
    from reinforge.train.logging import read_metrics

    final = {k: v for k, v in read_metrics(Path(cfg.out) / "metrics.jsonl")[-1].items() if k.startswith("eval/")}
    summary = {"policy": str(Path(cfg.out) / "policy"), "steps": trainer.step,
               **{k: round(v, 4) for k, v in final.items()}}
    print(json.dumps(summary))
    return 0


def _before_after_table(history: list[dict], suite: str, title: str, bank: str = "eval") -> Table:
    t = Table(title=f"{title} ({bank} bank)")
    for col in ("split", "before RL", "after RL"):
        t.add_column(col, justify="left" if col == "split" else "right")
    rates = sorted(k for k in history[-1] if k.startswith(f"{bank}/{suite}") and k.endswith("/success_rate"))
    for key in rates:
        split = key[len(f"{bank}/{suite}"):-len("/success_rate")].lstrip("_") or "train tasks"
        if key in history[0]:
            t.add_row(split, f"{100 * history[0][key]:.1f}%", f"{100 * history[-1][key]:.1f}%")
    return t


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from reinforge.config import load_config, to_dict
    from reinforge.fsutil import write_text_atomic
    from reinforge.train.checkpoint import describe_changes
    from reinforge.train.quickstart import resolve_config
    from reinforge.train.rl import RLConfig, RLTrainer

    cfg = load_config(RLConfig, resolve_config(args.config, "rl"), list(args.overrides))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    trainer = RLTrainer(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if trainer.resume_changes:
        console.print(f"resuming with changed settings: {escape(describe_changes(trainer.resume_changes))}",
                      soft_wrap=True, highlight=False)
    verb = f"resuming at iteration {trainer.iteration}" if trainer.iteration else "starting"
    console.print(f"{cfg.algo.upper()} on the {trainer.policy.config.kind} policy ({trainer.device}), "
                  f"{cfg.env.name}/{cfg.suite}: {verb}, {cfg.iterations} iterations -> {out}")
    with trainer:
        final = trainer.run(progress=not args.quiet)
    Console().print(_before_after_table(trainer.history, cfg.suite, f"{cfg.algo.upper()} {cfg.suite}",
                                        cfg.eval.final_bank))
    console.print(f"report: {out / 'report' / 'summary.md'}")
    print(json.dumps({"out": str(out), "iterations": trainer.iteration,
                      **{k: round(v, 4) for k, v in final.items() if k.endswith("success_rate")}}))
    return 0


def cmd_wm(args: argparse.Namespace) -> int:
    import yaml

    from reinforge.config import load_config, to_dict
    from reinforge.fsutil import write_text_atomic
    from reinforge.worldmodel.train import WMTrainConfig, WMTrainer, evaluate_saved

    if args.wm_command == "eval":
        result = evaluate_saved(args.model, args.data, horizon=args.horizon, every=args.every, out=args.out,
                                videos=args.videos, device=args.device)
        s = result["summary"]
        console.print(f"report: {args.out or 'the model folder /report'}")
        print(json.dumps({k: round(v, 4) for k, v in s.items()}))
        return 0
    overrides = list(args.overrides)
    for flag, key in ((args.data, "data"), (args.out, "out"), (args.steps, "steps"), (args.device, "device"),
                      (args.seed, "seed")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_config(WMTrainConfig, args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    trainer = WMTrainer(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(cfg.out) / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    n = sum(p.numel() for p in trainer.model.parameters())
    verb = f"resuming at step {trainer.step}" if trainer.step else "training"
    console.print(f"world model ({n / 1e6:.2f} M params) on {trainer.ds.num_episodes} episodes / "
                  f"{trainer.ds.num_frames} frames ({len(trainer.heldout_eps)} held out): {verb} to {cfg.steps} "
                  f"steps -> {cfg.out}")
    result = trainer.run(progress=not args.quiet)
    console.print(f"report: {Path(cfg.out) / 'report' / 'wm_eval.md'}")
    print(json.dumps({"model": str(Path(cfg.out) / "model"),
                      **{k: round(v, 4) for k, v in result["summary"].items()}}))
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Green-VLA monitors: ``fit`` an OOD detector and a progress head on a policy's demos, ``eval`` with them."""
    from reinforge.data import DemoDataset
    from reinforge.device import resolve_device
    from reinforge.monitor import OODConfig, ProgressConfig, evaluate_monitored, fit_monitors, load_monitors
    from reinforge.policies import load_pretrained

    policy = load_pretrained(args.policy).to(resolve_device(args.device)).eval()
    if args.monitor_command == "fit":
        ds = DemoDataset.load(args.data, expect_image_size=policy.config.image_size)
        summary = fit_monitors(policy, ds, args.out, what=args.what, ood_config=OODConfig(quantile=args.quantile,
                               seed=args.seed), progress_config=ProgressConfig(steps=args.steps, seed=args.seed))
        console.print(f"monitors of {args.policy} fitted on {ds.num_episodes} episodes -> {args.out}")
        print(json.dumps(summary))
        return 0
    progress, ood = load_monitors(args.monitors)
    r = evaluate_monitored(policy, _env_config(args), progress=None if args.no_stop else progress, ood=ood,
                           stop_threshold=args.stop_threshold, stop_patience=args.stop_patience,
                           episodes_per_task=args.episodes_per_task, split=args.split, max_envs=args.max_envs,
                           tasks=[t.strip() for t in args.tasks.split(",")] if args.tasks else None,
                           max_episode_steps=args.max_steps, show_progress=not args.json, seed=args.seed,
                           bank=args.bank)
    if args.json:
        print(json.dumps(r.to_dict()))
        return 0
    t = Table(title=f"{r.env}/{r.suite}/{r.split} monitored ({', '.join(r.monitors) or 'no monitors'}): {args.policy}")
    for col in ("metric", "value"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    rows = [("success", f"{100 * r.success_rate:.1f}%"), ("mean length", f"{r.mean_length:.1f}"),
            ("stopped by the progress head", f"{100 * r.stop_rate:.1f}%"),
            ("success at some chunk", f"{100 * r.ever_success_rate:.1f}%"),
            ("undone successes", f"{100 * r.undone_success_rate:.1f}%"), ("episodes", str(r.num_episodes))]
    if r.ood_flag_rate is not None:
        rows += [("OOD-flagged episodes", f"{100 * r.ood_flag_rate:.1f}%"),
                 ("OOD-flagged policy calls", f"{100 * r.ood_call_flag_rate:.1f}%")]
    for row in rows:
        t.add_row(*row)
    Console().print(t)
    return 0


def cmd_dataqa(args: argparse.Namespace) -> int:
    from reinforge.data.dataqa import (
        COLUMNS,
        dataqa_report,
        filter_dataset,
        format_cell,
        load_dataqa_config,
        rule_summary,
        write_report,
    )
    from reinforge.train.quickstart import resolve_config

    if args.align and not args.out:
        raise ValueError("--align resamples the episodes of a filtered copy: pass --out DIR as well")
    cfg = load_dataqa_config(resolve_config(args.config), list(args.overrides))
    result = filter_dataset(args.data, args.out, cfg, align=args.align, overwrite=args.overwrite) if args.out \
        else None
    report = result.report if result else dataqa_report(args.data, cfg)
    paths = write_report(report, args.report_dir) if args.report_dir else {}
    s = report.summary
    if args.json:
        print(json.dumps({"dataset": report.root, "episodes": s["episodes"], "flagged": s["flagged"],
                          "per_rule": s["per_rule"], "target_speed": s["target_speed"],
                          "flags": {r["episode"]: r["flags"] for r in report.rows if r["flags"]},
                          "out": str(result.path) if result else None, "kept": len(result.kept) if result else None,
                          "resampled": result.resampled if result else None,
                          "report": {k: str(v) for k, v in paths.items()}}))
        return 0
    t = Table(title=f"DataQA {report.root}: {s['flagged']} of {s['episodes']} episodes flagged")
    for col in ("rule", "passes when", "flagged"):
        t.add_column(col, justify="right" if col == "flagged" else "left")
    for rule, text, n in rule_summary(report):
        t.add_row(rule, escape(text), str(n))
    Console().print(t)
    flagged = [r for r in report.rows if r["flags"]]
    if flagged:
        ft = Table(title="flagged episodes" + (f" (first 40 of {len(flagged)})" if len(flagged) > 40 else ""))
        for col in ("episode", "task", "length", "failed rules (score)"):
            ft.add_column(col, justify="left" if col.startswith("failed") else "right")
        for r in flagged[:40]:
            why = [f"{rule} ({', '.join(f'{c} {format_cell(r[c])}' for c, x in COLUMNS.items() if x == rule)})"
                   if rule != "failed" else rule for rule in r["flags"]]
            ft.add_row(str(r["episode"]), str(r["task"]), str(r["length"]), "; ".join(why))
        Console().print(ft)
    if result:
        console.print(f"wrote {len(result.kept)} of {s['episodes']} episodes to {result.path}"
                      + (f" ({result.resampled} resampled to speed {result.target_speed:.4g})" if args.align else ""))
    for v in paths.values():
        console.print(f"[dim]report: {v}[/dim]")
    return 0


def cmd_corrupt(args: argparse.Namespace) -> int:
    from reinforge.data import DemoDataset
    from reinforge.data.corrupt import corrupt_dataset

    path = corrupt_dataset(args.data, args.out, jitter=args.jitter, blur=args.blur, idle=args.idle, slow=args.slow,
                           fast=args.fast, seed=args.seed, jitter_std=args.jitter_std, blur_sigma=args.blur_sigma,
                           idle_length=args.idle_length, overwrite=args.overwrite)
    counts = DemoDataset.load(path, success_only=False).info["reinforge"]["corruption"]["counts"]
    console.print(f"wrote {sum(counts.values())} episodes to {path}: "
                  + ", ".join(f"{n} {d}" for d, n in counts.items() if n))
    return 0


def cmd_lerobot_tiny(args: argparse.Namespace) -> int:
    from reinforge.policies.convert_lerobot import make_tiny_checkpoint

    s = make_tiny_checkpoint(args.out, model=args.model, state_dim=args.state_dim, action_dim=args.action_dim,
                             cameras=args.cameras, image_size=args.image_size, horizon=args.horizon,
                             seed=args.seed, overwrite=args.overwrite)
    console.print(f"wrote {s['out']}: a tiny LeRobot {s['model']} checkpoint with random weights "
                  f"({s['params'] / 1e6:.1f} M parameters); convert it with `reinforge convert lerobot {s['out']} "
                  "--out P --tokenizer hash`")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    if args.format == "lerobot":
        from reinforge.policies.convert_lerobot import convert_lerobot

        s = convert_lerobot(args.src, args.out, tokenizer=args.tokenizer, image_size=args.image_size or 0,
                            num_views=args.num_views or 0, overwrite=args.overwrite)
        console.print(f"wrote {s['out']}: lerobot policy ({s['model']}), {s['params'] / 1e6:.1f} M parameters, "
                      f"{s['normalization']} actions; it expects {s['views']} view(s) of {s['image_size']}x"
                      f"{s['image_size']} (resized with padding), a {s['state_dim']}-dim state and acts in "
                      f"{s['horizon']}-step chunks of {s['action_dim']}-dim actions ({s['execute_steps']} executed)")
        return 0
    from reinforge.policies.convert_openvla import convert_openvla_oft

    try:
        heads = tuple(int(x) for x in args.vision_heads.split(",")) if args.vision_heads else (0, 0)
    except ValueError:
        heads = ()
    if len(heads) != 2:
        raise ValueError(f"--vision-heads must look like DINO,SIGLIP (e.g. 16,16), got {args.vision_heads!r}")
    s = convert_openvla_oft(args.src, args.out, unnorm_key=args.unnorm_key, num_views=args.num_views or 2,
                            image_size=args.image_size or 224, horizon=args.horizon, execute_steps=args.execute_steps,
                            normalization=args.normalization, action_head=args.action_head,
                            proprio_projector=args.proprio_projector, tokenizer=args.tokenizer,
                            prompt_end_ids=args.prompt_end_ids, vision_heads=heads, gripper=args.gripper,
                            center_crop=args.center_crop, overwrite=args.overwrite)
    head = "L1-regression head" if s["head"] == "l1" else "action tokens"
    console.print(f"wrote {s['out']}: oft policy, {s['params'] / 1e6:.1f} M parameters, {head}, "
                  f"{'proprio token, ' if s['proprio'] else ''}statistics of {s['unnorm_key']!r}; it expects "
                  f"{s['num_views']} view(s) of {s['image_size']}x{s['image_size']}, a {s['state_dim']}-dim state and "
                  f"acts in {s['horizon']}-step chunks of {s['action_dim']}-dim actions")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reinforge", description="RL fine-tuning of Vision-Language-Action policies")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks of errors")
    p.add_argument("--version", action="version", version=f"reinforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    device_help = "the policy's device: cpu, cuda, cuda:N or auto"

    d = sub.add_parser("demos", help="record scripted-expert demonstrations into a LeRobot-style dataset")
    _add_env_flags(d)
    d.add_argument("--split", default="train")
    d.add_argument("--per-task", type=int, default=1)
    d.add_argument("--out", required=True)
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--noise", type=float, default=0.2, help="std of the expert's translation-action noise")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-envs", type=int, default=0,
                   help="envs recorded together (default 0: as many as fit half the free memory, at most 100)")
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(fn=cmd_demos)

    im = sub.add_parser("import", help="outside demonstrations (LIBERO HDF5 files, a LeRobot dataset) -> a dataset")
    im.add_argument("format", choices=["libero", "lerobot"])
    im.add_argument("source", nargs="+", help="libero: .hdf5 files or folders of them; lerobot: the dataset folder")
    im.add_argument("--out", required=True)
    im.add_argument("--suite", help="libero: the suite of the files; lerobot: the suite SFT evaluates in (with --env)")
    im.add_argument("--env", help="lerobot: the env SFT evaluates policies trained on it in (e.g. libero)")
    im.add_argument("--image-size", type=int, default=0, help="resize images to this (default: the source's size)")
    im.add_argument("--max-episodes", type=int, default=0, help="at most this many (libero: per file; 0 = all)")
    im.add_argument("--keep-noops", action="store_true",
                    help="libero: keep actions that neither move the arm nor change the gripper (dropped by default)")
    im.add_argument("--cameras", help="lerobot: the image/video features to import, comma-separated (default: all)")
    im.add_argument("--camera-names", help="lerobot: the names they get (e.g. agentview,robot0_eye_in_hand)")
    im.add_argument("--state-key", default="observation.state")
    im.add_argument("--action-key", default="action")
    im.add_argument("--overwrite", action="store_true")
    im.set_defaults(fn=cmd_import)

    e = sub.add_parser("eval", help="success rate of a policy (expert | random | checkpoint folder)")
    e.add_argument("--policy", default="expert")
    _add_env_flags(e, "a suite, a comma list, or 'all'")
    e.add_argument("--split", default="train")
    e.add_argument("--bank", default="eval", choices=("eval", "val", "train"),
                   help="initial states: eval (reported numbers), val (tuning) or train (demos, rollouts)")
    e.add_argument("--episodes-per-task", type=int, default=50)
    e.add_argument("--tasks", default=None, help="comma-separated task ids or names to evaluate (default: all)")
    e.add_argument("--max-envs", type=int, default=0,
                   help="envs stepped together per batch (default 0: as many as fit the memory, at most 500)")
    e.add_argument("--image-size", type=int, default=64, help="for expert/random (a policy uses its own)")
    e.add_argument("--video", default=None, help="folder for episode videos")
    e.add_argument("--videos-per-task", type=int, default=1)
    e.add_argument("--video-format", default="mp4", choices=("mp4", "gif"))
    e.add_argument("--device", default="cpu", help=device_help)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--mode", default="greedy", choices=("greedy", "sample"),
                   help="greedy actions, or the stochastic policy RL rollouts run (token sampling, Flow-SDE/Noise)")
    e.add_argument("--temperature", type=float, default=1.0,
                   help="token policies' sampling temperature (--mode sample)")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.set_defaults(fn=cmd_eval)

    b = sub.add_parser("bench", help="benchmarks that print figures")
    b.add_argument("what", choices=("env", "policy", "rl"))
    _add_env_flags(b)
    b.add_argument("--policy", default="token", choices=("token", "flow", "oft", "lerobot"),
                   help="rl benchmark: policy kind (lerobot: a tiny pi0, in .venv-lerobot)")
    b.add_argument("--algo", default="grpo", choices=("grpo", "ppo"), help="rl benchmark: algorithm")
    b.add_argument("--iterations", type=int, default=2, help="rl benchmark: timed iterations (after 1 warm-up)")
    b.add_argument("--freeze-vision", default="both", choices=("both", "on", "off"),
                   help="rl benchmark: with a frozen, cached vision encoder, without, or both")
    b.add_argument("--init", default=None, help="rl benchmark: a fine-tuned policy (default: fresh weights)")
    b.add_argument("--rl-envs", type=int, default=None, help="rl benchmark: envs per rollout (default: the preset's)")
    b.add_argument("--device", default="cpu", help=device_help)
    b.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="rl benchmark: bf16 autocast (CUDA)")
    b.add_argument("--ray", action="store_true", help="rl benchmark: also on Ray, with each of --env-workers "
                   "(needs pip install 'reinforge[ray]')")
    b.add_argument("--env-workers", default="1,2", help="rl benchmark with --ray: comma list of env worker counts")
    b.add_argument("--rollout-workers", type=int, default=0,
                   help="rl benchmark with --ray: policy inference in this many actors (0: in the learner)")
    b.add_argument("--placement", default="disaggregated", choices=("disaggregated", "collocated"),
                   help="rl benchmark with --ray and --rollout-workers: where the envs step")
    b.add_argument("--pipeline-stages", type=int, default=1,
                   help="rl benchmark with --ray: also with the envs split into this many pipeline stages")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="rl benchmark: a config override for every row (repeatable), e.g. rollout.max_episode_steps=40")
    b.add_argument("--batch", type=int, default=512, help="policy benchmark: observations per act() call")
    b.add_argument("--kinds", default="token,flow", help="policy benchmark: comma list of architectures (token, flow, "
                   "oft-tiny, oft-medium: pip install 'reinforge[oft]'; lerobot-tiny (pi0), lerobot-pi05-tiny, "
                   "lerobot-smolvla-tiny, lerobot-medium (pi0): .venv-lerobot)")
    b.add_argument("--num-envs", type=int, default=256)
    b.add_argument("--workers", default=None, help="env benchmark: comma list of worker counts (envs that use "
                                                   "worker processes, e.g. 1,2)")
    b.add_argument("--image-size", type=int, default=64)
    b.add_argument("--steps", type=int, default=50)
    b.add_argument("--render-backend", default=None, choices=("auto", "numba", "torch", "triton"),
                   help="tabletop env benchmark: renderer (same as --env-opt render_backend=...)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_bench)

    f = sub.add_parser("sft", help="supervised fine-tuning of a token or flow VLA on demonstrations")
    f.add_argument("--config", default=None, help="YAML config (fields of SFTConfig); flags and overrides win")
    f.add_argument("--data", action="append", default=None,
                   help="dataset folder written by `reinforge demos`; repeat it to mix datasets in every batch "
                        "(shares: data_weights=[0.5,0.5])")
    f.add_argument("--policy", default=None, choices=("token", "flow", "oft"))
    f.add_argument("--out", default=None)
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--batch-size", type=int, default=None)
    f.add_argument("--lr", type=float, default=None)
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--device", default=None, help=device_help)
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("--print-config", action="store_true", help="print the fully resolved config and exit")
    f.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. policy.horizon=4 optim.lr=3e-4")
    f.set_defaults(fn=cmd_sft)

    t = sub.add_parser("train", help="online RL (GRPO / PPO) from a fine-tuned policy")
    t.add_argument("config", help="YAML config (fields of RLConfig) or a shipped config name, e.g. "
                                  "tabletop_grpo_token")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. init=runs/sft/policy optim.lr=1e-4 "
                                                "device=cuda env.name=libero env.suite=libero_spatial")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--print-config", action="store_true", help="print the fully resolved config and exit")
    t.set_defaults(fn=cmd_train)

    w = sub.add_parser("wm", help="world models (VLA-RFT): train one on demonstrations, evaluate it")
    wsub = w.add_subparsers(dest="wm_command", required=True)
    wt = wsub.add_parser("train", help="train an action-conditioned world model on a dataset")
    wt.add_argument("--data", default=None, help="dataset folder written by `reinforge demos`")
    wt.add_argument("--out", default=None, help="run folder (model/, checkpoints/, report/)")
    wt.add_argument("--config", default=None, help="YAML config (fields of WMTrainConfig)")
    wt.add_argument("--steps", type=int, default=None)
    wt.add_argument("--seed", type=int, default=None)
    wt.add_argument("--device", default=None, help=device_help)
    wt.add_argument("--quiet", action="store_true", help="no progress bar")
    wt.add_argument("--print-config", action="store_true", help="print the fully resolved config and exit")
    wt.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.latent_channels=16 unroll=6")
    we = wsub.add_parser("eval", help="prediction metrics of a world model on held-out episodes, with videos")
    we.add_argument("model", help="a world-model folder (the --out of `wm train`)")
    we.add_argument("--data", default=None, help="evaluate on every episode of this dataset instead")
    we.add_argument("--horizon", type=int, default=16, help="imagined steps per start frame")
    we.add_argument("--every", type=int, default=8, help="a start frame every this many steps of an episode")
    we.add_argument("--videos", type=int, default=2)
    we.add_argument("--out", default=None, help="report folder (default: MODEL/report)")
    we.add_argument("--device", default="cpu", help=device_help)
    w.set_defaults(fn=cmd_wm)
    we.set_defaults(overrides=[])

    dq = sub.add_parser("dataqa", help="score demonstrations (jitter, blur, idle, duration, speed, ...); with --out "
                                       "write a filtered, optionally speed-aligned copy")
    dq.add_argument("data", help="dataset folder written by `reinforge demos`")
    dq.add_argument("--config", default="dataqa", help="thresholds: a YAML file (fields of DataQAConfig) or a "
                                                       "shipped config name (default: the shipped dataqa.yaml)")
    dq.add_argument("--out", default=None, help="write the episodes that pass into this new dataset")
    dq.add_argument("--align", action="store_true", help="with --out: resample the kept episodes to one motion "
                                                         "speed (too slow / fast ones are repaired, not dropped)")
    dq.add_argument("--overwrite", action="store_true", help="replace an existing --out dataset")
    dq.add_argument("--report-dir", default=None, help="write dataqa.json, dataqa.md and dataqa_hist.png here")
    dq.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    dq.add_argument("overrides", nargs="*", help="threshold overrides, e.g. max_jitter=0.3 rules=[jitter,idle]")
    dq.set_defaults(fn=cmd_dataqa)
    co = sub.add_parser("corrupt", help="copy a dataset with injected defects (ground truth for DataQA experiments)")
    co.add_argument("data", help="dataset folder written by `reinforge demos`")
    co.add_argument("--out", required=True)
    for name, what in (("jitter", "with Gaussian noise on the actions and labels"), ("blur", "with blurred frames"),
                       ("idle", "with an inserted idle run"), ("slow", "recorded at 0.5x speed"),
                       ("fast", "recorded at 2x speed")):
        co.add_argument(f"--{name}", type=float, default=0.0, help=f"fraction of episodes {what}")
    co.add_argument("--jitter-std", type=float, default=0.3, help="jitter noise std (action units)")
    co.add_argument("--blur-sigma", type=float, default=1.0, help="blur std (pixels)")
    co.add_argument("--idle-length", type=float, default=0.3, help="idle run, as a fraction of the episode length")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--overwrite", action="store_true")
    co.set_defaults(fn=cmd_corrupt)

    mo = sub.add_parser("monitor", help="Green-VLA monitors: OOD detector and progress head (stop when done)")
    mosub = mo.add_subparsers(dest="monitor_command", required=True)
    mf = mosub.add_parser("fit", help="fit the OOD detector and / or the progress head of a policy on its demos")
    mf.add_argument("--policy", required=True, help="a policy folder (the policy/ of an SFT or RL run)")
    mf.add_argument("--data", required=True, help="the dataset the policy was trained on")
    mf.add_argument("--out", required=True, help="monitor folder (ood/ and progress/ inside)")
    mf.add_argument("--what", default="both", choices=("both", "ood", "progress"))
    mf.add_argument("--steps", type=int, default=400, help="progress-head training steps")
    mf.add_argument("--quantile", type=float, default=0.99, help="OOD threshold: this quantile of held-out scores")
    mf.add_argument("--seed", type=int, default=0)
    mf.add_argument("--device", default="cpu", help=device_help)
    me = mosub.add_parser("eval", help="greedy evaluation (episodes go on past success) stopped by the progress "
                                       "head, scored by the OOD detector")
    me.add_argument("--policy", required=True, help="a policy folder")
    me.add_argument("--monitors", required=True, help="the --out of `monitor fit`")
    _add_env_flags(me)
    me.add_argument("--split", default="train")
    me.add_argument("--bank", default="eval", choices=("eval", "val", "train"),
                   help="initial states: eval (reported numbers), val (tuning) or train (demos, rollouts)")
    me.add_argument("--seed", type=int, default=0, help="the evaluation's random stream (a flow policy's noise)")
    me.add_argument("--episodes-per-task", type=int, default=10)
    me.add_argument("--tasks", default=None, help="comma-separated task ids or names (default: all)")
    me.add_argument("--max-envs", type=int, default=100, help="envs stepped together per batch")
    me.add_argument("--max-steps", type=int, default=None, help="episode time limit (default: the suite's)")
    me.add_argument("--stop-threshold", type=float, default=0.9, help="stop when predicted progress >= this ...")
    me.add_argument("--stop-patience", type=int, default=2, help="... on this many consecutive policy calls")
    me.add_argument("--no-stop", action="store_true", help="ignore the progress head (episodes run to the limit)")
    me.add_argument("--device", default="cpu", help=device_help)
    me.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    mo.set_defaults(fn=cmd_monitor)

    rs = sub.add_parser("results", help="regenerate the docs' tables from results/*.json (--check: only compare)")
    rs.add_argument("--check", action="store_true", help="exit 1, naming the files, when a doc differs from its data")
    rs.add_argument("--root", default=".", help="the repository folder (results/, README.md, docs/)")
    rs.set_defaults(fn=cmd_results)

    s = sub.add_parser("suites", help="list an env's task suites and their instructions")
    _add_env_flags(s, "a suite, a comma list, or 'all' (default)")
    s.set_defaults(fn=cmd_suites, suite_default="all")

    st = sub.add_parser("stages", help="Green-VLA's staged training: R0 multi-embodiment pretraining -> R1 target SFT "
                                       "-> R2 RL, and the R1-alone baseline (resumable)")
    st.add_argument("config", nargs="?", default=None, help="a stages config (default: the built-in defaults), e.g. "
                                                             "tabletop_stages_flow")
    st.add_argument("overrides", nargs="*", help="dotted overrides, e.g. target=scara r0_steps=1000 seed=1")
    st.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    st.add_argument("--json", action="store_true", help="print the results as JSON")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.set_defaults(fn=cmd_stages)
    cv = sub.add_parser("convert", help="convert a released checkpoint into a reinforge policy (openvla-oft, "
                                        "lerobot)")
    cv.add_argument("format", choices=("openvla-oft", "lerobot"),
                    help="the source: an OpenVLA-OFT (Prismatic) folder, or a LeRobot pi0 / pi0.5 / SmolVLA folder "
                         "(LeRobot >= 0.6, Python >= 3.12)")
    cv.add_argument("src", help="the checkpoint folder (openvla-oft: config.json, model*.safetensors, "
                                "dataset_statistics.json, tokenizer, action_head--*.pt, proprio_projector--*.pt; "
                                "lerobot: config.json, model.safetensors, policy_*processor*)")
    cv.add_argument("--out", required=True, help="the policy folder to write")
    cv.add_argument("--unnorm-key", default="", help="the dataset whose action statistics to use (if several)")
    cv.add_argument("--num-views", type=int, default=0, help="camera views per observation (openvla-oft: as the "
                    "checkpoint was trained, default 2 = OFT on LIBERO's third-person + wrist; lerobot: the env's, "
                    "default the checkpoint's cameras, the missing ones blank)")
    cv.add_argument("--image-size", type=int, default=0, help="the env's image side, resized to the model's "
                                                                "(default: openvla-oft 224, lerobot the checkpoint's)")
    cv.add_argument("--horizon", type=int, default=8, help="openvla-oft: the action chunk the checkpoint was trained "
                                                           "with (not stored in it; OFT on LIBERO: 8, ALOHA: 25)")
    cv.add_argument("--gripper", default="libero", choices=("libero", "none"),
                    help="openvla-oft: libero maps OpenVLA's gripper (0 close ... 1 open) to LIBERO's (-1 open, +1 "
                         "close) as OFT's evaluation does; none for joint-space (ALOHA) checkpoints")
    cv.add_argument("--center-crop", type=float, default=0.9,
                    help="openvla-oft: centred area fraction of each view (OFT's LIBERO models trained on random "
                         "crops; 0 = none)")
    cv.add_argument("--execute-steps", type=int, default=0, help="chunk steps executed per call (default: all)")
    cv.add_argument("--normalization", default="bounds_q99", choices=("bounds_q99", "bounds"),
                    help="OpenVLA's action/proprio normalisation (LIBERO: bounds_q99; ALOHA: bounds)")
    cv.add_argument("--action-head", default="auto", help="auto (action_head--*checkpoint.pt in SRC), none, or PATH")
    cv.add_argument("--proprio-projector", default="auto", help="auto (proprio_projector--*checkpoint.pt), none, "
                                                                "or PATH")
    cv.add_argument("--tokenizer", default="", help="tokenizer folder (openvla-oft default: SRC; lerobot: required, "
                                                    "the VLM's, or 'hash')")
    cv.add_argument("--prompt-end-ids", default="auto", help="token ids after the prompt (auto: the tokenizer's "
                                                             "empty word, 29871 for Llama 2), or none")
    cv.add_argument("--vision-heads", default="", help="DINO,SIGLIP attention heads for unknown timm towers")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing --out policy")
    cv.set_defaults(fn=cmd_convert)
    lt = sub.add_parser("lerobot-tiny", help="write a tiny random LeRobot pi0 / pi0.5 checkpoint (smoke tests)")
    lt.add_argument("--out", required=True)
    lt.add_argument("--model", default="pi0", choices=("pi0", "pi05"))
    lt.add_argument("--state-dim", type=int, default=8)
    lt.add_argument("--action-dim", type=int, default=7)
    lt.add_argument("--cameras", type=int, default=2)
    lt.add_argument("--image-size", type=int, default=32)
    lt.add_argument("--horizon", type=int, default=4)
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--overwrite", action="store_true")
    lt.set_defaults(fn=cmd_lerobot_tiny)
    em = sub.add_parser("embodiments", help="list the embodiments: native action/state layouts and unified slots")
    em.add_argument("--json", action="store_true", help="print JSON")
    em.set_defaults(fn=cmd_embodiments)
    v = sub.add_parser("envs", help="list the registered environments")
    v.set_defaults(fn=cmd_envs)

    q = sub.add_parser(
        "quickstart", help="the main job: expert demos -> 1-demo SFT -> RL -> evaluation (--reference: next to "
                           "50-demo SFT)")
    _add_env_flags(q)
    q.add_argument("--out", default=None, help="default: runs/quickstart/SUITE_ALGO_POLICY")
    q.add_argument("--policy", default="flow", choices=("token", "flow"))
    q.add_argument("--algo", default="ppo", choices=("grpo", "ppo"))
    q.add_argument("--config", default=None, help="RL config (default: the shipped one for --algo/--policy)")
    q.add_argument("--iterations", type=int, default=None, help="RL iterations (default: the config's)")
    q.add_argument("--sft-steps", type=int, default=600, help="SFT steps on the single demo per task")
    q.add_argument("--reference", action="store_true",
                   help="also fine-tune and evaluate a 50-demo SFT policy for reference (adds ~9 minutes on 2 cores)")
    q.add_argument("--sft50-steps", type=int, default=1500, help="SFT steps of the 50-demo reference")
    q.add_argument("--episodes-per-task", type=int, default=50, help="greedy episodes per task before/after")
    q.add_argument("--device", default="cpu", help=device_help)
    q.add_argument("--seed", type=int, default=0, help="seed of SFT and RL (runs/quickstart/..._seedN for N > 0)")
    q.add_argument("--threads", type=int, default=2, help="torch threads (the numbers depend on it; 2 re-makes the "
                                                          "README's; 0 = torch's default)")
    q.add_argument("overrides", nargs="*", help="dotted RL config overrides, e.g. optim.lr=1e-4")
    q.set_defaults(fn=cmd_quickstart)
    return p


# exceptions that are the user's to fix (bad input, missing files or extras, divergence): one `error:` line, exit 2
USER_ERRORS = (ValueError, ImportError, FloatingPointError)
DISK_HINTS = {errno.ENOSPC: "the disk is full: free space, or write elsewhere (out= / --out)",
              errno.EDQUOT: "the disk quota is exhausted: free space, or write elsewhere (out= / --out)",
              errno.EROFS: "the file system is read-only: write elsewhere (out= / --out)",
              errno.EACCES: "permission denied: write elsewhere (out= / --out) or fix the permissions",
              errno.EPERM: "permission denied: write elsewhere (out= / --out) or fix the permissions",
              errno.ENOENT: "it does not exist: check the path"}


def _error(msg: str) -> int:
    console.print(f"[red]error:[/red] {escape(' '.join(msg.split()))}", soft_wrap=True, highlight=False)
    return 2


def _os_error(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    hint = DISK_HINTS.get(e.errno or -1, "")
    return f"cannot access{where}: {e.strerror or e}" + (f"; {hint}" if hint else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides may come before or after flags: `sft --data D steps=10 --out O optim.lr=1e-4`
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if getattr(args, "suite_default", None) and args.suite is None:
        args.suite = args.suite_default
    if getattr(args, "render_backend", None):
        args.env_opt.append(f"render_backend={args.render_backend}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume from the last checkpoint")
        return 130
    except OSError as e:  # a full or read-only disk, a missing file: before the user errors (some are ValueErrors)
        if args.verbose:
            raise
        return _error(_os_error(e))
    except USER_ERRORS as e:
        if args.verbose:
            raise
        return _error(str(e) or type(e).__name__)


if __name__ == "__main__":
    sys.exit(main())
