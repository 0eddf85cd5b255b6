"""Writing episode videos (mp4 through imageio-ffmpeg when available, otherwise gif)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def frames_to_strip(images: np.ndarray, scale: int = 3) -> np.ndarray:
    """(V, 3, H, W) uint8 views -> one (H*scale, V*W*scale, 3) frame, views side by side."""
    strip = np.concatenate([v.transpose(1, 2, 0) for v in images], axis=1)
    return np.repeat(np.repeat(strip, scale, axis=0), scale, axis=1)


def write_video(frames: list[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write (H, W, 3) uint8 frames; ``path``'s suffix picks mp4 or gif (mp4 falls back to gif)."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        try:
            iio.imwrite(path, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
            return path
        except Exception as e:  # no ffmpeg backend: fall back to gif
            log.warning("mp4 writing failed (%s); writing a gif instead (pip install imageio-ffmpeg)", e)
            path = path.with_suffix(".gif")
    iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
    return path
