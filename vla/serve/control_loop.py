"""`ControlLoop`: run a robot at a fixed rate from chunks a policy server sends.

Each tick (period ``1 / rate_hz``): take a reply that arrived; when the executor wants a new chunk, send the
current observation in the background while the current chunk keeps running; send the executor's action for
this step clamped to the action bounds; sleep to the next tick. Chunks are indexed from the step their
observation was taken, and a new chunk takes over ``lead`` steps after its request (``lead``: the measured
round trip in periods, rounded up, plus one), so the steps that pass during the round trip are never replayed
and each chunk runs ``execute`` steps. The network is never waited on inside a tick: when no received chunk
covers the step (server slow, gone, or erroring) the robot holds (zero motion, or the last action) in that
same tick, and the loop keeps requesting until the server answers again."""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.control import RealTimeChunking, make_executor, request_seed

from .client import RobotClient
from .robot import Robot

log = logging.getLogger("vla.serve.control")


@dataclass
class EpisodeLog:
    steps: int = 0
    success: bool | None = None
    held_steps: int = 0  # steps where no chunk covered the step and the robot held
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind: timeout, connection, or the server's kind
    round_trip_ms: list[float] = field(default_factory=list)
    late_ticks: int = 0  # ticks that started more than a period late (the loop never catches up by bursting)
    tick_ms: list[float] = field(
        default_factory=list
    )  # every tick's own work (observe + act + bookkeeping), ms
    lead_steps: int = 0
    actions: list[list[float]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # per step: "policy" or "hold"
    wall_s: float = 0.0

    @property
    def max_tick_ms(self) -> float:
        return max(self.tick_ms, default=0.0)

    def summary(self) -> dict[str, Any]:
        rt = np.asarray(self.round_trip_ms) if self.round_trip_ms else np.zeros(1)
        ticks = np.asarray(self.tick_ms) if self.tick_ms else np.zeros(1)
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("actions", "sources", "round_trip_ms", "tick_ms")
        }
        out.update(round_trip_ms_median=float(np.median(rt)), round_trip_ms_p95=float(np.percentile(rt, 95)))
        out.update(tick_ms_median=float(np.median(ticks)), tick_ms_p95=float(np.percentile(ticks, 95)))
        out.update(max_tick_ms=self.max_tick_ms)
        return out


def _request_seed(episode_seed: int | None, request: int) -> int | None:
    """Seeded episodes send seeded requests, so a run against the same server repeats its chunks."""
    return None if episode_seed is None else request_seed(episode_seed, request)


def hold_action(
    mode: str, kind: str, low: np.ndarray, high: np.ndarray, last: np.ndarray | None
) -> np.ndarray:
    """What the robot does when no chunk covers a step. ``zero``: zero command (stop, for velocity
    and delta actions); ``last``: repeat the last action (for absolute targets); ``auto``: zero, but
    a ``...+gripper`` action keeps its gripper command, so a held object is not dropped."""
    zero = np.clip(np.zeros_like(low), low, high)
    if mode == "zero" or last is None:
        return zero
    if mode == "last":
        return last.copy()
    if "gripper" in kind:
        zero[-1] = last[-1]
    return zero


class ControlLoop:
    def __init__(
        self,
        robot: Robot,
        client: RobotClient,
        rate_hz: float | None = None,
        strategy: str = "receding",
        execute_steps: int | None = None,
        ensemble_decay: float = 0.01,
        lead_steps: int | None = None,
        hold: str = "auto",
        start_timeout_s: float = 30.0,
    ):
        self.robot, self.client = robot, client
        self.rate_hz = rate_hz or robot.meta.fps
        self.period = 1.0 / self.rate_hz
        self.strategy, self.execute_steps, self.decay = strategy, execute_steps, ensemble_decay
        self.fixed_lead, self.hold, self.start_timeout_s = lead_steps, hold, start_timeout_s
        space = robot.meta.action_space
        self.low, self.high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
        self.kind = space.kind
        client.check(robot.meta)
        self.horizon = int(client.metadata["action_horizon"])
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vla-request")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # -- one episode ---------------------------------------------------------------------------------
    def _first_chunk(self, seed: int | None) -> tuple[np.ndarray, float]:
        """Blocking: the robot is at rest until the first chunk, so waiting is safe here."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                reply = self.client.infer(self.robot.observe(), seed=_request_seed(seed, 0))
                return reply.actions, reply.round_trip_ms
            except (ConnectionError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"no first chunk within {self.start_timeout_s} s; robot not started: {e}"
                    ) from e
                time.sleep(min(0.2, self.period))

    def run_episode(self, seed: int | None = None, max_steps: int | None = None) -> EpisodeLog:
        self.robot.reset(seed)
        episode = EpisodeLog()
        # rtc's delay (the frozen prefix) is set per request from the measured round trip
        executor = make_executor(self.strategy, self.horizon, self.execute_steps, self.decay, delay=0)
        chunk, rt = self._first_chunk(seed)
        episode.round_trip_ms.append(rt)
        episode.requests += 1
        executor.add_chunk(chunk, 0)
        lead = self._lead(rt)
        last_action: np.ndarray | None = None
        pending: tuple[Future, int, int] | None = None  # (reply future, request step, activation step)
        arrived: tuple[np.ndarray, int, int] | None = None  # a chunk waiting for its activation step
        chunk_step = 0  # the step of the server's last answered request (rtc continues that chunk)
        request_count = 1
        failing = False
        start = began = time.perf_counter()
        k = 0
        while max_steps is None or k < max_steps:
            tick = time.perf_counter()
            if pending is not None and pending[0].done():
                future, t_req, activate = pending
                pending = None
                try:
                    reply = future.result()
                    arrived, chunk_step = (reply.actions, t_req, activate), t_req
                    if failing:
                        log.warning("step %d: the server answers again", k)
                        failing = False
                    episode.round_trip_ms.append(reply.round_trip_ms)
                    lead = self._lead(float(np.median(episode.round_trip_ms[-8:])))
                except Exception as e:  # noqa: BLE001 - every failure mode means: hold and retry
                    kind = getattr(e, "kind", None) or (
                        "timeout"
                        if isinstance(e, TimeoutError)
                        else "connection"
                        if isinstance(e, ConnectionError)
                        else type(e).__name__
                    )
                    episode.errors[kind] = episode.errors.get(kind, 0) + 1
                    if not failing:  # log the change, not every retry
                        log.warning("step %d: request failed (%s): %s; holding while retrying", k, kind, e)
                        failing = True
            if arrived is not None and (k >= arrived[2] or not executor.covers(k)):
                executor.add_chunk(arrived[0], arrived[1])
                arrived = None
            if pending is None and arrived is None and (executor.needs_chunk(k) or not executor.covers(k)):
                rtc = None
                if isinstance(executor, RealTimeChunking):
                    executor.delay = min(lead, executor.execute)
                    rtc = (k - chunk_step, executor.delay)
                obs = self.robot.observe()
                request_seed = _request_seed(seed, request_count)
                # receding horizon switches to the new chunk `lead` steps on (the old one runs meanwhile);
                # temporal ensembling and rtc take it on arrival (rtc freezes its first `delay` steps)
                activate = k + lead if self.strategy == "receding" else k
                pending = (self.pool.submit(self.client.infer, obs, request_seed, rtc), k, activate)
                request_count += 1
                episode.requests += 1
            if executor.covers(k):
                action, source = executor.action(k), "policy"
            else:
                action, source = hold_action(self.hold, self.kind, self.low, self.high, last_action), "hold"
                episode.held_steps += 1
            action = np.clip(np.asarray(action, np.float32), self.low, self.high)
            self.robot.act(action)
            last_action = action
            episode.actions.append(action.tolist())
            episode.sources.append(source)
            k += 1
            episode.tick_ms.append((time.perf_counter() - tick) * 1e3)
            if self.robot.done:
                break
            next_tick = start + k * self.period
            now = time.perf_counter()
            if now < next_tick:
                time.sleep(next_tick - now)
            elif now - next_tick > self.period:
                episode.late_ticks += 1
                start += now - next_tick  # re-anchor: late ticks are not made up by a burst of actions
        if pending is not None:  # the client is not shared across threads: let the last request finish
            wait([pending[0]])
        episode.steps, episode.success = k, self.robot.success
        episode.lead_steps, episode.wall_s = lead, time.perf_counter() - began
        return episode

    def _lead(self, round_trip_ms: float) -> int:
        """Steps of look-ahead: the round trip in control periods, rounded up, plus one for jitter."""
        if self.fixed_lead is not None:
            return self.fixed_lead
        lead = math.ceil(round_trip_ms / 1e3 / self.period) + 1
        return int(min(lead, self.horizon - 1))


def run_robot(cfg) -> dict[str, Any]:
    """`vla robot`: episodes of a `SimRobot` driven through a running server (``RobotConfig``)."""
    from tqdm import tqdm

    from .robot import SimRobot

    robot = SimRobot(cfg.env, max_steps=cfg.max_steps)
    client = RobotClient(cfg.url, api_key=cfg.api_key, timeout_s=cfg.request_timeout_s)
    loop = ControlLoop(
        robot,
        client,
        cfg.rate_hz,
        cfg.strategy,
        cfg.execute_steps,
        cfg.ensemble_decay,
        cfg.lead_steps,
        cfg.hold,
    )
    episodes = []
    try:
        bar = tqdm(range(cfg.episodes), desc=f"{cfg.env} @ {loop.rate_hz:g} Hz", unit="episode")
        for i in bar:
            episodes.append(loop.run_episode(seed=cfg.seed + i))
            bar.set_postfix(success=sum(bool(e.success) for e in episodes), held=episodes[-1].held_steps)
    finally:
        loop.close()
        client.close()
        robot.close()
    summary = {
        "env": cfg.env,
        "url": cfg.url,
        "rate_hz": loop.rate_hz,
        "strategy": cfg.strategy,
        "server": {k: client.metadata.get(k) for k in ("model", "action_horizon", "fps")},
        "episodes": len(episodes),
        "successes": sum(bool(e.success) for e in episodes),
        "per_episode": [e.summary() for e in episodes],
    }
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "control.json").write_text(
            json.dumps(
                summary | {"actions": [e.actions for e in episodes], "sources": [e.sources for e in episodes]}
            )
        )
    return summary
