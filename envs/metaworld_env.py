"""MetaWorld (3.x, gymnasium API) tasks behind the observation contract.

State is the Sawyer's proprioception (hand xyz + gripper opening, the first 4 of MetaWorld's 39
observation dims); the object and goal dims stay privileged (the shipped scripted policies read
them). Images come from MetaWorld's MuJoCo renderer; ``render_quality="fast"`` turns off
multisampling, shadows and reflections (~10x cheaper on CPU). The ``corner`` cameras render
upside down and are flipped here.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.spaces import observation_space
from vla.data.schema import ActionSpace, DatasetMeta, normalize_image_size

os.environ.setdefault("MUJOCO_GL", "egl")

INSTRUCTIONS = {  # MT10, one instruction each
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button down from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
MT10 = tuple(INSTRUCTIONS)
FLIPPED_CAMERAS = {"corner", "corner2", "corner3", "corner4"}


class MetaWorldEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str = "reach-v3",
        name: str = "metaworld/reach-v3",
        cameras: tuple[str, ...] | list[str] = ("corner",),
        image_size: int | tuple[int, int] = 84,
        max_steps: int | None = None,
        seed: int | None = None,
        render_quality: str = "fast",
    ):
        import metaworld  # noqa: F401  (registers the Meta-World/* gymnasium ids)

        if task not in INSTRUCTIONS:
            raise KeyError(f"unknown MetaWorld task {task!r}; available: {sorted(INSTRUCTIONS)}")
        if render_quality not in ("fast", "high"):
            raise ValueError(f"render_quality must be 'fast' or 'high', got {render_quality!r}")
        self.task, self.name = task, name
        self.cameras = list(cameras)
        self.image_size = normalize_image_size(image_size, self.cameras)
        if isinstance(self.image_size, dict):
            raise ValueError(
                f"MetaWorld renders every camera at one size; got per-camera sizes {image_size} "
                "(pass one (H, W))"
            )
        self.max_steps = int(max_steps) if max_steps else 500  # MetaWorld's max_path_length
        self.render_quality = render_quality
        self._env = gym.make(
            # the make seed draws MetaWorld's 50 task variants: fix it so every instance has the same set
            "Meta-World/MT1",
            env_name=task,
            seed=0 if seed is None else seed,
            render_mode="rgb_array" if self.cameras else None,
            camera_name=self.cameras[0] if self.cameras else None,
            height=self.image_size[0],
            width=self.image_size[1],
            disable_env_checker=True,
        )
        base = self._env.unwrapped
        self.control_freq = float(round(1.0 / base.dt, 3))
        self.metadata = {**self.metadata, "render_fps": self.control_freq}
        if self.cameras and render_quality == "fast":
            base.model.vis.quality.offsamples = 0  # before the first render creates the GL buffers
            base.model.light_castshadow[:] = 0
        self._viewer_tuned = False
        self.observation_space = observation_space(self.cameras, self.image_size, state_dim=4)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.raw_obs = np.zeros(39)
        self.steps = 0

    @property
    def meta(self) -> DatasetMeta:
        return DatasetMeta(
            fps=self.control_freq,
            cameras=self.cameras,
            image_size=self.image_size,
            state_dim=4,
            action_space=ActionSpace(dim=4, low=[-1.0] * 4, high=[1.0] * 4, kind="delta_xyz+gripper"),
            robot="sawyer",
            env=self.name,
        )

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # MetaWorld's reset ignores `seed`, and by default draws positions from numpy's global
            # generator: seed the env's own generator (which the task-select wrapper and, with
            # seeded_rand_vec, the position sampling use) so that a seed fixes the whole episode.
            self._env.unwrapped.seeded_rand_vec = True
            self._env.unwrapped.seed(seed)
        self.raw_obs, _ = self._env.reset(seed=seed)
        self.steps = 0
        return self._obs(), {"success": False, "task": self.name}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self.raw_obs, _, _, _, raw_info = self._env.step(action)
        self.steps += 1
        success = bool(raw_info.get("success", 0.0) > 0)
        truncated = self.steps >= self.max_steps
        return self._obs(), float(success), success, truncated, {"success": success, "task": self.name}

    def _render_cameras(self) -> dict[str, np.ndarray]:
        import mujoco

        base = self._env.unwrapped
        renderer = base.mujoco_renderer
        images = {}
        for cam in self.cameras:
            renderer.camera_id = mujoco.mj_name2id(base.model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            if renderer.camera_id < 0:
                raise ValueError(f"MetaWorld has no camera {cam!r}")
            img = renderer.render("rgb_array")
            if not self._viewer_tuned and self.render_quality == "fast":
                scn = renderer._get_viewer("rgb_array").scn
                scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                self._viewer_tuned = True
                img = renderer.render("rgb_array")
            if cam in FLIPPED_CAMERAS:
                img = img[::-1, ::-1]
            images[cam] = np.ascontiguousarray(img, dtype=np.uint8)
        return images

    def _obs(self) -> dict[str, Any]:
        return {
            "images": self._render_cameras() if self.cameras else {},
            "state": np.asarray(self.raw_obs[:4], dtype=np.float32),
            "instruction": self.instruction,
        }

    def render(self):
        return self._render_cameras()[self.cameras[0]] if self.cameras else None

    def close(self) -> None:
        self._env.close()
