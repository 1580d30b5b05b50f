"""Policies: a VLM backbone feeding an action head. Knows nothing of Zarr, hydra or sockets."""

from .config import BackboneConfig, HeadConfig, PolicyConfig
from .policy import Policy, load_policy

__all__ = ["BackboneConfig", "HeadConfig", "Policy", "PolicyConfig", "load_policy"]
