"""Where a policy fails on builtin/push: does it find the named block, and does it move it to the pad?
(builtin/reach for a policy trained on reach alone, as `make demo`'s.)

    python benchmarks/push_outcomes.py checkpoint=<dir> episodes=20 seed=100000
    (configs/bench/push_outcomes.yaml)

Runs ``episodes`` episodes (seeds ``seed``, ``seed`` + 1, ...) with the receding-horizon loop of
`vla eval` (``execute_steps`` actions per chunk, horizon // 2 by default) and, from the env's own
state, counts how often the target block was touched, how often another block was, and how much
closer the target block ended up to its pad. Prints one JSON object.

For a policy trained with ``loss_locate`` (the grounding module with data/targets) it also reports how far the
stem's reading of the targets was from the truth; ``true_targets=true`` (``grounding.locate_condition``
policies) conditions the head on the simulator's true targets instead, which separates perception errors from
control errors. Both diagnostics live here, not in the policy's inference API (``act``)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from envs.builtin.tabletop import TabletopEnv
from vla.config import compose, to_object
from vla.models import load_policy


@dataclass
class BenchConfig:
    checkpoint: str | None = None
    episodes: int = 20
    seed: int = 100000
    execute_steps: int | None = None  # null = horizon // 2, as `vla eval`
    moved: float = 0.01  # a block counts as touched once it moved this far (workspace is 1 x 1)
    noise_scale: float = 1.0  # sampling temperature, as `vla eval noise_scale=...`
    true_targets: bool = False  # condition the head on the env's true targets instead of the stem's reading


def locates(policy) -> bool:
    return policy.grounding is not None and policy.grounding.locate_readout is not None


def act(
    policy, obs: dict, generator: torch.Generator, cfg: BenchConfig, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """One chunk, and where the stem located the targets (None without a locate readout). With
    ``true_targets`` the head is conditioned on ``truth`` in place of that reading; otherwise this is
    ``Policy.predict_chunk``."""
    with torch.no_grad():
        prefix, state = policy.encode(obs)
        located = policy.grounding.locate(prefix[0]) if locates(policy) else None
        given = torch.as_tensor(truth, dtype=torch.float32) if cfg.true_targets else None
        chunk = policy.sample_chunk(
            prefix, policy.condition(prefix, state, given), generator, noise_scale=cfg.noise_scale
        )
    return chunk, None if located is None else located.numpy()


def run_episode(env: TabletopEnv, policy, seed: int, execute: int, cfg: BenchConfig) -> dict:
    obs, _ = env.reset(seed=seed)
    start = env.blocks.copy()
    target, pad = env.target_block, env.pads[env.target_pad]
    before = float(np.linalg.norm(start[target] - pad))
    touched = np.zeros(len(start), dtype=bool)
    generator = torch.Generator().manual_seed(seed)
    success, done = False, False
    errors = []
    while not done:
        truth = env.training_targets()[None]
        chunk, located = act(policy, obs, generator, cfg, truth)
        if located is not None:
            errors.append(np.abs(located[0] - truth[0]))
        for action in chunk[0][:execute]:
            obs, _, success, truncated, _ = env.step(action)
            touched |= np.linalg.norm(env.blocks - start, axis=1) > cfg.moved
            done = success or truncated
            if done:
                break
    others = np.delete(touched, target)
    return {
        "seed": seed,
        "success": bool(success),
        "touched_target": bool(touched[target]),
        "touched_other": bool(others.any()),
        "target_to_pad_start": round(before, 4),
        "target_to_pad_end": round(float(np.linalg.norm(env.blocks[target] - pad)), 4),
        "steps": env.steps,
        "locate_abs_error": np.mean(errors, 0).round(4).tolist() if errors else None,
    }


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/push_outcomes", argv), BenchConfig)
    if not cfg.checkpoint:
        raise SystemExit("checkpoint=<dir> is required")
    policy = load_policy(cfg.checkpoint)
    if cfg.true_targets and not (policy.grounding is not None and policy.grounding.config.locate_condition):
        raise SystemExit(
            f"true_targets=true conditions the head on given positions; {cfg.checkpoint} was trained "
            "without grounding.locate_condition, so its head takes none"
        )
    if policy.meta.env not in ("builtin/push", "builtin", "builtin/reach"):
        raise SystemExit(
            f"{cfg.checkpoint} was trained on {policy.meta.env!r}; this benchmark runs builtin/push "
            "(builtin/reach for a policy trained on reach alone)"
        )
    # a reach-only policy (make demo's) runs its own task; the pad fields then describe an unnamed pad
    kind = "reach" if policy.meta.env == "builtin/reach" else "push"
    env = TabletopEnv(kind=kind, cameras=policy.meta.cameras, image_size=policy.meta.image_size)
    execute = cfg.execute_steps or max(1, policy.config.horizon // 2)
    episodes = [run_episode(env, policy, cfg.seed + i, execute, cfg) for i in range(cfg.episodes)]
    closer = [e["target_to_pad_start"] - e["target_to_pad_end"] for e in episodes]

    def share(key: str) -> float:
        return round(float(np.mean([e[key] for e in episodes])), 3)

    summary = {
        "success": share("success"),
        "touched_target": share("touched_target"),
        "touched_other": share("touched_other"),
        "mean_closer_to_pad": round(float(np.mean(closer)), 4),
        "moved_halfway": round(
            float(np.mean([e["target_to_pad_end"] <= e["target_to_pad_start"] / 2 for e in episodes])), 3
        ),
    }
    if locates(policy):  # per target name, averaged over every step of every episode
        errors = np.mean([e["locate_abs_error"] for e in episodes], 0)
        summary["locate_abs_error"] = dict(
            zip(policy.meta.target_names, errors.round(4).tolist(), strict=True)
        )
    return {"benchmark": "push_outcomes", "config": asdict(cfg), "summary": summary, "episodes": episodes}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
