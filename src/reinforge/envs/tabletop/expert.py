"""A scripted expert for the tabletop world: privileged state in, LIBERO-style actions out.

It solves every task of every suite by running, per env, the skills that the task's goal terms call for:
``on``/``in`` -> pick-and-place, ``open``/``closed`` -> pull or push the drawer by its handle,
``region`` -> push the object there with the closed gripper. Each skill is a small phase machine
(approach at a safe travel height, descend, close, lift, carry, lower, release, retreat); all envs run in
one batch with tensor ops. ``noise`` adds Gaussian noise to the executed translation actions for diverse
demos; ``clean_action`` keeps the noise-free action of the last step, the corrective label that
DART-style recording (Laskey et al., 2017) stores next to the executed one. A failed grasp is detected from
the state and retried.
"""

from __future__ import annotations

import torch

from reinforge.envs.tabletop.catalog import DRAWER_MAX_OPEN
from reinforge.envs.tabletop.env import TabletopEnv
from reinforge.envs.tabletop.predicates import goal_terms_hold
from reinforge.envs.tabletop.tasks import PRED_CLOSED, PRED_IN, PRED_ON, PRED_OPEN, PRED_REGION
from reinforge.envs.tabletop.world import (
    FINGER_HALF,
    MAX_STEP,
    STRADDLE_MAX,
    Scene,
    WorldState,
    drawer_opening,
    handle_point,
    support_roots,
)
from reinforge.types import Observation, PolicyOutput

CLEARANCE = 0.035  # travel height above the tallest object
TOL = 0.004  # position tolerance of a waypoint
APPROACH_SCALE = 2.5  # proportional control within 2.5 max-steps of a waypoint: slows down smoothly
# phases
APPROACH, DESCEND, CLOSE, LIFT, CARRY, LOWER, RELEASE, RETREAT = range(8)


def _g(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t[torch.arange(t.shape[0], device=t.device), idx]


class ScriptedExpert:
    """Batched scripted expert bound to a ``TabletopEnv`` (it reads the env's true state)."""

    def __init__(self, env: TabletopEnv, noise: float = 0.0, seed: int = 0):
        if noise < 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        self.env, self.noise = env, float(noise)
        self.gen = torch.Generator(device=env.device).manual_seed(seed)
        B = env.num_envs
        self.clean_action = torch.zeros(B, env.action_dim, device=env.device)
        self.term = torch.zeros(B, dtype=torch.int64, device=env.device)
        self.phase = torch.zeros(B, dtype=torch.int64, device=env.device)
        self.wait = torch.zeros(B, dtype=torch.int64, device=env.device)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        m = torch.ones_like(self.term, dtype=torch.bool) if mask is None else mask.to(self.term.device)
        for t in (self.term, self.phase, self.wait):
            t.masked_fill_(m, 0)

    def act(self, obs: Observation | None = None, *, mode: str = "greedy", temperature: float = 1.0
            ) -> PolicyOutput:
        """One action per env as a chunk of length 1: actions (B, 1, D) in the robot's layout;
        ``replay["clean_action"]`` (B, D) is the noise-free action in the same state (the DART-style label)."""
        action = self.action()
        return PolicyOutput(actions=action[:, None, :], replay={"clean_action": self.clean_action.clone()})

    # ------------------------------------------------------------------ core

    def action(self) -> torch.Tensor:
        env = self.env
        scene, s = env.scene, env.state
        terms, mask, regions = env._goal
        holds = goal_terms_hold(s, terms, regions) | ~mask
        # advance past satisfied terms once the gripper is free of the previous skill
        G = terms.shape[1]
        for _ in range(G):
            cur = holds.gather(1, self.term.clamp(max=G - 1)[:, None])[:, 0] & (self.term < G)
            idle = (self.phase == APPROACH) | (self.phase == RETREAT) & (self.wait > 2)
            nxt = cur & idle
            self.term = torch.where(nxt, self.term + 1, self.term)
            self.phase = torch.where(nxt, APPROACH, self.phase)
            self.wait = torch.where(nxt, 0, self.wait)
        k = self.term.clamp(max=G - 1)
        pred, a, b = terms[torch.arange(terms.shape[0]), k].unbind(-1)
        region = regions[torch.arange(terms.shape[0]), k]
        finished = self.term >= G

        travel = self._travel_height(scene, s)
        is_pp = (pred == PRED_ON) | (pred == PRED_IN)
        is_dr = (pred == PRED_OPEN) | (pred == PRED_CLOSED)
        is_pu = pred == PRED_REGION
        phase = self.phase  # each skill reads the phase at the start of the step
        self._active = is_pp & ~finished
        tgt_pp, close_pp, prec_pp = self._pick_place(scene, s, phase, a, b, pred == PRED_IN, travel)
        self._active = is_dr & ~finished
        tgt_dr, close_dr, prec_dr = self._drawer(scene, s, phase, a, pred == PRED_OPEN, travel)
        self._active = is_pu & ~finished
        tgt_pu, close_pu, prec_pu = self._push(scene, s, phase, a, region, travel)
        target = torch.where(is_pp[:, None], tgt_pp, torch.where(is_dr[:, None], tgt_dr, tgt_pu))
        close = torch.where(is_pp, close_pp, torch.where(is_dr, close_dr, close_pu))
        # when done: hover where it is with the gripper open
        target = torch.where(finished[:, None], s.grip_pos, target)
        close = torch.where(finished, torch.zeros_like(close), close)
        self.wait = self.wait + 1

        act = torch.zeros(s.grip_pos.shape[0], 7, device=s.grip_pos.device)
        act[:, :3] = ((target - s.grip_pos) / (MAX_STEP * APPROACH_SCALE)).clamp(-1, 1)
        act[:, 6] = torch.where(close, 1.0, -1.0)
        robot = env.robot  # the world command, in the robot's own action layout
        self.clean_action = robot.native_action(act, s)  # the label DART-style recording stores
        if self.noise > 0:  # less noise near contact, as a careful demonstrator slows down there
            precise = torch.where(is_pp, prec_pp, torch.where(is_dr, prec_dr, prec_pu))
            scale = self.noise * torch.where(precise, 0.3, 1.0)[:, None]
            act = act.clone()
            act[:, :3] += scale * torch.randn(act[:, :3].shape, generator=self.gen, device=act.device)
        return robot.native_action(act, s)

    def _set_phase(self, cond: torch.Tensor, phase: int | torch.Tensor) -> None:
        """Move envs where ``cond`` holds to ``phase``; only envs running the current skill (``_active``)."""
        cond = cond & self._active
        self.phase = torch.where(cond, phase, self.phase)
        self.wait = torch.where(cond, 0, self.wait)

    @staticmethod
    def _travel_height(scene: Scene, s: WorldState) -> torch.Tensor:
        """(B,) gripper height that clears every object, also with the held object hanging below."""
        roots = support_roots(s.support)
        carried = (roots == s.held.clamp(min=0)[:, None]) & (s.held >= 0)[:, None]
        tops = torch.where(scene.active & ~carried, s.pos[..., 2] + scene.height, torch.zeros_like(scene.height))
        top = tops.max(1).values
        hang = torch.where(s.held >= 0, (-s.held_offset[:, 2]).clamp(min=0), torch.zeros_like(top))
        return top + CLEARANCE + hang

    def _move_high(self, s: WorldState, goal_xy: torch.Tensor, travel: torch.Tensor) -> torch.Tensor:
        """Target that first rises to travel height, then moves across at that height."""
        low = s.grip_pos[:, 2] < travel - 0.01
        far = (goal_xy - s.grip_pos[:, :2]).norm(dim=1) > 0.01
        xy = torch.where((low & far)[:, None], s.grip_pos[:, :2], goal_xy)
        return torch.cat([xy, travel[:, None]], 1)

    def _reached(self, s: WorldState, target: torch.Tensor, tol: float = TOL) -> torch.Tensor:
        return ((target - s.grip_pos).abs() <= tol).all(1)

    def _pick_place(self, scene, s, ph, a, b, into, travel):
        p_a, p_b = _g(s.pos, a), _g(s.pos, b)
        h_a, h_b = _g(scene.height, a), _g(scene.height, b)
        wide = _g(scene.half, a).max(1).values > STRADDLE_MAX
        grasp_z = torch.where(wide, p_a[:, 2] + h_a + 0.006, p_a[:, 2] + h_a - torch.clamp(0.5 * h_a, max=0.03))
        holding = s.held == a
        # where to put it: centre of b; in a drawer, the part of it that sticks out of the cabinet
        place_xy = p_b[:, :2].clone()
        drawer_b = _g(scene.drawer, b) & into
        front = p_b[:, 1] - _g(scene.half, b)[:, 1] + _g(scene.wall, b) + _g(scene.half, a)[:, 1] + 0.01
        place_xy[:, 1] = torch.where(drawer_b, front, place_xy[:, 1])
        place_xy = torch.where((into & ~drawer_b)[:, None], self._free_spot(scene, s, a, b), place_xy)
        surface = p_b[:, 2] + torch.where(into, _g(scene.floor, b), h_b)
        place_z = surface + 0.012 - s.held_offset[:, 2]

        over_a = self._move_high(s, p_a[:, :2], travel)
        at_a = torch.cat([p_a[:, :2], grasp_z[:, None]], 1)
        over_b = self._move_high(s, place_xy, travel)
        at_b = torch.cat([place_xy, place_z[:, None]], 1)
        up = torch.cat([s.grip_pos[:, :2], travel[:, None]], 1)
        target = torch.stack([over_a, at_a, s.grip_pos, up, over_b, at_b, s.grip_pos, up], 1)[
            torch.arange(a.shape[0]), ph]
        close = (ph >= CLOSE) & (ph <= LOWER)
        at_travel = (s.grip_pos[:, 2] >= travel - 0.01)
        xy_ok = lambda xy: ((xy - s.grip_pos[:, :2]).abs() <= TOL).all(1)  # noqa: E731
        self._set_phase((ph == APPROACH) & xy_ok(p_a[:, :2]) & at_travel, DESCEND)
        self._set_phase((ph == DESCEND) & self._reached(s, at_a), CLOSE)
        closed = (ph == CLOSE) & (s.grip_open <= 0.0) & (self.wait >= 1)
        self._set_phase(closed & holding, LIFT)
        self._set_phase(closed & ~holding, APPROACH)  # missed: open and try again
        self._set_phase((ph == LIFT) & at_travel, CARRY)
        self._set_phase((ph == CARRY) & xy_ok(place_xy) & at_travel, LOWER)
        self._set_phase((ph == LOWER) & (self._reached(s, at_b) | (self.wait > 20)), RELEASE)
        self._set_phase((ph >= LIFT) & (ph <= LOWER) & ~holding, APPROACH)  # dropped it
        self._set_phase((ph == RELEASE) & (s.grip_open >= 1.0), RETREAT)
        return target, close, (ph >= DESCEND) & (ph <= RELEASE) & (ph != LIFT) & (ph != CARRY)

    @staticmethod
    def _free_spot(scene: Scene, s: WorldState, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 2) the spot inside container b (near a wall, or the centre) farthest from what is in it."""
        inner = _g(scene.half, b) - _g(scene.wall, b)[:, None] - _g(scene.half, a) - 0.012
        off = inner.clamp(min=0.0)
        zero = torch.zeros_like(off[:, 0])
        dirs = torch.stack([torch.stack([off[:, 0], zero], 1), torch.stack([-off[:, 0], zero], 1),
                            torch.stack([zero, off[:, 1]], 1), torch.stack([zero, -off[:, 1]], 1),
                            torch.stack([zero, zero], 1)], 1)  # (B, 5, 2)
        cand = _g(s.pos, b)[:, None, :2] + dirs
        n = torch.arange(s.support.shape[1], device=a.device)
        inside = (s.support == b[:, None]) & (n[None] != a[:, None]) & scene.active
        dist = (cand[:, :, None, :] - s.pos[:, None, :, :2]).norm(dim=-1)  # (B, 5, N)
        dist = torch.where(inside[:, None, :], dist, torch.full_like(dist, 1e9)).min(-1).values
        return cand[torch.arange(a.shape[0]), dist.argmax(1)]

    def _drawer(self, scene, s, ph, d, opening_goal, travel):
        hp = handle_point(scene, s, d)
        holding = s.held == d
        opening = _g(drawer_opening(s), d)
        front = hp.clone()
        front[:, 1] -= 0.05
        goal_open = torch.where(opening_goal, torch.full_like(opening, DRAWER_MAX_OPEN - 0.01),
                                torch.zeros_like(opening))
        pulled = hp.clone()
        pulled[:, 1] = hp[:, 1] - (goal_open - opening)
        back = s.grip_pos.clone()
        back[:, 1] = hp[:, 1] - 0.05
        up = torch.cat([s.grip_pos[:, :2], travel[:, None]], 1)
        over = self._move_high(s, front[:, :2], travel)
        target = torch.stack([over, front, hp, hp, pulled, s.grip_pos, back, up], 1)[torch.arange(d.shape[0]), ph]
        close = (ph >= 3) & (ph <= 4)
        self._set_phase((ph == 0) & self._reached(s, torch.cat([front[:, :2], travel[:, None]], 1)), 1)
        self._set_phase((ph == 1) & self._reached(s, front), 2)
        self._set_phase((ph == 2) & self._reached(s, hp), 3)
        closed = (ph == 3) & (s.grip_open <= 0.0) & (self.wait >= 1)
        self._set_phase(closed & holding, 4)
        self._set_phase(closed & ~holding, 0)
        done_pull = (opening - goal_open).abs() <= 0.006
        self._set_phase((ph == 4) & holding & done_pull, 5)
        self._set_phase((ph == 4) & ~holding, 0)
        self._set_phase((ph == 5) & (s.grip_open >= 1.0) & ~holding, 6)
        self._set_phase((ph == 6) & self._reached(s, back, 0.01), RETREAT)
        return target, close, (ph >= 1) & (ph <= 5)

    def _push(self, scene, s, ph, a, region, travel):
        p = _g(s.pos, a)
        half = _g(scene.half, a)
        c = p[:, :2]
        margin = half + 0.02
        goal = torch.stack([c[:, 0].clamp(region[:, 0] + margin[:, 0], region[:, 1] - margin[:, 0]),
                            c[:, 1].clamp(region[:, 2] + margin[:, 1], region[:, 3] - margin[:, 1])], 1)
        u = goal - c
        u = u / u.norm(dim=1, keepdim=True).clamp(min=1e-6)
        reach = (half * u.abs()).sum(1) + FINGER_HALF + 0.02
        pre = c - u * reach[:, None]
        push_z = torch.clamp(p[:, 2] + 0.5 * _g(scene.height, a), max=p[:, 2] + 0.02)
        over = self._move_high(s, pre, travel)
        at_pre = torch.cat([pre, push_z[:, None]], 1)
        through = torch.cat([c + u * 0.08, push_z[:, None]], 1)
        up = torch.cat([s.grip_pos[:, :2], travel[:, None]], 1)
        target = torch.stack([over, s.grip_pos, at_pre, through, up, up, up, up], 1)[torch.arange(a.shape[0]), ph]
        close = (ph >= 1) & (ph <= 3)
        at_travel = (s.grip_pos[:, 2] >= travel - 0.01)
        self._set_phase((ph == 0) & self._reached(s, torch.cat([pre, travel[:, None]], 1)), 1)
        self._set_phase((ph == 1) & (s.grip_open <= 0.0), 2)
        self._set_phase((ph == 2) & self._reached(s, at_pre), 3)
        # the term's predicate becoming true advances the expert (see action()); stuck pushes retry
        self._set_phase((ph == 3) & (self.wait > 60), 4)
        self._set_phase((ph == 4) & at_travel, 0)
        return target, close, (ph >= 2) & (ph <= 3)
