"""Typed configs for the server (`configs/serve.yaml`) and the robot side (`configs/robot.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_client.safety import SafetyConfig


@dataclass
class ObsTransforms:
    """How requests from clients with other conventions become the observation contract (keymaps set these,
    with ``obs_keys``): openpi's example clients send channels-first images (ALOHA), images rotated 180
    degrees and resized to 224 px (LIBERO), split state keys (DROID), or no prompt (ALOHA)."""

    chw: list[str] = field(default_factory=list)  # cameras that arrive channels-first (3, H, W)
    rotate: dict[str, int] = field(default_factory=dict)  # camera -> degrees counter-clockwise that undo it
    resize: bool = False  # an image of another size is resized (bilinear) to the checkpoint's camera size
    state_keys: list[str] = field(default_factory=list)  # client keys concatenated, in order, into the state
    default_prompt: str | None = None  # the instruction of a request that carries none

    def __post_init__(self) -> None:
        bad = {cam: deg for cam, deg in self.rotate.items() if deg % 90}
        if bad:
            raise ValueError(f"transforms.rotate takes multiples of 90 degrees, got {bad}")


@dataclass
class ServeConfig:
    """Mirrors ``configs/serve.yaml``."""

    checkpoint: str | None = None
    host: str = "127.0.0.1"  # loopback by default: exposing a robot policy is a deliberate choice
    port: int = 8000  # 0 = any free port (printed on start)
    api_key: str | None = None  # when set, every request but /healthz needs `Authorization: Api-Key <key>`
    max_batch: int = 8  # requests that arrive together share one forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for more connected clients' requests
    action_steps: int | None = None  # N_A (null = the checkpoint's)
    vision_steps: int | None = None  # N_o (null = the checkpoint's; 0 = actions only, fastest)
    obs_keys: dict[str, str] = field(default_factory=dict)  # client key -> images.<cam> | state | instruction
    transforms: ObsTransforms = field(default_factory=ObsTransforms)
    max_message_mb: float = 16.0  # larger websocket messages close the connection (1009)
    max_connections: int = 64  # more websocket clients at once are refused with HTTP 503
    max_queued_messages: int = 2  # frames read ahead per connection (each <= max_message_mb) before it waits
    # after an error reply, a connection's next message is read 50 ms later, doubling per error in a row up to
    # this many seconds (0 = off): a client that keeps sending what is refused cannot keep the server busy
    error_backoff_max_s: float = 1.0
    max_instruction_chars: int = 2000
    seed: int = 0  # requests without a seed draw noise from (seed, connection, request count)
    device: str = "cpu"
    warmup: bool = True  # run the batch sizes once before accepting clients
    # torch.compile the frozen vision encoder (Policy.compile_for_acting): faster chunks after a warm-up of
    # tens of seconds per batch size (benchmarks/peer_latency.py); with warmup, before clients are accepted
    compile: bool = False
    ping_interval_s: float | None = 20.0  # drops clients that vanish without closing

    def __post_init__(self) -> None:
        self.api_key = self.api_key or None  # an empty VLA_API_KEY means no key
        if not self.checkpoint:
            raise ValueError("checkpoint=<dir> is required (a directory written by `vla train`)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError(
                f"need max_batch >= 1 and max_wait_ms >= 0, got {self.max_batch}, {self.max_wait_ms}"
            )
        if self.max_message_mb <= 0:
            raise ValueError(f"max_message_mb must be > 0, got {self.max_message_mb}")
        if self.error_backoff_max_s < 0:
            raise ValueError(f"error_backoff_max_s must be >= 0, got {self.error_backoff_max_s}")
        if self.max_connections < 1 or self.max_queued_messages < 1:
            raise ValueError(
                "max_connections and max_queued_messages must be >= 1, got "
                f"{self.max_connections} and {self.max_queued_messages}"
            )


@dataclass
class RobotConfig:
    """Mirrors ``configs/robot.yaml``: a robot (here the simulated one) driven through `ControlLoop`."""

    url: str = "ws://127.0.0.1:8000"
    api_key: str | None = None
    env: str = "builtin/push"  # the simulated robot's envs task
    episodes: int = 1
    seed: int = 0
    rate_hz: float | None = None  # null = the robot's fps; a server trained at another fps is refused
    allow_fps_mismatch: bool = False
    max_steps: int | None = None  # per episode; null = the env's limit
    strategy: str = "receding"  # receding | ensemble | rtc
    execute_steps: int | None = None  # receding / rtc: actions per chunk (null = horizon // 2)
    ensemble_decay: float = 0.01
    lead_steps: int | None = None  # request this many steps early (null = from the p95 round trip)
    request_timeout_s: float | None = None  # null = the chunk's duration (horizon / rate)
    observe_timeout_s: float | None = 1.0  # a robot.observe() slower than this holds the robot
    max_obs_age_s: float | None = None  # an observation whose timestamp is older holds the robot
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    out: str | None = None  # writes control.json (per-tick timing, actions, sources) here when set
    record: str | None = None  # a vla dataset (new or one recorded before) that gets every episode
    operator: str | None = None  # expert: the scripted expert takes over for the `takeover` steps
    takeover: list[int] = field(default_factory=lambda: [10, 20])  # [start, stop) steps of each episode

    def __post_init__(self) -> None:
        self.api_key = self.api_key or None
        if self.operator not in (None, "expert"):
            raise ValueError(f"operator must be null or expert, got {self.operator!r}")
        if self.rate_hz is not None and self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        if self.strategy not in ("receding", "ensemble", "rtc"):
            raise ValueError(f"strategy must be receding, ensemble or rtc, got {self.strategy!r}")
