"""Env steps/s per environment, without cameras and with each render quality.

    python benchmarks/env_speed.py [key=value ...]     (keys: configs/bench/env_speed.yaml)

Prints one JSON object; steps use random actions, resets excluded.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore")

import numpy as np

import envs
from vla.config import compose, to_object
from vla.hardware import cpu_info


@dataclass
class BenchConfig:
    envs: list[str] = field(default_factory=lambda: ["builtin/push"])
    steps: int = 200
    image_size: int = 84
    render_quality: list[str] = field(default_factory=lambda: ["fast", "high"])


def steps_per_second(name: str, steps: int, **options) -> float:
    env = envs.make(name, **options)
    try:
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        low, high = env.action_space.low, env.action_space.high
        for _ in range(5):
            env.step(rng.uniform(low, high))
        done, t0 = 0, time.perf_counter()
        while done < steps:
            _, _, terminated, truncated, _ = env.step(rng.uniform(low, high))
            done += 1
            if terminated or truncated:
                t_reset = time.perf_counter()
                env.reset(seed=done)
                t0 += time.perf_counter() - t_reset  # resets are not steps
        return done / (time.perf_counter() - t0)
    finally:
        env.close()


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/env_speed", argv), BenchConfig)
    rows = {}
    for name in cfg.envs:
        probe = envs.make(name, image_size=cfg.image_size)
        row: dict = {"cameras": list(probe.unwrapped.meta.cameras)}
        probe.close()
        row["no_cameras"] = round(steps_per_second(name, cfg.steps, cameras=[]), 1)
        # the built-in suite renders with numpy, at one quality: it takes no render_quality
        qualities = cfg.render_quality if envs.spec(name).suite != "builtin" else ["fast"]
        for quality in qualities:
            options = {"render_quality": quality} if envs.spec(name).suite != "builtin" else {}
            row[f"with_cameras_{quality}"] = round(
                steps_per_second(name, cfg.steps, image_size=cfg.image_size, **options), 1
            )
        rows[name] = row
        print(f"{name}: {row}", file=sys.stderr, flush=True)
    return {
        "benchmark": "env_speed",
        "unit": "steps/s",
        "config": asdict(cfg),
        "envs": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            **cpu_info(),
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
