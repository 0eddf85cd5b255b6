"""Starting and joining Ray (the only place that calls ``ray.init``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from reinforge.distributed import RayInitConfig

log = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("distributed.backend=ray needs Ray, which is not installed: pip install 'reinforge[ray]' "
                          "(or `make ray`)") from None
    return ray


def init_ray(cfg: RayInitConfig) -> Any:
    """``ray.init`` from the config, once per process (an already initialised Ray is used as it is)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    # without it Ray >= 2.50 writes an auth token file; reinforge's local clusters need none
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kw: dict[str, Any] = {"namespace": cfg.namespace, "include_dashboard": cfg.include_dashboard,
                          "log_to_driver": cfg.log_to_driver, "configure_logging": False}
    if cfg.address:
        kw["address"] = cfg.address
    else:
        if cfg.num_cpus:
            kw["num_cpus"] = cfg.num_cpus
        if cfg.num_gpus >= 0:
            kw["num_gpus"] = cfg.num_gpus
    try:
        ray.init(**kw)
    except ConnectionError as e:
        raise ValueError(f"cannot reach the Ray cluster at distributed.ray.address={cfg.address!r}: {e}") from None
    res = ray.cluster_resources()
    log.info("Ray %s: %s CPUs, %s GPUs, %d node(s)", ray.__version__, res.get("CPU", 0), res.get("GPU", 0),
             len([n for n in ray.nodes() if n.get("Alive")]))
    return ray


def placement_group(ray: Any, bundles: list[dict[str, float]], strategy: str, timeout_s: float = 120.0) -> Any:
    """A placement group reserving ``bundles``; a clear error when the cluster cannot hold them."""
    from ray.util.placement_group import placement_group as make_pg

    bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.001} for b in bundles]
    need = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
    total = ray.cluster_resources()

    def refuse(have: dict[str, float]) -> ValueError:
        return ValueError(f"the Ray cluster cannot place the workers ({len(bundles)} bundles, {need} in all; it has "
                          f"{have}): lower distributed.*_cpus / *_gpus or the worker counts, or raise "
                          "distributed.ray.num_cpus / num_gpus")

    if any(need[k] > total.get(k, 0) + 1e-9 for k in need):  # can never fit (an autoscaler would not help here)
        raise refuse({k: total.get(k, 0) for k in need})
    pg = make_pg(bundles, strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:  # fits the cluster, but not what is free now (other jobs) or not under this strategy
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        raise refuse({f"available {k}": v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")})
    return pg


def wait_for_pid(ray: Any, handle: Any, timeout_s: float) -> int:
    """The process id of actor ``handle`` once it answers: a crashed actor is unavailable while Ray restarts it
    (retried here); a dead one (restarts exhausted, or its constructor failed) raises."""
    import time

    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        try:
            return ray.get(handle.info.remote(), timeout=max(1.0, deadline - time.monotonic()))["pid"]
        except (ActorUnavailableError, GetTimeoutError):
            if time.monotonic() > deadline:
                raise
        except ActorDiedError:  # a call can reach a process that `ray.kill` is still ending: give it a moment
            if time.monotonic() > start + 10:
                raise
        time.sleep(0.2)


def stop_actors(ray: Any, actors: list[Any], timeout_s: float = 30.0) -> None:
    """Let each actor close what it holds (simulator processes) within ``timeout_s``, then kill it for good."""
    import contextlib

    refs = []
    for a in actors:
        with contextlib.suppress(Exception):
            refs.append(a.close.remote())
    if refs:
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for a in actors:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(a, no_restart=True)
