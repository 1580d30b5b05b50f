"""mp4 writing for demos and evaluation videos (imageio + its bundled ffmpeg)."""

from __future__ import annotations

import os

import numpy as np


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """uint8 (T, H, W, 3) -> H.264 mp4; frames are edge-padded to multiples of 16, as H.264 wants."""
    import imageio

    frames = np.asarray(frames, dtype=np.uint8)
    h, w = frames.shape[1:3]
    pad = ((0, 0), (0, (-h) % 16), (0, (-w) % 16), (0, 0))
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=8) as writer:
        for frame in np.pad(frames, pad, mode="edge"):
            writer.append_data(frame)
