"""The vla Zarr trajectory schema: array paths, dtypes and dataset metadata.

One dataset is one Zarr v3 group. Frames of all episodes are concatenated along
axis 0 and episodes are delimited by ``meta/episode_ends`` (exclusive end index
of each episode), the same idea as diffusion_policy's ReplayBuffer::

    <name>.zarr/
      attrs: format, version, fps, robot, env, cameras, image_size,
             action_space {dim, low, high, kind}, state_dim, created_with
      data/images/<camera>   uint8   (N, H, W, 3)
      data/state             float32 (N, D_state)
      data/action            float32 (N, D_action)
      data/targets           float32 (N, D_targets)  optional: privileged per-frame training targets
                                     (attrs.extra.targets names them), for auxiliary losses only
      meta/episode_ends      int64   (E,)   written last: the commit point
      meta/instruction       str     (E,)
      meta/task              str     (E,)
      meta/success           bool    (E,)
      meta/seed              int64   (E,)   env reset seed, -1 if unknown (optional)
      stats/<key>/{mean,std,min,max,q01,q99}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORMAT = "vla.trajectories"
VERSION = 1

IMAGES = "data/images"
STATE = "data/state"
ACTION = "data/action"
TARGETS = "data/targets"
EPISODE_ENDS = "meta/episode_ends"
INSTRUCTION = "meta/instruction"
TASK = "meta/task"
SUCCESS = "meta/success"
SEED = "meta/seed"
STATS = "stats"

# Per-episode arrays, all of length E. episode_ends is the commit point and is
# always written after the others.
EPISODE_ARRAYS = (INSTRUCTION, TASK, SUCCESS)
OPTIONAL_EPISODE_ARRAYS = (SEED,)  # absent in converted datasets
LOW_DIM_KEYS = ("state", "action")
STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")

# An episode_ends entry still holding the fill value was resized into existence
# but its value never written: the writer died between the two.
UNCOMMITTED = -1
# group attribute set by writers that store every chunk, fill-valued ones included (zarr skips those by
# default): in such a dataset a missing chunk file is always damage
ALL_CHUNKS_WRITTEN = "all_chunks_written"


class SchemaError(ValueError):
    """Data or metadata that does not match the vla trajectory schema."""


@dataclass
class ActionSpace:
    """Bounds and meaning of one action vector."""

    dim: int
    low: list[float]
    high: list[float]
    kind: str = "continuous"  # e.g. "delta_ee", "joint_pos", "continuous"

    def __post_init__(self) -> None:
        self.dim = int(self.dim)
        self.low = [float(x) for x in np.broadcast_to(np.asarray(self.low, dtype=np.float64), (self.dim,))]
        self.high = [float(x) for x in np.broadcast_to(np.asarray(self.high, dtype=np.float64), (self.dim,))]
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise SchemaError(
                f"action_space.low must be <= high per dimension, got low={self.low} high={self.high}"
            )


@dataclass
class DatasetMeta:
    """Metadata every dataset, env and checkpoint carries and checks against each other."""

    fps: float
    cameras: list[str]
    image_size: tuple[int, int]  # (H, W)
    state_dim: int
    action_space: ActionSpace
    robot: str = "unknown"
    env: str | None = None  # the env name that can replay/evaluate this data, if any
    created_with: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.action_space, dict):
            self.action_space = ActionSpace(**self.action_space)
        self.fps = float(self.fps)
        self.cameras = [str(c) for c in self.cameras]
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.state_dim = int(self.state_dim)
        if self.fps <= 0:
            raise SchemaError(f"fps must be > 0, got {self.fps}")
        if not self.cameras:
            raise SchemaError("at least one camera is required, got cameras=[]")
        if len(set(self.cameras)) != len(self.cameras):
            raise SchemaError(f"camera names must be unique, got {self.cameras}")
        for cam in self.cameras:
            if not cam or "/" in cam:
                raise SchemaError(f"camera name {cam!r} must be non-empty and contain no '/'")
        if min(self.image_size) <= 0:
            raise SchemaError(f"image_size must be positive (H, W), got {self.image_size}")
        if self.state_dim < 0:
            raise SchemaError(f"state_dim must be >= 0, got {self.state_dim}")

    @property
    def action_dim(self) -> int:
        return self.action_space.dim

    @property
    def target_names(self) -> list[str]:
        """Names of the optional privileged training targets (``data/targets``), e.g. ``block_x``; [] =
        none."""
        return [str(n) for n in self.extra.get("targets", [])]

    def to_attrs(self) -> dict[str, Any]:
        """JSON-typed attributes for the Zarr root group."""
        attrs = asdict(self)
        attrs["image_size"] = list(self.image_size)
        attrs["format"] = FORMAT
        attrs["version"] = VERSION
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> DatasetMeta:
        if attrs.get("format") != FORMAT:
            raise SchemaError(
                f"not a vla trajectory dataset: attrs.format is {attrs.get('format')!r}, expected {FORMAT!r}"
            )
        if int(attrs.get("version", -1)) > VERSION:
            raise SchemaError(
                f"dataset format version {attrs.get('version')} is newer than this vla reads ({VERSION}); "
                "upgrade vla"
            )
        names = {
            "fps",
            "cameras",
            "image_size",
            "state_dim",
            "action_space",
            "robot",
            "env",
            "created_with",
            "extra",
        }
        missing = {"fps", "cameras", "image_size", "state_dim", "action_space"} - set(attrs)
        if missing:
            raise SchemaError(f"dataset attrs are missing required keys {sorted(missing)}")
        return cls(**{k: v for k, v in attrs.items() if k in names})

    def check_compatible(
        self, other: DatasetMeta, what: str = "dataset", other_what: str = "expected"
    ) -> None:
        """Raise a SchemaError naming every field where two metadata disagree on shapes."""
        problems = []
        if self.cameras != other.cameras:
            problems.append(f"cameras {self.cameras} vs {other.cameras}")
        if tuple(self.image_size) != tuple(other.image_size):
            problems.append(f"image_size {list(self.image_size)} vs {list(other.image_size)}")
        if self.state_dim != other.state_dim:
            problems.append(f"state_dim {self.state_dim} vs {other.state_dim}")
        if self.action_dim != other.action_dim:
            problems.append(f"action dim {self.action_dim} vs {other.action_dim}")
        if problems:
            raise SchemaError(f"{what} does not match {other_what}: " + "; ".join(problems))
