"""vla: vision-language-action policies, from Zarr demonstrations to a policy server."""

__version__ = "0.1.0"


def load_policy(path, expect=None, device="cpu"):
    """Rebuild a policy from a checkpoint directory (see `vla.models.load_policy`)."""
    from vla.models import load_policy as _load

    return _load(path, expect=expect, device=device)
