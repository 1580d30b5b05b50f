"""Action heads, one interface: ``loss(prefix, batch) -> dict`` and ``sample(prefix, state, ...) -> chunk``."""

from __future__ import annotations

from torch import nn

from ..config import HeadConfig
from .diffusion import DiffusionHead
from .flow import FlowHead


def build_head(config: HeadConfig, state_dim: int, action_dim: int, horizon: int, feature_dim: int) -> nn.Module:
    if config.kind == "dual_stream":
        return FlowHead(config, state_dim, action_dim, horizon, feature_dim, vision=True)
    if config.kind == "flow":
        return FlowHead(config, state_dim, action_dim, horizon, feature_dim, vision=False)
    if config.kind == "diffusion":
        return DiffusionHead(config, state_dim, action_dim, horizon, feature_dim)
    raise ValueError(f"unknown head {config.kind!r}; available: dual_stream, flow, diffusion")


__all__ = ["DiffusionHead", "FlowHead", "build_head"]
