"""The control loop on real-sensor timing: observations with a timeout and an age limit, images serialized
on the loop thread (a driver may reuse its buffers), late ticks that never bunch two commands together, the
lead from the p95 round trip, and a warning when execute + lead exceeds the chunk. The server is a few lines
speaking the protocol on loopback, so each test sets the latency it needs."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest
from vla_client import ActionSpec, ControlLoop, Robot, RobotClient, RobotSpec, packb, unpackb

SPEC = RobotSpec(fps=20, cameras=["front"], image_size=(8, 8), state_dim=2,
                 action_space=ActionSpec(2, -1, 1, "joint_velocity"))  # fmt: skip


class ScriptedServer:
    """Answers every request with a (horizon, 2) chunk of 0.1 after ``delay_s``; keeps every request."""

    def __init__(self, horizon: int = 8, delay_s: float = 0.0):
        self.horizon, self.delay_s, self.requests = horizon, delay_s, []
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(10)
        self.url = f"ws://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        from websockets.asyncio.server import serve

        metadata = {"cameras": ["front"], "image_size": [8, 8], "state_dim": 2, "action_dim": 2,
                    "action_horizon": self.horizon, "fps": 20}  # fmt: skip

        async def handler(ws):
            await ws.send(packb(metadata))
            async for message in ws:
                request = unpackb(message)
                self.requests.append(request)
                delay = self.delay_s(len(self.requests)) if callable(self.delay_s) else self.delay_s
                await asyncio.sleep(delay)
                chunk = np.full((self.horizon, 2), 0.1, np.float32)
                await ws.send(packb({"actions": chunk, "request_id": request["request_id"]}))

        async def main():
            async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await asyncio.Future()

        asyncio.new_event_loop().run_until_complete(main())


class Driver(Robot):
    """A robot whose driver can be slow, stale or reuse its camera buffer."""

    meta = SPEC

    def __init__(self, slow_observe: dict[int, float] | None = None, stale: set[int] = frozenset(),
                 slow_act: dict[int, float] | None = None):  # fmt: skip
        self.slow_observe, self.stale, self.slow_act = slow_observe or {}, stale, slow_act or {}
        self.buffer = np.zeros((8, 8, 3), np.uint8)  # one buffer, refilled on every observe, as drivers do
        self.act_times: list[float] = []

    def reset(self, seed=None):
        self.n = 0

    def observe(self):
        self.n += 1
        time.sleep(self.slow_observe.get(self.n, 0.0))
        self.buffer[:] = self.n % 256  # the frame number, in every pixel
        stamp = time.monotonic() - (10.0 if self.n in self.stale else 0.0)
        return {"images": {"front": self.buffer}, "state": np.zeros(2, np.float32), "instruction": "x",
                "timestamp": stamp}  # fmt: skip

    def act(self, action):
        self.act_times.append(time.perf_counter())
        time.sleep(self.slow_act.get(len(self.act_times), 0.0))
        self.buffer[:] = 255  # the driver reuses its buffer right away


class SlowSendingClient(RobotClient):
    """A client whose network thread starts 20 ms late (a busy machine): whatever it serializes then, the
    driver has overwritten by now."""

    def send(self, request, timeout_s=None):
        time.sleep(0.02)
        return super().send(request, timeout_s)

    def infer(self, obs, seed=None, rtc=None, timeout_s=None):
        time.sleep(0.02)
        return super().infer(obs, seed, rtc, timeout_s)


def run(robot: Driver, server: ScriptedServer, steps: int = 20, client_class=RobotClient, **options):
    with client_class(server.url, timeout_s=2) as client:
        loop = ControlLoop(robot, client, execute_steps=4, **options)
        episode = loop.run_episode(seed=0, max_steps=steps)
        loop.close()
    return loop, episode


def test_slow_and_stale_observations_hold_the_robot():
    server = ScriptedServer()
    # observation 6 hangs for 0.25 s (observe_timeout 0.1 s): held until the driver returns; 12 and 13 are old
    robot = Driver(slow_observe={6: 0.25}, stale={12, 13})
    _, episode = run(robot, server, observe_timeout_s=0.1, max_obs_age_s=0.5)
    assert episode.holds.get("observe_timeout", 0) >= 1 and episode.holds.get("stale_observation") == 2
    assert episode.steps == 20 and episode.sources.count("hold") == episode.held_steps
    # the hung observe never stalled a tick past its timeout (plus the scheduler's slack)
    assert max(episode.observe_ms) < 100 + 30


def test_the_request_holds_the_image_as_observed_not_the_reused_buffer():
    server = ScriptedServer()
    robot = Driver()
    run(robot, server, client_class=SlowSendingClient)
    assert len(server.requests) >= 4
    for request in server.requests:
        frame = request["images"]["front"]
        assert frame.min() == frame.max() != 255  # the frame number it was observed as, never the overwrite


def test_a_late_tick_does_not_bring_the_next_one_forward():
    server = ScriptedServer()
    robot = Driver(slow_act={5: 0.075})  # act 5 overruns its 50 ms period by half
    _, episode = run(robot, server, steps=12)
    gaps = np.diff(robot.act_times) * 1e3
    assert episode.late_ticks == 1
    # after the overrun the next command comes a full period later: no two commands back to back
    assert gaps.min() > 0.8 * 50, gaps.round(1)


def test_lead_follows_the_p95_round_trip_and_a_too_long_lead_warns(caplog):
    # 15 requests: most answer at once, a few take 160 ms (> 3 periods of 50 ms): the p95 sets the lead
    delays = lambda n: 0.16 if n % 5 == 0 else 0.0  # noqa: E731
    server = ScriptedServer(delay_s=delays)
    with caplog.at_level(logging.WARNING, logger="vla_client.loop"):
        _, episode = run(Driver(), server, steps=60)
    rt = np.asarray(episode.round_trip_ms)
    assert np.median(rt) < 50 < np.percentile(rt, 95)
    assert episode.lead_steps == int(np.ceil(np.percentile(rt[-16:], 95) / 50)) + 1 >= 5
    # execute (4) + lead (>= 5) > horizon (8): the loop says the robot will hold between chunks
    assert any("exceeds the chunk" in r.message for r in caplog.records)


def test_the_request_timeout_is_the_chunks_duration():
    server = ScriptedServer(delay_s=lambda n: 1.0 if n == 2 else 0.0)  # the second request answers too late
    _, episode = run(Driver(), server, steps=30)
    assert episode.errors == {"timeout": 1}  # cut at 8 steps x 50 ms = 0.4 s, not the client's 2 s
    assert episode.steps == 30


@pytest.mark.parametrize("rate", [None, 20.0])
def test_the_rate_defaults_to_the_robots_fps(rate):
    loop, episode = run(Driver(), ScriptedServer(), steps=10, rate_hz=rate)
    assert loop.rate_hz == 20 and episode.wall_s >= 10 / 20 * 0.9
