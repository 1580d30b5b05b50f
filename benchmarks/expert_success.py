"""Scripted-expert success rate per environment (the reference row for every eval).

    python benchmarks/expert_success.py [key=value ...]     (keys: configs/bench/expert_success.yaml)

Prints one JSON object: successes, episodes, rate with a 95% Wilson interval, mean episode length.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore")

import numpy as np

import envs
from envs.experts import make_expert
from vla.config import compose, to_object
from vla.eval.metrics import wilson


@dataclass
class BenchConfig:
    envs: list[str] | None = None
    episodes: int = 50


def evaluate(name: str, episodes: int) -> dict:
    env = envs.make(name, cameras=[])
    expert = make_expert(env)
    wins, lengths, t0 = 0, [], time.perf_counter()
    try:
        for seed in range(episodes):
            env.reset(seed=seed)
            expert.reset()
            steps = 0
            while True:
                _, _, terminated, truncated, info = env.step(expert.act())
                steps += 1
                if terminated or truncated:
                    break
            wins += bool(info["success"])
            lengths.append(steps)
    finally:
        env.close()
    lo, hi = wilson(wins, episodes)
    return {
        "successes": wins,
        "episodes": episodes,
        "success_rate": round(wins / episodes, 3),
        "ci95": [round(lo, 3), round(hi, 3)],
        "mean_length": round(float(np.mean(lengths)), 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/expert_success", argv), BenchConfig)
    rows = {}
    for name in cfg.envs or envs.list():
        rows[name] = evaluate(name, cfg.episodes)
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    return {"benchmark": "expert_success", "config": asdict(cfg), "envs": rows}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
