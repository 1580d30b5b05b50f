"""Scripted experts: privileged-state controllers that make demonstrations without a human.

expert = make_expert(env)      # env from envs.make(...)
expert.reset()                 # after env.reset()
action = expert.act()          # reads the simulator's true state, not the observation
"""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym
import numpy as np


class Expert(Protocol):
    def reset(self) -> None: ...

    def act(self) -> np.ndarray: ...


def make_expert(env: gym.Env) -> Expert:
    base = env.unwrapped
    name = getattr(base, "name", "")
    suite = name.split("/", 1)[0]
    if suite == "builtin":
        from .builtin import TabletopExpert

        return TabletopExpert(base)
    if suite == "robosuite":
        from .robosuite import make_robosuite_expert

        return make_robosuite_expert(base)
    if suite == "metaworld":
        from .metaworld import MetaWorldExpert

        return MetaWorldExpert(base)
    raise KeyError(f"no scripted expert for environment {name!r}")


def add_noise(
    action: np.ndarray, std: float, rng: np.random.Generator, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Gaussian exploration noise (scaled by the action range), clipped to the bounds."""
    if std <= 0:
        return action
    noisy = action + rng.normal(0.0, std, size=action.shape) * (high - low) / 2
    return np.clip(noisy, low, high).astype(np.float32)
