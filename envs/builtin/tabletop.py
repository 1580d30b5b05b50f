"""A top-down 2-D tabletop rendered with numpy: coloured blocks, coloured pads, a round pusher.

No simulator dependency, thousands of steps per second. The instruction names the target
("push the red block onto the blue pad"), and several blocks and pads of other colours are on
the table, so a policy needs both vision and language to succeed.

Physics are kinematic: the pusher moves by the commanded velocity; a block it overlaps is pushed
out along the contact normal; blocks push each other the same way. Blocks collide as discs of
radius ``block_radius`` and are drawn as squares of the same half-width.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.spaces import observation_space
from vla.data.schema import ActionSpace, DatasetMeta, image_sizes_per_camera, normalize_image_size

COLORS = {
    "red": (220, 50, 47),
    "green": (60, 170, 60),
    "blue": (38, 110, 210),
    "yellow": (235, 200, 40),
    "purple": (150, 80, 190),
}
TABLE = np.array((205, 190, 165), dtype=np.uint8)
PUSHER = np.array((70, 70, 70), dtype=np.uint8)
CAMERAS = ("top", "wrist")  # wrist: a 2x zoomed view that follows the pusher
# privileged per-frame training targets recorded with the demos (`training_targets`): where the named block
# is and where the instruction's goal is (push: the named pad; reach: the block itself), in workspace units
# ([0, 1], x right, y down, like the top camera)
TARGET_NAMES = ("block_x", "block_y", "goal_x", "goal_y")


def pixel_centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every pixel's centre in view units [0, 1]."""
    ys, xs = np.mgrid[0:h, 0:w]
    return (xs + 0.5) / w, (ys + 0.5) / h


@dataclass
class TabletopTask:
    """Which objects exist and what success means."""

    kind: str = "push"  # "push": target block onto target pad; "reach": pusher touches target block
    n_blocks: int = 3
    n_pads: int = 3


class TabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    pusher_radius = 0.04
    block_radius = 0.045
    pad_half = 0.07
    max_speed = 0.5  # workspace units per second

    def __init__(
        self,
        kind: str = "push",
        name: str = "builtin/push",
        cameras: tuple[str, ...] | list[str] = ("top",),
        image_size: int | tuple[int, int] | dict[str, int | tuple[int, int]] = 64,
        max_steps: int | None = None,
        control_freq: float = 10.0,
        seed: int | None = None,
        render_mode: str | None = "rgb_array",
    ):
        self.task = TabletopTask(kind=kind)
        self.name = name
        unknown = set(cameras) - set(CAMERAS)
        if unknown:
            raise ValueError(f"unknown cameras {sorted(unknown)} for {name}; available: {list(CAMERAS)}")
        self.cameras = list(cameras)
        self.image_size = normalize_image_size(image_size, self.cameras)  # (H, W), or {camera: (H, W)}
        self.image_sizes = image_sizes_per_camera(self.image_size, self.cameras)
        if any(min(hw) < 16 for hw in self.image_sizes.values()):
            raise ValueError(f"image_size must be >= 16 px, got {image_size}")
        self.control_freq = float(control_freq)
        self.step_size = self.max_speed / self.control_freq
        self.max_steps = (
            int(max_steps)
            if max_steps
            else int(round((6.0 if self.task.kind == "push" else 4.0) * self.control_freq))
        )
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.control_freq}
        self.observation_space = observation_space(self.cameras, self.image_size, state_dim=4)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pix = {cam: pixel_centres(*hw) for cam, hw in self.image_sizes.items()}
        self._rng = np.random.default_rng(seed)
        self._seeded = seed is not None
        self.pusher = np.zeros(2)
        self.velocity = np.zeros(2)
        self.blocks = np.zeros((self.task.n_blocks, 2))
        self.block_colors: list[str] = []
        self.pads = np.zeros((self.task.n_pads, 2))
        self.pad_colors: list[str] = []
        self.target_block = 0
        self.target_pad = 0
        self.steps = 0

    @property
    def meta(self) -> DatasetMeta:
        return DatasetMeta(
            fps=self.control_freq,
            cameras=self.cameras,
            image_size=self.image_size,
            state_dim=4,
            action_space=ActionSpace(dim=2, low=[-1.0, -1.0], high=[1.0, 1.0], kind="planar_velocity"),
            robot="point_pusher",
            env=self.name,
            extra={"targets": list(TARGET_NAMES)},
        )

    # -- episode ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        rng = self._rng
        options = options or {}
        names = list(COLORS)
        self.block_colors = [names[i] for i in rng.choice(len(names), self.task.n_blocks, replace=False)]
        self.pad_colors = [names[i] for i in rng.choice(len(names), self.task.n_pads, replace=False)]
        self.target_block = int(rng.integers(self.task.n_blocks))
        self.target_pad = int(rng.integers(self.task.n_pads))
        if "target_block" in options:
            self.target_block = self.block_colors.index(options["target_block"])
        if "target_pad" in options:
            self.target_pad = self.pad_colors.index(options["target_pad"])
        self._place_objects(rng)
        self.velocity[:] = 0
        self.steps = 0
        return self._obs(), self._info()

    def _place_objects(self, rng: np.random.Generator) -> None:
        """Rejection-sample positions with clearance; the target never starts on its pad."""
        margin = self.pad_half + 0.02
        for _ in range(1000):
            pads = rng.uniform(margin, 1 - margin, (self.task.n_pads, 2))
            blocks = rng.uniform(0.15, 0.85, (self.task.n_blocks, 2))
            pusher = rng.uniform(0.1, 0.9, 2)
            pts = np.concatenate([pads, blocks, pusher[None]])
            d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 10
            pad_pad = d[: len(pads), : len(pads)].min() > 2.4 * self.pad_half
            rest = d[len(pads) :, :].min() > 0.16
            if pad_pad and rest:
                self.pads, self.blocks, self.pusher = pads, blocks, pusher
                return
        raise RuntimeError("could not place tabletop objects")

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        before = self.pusher.copy()
        substeps = 4
        for _ in range(substeps):
            self.pusher = np.clip(
                self.pusher + action * self.step_size / substeps, self.pusher_radius, 1 - self.pusher_radius
            )
            self._resolve_contacts()
        self.velocity = (self.pusher - before) * self.control_freq
        self.steps += 1
        info = self._info()
        terminated = bool(info["success"])
        truncated = self.steps >= self.max_steps
        return self._obs(), float(terminated), terminated, truncated, info

    def _resolve_contacts(self) -> None:
        reach = self.pusher_radius + self.block_radius
        for i in range(len(self.blocks)):
            delta = self.blocks[i] - self.pusher
            dist = np.linalg.norm(delta)
            if dist < reach:
                normal = delta / dist if dist > 1e-9 else np.array([1.0, 0.0])
                self.blocks[i] = self.pusher + normal * reach
        for i in range(len(self.blocks)):
            for j in range(i + 1, len(self.blocks)):
                delta = self.blocks[j] - self.blocks[i]
                dist = np.linalg.norm(delta)
                if dist < 2 * self.block_radius:
                    normal = delta / dist if dist > 1e-9 else np.array([1.0, 0.0])
                    push = (2 * self.block_radius - dist) / 2 * normal
                    self.blocks[i] -= push
                    self.blocks[j] += push
        self.blocks = np.clip(self.blocks, self.block_radius, 1 - self.block_radius)

    # -- observation -----------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        block = self.block_colors[self.target_block]
        if self.task.kind == "reach":
            return f"move to the {block} block"
        return f"push the {block} block onto the {self.pad_colors[self.target_pad]} pad"

    def swapped_instruction(self, seed: int = 0) -> str:
        """The instruction for another block on the table (the instruction-swap check)."""
        others = [c for i, c in enumerate(self.block_colors) if i != self.target_block]
        block = others[np.random.default_rng(seed).integers(len(others))]
        if self.task.kind == "reach":
            return f"move to the {block} block"
        return f"push the {block} block onto the {self.pad_colors[self.target_pad]} pad"

    def is_success(self) -> bool:
        block = self.blocks[self.target_block]
        if self.task.kind == "reach":
            return bool(np.linalg.norm(block - self.pusher) <= self.pusher_radius + self.block_radius + 0.01)
        return bool(
            np.abs(block - self.pads[self.target_pad]).max() <= self.pad_half - 0.3 * self.block_radius
        )

    def _obs(self) -> dict:
        state = np.concatenate([self.pusher, self.velocity]).astype(np.float32)
        return {
            "images": {c: self._render(c) for c in self.cameras},
            "state": state,
            "instruction": self.instruction,
        }

    def _info(self) -> dict:
        return {
            "success": self.is_success(),
            "task": self.name,
            "target_block": self.block_colors[self.target_block],
            "target_pad": self.pad_colors[self.target_pad],
        }

    def render(self):
        return self._render(self.cameras[0] if self.cameras else "top")

    def _render(self, camera: str) -> np.ndarray:
        if camera not in self._pix:  # render() of an env built without cameras
            self._pix[camera] = pixel_centres(*image_sizes_per_camera(self.image_size, [camera])[camera])
        pix = self._pix[camera]
        h, w = pix[0].shape
        if camera == "top":
            origin, extent = np.zeros(2), 1.0
        else:  # wrist: 0.5 x 0.5 window centred on the pusher
            origin, extent = self.pusher - 0.25, 0.5
        px = origin[0] + pix[0] * extent
        py = origin[1] + pix[1] * extent
        img = np.empty((h, w, 3), dtype=np.uint8)
        img[:] = TABLE
        outside = (px < 0) | (px > 1) | (py < 0) | (py > 1)
        img[outside] = (90, 80, 70)
        ring = 0.3 * self.pad_half
        for pos, color in zip(self.pads, self.pad_colors, strict=True):
            dx, dy = np.abs(px - pos[0]), np.abs(py - pos[1])
            inside = (dx <= self.pad_half) & (dy <= self.pad_half)
            img[inside & ((dx > self.pad_half - ring) | (dy > self.pad_half - ring))] = COLORS[color]
            img[inside & (dx <= self.pad_half - ring) & (dy <= self.pad_half - ring)] = (
                np.array(COLORS[color]) + 2 * TABLE.astype(int)
            ) // 3
        for pos, color in zip(self.blocks, self.block_colors, strict=True):
            img[(np.abs(px - pos[0]) <= self.block_radius) & (np.abs(py - pos[1]) <= self.block_radius)] = (
                COLORS[color]
            )
        d2 = (px - self.pusher[0]) ** 2 + (py - self.pusher[1]) ** 2
        img[d2 <= self.pusher_radius**2] = PUSHER
        img[(d2 <= (0.5 * self.pusher_radius) ** 2)] = (200, 200, 200)
        return img

    # -- privileged state for the scripted expert and for auxiliary training targets ------------
    def training_targets(self) -> np.ndarray:
        """(4,) float32 (`TARGET_NAMES`): the named block's centre, then the goal's: the named pad's for push;
        for reach, whose instruction names no pad, the block's again (every target is then one the words
        determine)."""
        block = self.blocks[self.target_block]
        goal = block if self.task.kind == "reach" else self.pads[self.target_pad]
        return np.concatenate([block, goal]).astype(np.float32)

    def privileged_state(self) -> dict:
        return {
            "pusher": self.pusher.copy(),
            "block": self.blocks[self.target_block].copy(),
            "pad": self.pads[self.target_pad].copy(),
            "blocks": self.blocks.copy(),
        }
