"""robosuite tasks (Panda, OSC_POSE delta actions) behind the observation contract.

Needs the `sim` extra (robosuite 1.5.2 with mujoco 3.3.0). Images are rendered offscreen
(robosuite picks EGL; set MUJOCO_GL=osmesa to use OSMesa) in OpenCV orientation (row 0 = top).
``render_quality="fast"`` (default) turns off multisampling, reflections and shadows, which cuts
the CPU cost of a frame several-fold; ``"high"`` keeps robosuite's defaults.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.spaces import observation_space
from vla.data.schema import ActionSpace, DatasetMeta, image_sizes_per_camera, normalize_image_size

os.environ.setdefault("MUJOCO_GL", "egl")

CUBE_COLORS = {"red": [0.85, 0.1, 0.1, 1], "green": [0.1, 0.7, 0.1, 1], "blue": [0.1, 0.25, 0.9, 1]}


@dataclass(frozen=True)
class RobosuiteTask:
    env_name: str  # robosuite environment class name
    instruction: str  # may contain {target}
    kwargs: dict[str, Any] = field(default_factory=dict)
    horizon_s: float = 15.0  # default episode length in seconds


TASKS = {
    "Lift": RobosuiteTask("Lift", "lift the red cube", horizon_s=10.0),
    "Stack": RobosuiteTask("Stack", "stack the red cube on the green cube", horizon_s=15.0),
    "PickPlaceCan": RobosuiteTask("PickPlaceCan", "pick up the can and place it in the bin", horizon_s=20.0),
    "NutAssemblySquare": RobosuiteTask(
        "NutAssemblySquare", "put the square nut on the square peg", horizon_s=20.0
    ),
    "Door": RobosuiteTask("Door", "open the door", horizon_s=20.0),
    # language-conditioned: three cubes, the instruction names which one to lift
    "LiftColor": RobosuiteTask("VlaLiftColor", "lift the {target} cube", horizon_s=10.0),
}


def _register_lift_color() -> None:
    """A Lift with three coloured cubes; ``target`` picks the one whose lift counts as success."""
    from robosuite.environments.base import REGISTERED_ENVS
    from robosuite.environments.manipulation.lift import Lift
    from robosuite.models.arenas import TableArena
    from robosuite.models.objects import BoxObject
    from robosuite.models.tasks import ManipulationTask
    from robosuite.utils.placement_samplers import UniformRandomSampler

    if "VlaLiftColor" in REGISTERED_ENVS:
        return

    class VlaLiftColor(Lift):
        target = "red"

        def _load_model(self):
            super(Lift, self)._load_model()  # robots only; the arena and objects are ours
            self.robots[0].robot_model.set_base_xpos(
                self.robots[0].robot_model.base_xpos_offset["table"](self.table_full_size[0])
            )
            arena = TableArena(
                table_full_size=self.table_full_size,
                table_friction=self.table_friction,
                table_offset=self.table_offset,
            )
            arena.set_origin([0, 0, 0])
            self.cubes = {
                color: BoxObject(
                    name=f"cube_{color}", size_min=[0.02] * 3, size_max=[0.022] * 3, rgba=rgba, rng=self.rng
                )
                for color, rgba in CUBE_COLORS.items()
            }
            self.cube = self.cubes["red"]  # Lift's observables and references use self.cube
            self.placement_initializer = UniformRandomSampler(
                name="ObjectSampler",
                mujoco_objects=list(self.cubes.values()),
                x_range=[-0.1, 0.1],
                y_range=[-0.16, 0.16],
                rotation=None,
                ensure_object_boundary_in_range=False,
                ensure_valid_placement=True,
                reference_pos=self.table_offset,
                z_offset=0.01,
                rng=self.rng,
            )
            self.model = ManipulationTask(
                mujoco_arena=arena,
                mujoco_robots=[r.robot_model for r in self.robots],
                mujoco_objects=list(self.cubes.values()),
            )

        def _setup_references(self):
            super()._setup_references()
            self.cube_body_ids = {c: self.sim.model.body_name2id(o.root_body) for c, o in self.cubes.items()}

        def _check_success(self):
            height = self.sim.data.body_xpos[self.cube_body_ids[self.target]][2]
            return height > self.model.mujoco_arena.table_offset[2] + 0.04

    assert "VlaLiftColor" in REGISTERED_ENVS, VlaLiftColor


class RobosuiteEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "Lift",
        name: str = "robosuite/Lift",
        cameras: tuple[str, ...] | list[str] = ("agentview", "robot0_eye_in_hand"),
        image_size: int | tuple[int, int] | dict[str, int | tuple[int, int]] = 84,
        max_steps: int | None = None,
        control_freq: float = 20.0,
        seed: int | None = None,
        render_quality: str = "fast",
    ):
        import robosuite
        from robosuite import macros

        # robosuite logs every controller it skips for every env it builds: keep its errors only
        logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
        from robosuite.controllers import load_composite_controller_config

        macros.IMAGE_CONVENTION = "opencv"  # row 0 = top of the image, as every other camera
        if task not in TASKS:
            raise KeyError(f"unknown robosuite task {task!r}; available: {sorted(TASKS)}")
        if render_quality not in ("fast", "high"):
            raise ValueError(f"render_quality must be 'fast' or 'high', got {render_quality!r}")
        self.task = TASKS[task]
        if self.task.env_name == "VlaLiftColor":
            _register_lift_color()
        self.name = name
        self.cameras = list(cameras)
        self.image_size = normalize_image_size(image_size, self.cameras)  # (H, W), or {camera: (H, W)}
        sizes = list(image_sizes_per_camera(self.image_size, self.cameras).values()) or [self.image_size]
        self.control_freq = float(control_freq)
        self.max_steps = int(max_steps) if max_steps else int(self.task.horizon_s * self.control_freq)
        self.render_quality = render_quality
        self.metadata = {**self.metadata, "render_fps": self.control_freq}
        self.target: str | None = None
        self._env = robosuite.make(
            self.task.env_name,
            robots="Panda",
            controller_configs=load_composite_controller_config(controller="BASIC"),
            has_renderer=False,
            has_offscreen_renderer=bool(self.cameras),
            use_camera_obs=bool(self.cameras),
            camera_names=self.cameras or "agentview",
            camera_heights=[h for h, _ in sizes],  # one per camera: robosuite renders each at its own size
            camera_widths=[w for _, w in sizes],
            control_freq=self.control_freq,
            horizon=self.max_steps,
            ignore_done=True,
            hard_reset=False,  # ~1 s per reset otherwise
            reward_shaping=False,
            seed=0 if seed is None else seed,  # also draws object sizes at model build: fix it per instance
            **self.task.kwargs,
        )
        if self.cameras and render_quality == "fast":
            self._fast_rendering()
        self.observation_space = observation_space(self.cameras, self.image_size, state_dim=9)
        low, high = self._env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.steps = 0
        self._last_obs: dict[str, Any] = {}

    @property
    def meta(self) -> DatasetMeta:
        return DatasetMeta(
            fps=self.control_freq,
            cameras=self.cameras,
            image_size=self.image_size,
            state_dim=9,
            action_space=ActionSpace(
                dim=int(self.action_space.shape[0]),
                low=self.action_space.low.tolist(),
                high=self.action_space.high.tolist(),
                kind="osc_pose_delta+gripper",
            ),
            robot="panda",
            env=self.name,
        )

    @property
    def sim_env(self):
        """The underlying robosuite environment (privileged state for experts)."""
        return self._env

    def _fast_rendering(self) -> None:
        import mujoco

        sim = self._env.sim
        if sim._render_context_offscreen is None:
            return
        ctx = sim._render_context_offscreen
        sim.model.vis.quality.offsamples = 0  # no multisample buffer: rebuild the GL context's buffers
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

    def _make_gl_current(self) -> None:
        # Several envs in one process each own a GL context; render into ours, not the last one made.
        ctx = self._env.sim._render_context_offscreen if self.cameras else None
        if ctx is not None:
            ctx.gl_ctx.make_current()

    @property
    def instruction(self) -> str:
        return self.task.instruction.format(target=self.target)

    def swapped_instruction(self, seed: int = 0) -> str | None:
        """LiftColor: the instruction naming another cube (the instruction-swap check); None elsewhere."""
        if self.task.env_name != "VlaLiftColor":
            return None
        others = [c for c in CUBE_COLORS if c != self.target]
        return self.task.instruction.format(target=others[np.random.default_rng(seed).integers(len(others))])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        env = self._env
        if seed is not None:  # reseed robosuite's generator in place: placement samplers hold a reference
            env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        if self.task.env_name == "VlaLiftColor":
            colors = list(CUBE_COLORS)
            self.target = (options or {}).get("target") or colors[int(env.rng.integers(len(colors)))]
            if self.target not in colors:
                raise ValueError(f"target must be one of {colors}, got {self.target!r}")
            env.target = self.target
        self.steps = 0
        self._make_gl_current()
        raw = env.reset()
        return self._obs(raw), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        self._make_gl_current()
        raw, _, _, _ = self._env.step(action)
        self.steps += 1
        info = self._info()
        terminated = info["success"]
        truncated = self.steps >= self.max_steps
        return self._obs(raw), float(terminated), terminated, truncated, info

    def _obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        self._last_obs = raw
        state = np.concatenate([raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"]])
        return {
            "images": {c: np.ascontiguousarray(raw[f"{c}_image"], dtype=np.uint8) for c in self.cameras},
            "state": state.astype(np.float32),
            "instruction": self.instruction,
        }

    def _info(self) -> dict[str, Any]:
        return {"success": bool(self._env._check_success()), "task": self.name, "target": self.target}

    def render(self):
        if not self.cameras:
            return None
        return self._last_obs.get(f"{self.cameras[0]}_image")

    def close(self) -> None:
        self._env.close()
