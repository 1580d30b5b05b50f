"""MetaWorld's own shipped scripted policies, as experts."""

from __future__ import annotations

import numpy as np

from envs.metaworld_env import MetaWorldEnv


class MetaWorldExpert:
    def __init__(self, env: MetaWorldEnv):
        from metaworld.policies import ENV_POLICY_MAP

        if env.task not in ENV_POLICY_MAP:
            raise KeyError(f"MetaWorld ships no scripted policy for {env.task!r}")
        self.env = env
        self.policy = ENV_POLICY_MAP[env.task]()

    def reset(self) -> None:
        pass

    def act(self) -> np.ndarray:
        return np.clip(self.policy.get_action(self.env.raw_obs), -1.0, 1.0).astype(np.float32)
