"""Scripted expert for the built-in tabletop: get behind the target block, push it onto the pad."""

from __future__ import annotations

import numpy as np

from envs.builtin.tabletop import TabletopEnv


class TabletopExpert:
    """Privileged-state pushing controller (proportional control on pusher position)."""

    def __init__(self, env: TabletopEnv):
        self.env = env

    def reset(self) -> None:
        self.pushing = False

    def _toward(self, target: np.ndarray, pusher: np.ndarray, speed: float = 1.0) -> np.ndarray:
        return np.clip((target - pusher) / self.env.step_size, -speed, speed)

    def act(self) -> np.ndarray:
        env = self.env
        s = env.privileged_state()
        p, b = s["pusher"], s["block"]
        reach = env.pusher_radius + env.block_radius
        if env.task.kind == "reach":
            return self._toward(b - (b - p) / max(np.linalg.norm(b - p), 1e-9) * reach * 0.9, p).astype(
                np.float32
            )
        g = s["pad"]
        to_goal = g - b
        dist = np.linalg.norm(to_goal)
        u = to_goal / max(dist, 1e-9)
        rel = p - b
        behind = b - u * (reach + 0.015)
        aligned = np.dot(rel, -u) / max(np.linalg.norm(rel), 1e-9)
        if self.pushing and (aligned < 0.9 or np.linalg.norm(rel) > reach + 0.05):
            self.pushing = False  # lost the block: go around again
        if not self.pushing and np.linalg.norm(p - behind) < 0.012:
            self.pushing = True
        if self.pushing:
            lateral = rel - np.dot(rel, -u) * (-u)  # offset from the push line through the block
            slow = np.clip(dist / 0.08, 0.3, 1.0)
            return np.clip((u * slow * env.step_size - 1.5 * lateral) / env.step_size, -1, 1).astype(
                np.float32
            )
        # Approach the point behind the block without touching it: detour around its side.
        seg = behind - p
        t = np.clip(np.dot(b - p, seg) / max(np.dot(seg, seg), 1e-12), 0.0, 1.0)
        if np.linalg.norm(p + t * seg - b) < reach + 0.02:
            # Orbit the block towards the far side of the goal, at most 45 degrees per step.
            angle = np.arctan2(rel[1], rel[0])
            goal_angle = np.arctan2(-u[1], -u[0])
            delta = (goal_angle - angle + np.pi) % (2 * np.pi) - np.pi
            if abs(delta) < np.pi / 6:  # already behind the block: close in
                return self._toward(behind, p).astype(np.float32)
            angle += np.clip(delta, -np.pi / 4, np.pi / 4)
            around = b + (reach + 0.03) * np.array([np.cos(angle), np.sin(angle)])
            return self._toward(around, p).astype(np.float32)
        return self._toward(behind, p).astype(np.float32)
