"""Serving: `vla serve` (websocket policy server, openpi-wire-compatible) and the robot side
(`RobotClient`, `ControlLoop`, `Robot` / `SimRobot`)."""

from .client import Reply, RobotClient, ServerError
from .config import RobotConfig, ServeConfig
from .control_loop import ControlLoop, EpisodeLog, hold_action
from .process import ServerProcess
from .protocol import ProtocolError, packb, unpackb
from .robot import Robot, SimRobot
from .server import PolicyServer, serve

__all__ = [
    "ControlLoop",
    "EpisodeLog",
    "PolicyServer",
    "ProtocolError",
    "Reply",
    "Robot",
    "RobotClient",
    "RobotConfig",
    "ServeConfig",
    "ServerError",
    "ServerProcess",
    "SimRobot",
    "hold_action",
    "packb",
    "serve",
    "unpackb",
]
