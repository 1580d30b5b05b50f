"""The robot loop on loopback: `vla serve` (tiny and small presets) driving a simulated robot through
`vla_client.ControlLoop` at 10, 30 and 50 Hz. Per rate: tick jitter (how late each tick started) p50/p99, held
steps, late ticks, the round trip, and whether its p95 fits in one chunk's duration (then no step should be
held).

    python benchmarks/robot_loop.py [key=value ...]     (keys: configs/bench/robot_loop.yaml)

The server is its own process; the loop, the simulated robot (builtin/push, one 64 px camera) and the server
share this machine's cores, as a laptop next to an arm would. Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from policy_latency import builtin_push_meta, identity_normalizer, machine  # noqa: E402

from vla.config import compose, config_dir, to_object  # noqa: E402
from vla.models import Policy, PolicyConfig, save_policy  # noqa: E402
from vla.serve import ControlLoop, RobotClient, ServerProcess, SimRobot  # noqa: E402


@dataclass
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "small"])
    rates: list[float] = field(default_factory=lambda: [10.0, 30.0, 50.0])
    seconds: float = 6.0  # per rate
    strategy: str = "receding"
    execute_steps: int | None = None  # null = horizon // 2
    image_size: int = 64
    server_threads: int = 1  # torch threads of the server (the loop and the robot use the other core)


def run_rate(url: str, rate: float, cfg: BenchConfig) -> dict:
    steps = int(rate * cfg.seconds)
    robot = SimRobot("builtin/push", cameras=["top"], image_size=cfg.image_size, max_steps=steps + 10)
    with RobotClient(url, timeout_s=5) as client:
        loop = ControlLoop(robot, client, rate_hz=rate, strategy=cfg.strategy,
                           execute_steps=cfg.execute_steps, allow_fps_mismatch=True)  # fmt: skip
        loop.run_episode(seed=0, max_steps=int(rate))  # warm-up: connections, first chunks
        episode = loop.run_episode(seed=1, max_steps=steps)
        loop.close()
    robot.close()
    lateness = np.asarray(episode.lateness_ms[1:])  # tick 0 starts the clock
    rt = np.asarray(episode.round_trip_ms)
    chunk_ms = loop.horizon / rate * 1e3
    return {
        "rate_hz": rate,
        "steps": episode.steps,
        "tick_jitter_ms_p50": round(float(np.percentile(lateness, 50)), 3),
        "tick_jitter_ms_p99": round(float(np.percentile(lateness, 99)), 3),
        "held_steps": episode.held_steps,
        "late_ticks": episode.late_ticks,
        "round_trip_ms_p50": round(float(np.percentile(rt, 50)), 1),
        "round_trip_ms_p95": round(float(np.percentile(rt, 95)), 1),
        "chunk_ms": round(chunk_ms, 1),
        "round_trip_p95_within_chunk": bool(np.percentile(rt, 95) < chunk_ms),
        "lead_steps": episode.lead_steps,
        "requests": episode.requests,
        "errors": episode.errors,
        "tick_work_ms_p50": round(float(np.median(episode.tick_ms)), 3),
    }


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/robot_loop", argv), BenchConfig)
    logging.getLogger("vla_client").setLevel(logging.ERROR)  # the lead warning at 50 Hz goes in the JSON
    meta = builtin_push_meta(cfg.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in cfg.presets:
            config = to_object(
                yaml.safe_load((config_dir() / "policy" / f"{preset}.yaml").read_text()), PolicyConfig
            )
            torch.manual_seed(0)
            checkpoint = save_policy(
                Policy(config, meta, identity_normalizer()).eval(), os.path.join(tmp, preset)
            )
            os.environ["OMP_NUM_THREADS"] = str(cfg.server_threads)  # the server process inherits it
            server = ServerProcess(str(checkpoint))
            try:
                for rate in cfg.rates:
                    row = {"preset": preset, "horizon": config.horizon} | run_rate(server.url, rate, cfg)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
            finally:
                server.stop()
    return {
        "benchmark": "robot_loop",
        "config": asdict(cfg),
        "rows": rows,
        "machine": {
            **machine(torch.get_num_threads()),
            "note": "server, loop and simulated robot share this machine's cores",
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
