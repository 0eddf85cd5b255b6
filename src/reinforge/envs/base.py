"""The vectorised environment contract, the env config section and the environment registry.

Every simulator (the built-in tabletop world, LIBERO, MetaWorld, a learned world model, ...) is a ``VecEnv``:
B envs stepped together, tensors in and out, observation keys from ``reinforge.types``. Callers never name a
concrete simulator: they build one from an ``EnvConfig`` (the ``env`` section of every config) with
``make_env`` and read what they need from ``env.spec`` (an ``EnvSpec``): the task list with instructions,
the fixed initial states per bank (or none), the splits the suite offers, the control rate, the action and
state layout by dimension name, whether the env has a privileged expert and whether it can snapshot.

Registering an env::

    register_env("mysim", "mypackage.mysim:MySimEnv", options=MySimOptions, suites=("easy", "hard"))

or, from an installed package, an entry point in the ``reinforge.envs`` group whose value is a callable that
calls ``register_env`` (``[project.entry-points."reinforge.envs"] mysim = "mypackage.mysim:register"``).
A factory is called as ``factory(suite, num_envs, *, split, image_size, init_bank, max_episode_steps, device,
seed, **options)`` where ``options`` are the fields of the env's registered options dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reinforge.config import ConfigError, check, from_dict
from reinforge.resources import Knob, Need, budget_mb, check_fits
from reinforge.types import Actor, Observation, StepResult

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "reinforge.envs"


# ---------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Task:
    """One task of a suite: a short name and the language instruction the policy receives."""

    name: str
    instruction: str


@dataclass(frozen=True)
class EnvSpec:
    """What callers may know about a built env (and nothing simulator-specific).

    - ``tasks``: the suite's tasks in task-id order.
    - ``num_init_states``: fixed initial states per task in each bank of ``init_banks`` (reset with
      ``init_ids`` in ``0..num_init_states-1``); ``None`` when the env only has random resets (``init_ids`` is
      then a seed per env: the same id gives the same start).
    - ``init_banks``: the banks of fixed initial states, ``eval`` first. ``("eval", "train", "val")`` when
      reported evaluations (``eval``), training (``train``: demonstrations, rollouts) and every choice that
      steers a run (``val``: periodic evaluations, early stopping, tuning) use disjoint banks; ``("eval",)``
      when there is one bank (training and tuning then use it too; ``bank()`` says which one serves).
    - ``splits``: the task splits the suite offers; ``"train"`` always, held-out splits after it.
    - ``action_names`` / ``state_names``: the layout, one name per dimension (their lengths are the dims).
    - ``camera_names``: one per image view, in observation order.
    - ``snapshot``: ``snapshot()`` / ``restore()`` continue running episodes exactly (auto-reset resume).
    - ``expert``: ``make_expert()`` gives a scripted policy for demonstrations.
    - ``evaluate_in``: for a learned simulator (a world model), the env section (``EnvConfig`` mapping) of the
      real env it imitates: policies trained in it are evaluated there (``None``: evaluated in this env).
    - ``embodiment``: the registered embodiment (robot layout and its unified-space slots) the env's actions and
      states follow; ``""`` for an env with an unregistered layout.
    - ``variant``: the env options that change the world itself rather than how it is simulated (e.g. the
      built-in world's ``{"domain": "real"}``); datasets record it so that a policy is evaluated where its
      data came from.
    """

    env: str
    suite: str
    split: str
    tasks: tuple[Task, ...]
    max_episode_steps: int
    control_hz: float
    action_names: tuple[str, ...]
    state_names: tuple[str, ...]
    camera_names: tuple[str, ...]
    image_size: tuple[int, int]
    num_init_states: int | None = None
    init_banks: tuple[str, ...] = ("eval",)
    splits: tuple[str, ...] = ("train",)
    snapshot: bool = False
    expert: bool = False
    variant: dict[str, Any] = field(default_factory=dict)
    evaluate_in: dict[str, Any] | None = None
    embodiment: str = ""  # the robot's registered name (``reinforge.envs.embodiment``), "" when unregistered

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def num_views(self) -> int:
        return len(self.camera_names)

    @property
    def heldout_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.splits if s != "train")

    @property
    def instructions(self) -> list[str]:
        return [t.instruction for t in self.tasks]

    def task_index(self, name_or_id: str | int) -> int:
        """A task id from an id or a task name, with an error listing the valid ones."""
        if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
            i = int(name_or_id)
            if not 0 <= i < self.num_tasks:
                raise ValueError(f"task id {i} out of range for suite {self.suite!r} ({self.num_tasks} tasks: "
                                 f"0..{self.num_tasks - 1})")
            return i
        names = [t.name for t in self.tasks]
        if name_or_id not in names:
            raise ValueError(f"unknown task {name_or_id!r} in suite {self.suite!r}; tasks: {names}")
        return names.index(name_or_id)

    def bank(self, name: str) -> str:
        """The bank that serves the role ``name`` (``eval`` | ``train`` | ``val``): itself where the env has it,
        else the env's first bank (an env with one bank, e.g. LIBERO's official states, serves every role)."""
        if name not in ("eval", "train", "val"):
            raise ValueError(f"unknown initial-state bank {name!r}; use 'eval' (reported numbers), 'train' "
                             "(demonstrations, rollouts) or 'val' (periodic evaluations, tuning)")
        return name if name in self.init_banks else self.init_banks[0]

    def init_id(self, episode: int) -> int:
        """The initial state of the ``episode``-th evaluation episode of a task: the fixed state
        ``episode mod num_init_states``, or seed ``episode`` for envs with random resets."""
        return episode % self.num_init_states if self.num_init_states else episode

    def check_policy(self, *, action_dim: int, state_dim: int, num_views: int, image_size: tuple[int, int]) -> None:
        """Refuse a policy built for another embodiment or camera setup, naming what differs."""
        want = {"action_dim": self.action_dim, "state_dim": self.state_dim, "num_views": self.num_views,
                "image_size": tuple(self.image_size)}
        got = {"action_dim": action_dim, "state_dim": state_dim, "num_views": num_views,
               "image_size": tuple(image_size)}
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k] and not (k == "num_views" and not want[k])}
        if diff:
            raise ValueError(f"the policy does not fit env {self.env!r} suite {self.suite!r}: "
                             + ", ".join(f"{k} policy={a} env={b}" for k, (a, b) in diff.items())
                             + f" (env actions: {list(self.action_names)}); fine-tune a policy on this env's data")

    def layout(self) -> dict[str, Any]:
        """The layout as stored in datasets and checkpoints."""
        return {"env": self.env, "suite": self.suite, "action_names": list(self.action_names),
                "state_names": list(self.state_names), "camera_names": list(self.camera_names),
                "control_hz": self.control_hz, **({"variant": dict(self.variant)} if self.variant else {}),
                **(self._embodiment_layout() if self.embodiment else {})}

    def _embodiment_layout(self) -> dict[str, Any]:
        from reinforge.envs.embodiment import get_embodiment

        return get_embodiment(self.embodiment).describe()


@dataclass
class ChunkResult:
    """What ``VecEnv.step_chunk`` returns after executing up to H actions per env.

    Envs that end mid-chunk stop there: ``valid`` (B, H) marks the steps that were executed, the rest of
    their chunk is ignored. ``obs`` is the observation after the last executed step.
    """

    obs: Observation
    reward: torch.Tensor  # float32 (B, H), 0 on invalid steps
    valid: torch.Tensor  # bool (B, H)
    terminated: torch.Tensor  # bool (B,)
    truncated: torch.Tensor  # bool (B,)
    success: torch.Tensor  # bool (B,)
    info: dict[str, Any] = field(default_factory=dict)


class PendingChunk:
    """A ``step_chunk`` already done: what ``VecEnv.step_chunk_async`` returns for in-process envs."""

    def __init__(self, result: ChunkResult):
        self._result = result

    def result(self) -> ChunkResult:
        return self._result


# ---------------------------------------------------------------------------------------------- the env


@dataclass(frozen=True)
class EnvMemory:
    """What ``num_envs`` envs of a kind hold in memory: ``fixed_mb + per_env_mb * num_envs`` (``fixed_mb``: their
    worker processes). Declared by each env (``VecEnv.memory_estimate``) from measurements; 0 = negligible."""

    per_env_mb: float = 0.0
    fixed_mb: float = 0.0
    detail: str = ""  # how they are held, e.g. "in 2 worker processes"


class VecEnv(ABC):
    """B environments stepped together. Actions (B, action_dim) float32 in [-1, 1].

    Envs never reset themselves: the caller resets finished envs with ``reset(..., mask=done)``. Rewards are
    the env's own (sparse success for the built-in world); ``success`` is the task's success predicate.
    ``info`` of ``step`` / ``step_chunk`` may carry ``"failed"`` (B,) bool: envs whose episode was lost to a
    simulator fault (a crashed worker); they are reported as truncated and must be counted, not trained on.
    """

    num_envs: int
    spec: EnvSpec
    device: torch.device = torch.device("cpu")
    # True when ``step_chunk_async`` returns before the step is done (the simulators run in other processes),
    # so a collector can run the policy on one pipeline stage while the env steps another
    async_steps: bool = False

    @classmethod
    def memory_estimate(cls, num_envs: int, **kwargs: Any) -> EnvMemory:
        """The memory ``num_envs`` envs built with ``kwargs`` (``make_env``'s keywords) will hold, known before
        building them. Default: negligible (envs that hold a simulator each override it with measured figures)."""
        return EnvMemory()

    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    @property
    def state_dim(self) -> int:
        return self.spec.state_dim

    @property
    def max_episode_steps(self) -> int:
        return self.spec.max_episode_steps

    @abstractmethod
    def reset(self, task_ids: torch.Tensor | Sequence[int] | int,
              init_ids: torch.Tensor | Sequence[int] | None = None, seed: int | None = None,
              mask: torch.Tensor | None = None) -> Observation:
        """Reset the envs (all, or those where ``mask`` is True) to the given tasks and initial states
        (``init_ids`` None: drawn from the env's seeded generator). Returns the observation of every env."""

    @abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one action per env."""

    def step_chunk(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> ChunkResult:
        """Apply an action chunk (B, H, D); envs that finish mid-chunk stop. Generic fallback for envs
        without a fast path (envs where ``active`` is False are stepped but their results ignored)."""
        B, H, _ = actions.shape
        reward = torch.zeros(B, H)
        valid = torch.zeros(B, H, dtype=torch.bool)
        done = torch.zeros(B, dtype=torch.bool) if active is None else ~active.cpu().bool()
        term = torch.zeros(B, dtype=torch.bool)
        trunc = torch.zeros(B, dtype=torch.bool)
        success = torch.zeros(B, dtype=torch.bool)
        failed = torch.zeros(B, dtype=torch.bool)
        obs: Observation = {}
        for h in range(H):
            if h and bool(done.all()):
                break
            res = self.step(actions[:, h])
            valid[:, h] = ~done
            reward[:, h] = torch.where(done, 0.0, res.reward.cpu())
            term |= res.terminated.cpu() & ~done
            trunc |= res.truncated.cpu() & ~done
            success |= res.success.cpu() & ~done
            if "failed" in res.info:
                failed |= res.info["failed"].cpu() & ~done
            done |= res.terminated.cpu() | res.truncated.cpu()
            obs = res.obs
        return ChunkResult(obs, reward, valid, term, trunc, success, {"failed": failed})

    def step_chunk_async(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> PendingChunk:
        """Start ``step_chunk``; ``.result()`` of the returned handle is its ``ChunkResult``. Envs whose
        simulators run elsewhere return at once (``async_steps``); the default steps now. Envs where ``active``
        is False must not move (the rows of other pipeline stages)."""
        return PendingChunk(self.step_chunk(actions, active))

    def pipeline_stages(self, n: int) -> list[torch.Tensor]:
        """``n`` disjoint sets of env rows that can be stepped independently (one ``step_chunk_async`` each,
        the other rows inactive). Default: ``n`` contiguous blocks."""
        return list(torch.arange(self.num_envs).chunk(n))

    def make_expert(self, *, noise: float = 0.0, seed: int = 0) -> Actor:
        """A scripted actor bound to this env (it may read privileged state). Its ``act`` returns
        ``PolicyOutput(actions (B, 1, D))`` and, when it adds exploration noise, the noise-free action in
        ``replay["clean_action"]`` (B, D) (DART-style labels). Only envs whose ``spec.expert`` is True have one."""
        raise ValueError(f"environment {self.spec.env!r} has no scripted expert: record demonstrations with a "
                         "policy or bring a dataset")

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue the running episodes later, as CPU tensors. Only envs whose
        ``spec.snapshot`` is True can."""
        raise NotImplementedError(f"environment {self.spec.env!r} cannot snapshot its state")

    def restore(self, snap: dict[str, torch.Tensor]) -> Observation:
        """Continue from a ``snapshot()``; returns the observation of every env."""
        raise NotImplementedError(f"environment {self.spec.env!r} cannot restore a snapshot")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (subprocesses, renderers). Default: nothing to do."""

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def checked_indices(x: Any, n: int, name: str, upper: int) -> np.ndarray:
    """(n,) int64 ids (task or initial-state ids) from an int, a sequence or a tensor, each in 0..upper-1, with
    an error naming the argument and the valid range (for simulator adapters that work in numpy)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got {a.dtype}")
    a = np.broadcast_to(a, (n,)).astype(np.int64) if a.ndim == 0 else a.astype(np.int64)
    if a.shape != (n,):
        raise ValueError(f"{name} must be an int or a sequence of {n} ints (one per env), got shape {a.shape}")
    if ((a < 0) | (a >= upper)).any():
        raise ValueError(f"{name} out of range: got {a.tolist()}, valid ids are 0..{upper - 1}")
    return a


def checked_actions(actions: Any, shape: tuple[int, ...], action_names: Sequence[str]) -> np.ndarray:
    """Actions of an adapter's simulator as float32 numpy of ``shape``, clipped to [-1, 1]; a wrong type,
    shape or a NaN/inf is an error naming the env's layout and the offending envs."""
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu().numpy()
    if not isinstance(actions, np.ndarray):
        raise TypeError(f"actions must be a torch.Tensor or numpy array, got {type(actions).__name__}")
    if actions.shape != shape:
        raise ValueError(f"actions must have shape {shape} (num_envs={shape[0]}, action_dim={len(action_names)}: "
                         f"{', '.join(action_names)}), got {actions.shape}")
    actions = actions.astype(np.float32)
    bad = ~np.isfinite(actions)
    if bad.any():
        envs = np.flatnonzero(bad.reshape(shape[0], -1).any(1)).tolist()
        raise ValueError(f"actions contain NaN or inf for envs {envs[:10]}; check the policy output "
                         "(and its action normalisation statistics)")
    return np.clip(actions, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------- the registry


@dataclass
class _Entry:
    factory: Callable[..., VecEnv] | str  # a callable, or "module:attr" imported on first use
    options: type | None  # dataclass of the env's own options
    suites: tuple[str, ...]
    extra: str  # pip extra that provides its dependencies ("" = none)
    other_suites: tuple[str, ...] = ()  # runnable by name, left out of "all" (e.g. earlier suite versions)


_ENVS: dict[str, _Entry] = {}
_entry_points_loaded = False


def register_env(name: str, factory: Callable[..., VecEnv] | str, *, options: type | None = None,
                 suites: Sequence[str] = (), extra: str = "", other_suites: Sequence[str] = ()) -> None:
    """Register an environment; refuses to overwrite an existing name.

    ``factory``: a callable or a ``"module:attr"`` string imported lazily (heavy simulators are imported only
    when used). ``options``: a dataclass of the env's own config options (validated from the ``env`` config
    section). ``suites``: the suite names it knows (for listings; the factory validates). ``extra``: the pip
    extra that installs its dependencies, named in the error when they are missing. ``other_suites``: suites
    it also runs by name that ``--suite all`` leaves out (earlier versions kept for reproducibility).
    """
    if name in _ENVS:
        raise ValueError(f"environment {name!r} is already registered")
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"options of environment {name!r} must be a dataclass, got {options!r}")
    _ENVS[name] = _Entry(factory, options, tuple(suites), extra, tuple(other_suites))


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _ENVS:
            continue
        try:
            hook = ep.load()
            hook()
        except Exception as e:  # a broken plug-in must not break the built-in envs
            log.warning("could not load environment plug-in %r (%s): %s", ep.name, ep.value, e)


def registered_envs() -> dict[str, tuple[str, ...]]:
    """Every registered env name with the suites it declares."""
    _load_entry_points()
    return {k: v.suites for k, v in sorted(_ENVS.items())}


def known_suites(name: str) -> tuple[str, ...]:
    """The suites ``name`` declares followed by the ones it runs only by name (``other_suites``); () if unknown."""
    _load_entry_points()
    e = _ENVS.get(name)
    return (*e.suites, *e.other_suites) if e is not None else ()


def _entry(name: str) -> _Entry:
    if name not in _ENVS:
        _load_entry_points()
    if name not in _ENVS:
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(_ENVS)} (a package registers "
                         f"more through the {ENTRY_POINT_GROUP!r} entry-point group)")
    return _ENVS[name]


def env_options_class(name: str) -> type | None:
    return _entry(name).options


def _factory(name: str) -> Callable[..., VecEnv]:
    e = _entry(name)
    if isinstance(e.factory, str):
        module, _, attr = e.factory.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            hint = f"pip install 'reinforge[{e.extra}]'" if e.extra else "install its dependencies"
            raise ImportError(f"environment {name!r} needs a package that is not installed ({err.name or err}): "
                              f"{hint}") from None
        e.factory = getattr(mod, attr)
    return e.factory


def make_env(name: str | EnvConfig, **kwargs: Any) -> VecEnv:
    """Build a registered environment: ``make_env("tabletop", suite="spatial", num_envs=16)``, or from an
    ``EnvConfig``: ``make_env(cfg.env, num_envs=16, split="heldout")`` (keywords win over the config)."""
    if isinstance(name, EnvConfig):
        cfg = name
        kwargs = {**cfg.make_kwargs(), **kwargs}
        name = cfg.name
    return _factory(name)(**kwargs)


def env_memory(env: str | EnvConfig, num_envs: int, **kwargs: Any) -> EnvMemory:
    """``memory_estimate`` of ``num_envs`` envs of ``env`` (an env name or config; keywords as ``make_env``)."""
    if isinstance(env, EnvConfig):
        kwargs = {**env.make_kwargs(), **kwargs}
        env = env.name
    fn = getattr(_factory(env), "memory_estimate", None)
    return fn(num_envs, **kwargs) if fn is not None else EnvMemory()


def env_need(env: str | EnvConfig, num_envs: int, role: str, *knobs: tuple[str, int] | tuple[str, int, str],
             **kwargs: Any) -> Need:
    """A memory ``Need`` for ``num_envs`` envs of ``env`` held for ``role`` (e.g. "evaluation"). ``knobs``: the
    settings that set their number, each ``(setting, envs per unit[, advice])``, e.g. ``("rollout.num_groups",
    8)`` with groups of 8 envs; tried in order by the advice of ``check_fits`` (``Knob.advice``)."""
    name = env.name if isinstance(env, EnvConfig) else env
    m = env_memory(env, num_envs, **kwargs)
    label = f"{role}: {num_envs} {name} env{'s' if num_envs != 1 else ''}" + (f" {m.detail}" if m.detail else "")
    return Need(label, m.fixed_mb, tuple(Knob(k[0], m.per_env_mb * k[1], num_envs // k[1], *k[2:])
                                        for k in knobs))


def check_envs_fit(env: str | EnvConfig, num_envs: int, role: str, setting: str, **kwargs: Any) -> None:
    """Stop with one line (``NotEnoughMemory``) when ``num_envs`` envs of ``env`` would not fit the memory
    available now; nothing to do for envs of negligible size."""
    need = env_need(env, num_envs, role, (setting, 1), **kwargs)
    if need.mb >= 1:
        check_fits([need], role)


def envs_that_fit(env: str | EnvConfig, wanted: int, role: str, setting: str, share: float = 0.5,
                  **kwargs: Any) -> int:
    """The most envs of ``env``, at most ``wanted``, that fit ``share`` of the memory available now (``wanted`` for
    envs of negligible size or where memory cannot be read); ``NotEnoughMemory`` when not even one fits at all.
    Half by default: more envs only batch the policy's calls (simulators step their envs one after the other), so
    a default need not take the whole machine."""
    m = env_memory(env, wanted, **kwargs)
    budget = budget_mb()
    budget = None if budget is None else budget * share
    if budget is None or m.fixed_mb + m.per_env_mb * wanted < 1 or m.fixed_mb + m.per_env_mb * wanted <= budget:
        return wanted
    n = min(wanted, int((budget - m.fixed_mb) // m.per_env_mb)) if m.per_env_mb > 0 else 0
    while n >= 1:  # the fixed part may shrink with n (fewer worker processes)
        m = env_memory(env, n, **kwargs)
        if m.fixed_mb + m.per_env_mb * n <= budget:
            return n
        n -= 1
    check_envs_fit(env, 1, role, setting, **kwargs)  # one env, if it fits at all (else one line naming why)
    return 1


DEFAULT_MAX_ENVS = 500


def sized_envs(env: str | EnvConfig, max_envs: int, needed: int, role: str, setting: str, **kwargs: Any) -> int:
    """How many envs to step together for ``needed`` episodes: ``max_envs`` (0 = as many as fit half the memory
    available, at most ``DEFAULT_MAX_ENVS``), never more than needed; ``NotEnoughMemory`` (one line naming
    ``setting``) when a stated number does not fit."""
    if max_envs:
        n = min(max_envs, needed)
        check_envs_fit(env, n, role, setting, **kwargs)
        return n
    return envs_that_fit(env, min(DEFAULT_MAX_ENVS, needed), role, setting, **kwargs)


# ---------------------------------------------------------------------------------------------- the config


@dataclass
class EnvConfig:
    """The ``env`` section of a config: which registered env, which suite, where it runs, and the env's own
    options (any other key of the section, validated against the env's registered options dataclass)::

        env:
          name: libero
          suite: libero_spatial
          render_quality: fast       # a LIBERO option
          num_workers: 2             # a LIBERO option

    ``image_size: 0`` means the policy's; ``device`` is where the simulator's tensors live (the built-in world
    runs on CPU or CUDA; real simulators on CPU), independent of the policy's device.
    """

    name: str = "tabletop"
    suite: str = "spatial"
    device: str = "cpu"
    image_size: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(isinstance(self.name, str), "env.name", self.name, "must name a registered env")
        check(self.image_size >= 0, "env.image_size", self.image_size, "must be >= 0 (0 = the policy's)")
        if not isinstance(self.options, dict):
            raise ConfigError(f"config section env.options must be a mapping, got {type(self.options).__name__}")
        if not self.name:  # resolved later by the caller (e.g. SFT: the dataset's env)
            if self.options:
                raise ConfigError(f"env options {sorted(self.options)} need env.name")
            return
        try:
            opts_cls = env_options_class(self.name)
        except ValueError as e:
            raise ConfigError(f"config field 'env.name': {e}") from None
        if opts_cls is None:
            if self.options:
                raise ConfigError(f"environment {self.name!r} takes no options, got {sorted(self.options)}")
        else:
            try:
                typed = from_dict(opts_cls, dict(self.options), "env.")
            except ConfigError as e:
                common = sorted(f.name for f in dataclasses.fields(self) if f.name != "options")
                raise ConfigError(f"{e} (or a common env key: {common})") from None
            self.options = dataclasses.asdict(typed)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], prefix: str = "env.") -> EnvConfig:
        """Build from a config section: the common keys, an optional ``options`` mapping, and every other key as
        an env option (so ``env.render_quality=fast`` works as an override)."""
        common = {f.name for f in dataclasses.fields(cls)} - {"options"}
        base = {k: v for k, v in data.items() if k in common}
        opts = dict(data.get("options") or {})
        opts.update({k: v for k, v in data.items() if k not in common and k != "options"})
        return from_dict(cls, {**base, "options": opts}, prefix)

    def make_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"suite": self.suite, "device": self.device, **self.options}
        if self.image_size:
            kw["image_size"] = self.image_size
        return kw
