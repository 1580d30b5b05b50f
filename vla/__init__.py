"""vla: vision-language-action policies, from Zarr demonstrations to a policy server."""

__version__ = "0.1.0"
