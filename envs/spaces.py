"""The gymnasium observation space of the observation contract, shared by every suite."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces


def observation_space(cameras: list[str], image_size: tuple[int, int], state_dim: int) -> spaces.Dict:
    """``{"images": {cam: uint8 (H, W, 3)}, "state": float32 (state_dim,), "instruction": str}``."""
    h, w = image_size
    return spaces.Dict(
        {
            "images": spaces.Dict({c: spaces.Box(0, 255, (h, w, 3), np.uint8) for c in cameras}),
            "state": spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
            "instruction": spaces.Text(max_length=256),
        }
    )
