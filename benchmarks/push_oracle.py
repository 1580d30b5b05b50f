"""What builtin/push asks of a policy's *control*, with perception taken out: behaviour cloning on the
privileged state.

    python benchmarks/push_oracle.py demos=1000 steps=2200 batch_size=64   (configs/bench/push_oracle.yaml)

Collects ``demos`` expert episodes (seeds 0, 1, ...), regresses the expert's next ``horizon`` actions
from (pusher, velocity, named block, named pad) with an MLP (the same sample budget as the policy's
training), then runs it closed loop on held-out scenes for every ``execute_steps`` (actions executed
per chunk). A vision-language policy can do no better than this regressor with a perfect reading of
the scene; the gap between the execute_steps rows is what replanning every step is worth.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import nn

from envs.builtin.tabletop import TabletopEnv
from envs.experts.builtin import TabletopExpert
from vla.config import compose, to_object


@dataclass
class BenchConfig:
    demos: int = 1000
    steps: int = 2200
    batch_size: int = 64
    lr: float = 3e-3
    hidden: int = 512
    horizon: int = 8  # the small preset's chunk
    episodes: int = 100  # held-out evaluation episodes per execute_steps value
    seed: int = 100000
    execute_steps: list[int] = field(default_factory=lambda: [1, 4])


def privileged_features(env: TabletopEnv) -> np.ndarray:
    return np.concatenate([env.pusher, env.velocity / env.max_speed, env.blocks[env.target_block],
                           env.pads[env.target_pad]]).astype(np.float32)


def expert_chunks(demos: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, the expert's next ``horizon`` actions, repeat-padded at the episode end) for every frame."""
    env = TabletopEnv(kind="push", cameras=["top"])
    expert = TabletopExpert(env)
    features, chunks = [], []
    for seed in range(demos):
        env.reset(seed=seed)
        expert.reset()
        frames, actions, done = [], [], False
        while not done:
            frames.append(privileged_features(env))
            actions.append(expert.act())
            _, _, success, truncated, _ = env.step(actions[-1])
            done = success or truncated
        actions = np.array(actions)
        for t, frame in enumerate(frames):
            idx = np.minimum(np.arange(t, t + horizon), len(actions) - 1)
            features.append(frame)
            chunks.append(actions[idx].reshape(-1))
    return torch.tensor(np.array(features)), torch.tensor(np.array(chunks))


def rollout_success(net: nn.Module, cfg: BenchConfig, execute: int) -> float:
    env = TabletopEnv(kind="push", cameras=["top"])
    successes = 0
    for i in range(cfg.episodes):
        env.reset(seed=cfg.seed + i)
        success = done = False
        while not done:
            with torch.no_grad():
                chunk = net(torch.from_numpy(privileged_features(env))[None]).view(cfg.horizon, 2).numpy()
            for action in chunk[:execute]:
                _, _, success, truncated, _ = env.step(action)
                done = success or truncated
                if done:
                    break
        successes += success
    return successes / cfg.episodes


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/push_oracle", argv), BenchConfig)
    torch.manual_seed(0)
    features, chunks = expert_chunks(cfg.demos, cfg.horizon)
    net = nn.Sequential(nn.Linear(features.shape[1], cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(),
                        nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, chunks.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(features), (cfg.batch_size,), generator=generator)
        loss = (net(features[idx]) - chunks[idx]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    train_s = time.perf_counter() - started
    net.eval()
    rows = [{"execute_steps": e, "success_rate": rollout_success(net, cfg, e)} for e in cfg.execute_steps]
    return {"benchmark": "push_oracle", "config": asdict(cfg), "frames": len(features), "final_loss": round(loss.item(), 5),
            "train_s": round(train_s, 1), "rows": rows}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
