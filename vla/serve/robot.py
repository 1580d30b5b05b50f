"""`SimRobot`: any `envs` task behind the robot-side `Robot` interface (`vla_client.Robot`), so the whole
robot side (client, loop, safety layer, recorder) runs without hardware."""

from __future__ import annotations

import numpy as np
from vla_client.loop import Operator
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


class ScriptedOperator(Operator):
    """The env's scripted expert as the teleoperator of a `SimRobot`: it takes over for control steps
    ``[start, stop)`` of every episode and hands back (a stand-in for a human with a leader arm or a
    gamepad, so takeovers are tested and recorded without one)."""

    def __init__(self, robot: SimRobot, start: int, stop: int):
        from envs.experts import make_expert

        if not 0 <= start < stop:
            raise ValueError(
                f"takeover must be [start, stop) steps with 0 <= start < stop, got {[start, stop]}"
            )
        self.expert, self.start, self.stop = make_expert(robot.env), start, stop

    def reset(self, seed: int | None = None) -> None:
        self.expert.reset()

    def engaged(self, step: int, obs: dict) -> bool:
        return self.start <= step < self.stop

    def action(self, step: int, obs: dict) -> np.ndarray:
        return np.asarray(self.expert.act(), dtype=np.float32)
