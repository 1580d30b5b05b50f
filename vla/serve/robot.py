"""`SimRobot`: any `envs` task behind the robot-side `Robot` interface (`vla_client.Robot`), so the whole
robot side (client, loop, safety layer, recorder) runs without hardware."""

from __future__ import annotations

import numpy as np
from vla_client.robot import Robot


class SimRobot(Robot):
    """A simulated robot; ``meta`` is the env's DatasetMeta (it has every field a `RobotSpec` has)."""

    def __init__(self, env: str, max_steps: int | None = None, **options):
        import envs

        if max_steps is not None:
            options["max_steps"] = max_steps
        self.name = env
        self.env = envs.make(env, **options)
        self.meta = self.env.unwrapped.meta
        self._obs: dict | None = None
        self._done, self._success = False, False
        self.steps = 0

    def reset(self, seed: int | None = None) -> None:
        self._obs, info = self.env.reset(seed=seed)
        self._done, self._success, self.steps = False, bool(info.get("success", False)), 0

    def observe(self) -> dict:
        if self._obs is None:
            raise RuntimeError("call reset() before observe()")
        return self._obs

    def act(self, action: np.ndarray) -> None:
        if self._done:
            return
        self._obs, _, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.steps += 1
        self._success = self._success or bool(info.get("success", False))
        self._done = bool(terminated or truncated)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def success(self) -> bool:
        return self._success

    def close(self) -> None:
        self.env.close()
