"""Policies: a VLM backbone feeding an action head. Knows nothing of Zarr, hydra or sockets."""

from .checkpoint import load_policy, save_policy
from .config import BackboneConfig, GroundingConfig, HeadConfig, PolicyConfig
from .policy import Policy

__all__ = [
    "BackboneConfig",
    "GroundingConfig",
    "HeadConfig",
    "Policy",
    "PolicyConfig",
    "load_policy",
    "save_policy",
]
