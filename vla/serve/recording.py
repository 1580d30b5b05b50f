"""Recording deployments (the data flywheel): every episode the control loop runs, written to a vla dataset
with who chose each executed action (policy, hold, operator) and when.

The loop calls ``start_episode`` / ``add_step`` / ``end_episode``; an episode is committed whole by
`TrajectoryWriter` (crash-safe, as `vla collect`), so a killed run loses at most the episode in progress. The
dataset validates and trains like any other; ``data/source`` marks the operator's takeovers (DAgger-style
corrections) and the robot's holds.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
from vla_client.loop import SOURCES

from vla.data.schema import DatasetMeta
from vla.data.writer import TrajectoryWriter


class DeploymentRecorder:
    def __init__(self, url: str, meta: DatasetMeta, task: str | None = None):
        meta = copy.deepcopy(meta)
        meta.extra["sources"] = list(SOURCES)
        meta.extra.pop("targets", None)  # a simulator's privileged training targets: a robot has none
        meta.created_with = "vla robot"
        self.writer = TrajectoryWriter(url, meta)
        if self.writer.meta.source_names != list(SOURCES):
            raise ValueError(
                f"{url} is not a recorded deployment (its sources are {self.writer.meta.source_names}, "
                f"expected {list(SOURCES)}): record into a new dataset"
            )
        self.task = task
        self.episodes = 0
        self._clear(None)

    def _clear(self, seed: int | None) -> None:
        self.seed, self.t0 = seed, time.monotonic()
        self.images: dict[str, list[np.ndarray]] = {cam: [] for cam in self.writer.meta.cameras}
        self.state: list[np.ndarray] = []
        self.action: list[np.ndarray] = []
        self.source: list[int] = []
        self.timestamp: list[float] = []
        self.instruction = ""

    def start_episode(self, seed: int | None) -> None:
        self._clear(seed)

    def add_step(self, obs: dict[str, Any], action: np.ndarray, source: str) -> None:
        """One executed step: the observation it was chosen from, the command sent, and who chose it."""
        for cam in self.images:
            self.images[cam].append(
                np.array(obs["images"][cam], dtype=np.uint8)
            )  # a copy: drivers reuse buffers
        self.state.append(np.asarray(obs["state"], dtype=np.float32))
        self.action.append(np.asarray(action, dtype=np.float32))
        self.source.append(SOURCES.index(source))
        self.timestamp.append(float(obs.get("timestamp", time.monotonic())) - self.t0)
        self.instruction = str(obs.get("instruction", ""))

    def end_episode(self, success: bool | None, aborted: bool = False) -> None:
        """Commit the episode (``success``: the simulator's or the operator's label; unknown counts as a
        failure). An episode without steps is dropped; an ``aborted`` one (Ctrl-C, a driver error) keeps the
        steps it ran (its final hold, sent without a new observation, is not a recorded step)."""
        if self.action:
            self.writer.add_episode(
                images={cam: np.stack(frames) for cam, frames in self.images.items()},
                state=np.stack(self.state),
                action=np.stack(self.action),
                instruction=self.instruction,
                task=self.task,
                success=bool(success),
                seed=self.seed,
                source=np.asarray(self.source, dtype=np.uint8),
                timestamp=np.asarray(self.timestamp),
            )
            self.episodes += 1
        self._clear(None)

    def close(self) -> None:
        self.writer.close()
