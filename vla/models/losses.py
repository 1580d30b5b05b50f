"""Losses shared by the heads and the grounding module."""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over samples of each sample's MSE over its valid (unpadded) chunk steps. Normalizing per
    sample makes the mean over a data-parallel split equal the mean over the whole batch."""
    m = mask.float()[..., None]
    per_sample = ((pred - target) ** 2 * m).sum(dim=(1, 2)) / (m.sum(dim=(1, 2)) * pred.shape[-1]).clamp(
        min=1
    )
    return per_sample.mean()
