"""Optional image augmentation for training windows: random shift (pad + crop) and colour jitter.

One set of random parameters per camera per window, applied to every observation frame and the
future frame of that camera, so motion between frames is preserved. Random numbers come from
torch's generator, which DataLoader seeds per worker, so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class AugmentConfig:
    enabled: bool = False
    shift_pad: int = 4  # random shift of up to +-shift_pad pixels (DrQ-style pad + crop); 0 = off
    brightness: float = 0.0  # multiply by U(1-b, 1+b); 0 = off
    contrast: float = 0.0  # blend with the frame mean by U(1-c, 1+c); 0 = off


class ImageAugment:
    def __init__(self, config: AugmentConfig):
        self.config = config

    def _uniform(self, spread: float) -> float:
        return 1.0 + spread * (2.0 * torch.rand(()).item() - 1.0)

    def _apply(self, frames: np.ndarray, dy: int, dx: int, bright: float, contrast: float) -> np.ndarray:
        """frames: uint8 (..., H, W, 3)."""
        pad = self.config.shift_pad
        if pad:
            h, w = frames.shape[-3:-1]
            widths = [(0, 0)] * (frames.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)]
            padded = np.pad(frames, widths, mode="edge")
            frames = padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w, :]
        if bright != 1.0 or contrast != 1.0:
            x = frames.astype(np.float32) * bright
            mean = x.mean(axis=(-3, -2, -1), keepdims=True)
            x = (x - mean) * contrast + mean
            frames = np.clip(x, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(frames)

    def __call__(self, sample: dict[str, Any]) -> None:
        cfg = self.config
        for cam in sample["images"]:
            pad = cfg.shift_pad
            dy, dx = torch.randint(-pad, pad + 1, (2,)).tolist() if pad else (0, 0)
            bright = self._uniform(cfg.brightness) if cfg.brightness else 1.0
            contrast = self._uniform(cfg.contrast) if cfg.contrast else 1.0
            sample["images"][cam] = self._apply(sample["images"][cam], dy, dx, bright, contrast)
            if "future_images" in sample:
                sample["future_images"][cam] = self._apply(
                    sample["future_images"][cam], dy, dx, bright, contrast
                )
