"""State and physics of the batched tabletop world: pure tensor functions, one step for all envs at once.

The physics is kinematic, not dynamic: a grasped object follows the gripper, a released object drops to
rest on the highest surface under its footprint (the table, a plate, the inside of a basket or bowl, the
top of another object), a closed empty gripper pushes the objects it moves into, and a held drawer slides
along its rails. Resting objects never interpenetrate: a push that would drive one object into another is
blocked, and a carried object is lifted over whatever lies under it.

Coordinates: x to the right of the camera, y away from it, z up from the table top; metres.
Object position = centre of its footprint at its bottom face.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from reinforge.envs.tabletop.catalog import CATEGORIES, DRAWER_MAX_OPEN

MAX_STEP = 0.02  # metres per step at |action| = 1 (0.4 m/s at 20 Hz)
MAX_YAW_STEP = 0.15  # radians per step
GRIPPER_RATE = 0.25  # opening fraction per step (close/open in 4 steps)
WORKSPACE_LO = (-0.3, -0.26, 0.005)
WORKSPACE_HI = (0.3, 0.26, 0.4)
FINGER_HALF = 0.012  # half-size of the closed fingers' footprint (pushing, floor contact)
FINGER_LEN = 0.045  # how far the fingers reach above the grasp point
STRADDLE_MAX = 0.047  # objects narrower than this fit between the open fingers
HANDLE_OUT = 0.012  # drawer handle sticks out of the drawer front by this much

# per-category constant tables, indexed by category id
_CAT_HALF = torch.tensor([c.half for c in CATEGORIES], dtype=torch.float32)
_CAT_HEIGHT = torch.tensor([c.height for c in CATEGORIES], dtype=torch.float32)
_CAT_SHAPE = torch.tensor([c.shape for c in CATEGORIES], dtype=torch.int64)
_CAT_FLOOR = torch.tensor([c.floor for c in CATEGORIES], dtype=torch.float32)
_CAT_WALL = torch.tensor([c.wall for c in CATEGORIES], dtype=torch.float32)
_CAT_GRASPABLE = torch.tensor([c.graspable and not c.drawer for c in CATEGORIES])
_CAT_FIXTURE = torch.tensor([c.fixture for c in CATEGORIES])
_CAT_DRAWER = torch.tensor([c.drawer for c in CATEGORIES])


@dataclass
class Scene:
    """Static per-env scene tables, gathered from the catalogue at reset. Shapes (B, N, ...)."""

    category: torch.Tensor  # int64 (B, N)
    rgb: torch.Tensor  # uint8 (B, N, 3)
    active: torch.Tensor  # bool (B, N)
    half: torch.Tensor  # float32 (B, N, 2)
    height: torch.Tensor  # float32 (B, N)
    shape: torch.Tensor  # int64 (B, N)
    floor: torch.Tensor  # float32 (B, N)
    wall: torch.Tensor  # float32 (B, N)
    graspable: torch.Tensor  # bool (B, N)
    movable: torch.Tensor  # bool (B, N)  pushable: not a fixture, not a drawer
    drawer: torch.Tensor  # bool (B, N)

    @classmethod
    def from_categories(cls, category: torch.Tensor, rgb: torch.Tensor, active: torch.Tensor) -> Scene:
        dev = category.device
        c = category.clamp(min=0)
        return cls(
            category=category, rgb=rgb, active=active,
            half=_CAT_HALF.to(dev)[c], height=_CAT_HEIGHT.to(dev)[c], shape=_CAT_SHAPE.to(dev)[c],
            floor=_CAT_FLOOR.to(dev)[c], wall=_CAT_WALL.to(dev)[c],
            graspable=_CAT_GRASPABLE.to(dev)[c] & active,
            movable=~_CAT_FIXTURE.to(dev)[c] & ~_CAT_DRAWER.to(dev)[c] & active,
            drawer=_CAT_DRAWER.to(dev)[c] & active)


@dataclass
class WorldState:
    """Dynamic state of B envs."""

    pos: torch.Tensor  # float32 (B, N, 3) object bottom-centre
    support: torch.Tensor  # int64 (B, N) index of the object each rests on, -1 = table
    inside: torch.Tensor  # bool (B, N) resting inside its support (a container)
    anchor_y: torch.Tensor  # float32 (B, N) closed-position y of drawers
    grip_pos: torch.Tensor  # float32 (B, 3) grasp point between the fingertips
    grip_yaw: torch.Tensor  # float32 (B,)
    grip_open: torch.Tensor  # float32 (B,) 1 = fully open, 0 = closed
    held: torch.Tensor  # int64 (B,) held object index, -1 = none
    held_offset: torch.Tensor  # float32 (B, 3) held object position minus gripper position

    def clone(self) -> WorldState:
        return WorldState(**{f.name: getattr(self, f.name).clone() for f in fields(self)})

    def assign(self, other: WorldState, mask: torch.Tensor) -> None:
        """In place: take ``other``'s values for envs where ``mask`` (B,) is True."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            m = mask.view(-1, *([1] * (mine.dim() - 1)))
            mine.copy_(torch.where(m, theirs, mine))


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, N, ...) indexed by idx (B,) -> (B, ...); idx must be valid (clamp -1 first)."""
    b = torch.arange(t.shape[0], device=t.device)
    return t[b, idx]


def support_roots(support: torch.Tensor) -> torch.Tensor:
    """(B, N) index of the bottom object of each object's support chain (stacks up to 4 high)."""
    root = torch.arange(support.shape[1], device=support.device).expand_as(support)
    for _ in range(3):
        s = support.gather(1, root)
        root = torch.where(s >= 0, s, root)
    return root


def surface_under(scene: Scene, state: WorldState, xy: torch.Tensor, half: torch.Tensor,
                  exclude: torch.Tensor):
    """Highest surface under a footprint centred at ``xy`` (B, 2) with half-extents ``half`` (B, 2).

    A container counts with its interior floor when the footprint fits inside its walls, otherwise with
    its top. Objects in ``exclude`` (B, N) are ignored. Returns (height (B,), support index (B,) with -1
    for the table, inside flag (B,)).
    """
    d = (state.pos[..., :2] - xy[:, None, :]).abs()  # (B, N, 2)
    shrink = 0.3 * half.min(dim=1).values[:, None, None]
    overlap = (d < scene.half + half[:, None, :] - shrink).all(-1) & scene.active & ~exclude
    # fits inside a container: small enough, and its centre within the walls (8 mm of play: it leans on one)
    inner = scene.half - scene.wall[..., None]
    small = (half[:, None, :] <= inner).all(-1)
    fits = (scene.floor > 0) & small & (d + half[:, None, :] <= inner + 0.008).all(-1)
    top = state.pos[..., 2] + torch.where(fits, scene.floor, scene.height)
    top = torch.where(overlap, top, torch.full_like(top, -1.0))
    height, idx = top.max(dim=1)
    on_table = height <= 0.0
    inside = _gather(fits, idx) & ~on_table
    return height.clamp(min=0.0), torch.where(on_table, -1, idx), inside


def handle_point(scene: Scene, state: WorldState, idx: torch.Tensor) -> torch.Tensor:
    """(B, 3) grasp point of the handle of drawer ``idx`` (B,)."""
    p = _gather(state.pos, idx)
    hy = _gather(scene.half, idx)[:, 1]
    h = _gather(scene.height, idx)
    return torch.stack([p[:, 0], p[:, 1] - hy - HANDLE_OUT, p[:, 2] + 0.5 * h], dim=1)


def drawer_opening(state: WorldState) -> torch.Tensor:
    """(B, N) how far each drawer is pulled out (0 for other objects)."""
    return state.anchor_y - state.pos[..., 1]


def _bounds(ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(WORKSPACE_LO, dtype=ref.dtype, device=ref.device),
            torch.tensor(WORKSPACE_HI, dtype=ref.dtype, device=ref.device))


def step_world(scene: Scene, state: WorldState, actions: torch.Tensor, *, grasp_tolerance: float = 1.0,
               gripper_rate: float = GRIPPER_RATE, grip_goal: torch.Tensor | None = None) -> WorldState:
    """Advance every env by one control step. ``actions`` (B, 7) already validated; ``grasp_tolerance`` scales how
    far from an object's centre a closing gripper still grasps it. The fingers move toward ``grip_goal`` (B,) (an
    opening in [0, 1]) or, without one, close on a positive command and open otherwise, by at most
    ``gripper_rate`` per step."""
    s = state.clone()
    B = actions.shape[0]
    ar = torch.arange(B, device=actions.device)
    lo, hi = _bounds(actions)
    roots = support_roots(s.support)
    held = s.held.clamp(min=0)
    has = s.held >= 0
    held_drawer = has & _gather(scene.drawer, held)
    held_obj = has & ~held_drawer

    target = s.grip_pos + actions[:, :3] * MAX_STEP
    target = torch.minimum(torch.maximum(target, lo), hi)

    # a held drawer slides along y within its rails; the gripper follows its handle
    d_y = _gather(s.pos, held)[:, 1]
    anchor = _gather(s.anchor_y, held)
    new_d_y = torch.clamp(d_y + actions[:, 1] * MAX_STEP, anchor - DRAWER_MAX_OPEN, anchor)
    drawer_dy = torch.where(held_drawer, new_d_y - d_y, torch.zeros_like(d_y))

    # a carried object is lifted over whatever lies under it
    carried = roots == held[:, None]
    obj_half = _gather(scene.half, held)
    floor, _, _ = surface_under(scene, s, target[:, :2] + s.held_offset[:, :2], obj_half, carried | ~has[:, None])
    bottom = target[:, 2] + s.held_offset[:, 2]
    target[:, 2] = torch.where(held_obj & (bottom < floor), target[:, 2] + (floor - bottom), target[:, 2])

    # an empty gripper lands on the surfaces it comes down on (not those it runs into sideways, which it
    # pushes), unless the open fingers straddle the object
    finger = torch.full((B, 2), FINGER_HALF, device=actions.device)
    straddle = (s.grip_open >= 0.5)[:, None] & (scene.half.max(-1).values <= STRADDLE_MAX)
    was_above = s.grip_pos[:, 2:3] >= s.pos[..., 2] + scene.height - 0.0005
    gfloor, _, _ = surface_under(scene, s, target[:, :2], finger, straddle | ~was_above)
    target[:, 2] = torch.where(~has, torch.maximum(target[:, 2], gfloor + lo[2]), target[:, 2])

    # a closed empty gripper pushes the movable objects it runs into
    push = _push_displacement(scene, s, target, ~has & (s.grip_open < 0.5), roots)

    disp = torch.zeros_like(s.pos)
    disp[:, :, :2] = push
    move = torch.where(held_drawer[:, None], torch.zeros_like(target), target - s.grip_pos)
    disp[ar, held] = torch.where(held_obj[:, None], move, disp[ar, held])
    disp[ar, held, 1] = torch.where(held_drawer, drawer_dy, disp[ar, held, 1])
    s.pos = s.pos + disp.gather(1, roots[..., None].expand(-1, -1, 3))
    s.grip_pos = torch.where(held_drawer[:, None], handle_point(scene, s, held), target)
    s.grip_yaw = torch.remainder(s.grip_yaw + actions[:, 5] * MAX_YAW_STEP + torch.pi, 2 * torch.pi) - torch.pi

    # gripper fingers; grasp when they close past half-way, release when they open past half-way
    prev = s.grip_open
    goal = torch.where(actions[:, 6] > 0, 0.0, 1.0) if grip_goal is None else grip_goal.clamp(0.0, 1.0)
    s.grip_open = prev + torch.clamp(goal - prev, -gripper_rate, gripper_rate)
    closing = (prev >= 0.5) & (s.grip_open < 0.5) & ~has
    opening = (prev < 0.5) & (s.grip_open >= 0.5) & has
    if bool(opening.any()):
        _release(scene, s, opening)
    if bool(closing.any()):
        _grasp(scene, s, closing, grasp_tolerance)
    return s


def _push_displacement(scene: Scene, s: WorldState, target: torch.Tensor, can_push: torch.Tensor,
                       roots: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) xy displacement of pushed objects; blocks the gripper (in place) where a push jams."""
    delta = target[:, :2] - s.grip_pos[:, :2]
    rel = s.pos[..., :2] - target[:, None, :2]  # (B, N, 2)
    contact = (rel.abs() < scene.half + FINGER_HALF).all(-1)
    z = target[:, 2:3]
    vertical = (z < s.pos[..., 2] + scene.height) & (z + FINGER_LEN > s.pos[..., 2])
    pushed = contact & vertical & scene.movable & (s.support < 0) & can_push[:, None]
    if not bool(pushed.any()):
        return torch.zeros_like(rel)
    # push the object out along the line from the fingers to its centre, until they just touch
    dist = rel.norm(dim=-1, keepdim=True)
    n = torch.where(dist > 1e-6, rel / dist.clamp(min=1e-6), delta[:, None, :] / delta.norm(
        dim=-1, keepdim=True)[:, None].clamp(min=1e-6))
    reach = (scene.half * n.abs()).sum(-1, keepdim=True) + FINGER_HALF
    push = torch.where(pushed[..., None], n * (reach - dist).clamp(min=0.0), torch.zeros_like(rel))
    # jammed: a pushed stack would overlap another resting object, or leave the table
    moved = s.pos[..., :2] + push.gather(1, roots[..., None].expand(-1, -1, 2))
    d = (moved[:, :, None, :] - moved[:, None, :, :]).abs()  # (B, N, N, 2)
    reach = scene.half[:, :, None, :] + scene.half[:, None, :, :] - 0.004
    top = s.pos[..., 2] + scene.height
    vert = (s.pos[..., 2][:, :, None] < top[:, None, :]) & (s.pos[..., 2][:, None, :] < top[:, :, None])
    pair = (d < reach).all(-1) & vert & scene.active[:, :, None] & scene.active[:, None, :]
    same_stack = roots[:, :, None] == roots[:, None, :]
    moving = (push.abs().sum(-1) > 0)
    jam = (pair & ~same_stack & moving[:, :, None]).flatten(1).any(1)
    off = (moved.abs() + scene.half > torch.tensor([0.3, 0.26], device=moved.device)).any(-1)
    jam = jam | (off & pushed).any(1)
    target[:, :2] = torch.where(jam[:, None], s.grip_pos[:, :2], target[:, :2])
    return torch.where(jam[:, None, None], torch.zeros_like(push), push)


def _grasp(scene: Scene, s: WorldState, closing: torch.Tensor, tolerance: float = 1.0) -> None:
    """In place: envs in ``closing`` grab the nearest graspable object (or drawer handle) in reach."""
    p = s.grip_pos[:, None, :]
    tol = tolerance * (0.02 + 0.3 * scene.half)
    d = (s.pos[..., :2] - p[..., :2]).abs()
    z0 = s.pos[..., 2]
    z1 = z0 + scene.height
    in_z = (p[..., 2] >= z0 - 0.005) & (p[..., 2] <= z1 + 0.01)
    ok = (d <= tol).all(-1) & in_z & scene.graspable
    zc = torch.minimum(torch.maximum(p[..., 2], z0), z1)
    dist = d.norm(dim=-1) + (p[..., 2] - zc).abs()
    # drawer handles
    hy = s.pos[..., 1] - scene.half[..., 1] - HANDLE_OUT
    hz = z0 + 0.5 * scene.height
    hd = torch.stack([s.pos[..., 0] - p[..., 0], hy - p[..., 1], hz - p[..., 2]], -1).abs()
    h_ok = (hd <= 0.02).all(-1) & scene.drawer
    ok = ok | h_ok
    dist = torch.where(h_ok, hd.norm(dim=-1), dist)
    dist = torch.where(ok, dist, torch.full_like(dist, 1e9))
    best_d, best = dist.min(dim=1)
    got = closing & (best_d < 1e8)
    s.held = torch.where(got, best, s.held)
    offset = _gather(s.pos, best) - s.grip_pos
    s.held_offset = torch.where(got[:, None], offset, s.held_offset)
    ar = torch.arange(s.pos.shape[0], device=s.pos.device)
    s.support[ar, best] = torch.where(got, -1, s.support[ar, best])
    s.inside[ar, best] = torch.where(got, False, s.inside[ar, best])


def _release(scene: Scene, s: WorldState, opening: torch.Tensor) -> None:
    """In place: envs in ``opening`` let go; a released object drops onto the surface under it."""
    held = s.held.clamp(min=0)
    ar = torch.arange(s.pos.shape[0], device=s.pos.device)
    is_drawer = _gather(scene.drawer, held)
    drop = opening & ~is_drawer
    roots = support_roots(s.support)
    carried = roots == held[:, None]
    p = _gather(s.pos, held)
    height, sup, inside = surface_under(scene, s, p[:, :2], _gather(scene.half, held), carried)
    dz = torch.where(drop, height - p[:, 2], torch.zeros_like(height))
    s.pos[..., 2] = s.pos[..., 2] + torch.where(carried, dz[:, None], torch.zeros_like(s.pos[..., 2]))
    s.support[ar, held] = torch.where(drop, sup, s.support[ar, held])
    s.inside[ar, held] = torch.where(drop, inside, s.inside[ar, held])
    s.held = torch.where(opening, -1, s.held)
