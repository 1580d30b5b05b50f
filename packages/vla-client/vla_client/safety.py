"""The safety layer between a policy's actions and the robot: every command passes through it.

What an action means decides what is safe, so it starts from the action kind (`ActionKind`):

- **hold** (no chunk covers the step, a chunk was refused, the observation is stale, the loop stops): an
  ``absolute`` position target holds the *measured* position (``state_to_action`` says which state entry
  measures each action dimension); ``delta`` and ``velocity`` commands hold at zero; a ``+gripper`` action
  keeps its last gripper command (a held object is not dropped);
- **step limit** (LeRobot's ``max_relative_target``): an absolute target moves at most ``max_step`` from the
  measured position per tick; a delta or velocity command is at most ``max_step`` in size;
- **limits**: the action bounds, and optional ``position_low`` / ``position_high`` (joint or workspace limits
  of absolute targets);
- **refusal**: an action that is not a finite vector of the robot's dimension is never sent; the robot holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("vla_client.safety")

MODES = ("absolute", "delta", "velocity")


@dataclass(frozen=True)
class ActionKind:
    """``mode`` (absolute | delta | velocity | unknown) and whether the last dimension is a gripper command
    (``+gripper``), parsed from a kind string such as ``absolute_joint_pos``, ``osc_pose_delta+gripper``,
    ``delta_xyz+gripper`` or ``planar_velocity``."""

    mode: str
    gripper: bool

    @classmethod
    def parse(cls, kind: str) -> ActionKind:
        text = str(kind).lower()
        base, _, rest = text.partition("+")
        gripper = "gripper" in rest
        if "vel" in base:
            mode = "velocity"
        elif "delta" in base or "relative" in base:
            mode = "delta"
        elif "abs" in base or base.endswith("pos") or "position" in base:
            mode = "absolute"
        else:
            mode = "unknown"
        return cls(mode, gripper)

    def __str__(self) -> str:
        return self.mode + ("+gripper" if self.gripper else "")


@dataclass
class SafetyConfig:
    """Mirrors ``safety:`` in ``configs/robot.yaml``. On by default."""

    enabled: bool = True
    action_kind: str | None = None  # overrides the robot's declared kind (absolute|delta|velocity[+gripper])
    hold: str = "auto"  # auto (follows the kind) | measured | zero | last
    # absolute kinds: state index measuring each action dimension (-1: none); null = matched by name, else the
    # identity when state and action have one dimension each
    state_to_action: list[int] | None = None
    # per-tick limit: absolute -> |a - measured| <= max_step; delta/velocity -> |a| <= max_step (a number, or
    # one per dimension; the +gripper dimension is exempt). null = max_step_fraction of the action range
    max_step: Any = None
    max_step_fraction: float | None = 0.1  # for absolute kinds only; null = no step limit
    position_low: list[float] | None = None  # joint / workspace limits of absolute targets
    position_high: list[float] | None = None

    def __post_init__(self) -> None:
        if self.hold not in ("auto", "measured", "zero", "last"):
            raise ValueError(f"safety.hold must be auto, measured, zero or last, got {self.hold!r}")
        if self.max_step_fraction is not None and not 0 < self.max_step_fraction <= 1:
            raise ValueError(f"safety.max_step_fraction must be in (0, 1], got {self.max_step_fraction}")


@dataclass
class SafetyCounts:
    refused: int = 0  # actions that were not a finite vector of the right size
    limited: int = 0  # actions the step or position limits changed
    holds: dict[str, int] = field(default_factory=dict)  # by reason


class SafetyLayer:
    """Turns a proposed action (or none) into the command sent to the robot, given the measured state."""

    def __init__(self, meta: Any, config: SafetyConfig | None = None):
        self.config = config = config or SafetyConfig()
        space = meta.action_space
        self.dim = int(space.dim)
        self.low = np.asarray(space.low, np.float64)
        self.high = np.asarray(space.high, np.float64)
        self.kind = ActionKind.parse(config.action_kind or space.kind)
        self.counts = SafetyCounts()
        self.hold_mode = self._hold_mode(config.hold)
        needs_measured = self.hold_mode == "measured" or (config.enabled and self.kind.mode == "absolute")
        self.index = self._state_index(meta, config) if needs_measured else None
        self.max_step = self._max_step(config) if config.enabled else None
        self.position_low = self._vector(config.position_low, "position_low")
        self.position_high = self._vector(config.position_high, "position_high")

    # -- construction ----------------------------------------------------------------------------------
    def _hold_mode(self, hold: str) -> str:
        if hold != "auto":
            return hold
        if self.kind.mode == "absolute":
            return "measured"
        if self.kind.mode in ("delta", "velocity"):
            return "zero"
        raise ValueError(
            f"the action kind {str(self.config.action_kind or '')!r} does not say what an action means, so "
            "no hold is safe by default: set safety.action_kind to absolute, delta or velocity (optionally "
            "+gripper), or safety.hold to measured, zero or last"
            if self.config.action_kind
            else "this robot's action kind does not say what an action means (absolute, delta or velocity), "
            "so no hold is safe by default: set safety.action_kind (e.g. absolute_joint_pos, "
            "delta_ee+gripper, joint_velocity) or safety.hold (measured | zero | last)"
        )

    def _state_index(self, meta: Any, config: SafetyConfig) -> np.ndarray:
        state_dim = int(meta.state_dim)
        if config.state_to_action is not None:
            index = np.asarray(config.state_to_action, dtype=np.int64)
            if index.shape != (self.dim,) or (index >= state_dim).any() or (index < -1).any():
                raise ValueError(
                    f"safety.state_to_action must give one state index in [-1, {state_dim}) per action "
                    f"dimension ({self.dim}), got {config.state_to_action}"
                )
            return index
        state_names, action_names = (
            getattr(meta, "state_names", None),
            getattr(meta.action_space, "names", None),
        )
        if state_names and action_names:
            return np.asarray([state_names.index(n) if n in state_names else -1 for n in action_names])
        if state_dim == self.dim:
            return np.arange(self.dim)
        raise ValueError(
            f"an {self.kind} action holds the measured position, but which of the {state_dim} state entries "
            f"measures each of the {self.dim} action dimensions is unknown: set safety.state_to_action"
        )

    def _vector(self, value: Any, name: str) -> np.ndarray | None:
        if value is None:
            return None
        try:
            return np.broadcast_to(np.asarray(value, np.float64), (self.dim,)).copy()
        except ValueError:
            raise ValueError(f"safety.{name} must be a number or {self.dim} numbers, got {value}") from None

    def _max_step(self, config: SafetyConfig) -> np.ndarray | None:
        step = self._vector(config.max_step, "max_step")
        if step is None and self.kind.mode == "absolute" and config.max_step_fraction is not None:
            span = self.high - self.low
            if np.isfinite(span).all():
                step = config.max_step_fraction * span
        if step is not None and self.kind.gripper:
            step[-1] = np.inf
        if step is not None and (step <= 0).any():
            raise ValueError(f"safety.max_step must be > 0, got {step.tolist()}")
        return step

    # -- per tick --------------------------------------------------------------------------------------
    def measured(self, state: np.ndarray | None) -> np.ndarray | None:
        """The measured position in action coordinates (NaN where a dimension is not measured)."""
        if self.index is None or state is None:
            return None
        state = np.asarray(state, np.float64)
        out = np.full(self.dim, np.nan)
        known = self.index >= 0
        out[known] = state[self.index[known]]
        return out

    def hold(self, state: np.ndarray | None, last: np.ndarray | None, reason: str) -> np.ndarray | None:
        """The hold command (see the module docstring); counted under ``reason``. None when no command is
        safe: an absolute target with nothing measured yet (zero would be a jump), so nothing is sent."""
        self.counts.holds[reason] = self.counts.holds.get(reason, 0) + 1
        zero = np.clip(np.zeros(self.dim), self.low, self.high)
        if self.hold_mode == "last":
            action = last.copy() if last is not None else zero
        elif self.hold_mode == "measured":
            measured = self.measured(state)
            if measured is None:
                return last.copy() if last is not None else None
            action = measured
            # a dimension nobody measures keeps its last command (a dropped gripper is worse than a still one)
            action = np.where(np.isfinite(action), action, last if last is not None else zero)
        else:
            action = zero
        if self.kind.gripper and last is not None:
            action[-1] = last[-1]
        if self.hold_mode == "measured":
            # not clipped to the action bounds: they are often the demos' range, and staying where the robot
            # is never jumps; clipping a position outside them would
            return action.astype(np.float32)
        return np.clip(action, self.low, self.high).astype(np.float32)

    def filter(
        self, action: Any, state: np.ndarray | None, last: np.ndarray | None
    ) -> tuple[np.ndarray, bool]:
        """(command, accepted): the action within bounds and limits, or a hold when it is not a finite vector
        of the robot's dimension."""
        try:
            proposed = np.asarray(action, np.float64)
        except (TypeError, ValueError):
            proposed = None
        if proposed is None or proposed.shape != (self.dim,) or not np.isfinite(proposed).all():
            self.counts.refused += 1
            if self.counts.refused == 1:
                log.warning("refused an action that is not %d finite numbers: %r", self.dim, action)
            return self.hold(state, last, "refused"), False
        command = np.clip(proposed, self.low, self.high)
        if self.config.enabled:
            if self.position_low is not None:
                command = np.maximum(command, self.position_low)
            if self.position_high is not None:
                command = np.minimum(command, self.position_high)
            if self.max_step is not None:
                if self.kind.mode == "absolute":
                    measured = self.measured(state)
                    if measured is not None:
                        ok = np.isfinite(measured)
                        lo, hi = measured - self.max_step, measured + self.max_step
                        command = np.where(ok, np.clip(command, lo, hi), command)
                else:
                    command = np.clip(command, -self.max_step, self.max_step)
            if not np.array_equal(command, np.clip(proposed, self.low, self.high)):
                self.counts.limited += 1
        return command.astype(np.float32), True
