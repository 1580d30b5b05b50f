"""Chunk execution strategies. An executor is told each new chunk (H, D) with the control step it
was predicted at, and returns the action for the current step.

- ``receding``: execute the first ``execute`` actions of the newest chunk, then ask for a new one.
- ``ensemble``: temporal ensembling (ACT): ask for a chunk every ``execute`` steps and average every
  chunk's prediction for the current step, weight ``exp(-decay * age_rank)`` (older chunks first,
  as ACT).
- ``rtc``: real-time chunking: ask every ``execute`` steps; the answer takes ``delay`` steps, during
  which the old chunk keeps running; the request carries the old chunk's remaining plan as a
  guide (frozen for the first ``delay`` steps, softly weighted over the rest of the overlap), which
  the flow heads inpaint (`FlowHead.sample(guide=...)`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

import numpy as np


class ChunkExecutor(ABC):
    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def needs_chunk(self, t: int) -> bool: ...

    @abstractmethod
    def add_chunk(self, chunk: np.ndarray, t: int) -> None: ...

    @abstractmethod
    def action(self, t: int) -> np.ndarray: ...

    @abstractmethod
    def covers(self, t: int) -> bool:
        """Whether some received chunk still has an action for step t (a live loop holds the robot
        when none does, instead of repeating a chunk's last action)."""


class RecedingHorizon(ChunkExecutor):
    def __init__(self, execute: int):
        if execute < 1:
            raise ValueError(f"execute must be >= 1, got {execute}")
        self.execute = execute
        self.reset()

    def reset(self) -> None:
        self.chunk, self.start = None, 0

    def needs_chunk(self, t: int) -> bool:
        return self.chunk is None or t - self.start >= min(self.execute, len(self.chunk))

    def add_chunk(self, chunk: np.ndarray, t: int) -> None:
        self.chunk, self.start = np.asarray(chunk, dtype=np.float32), t

    def action(self, t: int) -> np.ndarray:
        if self.chunk is None:
            raise RuntimeError("no chunk yet: call add_chunk first")
        return self.chunk[min(t - self.start, len(self.chunk) - 1)]

    def covers(self, t: int) -> bool:
        return self.chunk is not None and 0 <= t - self.start < len(self.chunk)


class TemporalEnsemble(ChunkExecutor):
    def __init__(self, execute: int = 1, decay: float = 0.01):
        if execute < 1:
            raise ValueError(f"execute must be >= 1, got {execute}")
        self.execute, self.decay = execute, decay
        self.reset()

    def reset(self) -> None:
        self.chunks: deque[tuple[int, np.ndarray]] = deque()
        self.last = None

    def needs_chunk(self, t: int) -> bool:
        return self.last is None or t - self.last >= self.execute

    def add_chunk(self, chunk: np.ndarray, t: int) -> None:
        self.chunks.append((t, np.asarray(chunk, dtype=np.float32)))
        self.last = t

    def action(self, t: int) -> np.ndarray:
        while self.chunks and t - self.chunks[0][0] >= len(self.chunks[0][1]):
            self.chunks.popleft()  # chunks that no longer cover step t
        if not self.chunks:
            raise RuntimeError("no chunk covers this step: call add_chunk first")
        preds = np.stack([c[t - start] for start, c in self.chunks])
        weights = np.exp(-self.decay * np.arange(len(preds)))
        return (weights[:, None] * preds).sum(0) / weights.sum()

    def covers(self, t: int) -> bool:
        return any(0 <= t - start < len(c) for start, c in self.chunks)


class RealTimeChunking(ChunkExecutor):
    def __init__(self, execute: int, delay: int = 0):
        if execute < 1 or delay < 0 or delay > execute:
            raise ValueError(
                f"need 1 <= execute and 0 <= delay <= execute, got execute={execute} delay={delay}"
            )
        self.execute, self.delay = execute, delay
        self.reset()

    def reset(self) -> None:
        self.chunk, self.start, self.pending = None, 0, None

    def needs_chunk(self, t: int) -> bool:
        return self.pending is None and (self.chunk is None or t - self.start >= self.execute)

    def guide(self, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(guide (H, D), weights (H,)) for a chunk requested at step t, or None for the first chunk."""
        if self.chunk is None:
            return None
        return rtc_guide(self.chunk, t - self.start, horizon, self.delay)

    def add_chunk(self, chunk: np.ndarray, t: int) -> None:
        self.pending = (np.asarray(chunk, dtype=np.float32), t)
        if self.chunk is None or self.delay == 0:
            self._switch()

    def _switch(self) -> None:
        self.chunk, self.start = self.pending
        self.pending = None

    def action(self, t: int) -> np.ndarray:
        if self.pending is not None and t >= self.pending[1] + self.delay:
            self._switch()  # the answer "arrives" `delay` steps after the request
        if self.chunk is None:
            raise RuntimeError("no chunk yet: call add_chunk first")
        return self.chunk[min(t - self.start, len(self.chunk) - 1)]

    def covers(self, t: int) -> bool:
        if self.pending is not None and t >= self.pending[1] + self.delay:
            chunk, start = self.pending  # the chunk action(t) will switch to
        else:
            chunk, start = self.chunk, self.start
        return chunk is not None and 0 <= t - start < len(chunk)


def rtc_guide(chunk: np.ndarray, offset: int, horizon: int, delay: int) -> tuple[np.ndarray, np.ndarray]:
    """Real-time chunking's guide for a new chunk requested ``offset`` steps into ``chunk``:
    (guide (horizon, D), weights (horizon,)). The old plan's remaining actions, padded with its last
    one; weight 1 for the ``delay`` steps that run before the answer arrives, decaying over the rest
    of the overlap, 0 beyond it. Shared by the eval executor and the policy server."""
    chunk = np.asarray(chunk, dtype=np.float32)
    remaining = chunk[min(max(offset, 0), len(chunk) - 1) :]
    overlap = min(len(remaining), horizon)
    guide = np.repeat(remaining[-1:], horizon, axis=0)
    guide[:overlap] = remaining[:overlap]
    steps = np.arange(horizon)
    soft = np.exp(-3.0 * (steps - delay) / max(1, overlap - delay))
    weights = np.where(steps < delay, 1.0, np.where(steps < overlap, soft, 0.0)).astype(np.float32)
    return guide, weights


def make_executor(
    strategy: str, horizon: int, execute: int | None = None, decay: float = 0.01, delay: int = 0
) -> ChunkExecutor:
    if strategy == "receding":
        return RecedingHorizon(execute or max(1, horizon // 2))
    if strategy == "ensemble":
        return TemporalEnsemble(execute or 1, decay)
    if strategy == "rtc":
        return RealTimeChunking(execute or max(1, horizon // 2), delay)
    raise ValueError(f"unknown chunk execution strategy {strategy!r}; available: receding, ensemble, rtc")


def request_seed(episode_seed: int, request: int) -> int:
    """The noise seed of a chunk requested at step ``request`` of a seeded episode: evaluation and the robot
    loop both use it, so a run against a server repeats a local evaluation's chunks."""
    return episode_seed * 100_003 + request


@dataclass(frozen=True)
class ChunkRequest:
    """What to ask the policy for at step ``step``: the noise ``seed`` (None: the server picks), real-time
    chunking's continuation ``rtc = (offset into the running chunk, delay)`` for a server, and the same as a
    local ``guide`` (guide (H, D), weights (H,)) for a policy in this process."""

    step: int
    seed: int | None
    rtc: tuple[int, int] | None = None
    guide: tuple[np.ndarray, np.ndarray] | None = None


class EpisodeStepper:
    """One episode's chunk orchestration, shared by `vla eval` (each chunk answered at once) and the robot's
    `ControlLoop` (answered a round trip later): when to ask for a chunk and with which seed and guide, when a
    received chunk takes over, and the action for each step (None where no received chunk covers it: the
    robot holds). Chunks are indexed from the step their observation was taken; a seeded episode's chunk
    asked at step k samples with ``request_seed(seed, k)``, so a served policy repeats a local evaluation."""

    def __init__(
        self,
        strategy: str,
        horizon: int,
        execute: int | None = None,
        decay: float = 0.01,
        delay: int = 0,
        seed: int | None = None,
    ):
        self.strategy, self.horizon = strategy, horizon
        self.executor = make_executor(strategy, horizon, execute, decay, delay)
        self.seed = seed
        self.restart()

    @property
    def execute(self) -> int:
        return getattr(self.executor, "execute", 1)

    def restart(self, seed: int | None = None, keep_seed: bool = True) -> None:
        """Forget every chunk (a new episode, or the policy taking over again after an operator)."""
        self.executor.reset()
        if not keep_seed:
            self.seed = seed
        self.in_flight = False
        self.arrived: tuple[np.ndarray, int, int] | None = None  # (chunk, its step, the step it takes over)

    def wants_chunk(self, k: int) -> bool:
        """Whether to ask for a chunk at step k (never while one is in flight or waiting to take over)."""
        if self.in_flight or self.arrived is not None:
            return False
        return self.executor.needs_chunk(k) or not self.executor.covers(k)

    def request(self, k: int, delay: int | None = None) -> ChunkRequest:
        """The request for a chunk observed at step k; ``delay``: rtc's frozen prefix (the expected latency in
        steps) when it is measured rather than fixed."""
        ex, rtc, guide = self.executor, None, None
        if isinstance(ex, RealTimeChunking) and ex.chunk is not None:
            if delay is not None:
                ex.delay = min(delay, ex.execute)
            rtc = (k - ex.start, ex.delay)
            guide = ex.guide(k, self.horizon)
        self.in_flight = True
        return ChunkRequest(k, None if self.seed is None else request_seed(self.seed, k), rtc, guide)

    def receive(self, chunk: np.ndarray, request: ChunkRequest, activate: int | None = None) -> None:
        """A chunk answering ``request``; it takes over at step ``activate`` (default: at once), or earlier if
        nothing else covers the step then. Receding horizon keeps the old chunk running during the round
        trip; ensembling and rtc take a chunk on arrival (rtc freezes its first ``delay`` steps)."""
        self.in_flight = False
        start = request.step if activate is None else activate
        self.arrived = (np.asarray(chunk, dtype=np.float32), request.step, start)

    def failed(self) -> None:
        """The request got no chunk (timeout, connection, refused): ask again."""
        self.in_flight = False

    def action(self, k: int) -> np.ndarray | None:
        if self.arrived is not None and (k >= self.arrived[2] or not self.executor.covers(k)):
            self.executor.add_chunk(self.arrived[0], self.arrived[1])
            self.arrived = None
        return self.executor.action(k) if self.executor.covers(k) else None
