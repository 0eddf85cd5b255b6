"""Domains of the built-in world: ``sim`` (the world as it is) and ``real`` (a fixed, documented shift of it that
stands in for a real robot in sim-real co-training, METHODS.md section 5).

``real`` differs from ``sim`` in exactly these ways, all deterministic given the env's seed:

Visual
- object colours: every object's RGB goes through a warm colour cast (``object_rgb_gain``) and is brightened
  by ``object_rgb_offset``;
- lighting: the rendered image gets a per-channel gain (``light_gain``, a warmer, dimmer light) and an offset,
  which changes the table, floor and objects alike;
- camera pose: the fixed agentview camera's eye moves by ``agent_eye_offset`` (metres) and its look-at target
  by ``agent_target_offset`` (a rotation of about 2 degrees); the wrist camera tilts ``wrist_pitch_offset``
  radians further forward;
- sensor noise: i.i.d. Gaussian pixel noise of std ``pixel_noise`` (in 0-255 levels), drawn from a generator
  seeded by the env seed and the frame counter (part of the snapshot).
Dynamics
- action gain: translation and yaw commands move the gripper ``action_gain`` times as far;
- latency: the world executes the command of the previous control step (``latency_steps`` = 1); the first
  step after a reset executes "stay, gripper open";
- gripper tolerance: a closing gripper grasps an object only within ``grasp_tolerance`` times the sim
  tolerance of its centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DomainShift:
    name: str = "sim"
    object_rgb_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    object_rgb_offset: float = 0.0
    light_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    light_offset: float = 0.0
    agent_eye_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    agent_target_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    wrist_pitch_offset: float = 0.0
    pixel_noise: float = 0.0
    action_gain: float = 1.0
    latency_steps: int = 0
    grasp_tolerance: float = 1.0
    notes: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def visual(self) -> bool:
        return (self.light_gain != (1.0, 1.0, 1.0) or self.light_offset != 0.0 or self.pixel_noise > 0
                or self.object_rgb_gain != (1.0, 1.0, 1.0) or self.object_rgb_offset != 0.0)

    def object_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """Object colours (..., 3) uint8 as this domain shows them."""
        if self.object_rgb_gain == (1.0, 1.0, 1.0) and self.object_rgb_offset == 0.0:
            return rgb
        gain = torch.tensor(self.object_rgb_gain, device=rgb.device)
        return (rgb.float() * gain + self.object_rgb_offset).round().clamp(0, 255).to(torch.uint8)

    def shade(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Lighting and sensor noise on rendered (B, V, 3, H, W) uint8 images."""
        if self.light_gain == (1.0, 1.0, 1.0) and self.light_offset == 0.0 and self.pixel_noise <= 0:
            return images
        x = images.float() * torch.tensor(self.light_gain, device=images.device)[:, None, None] + self.light_offset
        if self.pixel_noise > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
            x = x + self.pixel_noise * noise.to(x.device)
        return x.round().clamp(0, 255).to(torch.uint8)


SIM = DomainShift()
REAL = DomainShift(
    name="real",
    # calibrated so that a policy trained on 50 sim demos per task keeps part of its success (README)
    object_rgb_gain=(1.03, 0.98, 0.94),
    object_rgb_offset=2.5,
    light_gain=(1.02, 0.98, 0.93),
    light_offset=-3.0,
    agent_eye_offset=(0.03, -0.02, 0.02),
    agent_target_offset=(0.02, 0.01, 0.0),
    wrist_pitch_offset=0.06,
    pixel_noise=4.0,
    action_gain=0.8,
    latency_steps=1,
    grasp_tolerance=0.6,
)

# each component of the real shift alone (``real-camera``, ...), for ablations of the sim-to-real gap
COMPONENTS = {
    "camera": ("agent_eye_offset", "agent_target_offset", "wrist_pitch_offset"),
    "colour": ("object_rgb_gain", "object_rgb_offset", "light_gain", "light_offset"),
    "noise": ("pixel_noise",),
    "gain": ("action_gain",),
    "latency": ("latency_steps",),
    "grasp": ("grasp_tolerance",),
}
DOMAINS = {"sim": SIM, "real": REAL}
for _c, _keys in COMPONENTS.items():
    DOMAINS[f"real-{_c}"] = DomainShift(name=f"real-{_c}", **{k: getattr(REAL, k) for k in _keys})


def get_domain(name: str) -> DomainShift:
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; the built-in world has {sorted(DOMAINS)}")
    return DOMAINS[name]
