"""Serving: `vla serve` (websocket policy server, openpi-wire-compatible) and `SimRobot`. The robot side
(`RobotClient`, `ControlLoop`, `Robot`, the safety layer) is the `vla_client` package, re-exported here."""

from vla_client import (
    ControlLoop,
    EpisodeLog,
    ProtocolError,
    Reply,
    Robot,
    RobotClient,
    SafetyConfig,
    SafetyLayer,
    ServerError,
    packb,
    unpackb,
)

from .config import RobotConfig, ServeConfig
from .process import ServerProcess
from .robot import SimRobot
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
    "SafetyConfig",
    "SafetyLayer",
    "ServeConfig",
    "ServerError",
    "ServerProcess",
    "SimRobot",
    "packb",
    "serve",
    "unpackb",
]
