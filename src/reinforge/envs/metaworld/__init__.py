"""The MetaWorld adapter (``pip install 'reinforge[metaworld]'``): ``env.py`` is imported on first use.

MuJoCo picks its OpenGL platform when it is first imported; headless Linux needs EGL, so ``MUJOCO_GL`` defaults
to ``egl`` here (set it yourself to choose another, before MuJoCo or MetaWorld is imported).
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")
