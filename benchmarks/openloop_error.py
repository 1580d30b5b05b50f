"""Open-loop chunk error of a checkpoint against demos: does it fit its training episodes, and does
that carry over to scenes it never saw?

    python benchmarks/openloop_error.py checkpoint=<dir> datasets=[a.zarr,b.zarr]
    (configs/bench/openloop_error.yaml)

For every ``stride``-th window of the first ``episodes`` episodes of each dataset: the mean absolute
difference between the predicted chunk (env units, fixed seed) and the demo's actions, over the
valid steps; next to the mean absolute demo action for scale. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from vla.config import compose, to_object
from vla.data import TrajectoryStore, WindowConfig, WindowDataset
from vla.models import load_policy


@dataclass
class BenchConfig:
    checkpoint: str | None = None
    datasets: list[str] = field(default_factory=list)
    episodes: int = 20
    stride: int = 3
    seed: int = 0


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/openloop_error", argv), BenchConfig)
    if not cfg.checkpoint or not cfg.datasets:
        raise SystemExit("checkpoint=<dir> and datasets=[...] are required")
    policy = load_policy(cfg.checkpoint)
    rows = []
    for path in cfg.datasets:
        store = TrajectoryStore(path)
        windows = WindowDataset(
            store,
            WindowConfig(n_obs_steps=1, horizon=policy.config.horizon),
            np.arange(min(cfg.episodes, store.num_episodes)),
        )
        errors, scale = [], []
        for i in range(0, len(windows), cfg.stride):
            sample = windows[i]
            obs = {
                "images": {c: sample["images"][c][-1] for c in policy.meta.cameras},
                "state": sample["state"][-1],
                "instruction": sample["instruction"],
            }
            chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(cfg.seed))[0]
            valid = sample["action_mask"]
            errors.append(float(np.abs(chunk[valid] - sample["action"][valid]).mean()))
            scale.append(float(np.abs(sample["action"][valid]).mean()))
        rows.append(
            {
                "dataset": path,
                "windows": len(errors),
                "chunk_abs_error": round(float(np.mean(errors)), 4),
                "mean_abs_action": round(float(np.mean(scale)), 4),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"benchmark": "openloop_error", "config": asdict(cfg), "rows": rows}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
