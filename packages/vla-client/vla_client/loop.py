"""`ControlLoop`: run a robot at a fixed rate from chunks a policy server sends, through the safety layer.

Each tick (period ``1 / rate_hz``): observe (with a timeout; a stale or late observation means hold); take a
reply that arrived; when the executor wants a new chunk, serialize the observation on this thread and send it
in the background while the current chunk keeps running; pass the executor's action for this step (or the
operator's, or a hold) through the `SafetyLayer`; act; sleep to the next tick. Chunks are indexed from the
step their observation was taken, and a new chunk takes over ``lead`` steps after its request (``lead``: the
p95 round trip in periods, rounded up, plus one), so the steps that pass during the round trip are never
replayed. The network is never waited on inside a tick: when no received chunk covers the step (server slow,
gone, erroring, or its chunk refused) the robot holds in that same tick, and the loop keeps requesting.

Ctrl-C or SIGTERM commands a hold at the next tick boundary, then stops; an exception anywhere ends in a hold
and ``robot.stop()``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .chunking import ChunkRequest, EpisodeStepper, request_seed
from .client import RobotClient
from .robot import Robot
from .safety import SafetyConfig, SafetyLayer

log = logging.getLogger("vla_client.loop")

SOURCES = ("policy", "hold", "operator")


@dataclass
class EpisodeLog:
    steps: int = 0
    success: bool | None = None
    held_steps: int = 0  # steps that sent a hold (no chunk, refused action, stale observation, stop)
    holds: dict[str, int] = field(default_factory=dict)  # held steps by reason
    refused_actions: int = 0  # non-finite or wrong-shape actions that never reached the robot
    limited_actions: int = 0  # actions the safety layer's step or position limits changed
    operator_steps: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by kind: timeout, connection, or the server's kind
    round_trip_ms: list[float] = field(default_factory=list)
    late_ticks: int = 0  # ticks that started more than a tenth of a period after their time
    lead_steps: int = 0
    stopped_by: str | None = None  # SIGINT, SIGTERM or the exception's type when the episode ended early
    # per tick: when it started against its schedule, and where its time went (ms)
    lateness_ms: list[float] = field(default_factory=list)
    observe_ms: list[float] = field(default_factory=list)
    act_ms: list[float] = field(default_factory=list)
    tick_ms: list[float] = field(default_factory=list)  # the tick's whole work (observe + act + bookkeeping)
    wait_ms: list[float] = field(default_factory=list)  # slept after it
    actions: list[list[float]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # per step: policy, hold or operator
    wall_s: float = 0.0

    PER_TICK = ("lateness_ms", "observe_ms", "act_ms", "tick_ms", "wait_ms")

    @property
    def max_tick_ms(self) -> float:
        return max(self.tick_ms, default=0.0)

    def summary(self) -> dict[str, Any]:
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("actions", "sources", "round_trip_ms", *self.PER_TICK)
        }
        for name in ("round_trip_ms", *self.PER_TICK):
            values = np.asarray(getattr(self, name) or [0.0])
            stem = name.removesuffix("_ms")
            out[f"{stem}_ms_p50"] = float(np.percentile(values, 50))
            out[f"{stem}_ms_p95"] = float(np.percentile(values, 95))
            out[f"{stem}_ms_p99"] = float(np.percentile(values, 99))
        out["max_tick_ms"] = self.max_tick_ms
        return out

    def ticks(self) -> dict[str, list[float]]:
        """Per-tick timing, for control.json."""
        return {name: getattr(self, name) for name in self.PER_TICK}


class Operator:
    """A teleoperation source that can take over from the policy (a leader arm, a gamepad, a scripted
    expert in simulation). While ``engaged`` its actions are sent (still through the safety layer) and
    recorded with source ``operator``; when it hands back, the policy is asked for a fresh chunk."""

    def reset(self, seed: int | None = None) -> None:  # noqa: B027 - optional
        pass

    def engaged(self, step: int, obs: dict) -> bool:
        raise NotImplementedError

    def action(self, step: int, obs: dict) -> np.ndarray:
        raise NotImplementedError


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived; the loop holds and stops at the next tick boundary."""


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
        safety: SafetyConfig | None = None,
        start_timeout_s: float = 30.0,
        request_timeout_s: float | None = None,
        observe_timeout_s: float | None = 1.0,
        max_obs_age_s: float | None = None,
        allow_fps_mismatch: bool = False,
        operator: Operator | None = None,
        recorder: Any = None,
    ):
        self.robot, self.client, self.operator, self.recorder = robot, client, operator, recorder
        meta = robot.meta
        self.rate_hz = float(rate_hz or meta.fps)
        self.period = 1.0 / self.rate_hz
        self.strategy, self.execute_steps, self.decay = strategy, execute_steps, ensemble_decay
        self.fixed_lead, self.start_timeout_s = lead_steps, start_timeout_s
        self.observe_timeout_s, self.max_obs_age_s = observe_timeout_s, max_obs_age_s
        self.safety = SafetyLayer(meta, safety)
        client.check(meta)
        served_fps = client.metadata.get("fps")
        if served_fps and not allow_fps_mismatch and not math.isclose(float(served_fps), self.rate_hz):
            raise ValueError(
                f"the served policy was trained at {float(served_fps):g} Hz but this loop runs at "
                f"{self.rate_hz:g} Hz: its chunks would play at the wrong speed. Set "
                f"rate_hz={served_fps}, or allow_fps_mismatch=true if you know the policy is rate-independent"
            )
        # openpi's servers do not declare the horizon: the first chunk's length says it
        declared = client.metadata.get("action_horizon")
        self.horizon: int | None = int(declared) if declared else None
        self.request_timeout_s = request_timeout_s
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vla-request")
        self.observer = ThreadPoolExecutor(1, thread_name_prefix="vla-observe")
        self._stop_signal: str | None = None
        self._state: np.ndarray | None = None  # the last measured state (the safety layer's reference)
        self._last: np.ndarray | None = None  # the last command sent
        self._fresh = False  # whether _state was measured after _last was sent
        self._in_flight: Future | None = None  # the background request, if one is running

    def _measured(self) -> np.ndarray | None:
        """The state to hold at: None once a command was sent after it (a hold then repeats that command
        instead of pulling the robot back to where it was measured)."""
        return self._state if self._fresh else None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.observer.shutdown(wait=False)

    # -- signals ---------------------------------------------------------------------------------------
    def _install_signals(self) -> dict | None:
        if threading.current_thread() is not threading.main_thread():
            return None  # only the main thread receives signals; the caller handles them there

        def request_stop(signum, frame):
            if self._stop_signal:  # a second Ctrl-C: the loop is stuck (in a driver call); leave now
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
        return previous

    @staticmethod
    def _restore_signals(previous: dict | None) -> None:
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)

    # -- observations ----------------------------------------------------------------------------------
    def _observe(self, pending: Future | None) -> tuple[dict | None, Future | None, str | None]:
        """(observation, still-running observe call, why there is none). A hung driver is not called
        again until its call returns."""
        if self.observe_timeout_s is None:
            return self.robot.observe(), None, None
        future = pending or self.observer.submit(self.robot.observe)
        try:
            obs = future.result(timeout=self.observe_timeout_s if pending is None else 0)
        except FutureTimeout:
            return None, future, "observe_timeout"
        if self.max_obs_age_s is not None and "timestamp" in obs:
            age = time.monotonic() - float(obs["timestamp"])
            if age > self.max_obs_age_s:
                return None, None, "stale_observation"
        return obs, None, None

    def _first_chunk(self, seed: int | None) -> tuple[np.ndarray, float]:
        """Blocking: the robot is at rest until the first chunk, so waiting is safe here."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._stop_signal:
                raise StopRequested(self._stop_signal)
            obs = self.robot.observe()
            self._state, self._fresh = obs.get("state"), True
            try:
                seed0 = None if seed is None else request_seed(seed, 0)
                reply = self.client.infer(obs, seed=seed0, timeout_s=self.start_timeout_s)
                return reply.actions, reply.round_trip_ms
            except (ConnectionError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"no first chunk within {self.start_timeout_s} s; robot not started: {e}"
                    ) from e
                time.sleep(min(0.2, self.period))

    def episodes(
        self, count: int, seed: int | None = None, max_steps: int | None = None
    ) -> Iterator[EpisodeLog]:
        """Run up to ``count`` episodes (seeds ``seed``, ``seed + 1``, ...; unseeded when ``seed`` is None),
        yielding each; none follows an episode that a signal stopped."""
        for i in range(count):
            episode = self.run_episode(seed=None if seed is None else seed + i, max_steps=max_steps)
            yield episode
            if episode.stopped_by:
                return

    # -- one episode -----------------------------------------------------------------------------------
    def run_episode(self, seed: int | None = None, max_steps: int | None = None) -> EpisodeLog:
        previous = self._install_signals()
        episode = EpisodeLog()
        self.robot.reset(seed)
        if self.operator is not None:
            self.operator.reset(seed)
        if self.recorder is not None:
            self.recorder.start_episode(seed)
        began = time.perf_counter()
        try:
            self._run(episode, seed, max_steps)
        except BaseException as e:
            episode.stopped_by = e.args[0] if isinstance(e, StopRequested) else type(e).__name__
            # the last command of an interrupted episode is a hold, then the robot's own stop
            hold = self.safety.hold(self._measured(), self._last, "stop")
            try:
                if hold is not None:  # None: nothing measured or sent yet, so the robot has not moved
                    self.robot.act(hold)
                    episode.actions.append(hold.tolist())
                    episode.sources.append("hold")
                    episode.held_steps += 1
            finally:
                self.robot.stop()
            if not isinstance(e, StopRequested):
                raise
            log.warning("stopped by %s: held, then robot.stop()", episode.stopped_by)
        finally:
            self._restore_signals(previous)
            if self._in_flight is not None:  # the client is not shared across threads: let it finish
                wait([self._in_flight])
                self._in_flight = None
            counts = self.safety.counts
            episode.holds = dict(counts.holds)
            episode.refused_actions, episode.limited_actions = counts.refused, counts.limited
            episode.wall_s = time.perf_counter() - began
            episode.success = self.robot.success
            if self.recorder is not None:
                self.recorder.end_episode(episode.success, aborted=episode.stopped_by is not None)
            self.safety.counts = type(counts)()
        return episode

    def _run(self, episode: EpisodeLog, seed: int | None, max_steps: int | None) -> None:
        self._state = self._last = None
        self._fresh = False
        self._stop_signal = None
        chunk, rt = self._first_chunk(seed)
        if self.horizon is None:
            self.horizon = len(chunk)
        # eval's stepper; rtc's delay (the frozen prefix) is set per request from the measured round trip
        stepper = EpisodeStepper(
            self.strategy, self.horizon, self.execute_steps, self.decay, delay=0, seed=seed
        )
        stepper.receive(chunk, stepper.request(0))
        timeout = self.request_timeout_s or max(self.horizon * self.period, 0.05)
        episode.round_trip_ms.append(rt)
        episode.requests += 1
        lead = self._lead(episode.round_trip_ms)
        warned_lead = False
        # (reply future, request, activation step, discard: asked before an operator took over)
        pending: tuple[Future, ChunkRequest, int, bool] | None = None
        observing: Future | None = None
        failing, operating = False, False
        anchor = time.perf_counter()  # tick k is due at anchor + k * period
        k = 0
        while max_steps is None or k < max_steps:
            if self._stop_signal:
                raise StopRequested(self._stop_signal)
            tick = time.perf_counter()
            lateness = tick - (anchor + k * self.period)
            if lateness > 0.1 * self.period:
                # re-anchor on this tick: the next one comes a full period later, never at once
                episode.late_ticks += 1
                anchor = tick - k * self.period
            episode.lateness_ms.append(max(lateness, 0.0) * 1e3)
            obs, observing, no_obs = self._observe(observing)
            t_obs = time.perf_counter()
            if obs is not None:
                self._state, self._fresh = obs.get("state"), True
            if pending is not None and pending[0].done():
                future, request, activate, discard = pending
                pending = None
                try:
                    reply = future.result()
                    if not discard:
                        stepper.receive(reply.actions, request, activate)
                    if failing:
                        log.warning("step %d: the server answers again", k)
                        failing = False
                    episode.round_trip_ms.append(reply.round_trip_ms)
                    lead = self._lead(episode.round_trip_ms)
                except Exception as e:  # noqa: BLE001 - every failure mode means: hold and retry
                    stepper.failed()
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
            if not warned_lead and self.strategy == "receding" and stepper.execute + lead > self.horizon:
                log.warning(
                    "execute (%d) + lead (%d steps: the p95 round trip at %g Hz) exceeds the chunk (%d): "
                    "the robot will hold between chunks; lower execute_steps or the rate, or speed up"
                    " the server",
                    stepper.execute, lead, self.rate_hz, self.horizon,
                )  # fmt: skip
                warned_lead = True
            operator_now = self.operator is not None and obs is not None and self.operator.engaged(k, obs)
            if operating and not operator_now:
                stepper.restart()  # handed back: the policy starts over from what the robot sees now
                if pending is not None:  # a chunk asked for before the takeover is not used
                    pending = (*pending[:3], True)
            operating = operator_now
            if obs is not None and not operating and pending is None and stepper.wants_chunk(k):
                request = stepper.request(k, delay=lead)
                # serialized here, on the loop thread: the frame owns copies of the camera buffers
                prepared = self.client.prepare(obs, request.seed, request.rtc)
                # receding horizon switches to the new chunk `lead` steps on (the old one runs meanwhile);
                # temporal ensembling and rtc take it on arrival (rtc freezes its first `delay` steps)
                activate = k + lead if self.strategy == "receding" else k
                pending = (self.pool.submit(self.client.send, prepared, timeout), request, activate, False)
                self._in_flight = pending[0]
                episode.requests += 1
            planned = stepper.action(k)
            if no_obs is not None:
                action, source = self.safety.hold(self._measured(), self._last, no_obs), "hold"
            elif operating:
                action, accepted = self.safety.filter(self.operator.action(k, obs), self._state, self._last)
                source = "operator" if accepted else "hold"
                episode.operator_steps += accepted
            elif planned is not None:
                action, accepted = self.safety.filter(planned, self._state, self._last)
                source = "policy" if accepted else "hold"
            else:
                action, source = self.safety.hold(self._state, self._last, "no_chunk"), "hold"
            episode.held_steps += source == "hold"
            t_act = time.perf_counter()
            if action is not None:  # None: a hold with nothing measured yet sends nothing (SafetyLayer.hold)
                self.robot.act(action)
                self._last, self._fresh = action, False
            done = time.perf_counter()
            if self.recorder is not None and obs is not None and action is not None:
                self.recorder.add_step(obs, action, source)
            episode.actions.append(None if action is None else action.tolist())
            episode.sources.append(source)
            episode.observe_ms.append((t_obs - tick) * 1e3)
            episode.act_ms.append((done - t_act) * 1e3)
            k += 1
            episode.steps = k
            episode.tick_ms.append((time.perf_counter() - tick) * 1e3)
            if self.robot.done:
                episode.wait_ms.append(0.0)
                break
            sleep = anchor + k * self.period - time.perf_counter()
            episode.wait_ms.append(max(sleep, 0.0) * 1e3)
            if sleep > 0:
                time.sleep(sleep)
        episode.lead_steps = lead

    def _lead(self, round_trips_ms: list[float]) -> int:
        """Steps of look-ahead: the p95 of the recent round trips in control periods, rounded up, plus one."""
        if self.fixed_lead is not None:
            return self.fixed_lead
        p95 = float(np.percentile(round_trips_ms[-16:], 95))
        lead = math.ceil(p95 / 1e3 / self.period) + 1
        return int(min(lead, self.horizon - 1))
