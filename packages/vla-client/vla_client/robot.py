"""The `Robot` interface the control loop drives, and `RobotSpec`: what a robot declares about itself.

A robot's ``meta`` needs the fields below; `vla`'s ``DatasetMeta`` has them too, so a simulated robot passes
its env's metadata and a hardware adapter builds a `RobotSpec` (often from the server's metadata: the
checkpoint says which cameras, sizes and joint order it was trained on).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ActionSpec:
    """Bounds and meaning of one action vector. ``kind`` says what it commands (`safety.ActionKind`):
    ``absolute_joint_pos``, ``delta_xyz+gripper``, ``joint_velocity``, ..."""

    dim: int
    low: list[float]
    high: list[float]
    kind: str = "continuous"
    names: list[str] | None = None

    def __post_init__(self) -> None:
        self.dim = int(self.dim)
        self.low = [float(v) for v in np.broadcast_to(np.asarray(self.low, np.float64), (self.dim,))]
        self.high = [float(v) for v in np.broadcast_to(np.asarray(self.high, np.float64), (self.dim,))]
        if self.names is not None and len(self.names) != self.dim:
            raise ValueError(f"action names has {len(self.names)} entries, expected dim={self.dim}")


@dataclass
class RobotSpec:
    """Cameras (each frame RGB uint8 (H, W, 3)), state and action layout, and the control rate."""

    fps: float
    cameras: list[str]
    image_size: Any  # (H, W) of every camera, or {camera: (H, W)}
    state_dim: int
    action_space: ActionSpec
    robot: str = "robot"
    state_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.action_space, dict):
            self.action_space = ActionSpec(**self.action_space)
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.state_names is not None and len(self.state_names) != self.state_dim:
            raise ValueError(f"state_names has {len(self.state_names)} entries, expected {self.state_dim}")

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        size = self.image_size
        if isinstance(size, dict):
            return {cam: _hw(size[cam]) for cam in self.cameras}
        return {cam: _hw(size) for cam in self.cameras}

    def image_shape(self, camera: str) -> tuple[int, int, int]:
        return (*self.image_sizes[camera], 3)

    def json_image_size(self) -> list[int] | dict[str, list[int]]:
        sizes = self.image_sizes
        if len(set(sizes.values())) == 1:
            return list(next(iter(sizes.values())))
        return {cam: list(hw) for cam, hw in sizes.items()}

    @classmethod
    def from_server(cls, metadata: dict[str, Any], fps: float | None = None) -> RobotSpec:
        """The layout a served policy expects (its handshake metadata), for a robot built to match it."""
        missing = [k for k in ("cameras", "image_size", "state_dim", "action_dim") if k not in metadata]
        if missing:
            raise ValueError(
                f"the server's metadata lacks {missing}: declare the robot's layout (RobotSpec) yourself"
            )
        dim = int(metadata["action_dim"])
        return cls(
            fps=float(fps or metadata.get("fps") or 10.0),
            cameras=list(metadata["cameras"]),
            image_size=metadata["image_size"],
            state_dim=int(metadata["state_dim"]),
            action_space=ActionSpec(
                dim,
                metadata.get("action_low", [-np.inf] * dim),
                metadata.get("action_high", [np.inf] * dim),
                str(metadata.get("action_kind", "continuous")),
                metadata.get("action_names"),
            ),
            robot=str(metadata.get("robot") or "robot"),
            state_names=metadata.get("state_names"),
        )


def _hw(value: Any) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    h, w = (int(v) for v in value)
    return h, w


class Robot(ABC):
    """Read an observation, send an action. A hardware adapter implements ``reset``, ``observe`` and ``act``,
    sets ``meta``, and usually ``stop`` (torque off / e-stop) and ``close``."""

    meta: Any  # RobotSpec, or anything with its fields (vla's DatasetMeta)

    @abstractmethod
    def reset(self, seed: int | None = None) -> None: ...

    @abstractmethod
    def observe(self) -> dict:
        """The latest observation: ``{"images": {cam: uint8 (H, W, 3)}, "state": float32 (D,),
        "instruction": str}``, optionally ``"timestamp"`` (``time.monotonic()`` of the oldest sensor reading
        in it), which the loop checks against ``max_obs_age_s``."""

    @abstractmethod
    def act(self, action: np.ndarray) -> None:
        """Send one action (already through the safety layer)."""

    def stop(self) -> None:  # noqa: B027 - optional: a robot without brakes or torque control has nothing to do
        """Called after the last command of an episode that ended abnormally (Ctrl-C, SIGTERM, an exception):
        engage brakes, torque off, or an e-stop. The last command sent before it is a hold."""

    def close(self) -> None:  # noqa: B027 - optional: most robots have nothing to release
        """Release the robot's resources (optional)."""

    @property
    def done(self) -> bool:
        """True when the episode is over (a real robot: an operator or a safety stop says so)."""
        return False

    @property
    def success(self) -> bool | None:
        return None
