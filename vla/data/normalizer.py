"""Per-key affine normalization built from dataset stats; serializes to JSON for checkpoints.

Every mode is ``y = (x - center) / scale``:

- ``mean_std``: center = mean, scale = std
- ``min_max``:  maps [min, max] to [-1, 1]
- ``quantile``: maps [q01, q99] to [-1, 1] (robust to outliers; values beyond stay beyond)
- ``identity``: y = x

A dimension whose scale is ~0 (constant in the data) gets scale 1, so it maps to
``x - center`` (0 on the data) instead of dividing by ~0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("mean_std", "min_max", "quantile", "identity")


@dataclass
class KeyNorm:
    mode: str
    center: np.ndarray
    scale: np.ndarray


def _affine(mode: str, stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if mode == "mean_std":
        center, scale = stats["mean"], stats["std"]
    elif mode == "min_max":
        center, scale = (stats["max"] + stats["min"]) / 2, (stats["max"] - stats["min"]) / 2
    elif mode == "quantile":
        center, scale = (stats["q99"] + stats["q01"]) / 2, (stats["q99"] - stats["q01"]) / 2
    elif mode == "identity":
        dim = len(next(iter(stats.values())))
        center, scale = np.zeros(dim), np.ones(dim)
    else:
        raise ValueError(f"unknown normalization mode {mode!r}; expected one of {MODES}")
    center = np.asarray(center, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    degenerate = ~(scale > 1e-6 * np.maximum(1.0, np.abs(center)))
    scale = np.where(degenerate, 1.0, scale)
    return center.astype(np.float32), scale.astype(np.float32)


class Normalizer:
    """``normalize(key, x)`` / ``unnormalize(key, y)`` on numpy arrays or torch tensors (last axis = dims)."""

    def __init__(self, keys: dict[str, KeyNorm]):
        self.keys = dict(keys)

    @classmethod
    def from_stats(cls, stats: dict[str, dict[str, np.ndarray]], modes: dict[str, str]) -> Normalizer:
        missing = set(modes) - set(stats)
        if missing:
            raise KeyError(f"no stats for keys {sorted(missing)}; stats have {sorted(stats)}")
        return cls({key: KeyNorm(mode, *_affine(mode, stats[key])) for key, mode in modes.items()})

    @classmethod
    def identity(cls, dims: dict[str, int]) -> Normalizer:
        """A normalizer that changes nothing, e.g. ``{"state": 4, "action": 2}`` (untrained policies)."""
        return cls(
            {
                key: KeyNorm("identity", np.zeros(d, np.float32), np.ones(d, np.float32))
                for key, d in dims.items()
            }
        )

    def _params(self, key: str, x: Any) -> tuple[Any, Any]:
        if key not in self.keys:
            raise KeyError(f"normalizer has no key {key!r}; it has {sorted(self.keys)}")
        p = self.keys[key]
        if x.shape[-1] != len(p.center):
            raise ValueError(f"{key} has last dim {x.shape[-1]}, normalizer expects {len(p.center)}")
        if isinstance(x, np.ndarray):
            return p.center, p.scale
        import torch  # tensors: keep device and dtype

        return (
            torch.as_tensor(p.center, device=x.device, dtype=x.dtype),
            torch.as_tensor(p.scale, device=x.device, dtype=x.dtype),
        )

    def normalize(self, key: str, x: Any) -> Any:
        center, scale = self._params(key, x)
        return (x - center) / scale

    def unnormalize(self, key: str, y: Any) -> Any:
        center, scale = self._params(key, y)
        return y * scale + center

    # -- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "keys": {
                k: {"mode": p.mode, "center": p.center.tolist(), "scale": p.scale.tolist()}
                for k, p in self.keys.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        try:
            return cls(
                {
                    k: KeyNorm(
                        v["mode"],
                        np.asarray(v["center"], dtype=np.float32),
                        np.asarray(v["scale"], dtype=np.float32),
                    )
                    for k, v in d["keys"].items()
                }
            )
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"malformed normalizer dict (expected {{'keys': {{name: {{mode, center, scale}}}}}}): {e}"
            ) from e

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Normalizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
