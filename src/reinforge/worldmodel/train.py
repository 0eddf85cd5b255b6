"""Training and evaluating the world model: ``reinforge wm train --data DIR --out DIR`` / ``reinforge wm eval``.

Training (VLA-RFT stage I, maximum likelihood of next frames given a frame and actions; here an L1 pixel loss,
i.e. the likelihood of a Laplace observation model): sequences of ``unroll + 1`` consecutive frames of one
episode; the first frame is encoded (and reconstructed), then the dynamics is unrolled ``unroll`` steps on its
OWN predictions with the recorded actions, and every predicted frame is decoded and compared with the recorded
one (+ its latent with the encoded recorded frame, + the proprio state). A fraction of the episodes is held out
for evaluation; ``out/model`` is written atomically at the end, ``out/checkpoints/last`` every
``checkpoint_every`` steps (a rerun resumes from it).

Evaluation on held-out episodes: from start frames every ``every`` steps of each episode, the model imagines
``horizon`` frames with the recorded actions; MAE, PSNR, SSIM and the perceptual distance of each imagined
frame against the recorded one, per horizon step, next to the "nothing moves" baseline (the context frame
repeated), which a world model must beat. The report has a plot of their growth with the horizon and a video,
recorded | imagined side by side.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reinforge import fsutil
from reinforge.config import check, plain
from reinforge.data.dataset import DemoDataset
from reinforge.device import resolve_device
from reinforge.progress import ProgressBar
from reinforge.provenance import record_run
from reinforge.train.logging import MetricLogger
from reinforge.worldmodel.metrics import mae, psnr, ssim
from reinforge.worldmodel.model import WorldModel, WorldModelConfig, load_world_model

log = logging.getLogger(__name__)
STATE_NAME = "trainer_state.pt"
SPLIT_NAME = "split.json"


@dataclass
class WMTrainConfig:
    data: str = ""  # a dataset written by `reinforge demos` (or any LeRobot-layout reinforge dataset)
    out: str = "runs/wm"
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    steps: int = 1500
    batch_size: int = 16
    unroll: int = 4  # predicted steps per training sequence (fed back autoregressively)
    lr: float = 1e-3  # peak; linear warm-up over warmup_steps, then cosine decay to lr * final_lr_ratio
    warmup_steps: int = 100
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    latent_weight: float = 0.5
    state_weight: float = 1.0
    heldout_fraction: float = 0.1  # episodes held out for evaluation (every k-th episode)
    eval_horizon: int = 16
    eval_every: int = 8  # start frames every this many steps of a held-out episode
    videos: int = 2
    checkpoint_every: int = 250
    log_every: int = 25
    resume: bool = True
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0

    def __post_init__(self) -> None:
        check(self.steps >= 0, "steps", self.steps, "must be >= 0")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.unroll >= 1, "unroll", self.unroll, "must be >= 1")
        check(self.lr > 0, "lr", self.lr, "must be > 0")
        check(self.grad_clip > 0, "grad_clip", self.grad_clip, "must be > 0")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        check(0 <= self.final_lr_ratio <= 1, "final_lr_ratio", self.final_lr_ratio, "must be in [0, 1]")
        check(0 <= self.heldout_fraction < 1, "heldout_fraction", self.heldout_fraction, "must be in [0, 1)")
        check(self.eval_horizon >= 1, "eval_horizon", self.eval_horizon, "must be >= 1")
        check(self.eval_every >= 1, "eval_every", self.eval_every, "must be >= 1")
        check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be >= 1")
        check(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")


# ---------------------------------------------------------------------------------------------- data


def split_episodes(num_episodes: int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices: every k-th episode is held out, k = round(1 / fraction)."""
    if heldout_fraction <= 0 or num_episodes < 2:
        return list(range(num_episodes)), []
    k = max(2, round(1 / heldout_fraction))
    held = [e for e in range(num_episodes) if e % k == k - 1]
    return [e for e in range(num_episodes) if e % k != k - 1], held


def episode_bounds(ds: DemoDataset) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([int(e["length"]) for e in ds.episodes])
    return ds.episode_start.clone(), lengths


def sample_sequences(ds: DemoDataset, episodes: torch.Tensor, batch_size: int, length: int,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch_size`` windows of ``length + 1`` consecutive frames inside episodes ``episodes``: images
    (B, L+1, V, 3, H, W) uint8, states (B, L+1, S), actions (B, L, D) (action t leads from frame t to t+1)."""
    start, lengths = episode_bounds(ds)
    ok = episodes[lengths[episodes] > length]
    if ok.numel() == 0:
        raise ValueError(f"no episode of {ds.root} is longer than unroll={length} frames; lower unroll")
    ep = ok[torch.randint(0, ok.numel(), (batch_size,), generator=gen)]
    t0 = (torch.rand(batch_size, generator=gen) * (lengths[ep] - length)).long()
    idx = start[ep][:, None] + t0[:, None] + torch.arange(length + 1)[None]
    return ds.images[idx], ds.states[idx], ds.actions[idx[:, :-1]]


def wm_loss(model: WorldModel, images: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, *,
            latent_weight: float, state_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction of frame 0 + L1 of every unrolled prediction + latent and state consistency."""
    L = actions.shape[1]
    z = model.encode(images[:, 0])
    s = model.norm_state(states[:, 0])
    recon = (model.decode(z) - model.frames_out(model.frames_in(images[:, 0]))).abs().mean()
    pix = lat = st = 0.0
    for k in range(L):
        z, s = model.step(z, s, actions[:, k])
        target = model.frames_in(images[:, k + 1])
        pix = pix + (model.decode(z) - model.frames_out(target)).abs().mean()
        with torch.no_grad():
            z_true = model.encoder(target)
        lat = lat + (z - z_true).pow(2).mean()
        st = st + (s - model.norm_state(states[:, k + 1])).pow(2).mean()
    pix, lat, st = pix / L, lat / L, st / L
    loss = recon + pix + latent_weight * lat + state_weight * st
    m = {"wm/loss": loss, "wm/recon_l1": recon, "wm/pred_l1": pix, "wm/latent_mse": lat, "wm/state_mse": st}
    return loss, {k: float(v.detach()) for k, v in m.items()}


# ---------------------------------------------------------------------------------------------- training


class WMTrainer:
    def __init__(self, cfg: WMTrainConfig):
        if not cfg.data:
            raise ValueError("wm train needs a dataset: --data DIR (record one with `reinforge demos`)")
        self.cfg, self.out = cfg, Path(cfg.out)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.ds = DemoDataset.load(cfg.data)
        self.train_eps, self.heldout_eps = split_episodes(self.ds.num_episodes, cfg.heldout_fraction)
        H, W = self.ds.images.shape[-2:]
        mc = WorldModelConfig(**{**asdict(cfg.model), "image_size": (int(H), int(W)),
                                 "num_views": self.ds.num_views, "state_dim": self.ds.state_dim,
                                 "action_dim": self.ds.action_dim})
        self.model = WorldModel(mc, self.ds.states.mean(0), self.ds.states.std(0)).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.train_s = 0, 0.0
        fsutil.lock_run(self.out)
        self._locked = True
        ckpt = self.out / "checkpoints" / "last"
        try:
            for folder, kind in ((ckpt, "wm-checkpoint"), (self.out / "model", "world-model")):
                fsutil.check_replaceable(fsutil.settle(folder), kind, "for --out")
            if cfg.resume and (ckpt / STATE_NAME).is_file():
                self._restore(ckpt)
        except BaseException:
            self.close()
            raise

    def _restore(self, ckpt: Path) -> None:
        try:
            state = torch.load(ckpt / STATE_NAME, weights_only=True)
            self.model.load_state_dict(load_world_model(ckpt).state_dict())
            self.opt.load_state_dict(state["optimizer"])
            self.gen.set_state(state["gen"])
            self.step, self.train_s = int(state["step"]), float(state["train_s"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"{ckpt} does not fit this run ({type(e).__name__}: {e}); choose another --out, or "
                             "pass resume=false to start over") from None
        if state.get("data") != str(Path(self.cfg.data).resolve()):
            log.warning("resuming %s, which was trained on %s, with --data %s", self.out, state.get("data"),
                        self.cfg.data)
        log.info("resuming world-model training at step %d", self.step)

    def save_checkpoint(self) -> None:
        state = {"optimizer": self.opt.state_dict(), "gen": self.gen.get_state(), "step": self.step,
                 "train_s": self.train_s, "data": str(Path(self.cfg.data).resolve()),
                 "config": json.dumps(plain(asdict(self.cfg)))}
        with fsutil.atomic_dir(self.out / "checkpoints" / "last", "wm-checkpoint") as tmp:
            self.model.save(tmp)
            with fsutil.write_guard(tmp / STATE_NAME):
                torch.save(state, tmp / STATE_NAME)

    def lr(self) -> float:
        c = self.cfg
        if self.step < c.warmup_steps:
            return c.lr * (self.step + 1) / c.warmup_steps
        frac = (self.step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return c.lr * (c.final_lr_ratio + (1 - c.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    def train_step(self) -> dict[str, float]:
        c = self.cfg
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr()
        eps = torch.tensor(self.train_eps)
        images, states, actions = sample_sequences(self.ds, eps, c.batch_size, c.unroll, self.gen)
        dev = self.device
        loss, m = wm_loss(self.model, images.to(dev), states.to(dev), actions.to(dev),
                          latent_weight=c.latent_weight, state_weight=c.state_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the world-model loss became {float(loss)} at step {self.step}; lower lr "
                                     f"(the last checkpoint in {self.out / 'checkpoints'} is intact)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        if not torch.isfinite(gn):
            raise FloatingPointError(f"the world-model gradient norm became {float(gn)}; lower lr")
        self.opt.step()
        self.step += 1
        m["wm/grad_norm"] = float(gn)
        m["wm/lr"] = self.opt.param_groups[0]["lr"]
        return m

    def run(self, progress: bool = True) -> dict[str, Any]:
        try:
            logger = MetricLogger(self.out, keep_until=self.step)
            try:
                self._train(logger, progress)
                self.save_model()
                result = evaluate_world_model(self.model, self.ds, self.heldout_eps or self.train_eps,
                                              horizon=self.cfg.eval_horizon, every=self.cfg.eval_every)
                logger.log(self.step, {f"eval/{k}": v for k, v in result["summary"].items()})
            finally:
                logger.close()
            write_report(self.out / "report", result, self.model, self.ds, self.heldout_eps or self.train_eps,
                         videos=self.cfg.videos, horizon=max(self.cfg.eval_horizon, 32))
            return result
        finally:
            self.close()

    def _train(self, logger: MetricLogger, progress: bool) -> None:
        record_run(self.out, seed=self.cfg.seed, config=plain(asdict(self.cfg)))
        c = self.cfg
        bar = ProgressBar("world model", c.steps, start=self.step, enabled=progress, loss="-")
        acc: list[dict[str, float]] = []
        t0 = time.perf_counter()
        try:
            while self.step < c.steps:
                acc.append(self.train_step())
                bar.update(self.step, loss=f"{acc[-1]['wm/loss']:.4f}")
                if self.step % c.log_every == 0 or self.step == c.steps:
                    now = time.perf_counter()
                    self.train_s += now - t0
                    avg = {k: sum(x[k] for x in acc) / len(acc) for k in acc[0]}
                    avg["time/step_s"] = (now - t0) / len(acc)
                    logger.log(self.step, avg)
                    acc, t0 = [], now
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
        finally:
            bar.close()

    def save_model(self) -> Path:
        meta = {"data": str(Path(self.cfg.data).resolve()), "steps": self.step, "train_s": round(self.train_s, 1),
                "recorded_in": self.ds.recorded_in, "heldout_episodes": self.heldout_eps}
        with fsutil.atomic_dir(self.out / "model", "world-model", meta=meta) as tmp:
            self.model.save(tmp)
            (tmp / SPLIT_NAME).write_text(json.dumps(meta, indent=1))
        return self.out / "model"

    def close(self) -> None:
        if self._locked:
            self._locked = False
            fsutil.unlock_run(self.out)


# ---------------------------------------------------------------------------------------------- evaluation


def start_frames(ds: DemoDataset, episodes: list[int], horizon: int, every: int) -> torch.Tensor:
    """Global frame indices t with t + horizon inside the episode, every ``every`` steps of each episode."""
    start, lengths = episode_bounds(ds)
    out = [int(start[e]) + t for e in episodes for t in range(0, int(lengths[e]) - horizon, every)]
    if not out:
        raise ValueError(f"no held-out episode is longer than the evaluation horizon {horizon}; lower it")
    return torch.tensor(out)


@torch.no_grad()
def evaluate_world_model(model: WorldModel, ds: DemoDataset, episodes: list[int], *, horizon: int = 16,
                         every: int = 8, batch: int = 64) -> dict[str, Any]:
    """Per-horizon-step MAE / PSNR / SSIM / perceptual distance of imagined vs recorded frames, and of the
    'nothing moves' baseline (the context frame repeated), over start frames of ``episodes``."""
    model.eval()
    starts = start_frames(ds, episodes, horizon, every)
    names = ("mae", "psnr", "ssim", "perceptual")
    sums = {f"{who}/{n}": torch.zeros(horizon, dtype=torch.float64) for who in ("model", "copy") for n in names}
    state_err = torch.zeros(horizon, dtype=torch.float64)
    recon = torch.zeros((), dtype=torch.float64)
    for i in range(0, starts.numel(), batch):
        t = starts[i:i + batch]
        idx = t[:, None] + torch.arange(horizon + 1)[None]
        real = model.frames_out(model.frames_in(ds.images[idx].flatten(0, 1))).unflatten(0, idx.shape)
        frames, states = model.imagine(ds.images[t], ds.states[t], ds.actions[idx[:, :-1]])
        recon += float(mae(model.decode(model.encode(ds.images[t])), real[:, 0]).double().sum())
        for k in range(horizon):
            for who, pred in (("model", frames[:, k]), ("copy", real[:, 0])):
                target = real[:, k + 1]
                for n, v in (("mae", mae(pred, target)), ("psnr", psnr(pred, target)), ("ssim", ssim(pred, target)),
                             ("perceptual", model.perceptual_distance(pred, target))):
                    sums[f"{who}/{n}"][k] += float(v.double().sum())
            state_err[k] += float((states[:, k] - ds.states[idx[:, k + 1]].to(states.device)).abs().mean(1).sum())
    n = starts.numel()
    curves = {k: (v / n).tolist() for k, v in sums.items()}
    curves["model/state_mae"] = (state_err / n).tolist()
    summary = {"recon_mae": float(recon / n), "starts": float(n), "horizon": float(horizon)}
    for k, v in curves.items():
        summary[f"{k}@1"] = v[0]
        summary[f"{k}@{horizon}"] = v[-1]
        summary[f"{k}_mean"] = float(np.mean(v))
    return {"summary": summary, "curves": curves, "episodes": list(episodes)}


def write_report(folder: Path, result: dict[str, Any], model: WorldModel, ds: DemoDataset, episodes: list[int], *,
                 videos: int, horizon: int) -> None:
    """wm_eval.json, wm_eval.md (the metrics table), horizon.png (growth with the horizon) and side-by-side
    videos (recorded | imagined, open loop from each episode's first frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    fsutil.write_text_atomic(folder / "wm_eval.json", json.dumps(result, indent=1))
    cur, H = result["curves"], len(result["curves"]["model/mae"])
    rows = [f"| metric | model @1 | model @{H} | model mean | nothing-moves @1 | nothing-moves @{H} |",
            "|---|---|---|---|---|---|"]
    for n in ("mae", "psnr", "ssim", "perceptual"):
        m, c = cur[f"model/{n}"], cur[f"copy/{n}"]
        rows.append(f"| {n} | {m[0]:.4f} | {m[-1]:.4f} | {np.mean(m):.4f} | {c[0]:.4f} | {c[-1]:.4f} |")
    s = result["summary"]
    text = (f"# World model on held-out episodes\n\n{int(s['starts'])} start frames, horizon {H} steps, imagined "
            f"open loop with the recorded actions. Reconstruction MAE of the context frame: {s['recon_mae']:.4f}; "
            f"proprio state MAE @{H}: {cur['model/state_mae'][-1]:.4f}.\n\n" + "\n".join(rows) + "\n")
    fsutil.write_text_atomic(folder / "wm_eval.md", text)
    _plot(folder / "horizon.png", cur)
    _videos(folder / "videos", model, ds, episodes[:videos], horizon)


def _plot(path: Path, curves: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, n in zip(axes, ("mae", "psnr", "ssim", "perceptual")):
        steps = range(1, len(curves[f"model/{n}"]) + 1)
        ax.plot(steps, curves[f"model/{n}"], label="world model")
        ax.plot(steps, curves[f"copy/{n}"], "--", label="nothing moves")
        ax.set_title(n)
        ax.set_xlabel("imagined steps")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@torch.no_grad()
def _videos(folder: Path, model: WorldModel, ds: DemoDataset, episodes: list[int], horizon: int) -> None:
    from reinforge.eval.video import frames_to_strip, write_video

    start, lengths = episode_bounds(ds)
    for e in episodes:
        n = min(int(lengths[e]) - 1, horizon)
        s = int(start[e])
        frames, _ = model.imagine(ds.images[s:s + 1], ds.states[s:s + 1], ds.actions[s:s + n][None])
        imagined = (frames[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
        real = ds.images[s + 1:s + 1 + n].numpy()
        strips = [np.concatenate([frames_to_strip(r), frames_to_strip(i)], axis=1) for r, i in zip(real, imagined)]
        write_video(strips, folder / f"episode{e:04d}_recorded_vs_imagined.mp4", fps=10)


def evaluate_saved(path: str | Path, data: str | Path | None = None, *, horizon: int = 16, every: int = 8,
                   out: str | Path | None = None, videos: int = 2, device: str = "cpu") -> dict[str, Any]:
    """``reinforge wm eval``: evaluate a trained world model (on its held-out episodes, or on all episodes of
    another dataset ``data``) and write the report into ``out`` (default: the model's run folder/report)."""
    path = fsutil.settle(path)
    model = load_world_model(path, resolve_device(device))
    folder = path / "model" if (path / "model").is_dir() else path
    meta = json.loads((folder / SPLIT_NAME).read_text()) if (folder / SPLIT_NAME).is_file() else {}
    if data is None:
        if "data" not in meta:
            raise ValueError(f"{path} does not record its training data; pass --data DIR")
        ds = DemoDataset.load(meta["data"])
        episodes = meta.get("heldout_episodes") or list(range(ds.num_episodes))
    else:
        ds = DemoDataset.load(data)
        episodes = list(range(ds.num_episodes))
    H, W = ds.images.shape[-2:]
    c = model.config
    if (ds.num_views, ds.state_dim, ds.action_dim, (int(H), int(W))) != (c.num_views, c.state_dim, c.action_dim,
                                                                          tuple(c.image_size)):
        raise ValueError(f"dataset {ds.root} does not fit the world model (views, state, action dims, image size: "
                         f"{(ds.num_views, ds.state_dim, ds.action_dim, (int(H), int(W)))} vs "
                         f"{(c.num_views, c.state_dim, c.action_dim, tuple(c.image_size))})")
    result = evaluate_world_model(model, ds, episodes, horizon=horizon, every=every)
    write_report(Path(out) if out else (folder.parent if folder.name == "model" else folder) / "report", result,
                 model, ds, episodes, videos=videos, horizon=max(horizon, 32))
    return result


__all__ = ["WMTrainConfig", "WMTrainer", "evaluate_saved", "evaluate_world_model"]
