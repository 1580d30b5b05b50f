"""The built-in light suite: a numpy-rendered 2-D tabletop, no simulator dependency."""

from .tabletop import COLORS, TabletopEnv, TabletopTask

__all__ = ["COLORS", "TabletopEnv", "TabletopTask"]
