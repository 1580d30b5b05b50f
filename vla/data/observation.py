"""The observation contract (DESIGN.md): ``{"images": {camera: uint8 (H, W, 3)}, "state": float32 (S,),
"instruction": str}`` for one observation, the same with a leading batch axis and a list of instructions for a
batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def is_single(obs: dict) -> bool:
    return isinstance(obs["instruction"], str)


def stack_observations(observations: Sequence[dict], cameras: Sequence[str] | None = None) -> dict:
    """Single observations -> one batch (``cameras``: which to keep, default all of the first's)."""
    cameras = list(cameras if cameras is not None else observations[0]["images"])
    return {
        "images": {c: np.stack([np.asarray(o["images"][c]) for o in observations]) for c in cameras},
        "state": np.stack([np.asarray(o["state"]) for o in observations]),
        "instruction": [o["instruction"] for o in observations],
    }


def as_batch(obs: dict) -> dict:
    """A single observation as a batch of one; a batch as it is."""
    return stack_observations([obs]) if is_single(obs) else obs
