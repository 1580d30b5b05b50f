"""The vla Zarr trajectory schema: array paths, dtypes and dataset metadata.

One dataset is one Zarr v3 group. Frames of all episodes are concatenated along
axis 0 and episodes are delimited by ``meta/episode_ends`` (exclusive end index
of each episode), the same idea as diffusion_policy's ReplayBuffer::

    <name>.zarr/
      attrs: format, version, fps, robot, env, cameras,
             image_size [H, W] (every camera) or {camera: [H, W]} (mixed rigs; version 2),
             action_space {dim, low, high, kind, names}, state_dim, state_names, created_with
             (image_size, state_dim, action_space.dim and cameras may be left out: `meta_from_group`
             derives them from the arrays, and refuses attrs that contradict the arrays)
      data/images/<camera>   uint8   (N, H, W, 3)
      data/state             float32 (N, D_state)
      data/action            float32 (N, D_action)
      data/targets           float32 (N, D_targets)  optional: privileged per-frame training targets
                                     (attrs.extra.targets names them), for auxiliary losses only
      data/source            uint8   (N,)   optional: recorded deployments (`vla robot record=`): who chose
                                     each executed action, an index into attrs.extra.sources
                                     (policy, hold, operator)
      data/timestamp         float64 (N,)   optional, with data/source: seconds since the episode began
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
# 2: per-camera image sizes, lossy image codecs (vla.data.codecs); a dataset using neither is still written
# as 1
VERSION = 2

IMAGES = "data/images"
STATE = "data/state"
ACTION = "data/action"
TARGETS = "data/targets"
SOURCE = "data/source"
TIMESTAMP = "data/timestamp"
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


def normalize_image_size(image_size: Any, cameras: list[str]) -> tuple[int, int] | dict[str, tuple[int, int]]:
    """``64``, ``(H, W)`` or ``{camera: H | (H, W)}`` -> ``(H, W)`` when every camera shares one size, else a
    dict with one (H, W) per camera."""

    def hw(value: Any, what: str) -> tuple[int, int]:
        if isinstance(value, (int, np.integer)):
            value = (value, value)
        try:
            h, w = (int(v) for v in value)
        except (TypeError, ValueError):
            raise SchemaError(f"{what} must be an int or (H, W), got {value!r}") from None
        if h <= 0 or w <= 0:
            raise SchemaError(f"{what} must be positive (H, W), got {[h, w]}")
        return h, w

    if not isinstance(image_size, dict):
        return hw(image_size, "image_size")
    if set(image_size) != set(cameras):
        raise SchemaError(
            f"image_size names cameras {sorted(image_size)}, expected one (H, W) for each of {cameras}"
        )
    sizes = {cam: hw(image_size[cam], f"image_size[{cam!r}]") for cam in cameras}
    if len(set(sizes.values())) == 1:
        return sizes[cameras[0]]
    return sizes


def image_sizes_per_camera(image_size: Any, cameras: list[str]) -> dict[str, tuple[int, int]]:
    """{camera: (H, W)} from any form `normalize_image_size` takes."""
    size = normalize_image_size(image_size, cameras)
    return dict(size) if isinstance(size, dict) else {cam: size for cam in cameras}


@dataclass
class ActionSpace:
    """Bounds and meaning of one action vector."""

    dim: int
    low: list[float]
    high: list[float]
    kind: str = "continuous"  # e.g. "delta_ee", "joint_pos", "continuous"
    names: list[str] | None = None  # one per dimension (e.g. LeRobot's motor names), if known

    def __post_init__(self) -> None:
        self.dim = int(self.dim)
        if self.names is not None:
            self.names = [str(n) for n in self.names]
            if len(self.names) != self.dim:
                raise SchemaError(
                    f"action_space.names has {len(self.names)} entries, expected dim={self.dim}"
                )
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
    # (H, W) of every camera, or {camera: (H, W)} when a rig mixes sizes; read `image_sizes` / `image_shape`
    image_size: tuple[int, int] | dict[str, tuple[int, int]]
    state_dim: int
    action_space: ActionSpace
    robot: str = "unknown"
    env: str | None = None  # the env name that can replay/evaluate this data, if any
    created_with: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    state_names: list[str] | None = None  # one per state dimension (e.g. LeRobot's `<motor>.pos`), if known

    def __post_init__(self) -> None:
        if isinstance(self.action_space, dict):
            self.action_space = ActionSpace(**self.action_space)
        self.fps = float(self.fps)
        self.cameras = [str(c) for c in self.cameras]
        self.image_size = normalize_image_size(self.image_size, self.cameras)
        self.state_dim = int(self.state_dim)
        if self.state_names is not None:
            self.state_names = [str(n) for n in self.state_names]
            if len(self.state_names) != self.state_dim:
                raise SchemaError(
                    f"state_names has {len(self.state_names)} entries, expected state_dim={self.state_dim}"
                )
        if self.fps <= 0:
            raise SchemaError(f"fps must be > 0, got {self.fps}")
        if not self.cameras:
            raise SchemaError("at least one camera is required, got cameras=[]")
        if len(set(self.cameras)) != len(self.cameras):
            raise SchemaError(f"camera names must be unique, got {self.cameras}")
        for cam in self.cameras:
            if not cam or "/" in cam:
                raise SchemaError(f"camera name {cam!r} must be non-empty and contain no '/'")
        if self.state_dim < 0:
            raise SchemaError(f"state_dim must be >= 0, got {self.state_dim}")

    @property
    def action_dim(self) -> int:
        return self.action_space.dim

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """(H, W) of each camera."""
        return image_sizes_per_camera(self.image_size, self.cameras)

    def image_shape(self, camera: str) -> tuple[int, int, int]:
        """(H, W, 3) of one camera's frames."""
        return (*self.image_sizes[camera], 3)

    @property
    def target_names(self) -> list[str]:
        """Names of the optional privileged training targets (``data/targets``), e.g. ``block_x``; [] =
        none."""
        return [str(n) for n in self.extra.get("targets", [])]

    @property
    def source_names(self) -> list[str]:
        """What each ``data/source`` code means (recorded deployments), e.g. ``[policy, hold, operator]``;
        [] = the dataset records no sources."""
        return [str(n) for n in self.extra.get("sources", [])]

    def to_attrs(self) -> dict[str, Any]:
        """JSON-typed attributes for the Zarr root group."""
        attrs = asdict(self)
        attrs["image_size"] = self.json_image_size()
        attrs["format"] = FORMAT
        # readers from before per-camera sizes still read datasets whose cameras share one size
        attrs["version"] = VERSION if isinstance(self.image_size, dict) else 1
        return attrs

    def json_image_size(self) -> list[int] | dict[str, list[int]]:
        """[H, W] when every camera shares it, else {camera: [H, W]}."""
        if isinstance(self.image_size, dict):
            return {cam: list(hw) for cam, hw in self.image_size.items()}
        return list(self.image_size)

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
            "state_names",
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
        elif self.image_sizes != other.image_sizes:
            mine, theirs = self.image_sizes, other.image_sizes
            problems += [
                f"images[{cam!r}] {list(mine[cam])} (H, W) vs {list(theirs[cam])}"
                for cam in self.cameras
                if mine[cam] != theirs[cam]
            ]
        if self.state_dim != other.state_dim:
            problems.append(f"state_dim {self.state_dim} vs {other.state_dim}")
        if self.action_dim != other.action_dim:
            problems.append(f"action dim {self.action_dim} vs {other.action_dim}")
        if problems:
            raise SchemaError(f"{what} does not match {other_what}: " + "; ".join(problems))
