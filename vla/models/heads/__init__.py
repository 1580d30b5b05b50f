"""Action heads, one interface: ``loss(prefix, batch) -> dict`` and ``sample(prefix, state, ...) -> chunk``,
and the capabilities each declares (``needs_future_frames``, ``supports_guidance``)."""

from __future__ import annotations

from torch import nn

from ..config import HeadConfig
from .diffusion import DiffusionHead
from .flow import DualStreamHead, FlowHead

HEADS: dict[str, type[nn.Module]] = {
    "dual_stream": DualStreamHead,
    "flow": FlowHead,
    "diffusion": DiffusionHead,
}


def head_class(kind: str) -> type[nn.Module]:
    """The head class for ``policy.head.kind`` (its capabilities are class attributes)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; available: {', '.join(HEADS)}")
    return HEADS[kind]


def build_head(
    config: HeadConfig, state_dim: int, action_dim: int, horizon: int, feature_dim: int
) -> nn.Module:
    return head_class(config.kind)(config, state_dim, action_dim, horizon, feature_dim)


__all__ = ["HEADS", "DiffusionHead", "DualStreamHead", "FlowHead", "build_head", "head_class"]
