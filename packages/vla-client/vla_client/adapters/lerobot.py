"""LeRobot robots (SO-100/SO-101 follower, Koch, and any other LeRobot ``Robot``) behind vla's `Robot`
interface, and ``vla-lerobot``: the control loop on such a robot against a policy server.

The mapping, both ways:

- observation: ``<motor>.pos`` values become the state vector in the order the served policy declares
  (``state_names`` in its metadata; else LeRobot's own motor order), camera frames become RGB uint8 at the
  policy's size under the policy's camera names (``camera_map``: policy camera -> LeRobot camera);
- action: the action vector becomes LeRobot's ``{<motor>.pos: value}`` dict (``action_names``, else the
  motor order), sent with ``send_action``.

LeRobot needs Python >= 3.12 and numpy 2: install ``vla-client[lerobot]`` in LeRobot's environment. Nothing
here is imported by ``import vla_client``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..robot import Robot, RobotSpec

log = logging.getLogger("vla_client.lerobot")


def resize_rgb(frame: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A camera frame as RGB uint8 of ``shape`` (H, W, 3): area-averaged down, bilinear up (OpenCV, which
    LeRobot's cameras already need)."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.shape == tuple(shape):
        return frame
    import cv2

    h, w = shape[:2]
    shrink = h <= frame.shape[0] and w <= frame.shape[1]
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class LeRobotRobot(Robot):
    """A connected LeRobot robot, seen as vla's `Robot` with the layout ``spec`` (usually the served policy's,
    `RobotSpec.from_server`)."""

    def __init__(
        self,
        robot: Any,
        spec: RobotSpec,
        instruction: str = "",
        camera_map: dict[str, str] | None = None,
        torque_off_on_stop: bool = False,
    ):
        self.robot, self.meta, self.instruction = robot, spec, instruction
        self.torque_off_on_stop = torque_off_on_stop
        motors = [k for k, v in robot.action_features.items() if k.endswith(".pos") and v is float]
        observed = set(robot.observation_features)
        self.state_keys = list(spec.state_names or motors)
        self.action_keys = list(spec.action_space.names or motors)
        self.camera_map = {cam: (camera_map or {}).get(cam, cam) for cam in spec.cameras}
        problems = []
        if len(self.state_keys) != spec.state_dim:
            problems.append(f"the policy's state has {spec.state_dim} entries, the robot's motors {motors}")
        if len(self.action_keys) != spec.action_space.dim:
            problems.append(
                f"the policy's action has {spec.action_space.dim} entries, the robot's motors {motors}"
            )
        missing = [k for k in self.state_keys if k not in observed]
        if missing:
            problems.append(f"the robot observes no {missing} (it has {sorted(observed)})")
        missing = [k for k in self.action_keys if k not in robot.action_features]
        if missing:
            problems.append(f"the robot takes no action {missing} (it takes {list(robot.action_features)})")
        cams = [f"{ours} <- {theirs}" for ours, theirs in self.camera_map.items() if theirs not in observed]
        if cams:
            problems.append(f"no LeRobot camera for {cams}: set camera_map (policy camera: LeRobot camera)")
        if problems:
            raise ValueError(f"{type(robot).__name__} does not fit the policy: " + "; ".join(problems))

    @classmethod
    def from_config(cls, config: Any, spec: RobotSpec, calibrate: bool = True, **options) -> LeRobotRobot:
        """Build the robot from its LeRobot config (e.g. ``SO101FollowerConfig``) and connect it as LeRobot
        does (calibrating first if the motors and the calibration file disagree)."""
        from lerobot.robots.utils import make_robot_from_config

        robot = make_robot_from_config(config)
        robot.connect(calibrate=calibrate)
        return cls(robot, spec, **options)

    def reset(self, seed: int | None = None) -> None:
        """A real scene is reset by its operator: nothing to do."""

    def observe(self) -> dict:
        stamp = time.monotonic()
        raw = self.robot.get_observation()
        state = np.asarray([raw[k] for k in self.state_keys], dtype=np.float32)
        images = {
            ours: resize_rgb(raw[theirs], self.meta.image_shape(ours))
            for ours, theirs in self.camera_map.items()
        }
        return {"images": images, "state": state, "instruction": self.instruction, "timestamp": stamp}

    def act(self, action: np.ndarray) -> None:
        self.robot.send_action({k: float(v) for k, v in zip(self.action_keys, action, strict=True)})

    def stop(self) -> None:
        """After the final hold: the motors keep their torque (an arm does not fall) unless
        ``torque_off_on_stop``."""
        if self.torque_off_on_stop and hasattr(self.robot, "bus"):
            self.robot.bus.disable_torque()

    def close(self) -> None:
        if getattr(self.robot, "is_connected", False):
            self.robot.disconnect()


@dataclass
class LeRobotRunConfig:
    """``vla-lerobot``'s options (draccus, as LeRobot's own scripts)."""

    robot: Any = None  # a LeRobot RobotConfig: --robot.type=so101_follower --robot.port=/dev/ttyACM0 ...
    url: str = "ws://127.0.0.1:8000"
    api_key: str | None = None
    instruction: str = ""
    camera_map: dict[str, str] = field(default_factory=dict)  # policy camera -> LeRobot camera
    episodes: int = 1
    max_steps: int | None = None
    rate_hz: float | None = None  # null = the policy's fps
    strategy: str = "receding"
    execute_steps: int | None = None
    max_step: float | None = None  # safety: per-tick limit against the measured position (null = a tenth)
    torque_off_on_stop: bool = False


def run(cfg: LeRobotRunConfig) -> list:
    """Episodes of ``cfg.robot`` driven by the policy at ``cfg.url``; returns their `EpisodeLog` s."""
    from ..client import RobotClient
    from ..loop import ControlLoop
    from ..safety import SafetyConfig

    client = RobotClient(cfg.url, api_key=cfg.api_key)
    spec = RobotSpec.from_server(client.connect(), fps=cfg.rate_hz)
    robot = LeRobotRobot.from_config(
        cfg.robot, spec, instruction=cfg.instruction, camera_map=cfg.camera_map,
        torque_off_on_stop=cfg.torque_off_on_stop,
    )  # fmt: skip
    episodes = []
    try:
        safety = SafetyConfig(max_step=cfg.max_step)
        loop = ControlLoop(robot, client, rate_hz=cfg.rate_hz, strategy=cfg.strategy,
                           execute_steps=cfg.execute_steps, safety=safety)  # fmt: skip
        try:
            for i, episode in enumerate(loop.episodes(cfg.episodes, max_steps=cfg.max_steps)):
                episodes.append(episode)
                log.info("episode %d: %s", i, episode.summary())
        finally:
            loop.close()
    finally:
        robot.close()
        client.close()
    return episodes


def main() -> None:
    """``vla-lerobot --robot.type=so101_follower --robot.port=/dev/ttyACM0 --url=ws://gpu-box:8000 ...``"""
    import draccus
    from lerobot.robots import RobotConfig

    @dataclass
    class Config(LeRobotRunConfig):
        robot: RobotConfig = None  # type: ignore[assignment]

    logging.basicConfig(level=logging.INFO)
    run(draccus.parse(Config))
