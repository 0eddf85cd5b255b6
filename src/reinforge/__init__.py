"""reinforge: reinforcement-learning fine-tuning of Vision-Language-Action robot policies.

SFT -> online RL -> evaluation, running end-to-end on a laptop CPU with the built-in batched tabletop
simulator and scaling to GPUs, real simulators and clusters behind the same interfaces.
"""

from __future__ import annotations

__version__ = "0.1.0"
