"""vla-client: the robot side of vla, without torch.

The wire protocol (openpi-compatible msgpack), `RobotClient`, `ControlLoop` with its chunk executors, the
`Robot` interface, the `SafetyLayer`, and hardware adapters (`vla_client.adapters`). It depends on numpy,
websockets and msgpack only, so it installs on the computer next to the robot; the policy runs behind
`vla serve` (or any openpi-protocol server) elsewhere.
"""

from .chunking import (
    ChunkExecutor,
    RealTimeChunking,
    RecedingHorizon,
    TemporalEnsemble,
    make_executor,
    request_seed,
    rtc_guide,
)
from .client import Reply, Request, RobotClient, ServerError
from .loop import ControlLoop, EpisodeLog, Operator
from .protocol import ProtocolError, packb, unpackb
from .robot import ActionSpec, Robot, RobotSpec
from .safety import ActionKind, SafetyConfig, SafetyLayer

__version__ = "0.1.0"

__all__ = [
    "ActionKind",
    "ActionSpec",
    "ChunkExecutor",
    "ControlLoop",
    "EpisodeLog",
    "Operator",
    "ProtocolError",
    "RealTimeChunking",
    "RecedingHorizon",
    "Reply",
    "Request",
    "Robot",
    "RobotClient",
    "RobotSpec",
    "SafetyConfig",
    "SafetyLayer",
    "ServerError",
    "TemporalEnsemble",
    "make_executor",
    "packb",
    "request_seed",
    "rtc_guide",
    "unpackb",
]
