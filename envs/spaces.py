"""The gymnasium observation space of the observation contract, shared by every suite."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from vla.data.schema import image_sizes_per_camera


def observation_space(cameras: list[str], image_size: Any, state_dim: int) -> spaces.Dict:
    """``{"images": {cam: uint8 (H, W, 3)}, "state": float32 (state_dim,), "instruction": str}``;
    ``image_size`` is one (H, W) or {camera: (H, W)}."""
    sizes = image_sizes_per_camera(image_size, cameras)
    return spaces.Dict(
        {
            "images": spaces.Dict({c: spaces.Box(0, 255, (*sizes[c], 3), np.uint8) for c in cameras}),
            "state": spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
            "instruction": spaces.Text(max_length=256),
        }
    )
