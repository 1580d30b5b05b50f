"""The acting fast path against the reference path on a saved checkpoint: same episodes, same success?

    python benchmarks/fast_path_eval.py checkpoint=runs/x/checkpoints/best [episodes=50 seed=100000 ...]
                                                                    (keys: configs/bench/fast_path_eval.yaml)

The fast path is what acting runs by default: the instruction memo, the folded BatchNorm of a frozen
EfficientNet, the precomputed denoising schedule, and ``act_threads: auto``. The reference switches each off.
Both evaluate the same env seeds with the same request seeds (``vla eval``'s rollout, batch-1 chunks). Prints
one JSON object: per path, the successes and the median chunk latency; and between the two, the episodes
whose outcome differs, the largest difference of an episode's first action (same observation in both runs),
and of any executed action over each episode's common steps (the runs drift apart once they differ).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_latency import machine  # noqa: E402

from vla.config import compose, to_object  # noqa: E402
from vla.eval.evaluate import EvalConfig, rollout_task  # noqa: E402
from vla.models import load_policy  # noqa: E402


@dataclass
class BenchConfig:
    checkpoint: str | None = None
    env: str | None = None  # null = the checkpoint's env
    episodes: int = 50
    seed: int = 100000  # scenes the demos never showed
    threads: int = 2
    eval: list[str] = field(
        default_factory=list
    )  # more `vla eval` overrides (execute_steps=1, noise_scale=0.5)


def use_reference_path(policy) -> None:
    """Every acting shortcut off: the text encoder on every chunk, the EfficientNet's own modules, the times
    embedded inside each denoising step, the process's threads."""
    policy.act_threads = None
    policy.head.precompute_schedule = False
    backbone = policy.backbone
    if getattr(backbone, "instruction_memo", None) is not None:
        backbone.instruction_memo = None
    vision = getattr(backbone, "vision", None)
    if hasattr(vision, "fold_batchnorm"):
        vision.fold_batchnorm = False


def run(cfg: BenchConfig, reference: bool) -> dict:
    policy = load_policy(cfg.checkpoint)
    if reference:
        use_reference_path(policy)
    overrides = [f"checkpoint={cfg.checkpoint}", f"episodes={cfg.episodes}", f"seed={cfg.seed}", *cfg.eval]
    eval_cfg: EvalConfig = to_object(compose("eval", overrides), EvalConfig)
    eval_cfg.record_actions, eval_cfg.videos = True, 0
    name = cfg.env or policy.meta.env
    return rollout_task(name, eval_cfg, policy, policy.meta, None, progress=True)


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/fast_path_eval", argv), BenchConfig)
    if not cfg.checkpoint:
        raise SystemExit("checkpoint=<dir> is required (a directory written by `vla train`)")
    torch.set_num_threads(cfg.threads)
    results = {"fast": run(cfg, reference=False), "reference": run(cfg, reference=True)}
    rows, episodes = {}, {}
    for path, result in results.items():
        episodes[path] = sorted(result["episodes"], key=lambda e: e["seed"])
        rows[path] = {
            "successes": sum(e["success"] for e in episodes[path]),
            "episodes": len(episodes[path]),
            "chunk_median_ms": round(float(np.median(result["latency_ms"])), 2),
        }
    differing = [
        f["seed"]
        for f, r in zip(episodes["fast"], episodes["reference"], strict=True)
        if f["success"] != r["success"]
    ]
    largest = first = 0.0
    for f, r in zip(episodes["fast"], episodes["reference"], strict=True):
        steps = min(len(f["actions"]), len(r["actions"]))
        if steps:
            diff = np.abs(np.asarray(f["actions"][:steps]) - np.asarray(r["actions"][:steps]))
            largest, first = max(largest, float(diff.max())), max(first, float(diff[0].max()))
    return {
        "benchmark": "fast_path_eval",
        "config": asdict(cfg),
        "fast": rows["fast"],
        "reference": rows["reference"],
        "episodes_with_another_outcome": differing,
        # the first action of an episode acts on the same observation in both runs; later ones on states that
        # drift apart once the two runs' actions differ by rounding (the episode is a closed loop)
        "first_action_max_difference": first,
        "max_action_difference": largest,
        "speedup": round(rows["reference"]["chunk_median_ms"] / rows["fast"]["chunk_median_ms"], 2),
        "machine": machine(cfg.threads),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
