"""What builtin/push asks of a policy's *control*, with perception taken out: behaviour cloning on the
privileged state.

    python benchmarks/push_oracle.py demos=1000 steps=2200 batch_size=64   (configs/bench/push_oracle.yaml)

Collects ``demos`` expert episodes (seeds 0, 1, ...), regresses the expert's next ``horizon`` actions
from (pusher, velocity, named block, named pad) with an MLP (the same sample budget as the policy's
training), then runs it closed loop on held-out scenes for every ``execute_steps`` (actions executed
per chunk). A vision-language policy can do no better than this regressor with a perfect reading of
the scene; the gap between the execute_steps rows is what replanning every step is worth.

How precise must the reading be? Each regressor is also run (one action per chunk) with Gaussian errors
added to the block and pad positions it is given: drawn afresh every step (``per_step``: jitter) or once
per episode (``per_episode``: a bias, as a misreading policy makes). ``train_noise`` adds such jitter to
the training inputs too, as a regressor trained on its own imprecise estimates would see them.
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
    # std of the errors (workspace units; the table is 1 x 1) added to the block and pad positions at test
    # time
    perception_noise: list[float] = field(default_factory=lambda: [0.01, 0.02])
    train_noise: list[float] = field(default_factory=lambda: [0.0, 0.01])  # one regressor per value


def privileged_features(env: TabletopEnv) -> np.ndarray:
    return np.concatenate(
        [env.pusher, env.velocity / env.max_speed, env.blocks[env.target_block], env.pads[env.target_pad]]
    ).astype(np.float32)


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


OBJECTS = slice(4, 8)  # the block and pad positions in `privileged_features`


def rollout_success(
    net: nn.Module, cfg: BenchConfig, execute: int, noise: str = "none", std: float = 0.0
) -> float:
    """Closed-loop success; ``noise`` "per_step" | "per_episode" adds N(0, std) to the block and pad
    positions."""
    env = TabletopEnv(kind="push", cameras=["top"])
    rng = np.random.default_rng(cfg.seed)
    successes = 0
    for i in range(cfg.episodes):
        env.reset(seed=cfg.seed + i)
        bias = rng.normal(0.0, std, 4) if noise == "per_episode" else np.zeros(4)
        success = done = False
        while not done:
            features = privileged_features(env)
            features[OBJECTS] += bias + (rng.normal(0.0, std, 4) if noise == "per_step" else 0.0)
            with torch.no_grad():
                chunk = net(torch.from_numpy(features.astype(np.float32))[None]).view(cfg.horizon, 2).numpy()
            for action in chunk[:execute]:
                _, _, success, truncated, _ = env.step(action)
                done = success or truncated
                if done:
                    break
        successes += success
    return successes / cfg.episodes


def fit(
    features: torch.Tensor, chunks: torch.Tensor, cfg: BenchConfig, train_noise: float
) -> tuple[nn.Module, float, float]:
    """(regressor, final loss, seconds); ``train_noise`` jitters the block and pad inputs of every batch."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(features.shape[1], cfg.hidden),
        nn.SiLU(),
        nn.Linear(cfg.hidden, cfg.hidden),
        nn.SiLU(),
        nn.Linear(cfg.hidden, cfg.hidden),
        nn.SiLU(),
        nn.Linear(cfg.hidden, chunks.shape[1]),
    )
    optimizer = torch.optim.AdamW(net.parameters(), cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(features), (cfg.batch_size,), generator=generator)
        inputs = features[idx].clone()
        inputs[:, OBJECTS] += train_noise * torch.randn(len(idx), 4, generator=generator)
        loss = (net(inputs) - chunks[idx]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval(), loss.item(), time.perf_counter() - started


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/push_oracle", argv), BenchConfig)
    features, chunks = expert_chunks(cfg.demos, cfg.horizon)
    rows = []
    for train_noise in cfg.train_noise:
        net, loss, train_s = fit(features, chunks, cfg, train_noise)
        fitted = {"train_noise": train_noise, "final_loss": round(loss, 5), "train_s": round(train_s, 1)}
        rows += [
            {
                **fitted,
                "execute_steps": e,
                "test_noise": "none",
                "noise_std": 0.0,
                "success_rate": rollout_success(net, cfg, e),
            }
            for e in cfg.execute_steps
        ]
        rows += [
            {
                **fitted,
                "execute_steps": 1,
                "test_noise": kind,
                "noise_std": std,
                "success_rate": rollout_success(net, cfg, 1, kind, std),
            }
            for kind in ("per_step", "per_episode")
            for std in cfg.perception_noise
        ]
    return {"benchmark": "push_oracle", "config": asdict(cfg), "frames": len(features), "rows": rows}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
