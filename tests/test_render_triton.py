"""The triton render backend gives the numba kernel's pixels: in Triton's CPU interpreter (a copy of the backend
module imported under TRITON_INTERPRET=1 for these tests only, so the rest of the session keeps compiled kernels)
and, under the ``gpu`` marker, compiled on CUDA at 1,024 envs."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from reinforge.envs import TabletopEnv  # noqa: E402
from reinforge.envs.tabletop.render import Renderer, build_cameras, build_primitives  # noqa: E402

MODULE = "reinforge.envs.tabletop._render_triton"


@pytest.fixture
def interpreted():
    """The backend module imported under TRITON_INTERPRET=1 (triton.jit reads it when the kernels are defined);
    afterwards sys.modules, the package attribute and the environment are as they were."""
    pkg = importlib.import_module("reinforge.envs.tabletop")
    saved, saved_env = sys.modules.pop(MODULE, None), os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        mod = importlib.import_module(MODULE)
    finally:
        if saved_env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved_env
    assert mod.interpreted
    yield mod
    sys.modules.pop(MODULE, None)
    if saved is not None:
        sys.modules[MODULE] = saved
        pkg._render_triton = saved
    elif hasattr(pkg, "_render_triton"):
        del pkg._render_triton


def _env(suite: str, n: int, steps: int, *, close: bool = False, device: str = "cpu") -> TabletopEnv:
    """n envs of a suite after a few random actions (the gripper moves; ``close``: it also shuts)."""
    env = TabletopEnv(suite, n, render=False, device=device)
    env.reset(torch.arange(n) % env.spec.num_tasks, torch.arange(n) % env.spec.num_init_states)
    gen = torch.Generator().manual_seed(n + steps)
    for _ in range(steps):
        a = torch.rand(n, 7, generator=gen) * 2 - 1
        if close:
            a[:, 6] = 1.0
        env.step(a.to(device))
    return env


def _differ(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    d = (a.int() - b.int()).abs()
    return d.gt(0).float().mean().item(), int(d.max())


@pytest.mark.parametrize("suite,size,steps,close", [
    ("spatial", (40, 48), 6, False), ("object", (40, 48), 6, True), ("goal", (64, 64), 4, False),
    ("long", (40, 48), 8, True)])
def test_interpreted_kernel_matches_numba_exactly(interpreted, suite, size, steps, close):
    env = _env(suite, 2, steps, close=close)
    H, W = size
    ref = Renderer(H, W, "numba").render(env.scene, env.state)
    prims, cams = build_primitives(env.scene, env.state), build_cameras(env.state, W / H)
    out = interpreted.render(prims, cams, H, W, block=(64, 64))  # one tile per view: the interpreter is slow
    assert out.shape == ref.shape == (2, 2, 3, H, W) and out.dtype == torch.uint8
    frac, worst = _differ(out, ref)
    assert frac == 0.0, f"{frac:.2e} of the pixels differ (by up to {worst})"


def test_tiles_and_culling_through_the_renderer(interpreted):
    """Small tiles, so that screen-space culling skips primitives (and shadows) for most tiles, and the
    Renderer's 'triton' dispatch; the float32 mode stays within the numba/torch parity tolerance."""
    env = _env("goal", 1, 5, close=True)
    ref = Renderer(24, 32, "numba").render(env.scene, env.state)
    assert torch.equal(Renderer(24, 32, "triton").render(env.scene, env.state), ref)
    prims, cams = build_primitives(env.scene, env.state), build_cameras(env.state, 32 / 24)
    boxes = interpreted.screen_boxes(prims, cams, 24, 32).float()
    area = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2]) / (24 * 32)
    assert boxes.shape == (1, 2, prims.shape[1], 8) and area[:, 0].mean() < 0.3  # agentview boxes are small
    fast = interpreted.render(prims, cams, 24, 32, precise=False, block=(32, 32))
    assert ((fast.int() - ref.int()).abs() > 3).float().mean() < 0.002


def test_triton_backend_needs_cuda_tensors_when_compiled():
    env = _env("spatial", 1, 0)
    if importlib.import_module(MODULE).interpreted:
        pytest.skip("TRITON_INTERPRET is set for the whole session")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        Renderer(16, 16, "triton").render(env.scene, env.state)
    assert Renderer(16, 16)._select(torch.device("cpu")) == "numba"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernel_matches_numba_on_cuda():
    mod = importlib.import_module(MODULE)
    if mod.interpreted:
        pytest.skip("TRITON_INTERPRET is set")
    env = _env("long", 1024, 8, close=False)
    env.state.grip_open[::2] = 0.0  # half the grippers shut
    ref = Renderer(64, 64, "numba").render(env.scene, env.state)
    prims, cams = build_primitives(env.scene, env.state).cuda(), build_cameras(env.state).cuda()
    out = mod.render(prims, cams, 64, 64).cpu()
    frac, worst = _differ(out, ref)
    print(f"triton (float64) vs numba: {frac:.2e} of the pixels differ, by up to {worst}")
    assert frac <= 1e-4, f"{frac:.2e} of the pixels differ (by up to {worst})"
    fast = mod.render(prims, cams, 64, 64, precise=False).cpu()
    frac, worst = _differ(fast, ref)
    print(f"triton (float32) vs numba: {frac:.2e} of the pixels differ, by up to {worst}")
    assert ((fast.int() - ref.int()).abs() > 3).float().mean() < 0.002
    # 'auto' picks triton for a CUDA env, which renders what the CPU env renders
    cuda_env = _env("long", 8, 0, device="cuda")
    assert cuda_env.renderer._select(torch.device("cuda")) == "triton"
    img = cuda_env.render()
    assert img.is_cuda and img.shape == (8, 2, 3, 64, 64)
    assert _differ(img.cpu(), _env("long", 8, 0).render())[0] <= 1e-4
