"""The robot side end to end: `vla serve` in one process, a simulated robot driven through
`ControlLoop` in this one; the loop keeps its rate, follows the served chunks, and holds safely
when the server is killed mid-episode."""

import json
import threading
import time

import numpy as np
import pytest
import torch

from vla.cli import main
from vla.control import RecedingHorizon
from vla.models import load_policy
from vla.serve import ControlLoop, RobotClient, ServerProcess, SimRobot

RATE = 20.0


def test_loop_follows_the_served_policy_at_a_fixed_rate(server, random_checkpoint):
    robot = SimRobot("builtin/push")
    with RobotClient(server.url, timeout_s=5) as client:
        loop = ControlLoop(
            robot, client, rate_hz=RATE, allow_fps_mismatch=True, strategy="receding", execute_steps=4
        )
        episode = loop.run_episode(seed=3, max_steps=30)
        loop.close()
    assert episode.steps == 30 and not episode.errors
    assert episode.held_steps <= 2  # only a badly delayed reply on a loaded machine makes the robot wait
    # a tick never waits for the server's reply (round trip plus inference): its own work is a small
    # fraction of a period. The median, as a share of the period: a scheduler hiccup on a loaded box moves
    # one tick, not the median (tick timings as figures: benchmarks/serve_latency.py)
    assert episode.requests >= 30 // 4 and np.median(episode.tick_ms) < 0.25 * 1e3 / RATE
    assert episode.wall_s >= 30 / RATE * 0.95  # a fixed rate, not as fast as possible (late ticks only add)
    # the first chunk is the policy's answer to the reset observation with the loop's request seed
    robot.reset(3)
    chunk = load_policy(random_checkpoint).predict_chunk(
        robot.observe(), generator=[torch.Generator().manual_seed(3 * 100_003)]
    )[0]
    lead = min(episode.lead_steps, 4)
    np.testing.assert_allclose(np.asarray(episode.actions[:lead]), chunk[:lead], atol=1e-5)
    robot.close()


def test_loop_holds_safely_when_the_server_is_killed(server):
    robot = SimRobot("builtin/push")
    client = RobotClient(server.url, timeout_s=0.5, retry_s=0.2)
    loop = ControlLoop(
        robot, client, rate_hz=RATE, allow_fps_mismatch=True, strategy="receding", execute_steps=4
    )
    killed_at: list[float] = []

    def kill_soon():
        time.sleep(1.0)
        server.kill()
        killed_at.append(time.perf_counter())

    threading.Thread(target=kill_soon).start()
    start = time.perf_counter()
    episode = loop.run_episode(seed=0, max_steps=60)  # 3 s at 20 Hz; the server dies after ~1 s
    loop.close()
    client.close()
    assert episode.steps == 60  # the loop ran to the end: no exception, no wedge
    assert sum(episode.errors.values()) >= 1 and set(episode.errors) <= {"connection", "timeout"}
    sources = episode.sources
    first_hold = sources.index("hold")
    kill_step = int((killed_at[0] - start) * RATE)
    # after the kill the robot runs out the chunk it has (at most one horizon), then holds every step
    assert first_hold <= kill_step + 8 + 2
    assert all(s == "hold" for s in sources[first_hold:])
    held = np.asarray(episode.actions[first_hold:])
    np.testing.assert_array_equal(held, np.zeros_like(held))  # planar velocity: hold = zero motion
    # holding never blocks a tick: a tick that waited on the dead server (retry every 0.2 s, timeout
    # 0.5 s) would take at least 200 ms on every failed request; one such tick is a scheduler hiccup
    errors = sum(episode.errors.values())
    blocked = sum(t >= 200 for t in episode.tick_ms)
    assert blocked <= 1 < errors, (blocked, errors)
    assert np.median(episode.tick_ms) < 0.25 * 1e3 / RATE
    robot.close()


def test_executors_report_coverage():
    ex = RecedingHorizon(4)
    assert not ex.covers(0)
    ex.add_chunk(np.zeros((8, 2)), 10)
    assert ex.covers(10) and ex.covers(17) and not ex.covers(18) and not ex.covers(9)


def test_vla_robot_cli(server, tmp_path, capsys):
    # a policy trained at 10 Hz is not played at 40 Hz unless the user says so
    assert main(["robot", f"url={server.url}", "max_steps=3", "rate_hz=40"]) == 2
    assert "trained at 10 Hz but this loop runs at 40 Hz" in capsys.readouterr().err
    args = [
        "robot",
        f"url={server.url}",
        "episodes=2",
        "max_steps=12",
        "rate_hz=40",
        "allow_fps_mismatch=true",
    ]
    assert main([*args, f"out={tmp_path}", "strategy=rtc"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])
    assert summary["episodes"] == 2 and [e["steps"] for e in summary["per_episode"]] == [12, 12]
    assert summary["safety"] == {"action_kind": "velocity", "hold": "zero"}
    control = json.loads((tmp_path / "control.json").read_text())
    # per-tick timing, as docs/serving.md says: one value per step for each part of the tick
    for ticks in control["ticks"]:
        assert {len(v) for v in ticks.values()} == {12}, {k: len(v) for k, v in ticks.items()}
        assert set(ticks) == {"lateness_ms", "observe_ms", "act_ms", "tick_ms", "wait_ms"}
        assert all(w >= 0 for w in ticks["wait_ms"]) and sum(ticks["wait_ms"]) > 0
    # the default rate is the robot's fps, which the served policy shares
    assert main(["robot", f"url={server.url}", "max_steps=3"]) == 0
    assert json.loads((out := capsys.readouterr().out)[out.index("{") :])["rate_hz"] == 10
    # a robot whose cameras do not fit the served policy is refused before it moves
    assert main(["robot", f"url={server.url}", "env=metaworld/reach-v3", "max_steps=3"]) == 2
    assert "does not fit this robot: cameras" in capsys.readouterr().err


@pytest.mark.slow
def test_loop_reconnects_when_the_server_comes_back(random_checkpoint):
    first = ServerProcess(random_checkpoint)
    port = first.port
    robot = SimRobot("builtin/push", max_steps=int(RATE * 20))
    client = RobotClient(first.url, timeout_s=0.5, retry_s=0.2)
    loop = ControlLoop(robot, client, rate_hz=RATE, allow_fps_mismatch=True, execute_steps=4)
    servers = [first]

    failures = []

    def restart():
        # the same port on purpose: the robot reconnects to the URL it knows. asyncio binds with SO_REUSEADDR
        # (no TIME_WAIT wait); should another process take the port in the gap, retry, then say so
        time.sleep(1.0)
        first.kill()
        for _ in range(3):
            try:
                servers.append(ServerProcess(random_checkpoint, port=port, timeout_s=60))
                return
            except RuntimeError as e:
                failures.append(str(e)[-300:])
                time.sleep(0.5)

    restarter = threading.Thread(target=restart)
    restarter.start()
    episode = loop.run_episode(seed=0, max_steps=int(RATE * 20))
    loop.close()
    restarter.join()
    for srv in servers:
        if srv.alive():
            srv.kill()
    assert len(servers) == 2, f"the server could not restart on port {port}: {failures}"
    sources = episode.sources
    first_hold = sources.index("hold")
    assert "policy" in sources[first_hold:], "the loop never resumed after the server came back"
    assert client.reconnects >= 1 and episode.late_ticks <= 2


def test_the_robot_side_refuses_non_finite_and_misshapen_chunks(server):
    """A server (ours is fixed, a peer may not be) that answers with NaN or wrong-shape chunks after the
    first: the client refuses them, the loop holds and counts them, and no NaN reaches the robot."""
    from websockets.sync.server import serve

    from vla.serve import ServerError, packb, unpackb

    with RobotClient(server.url, timeout_s=5) as real:
        metadata = dict(real.connect())
    horizon, dim = metadata["action_horizon"], metadata["action_dim"]
    replies = [
        np.zeros((horizon, dim), np.float32),
        np.full((horizon, dim), np.nan, np.float32),
        np.zeros((horizon + 1, dim), np.float32),
        np.array([[np.inf] * dim] * horizon, np.float32),
    ]

    def lying(ws):
        ws.send(packb(metadata))
        for i, message in enumerate(ws):
            request = unpackb(message)
            ws.send(packb({"actions": replies[min(i, 1 + i % 3)], "request_id": request.get("request_id")}))

    with serve(lying, "127.0.0.1", 0) as fake:
        threading.Thread(target=fake.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{fake.socket.getsockname()[1]}"
        robot = SimRobot("builtin/push")
        acted = []
        real_act = robot.act
        robot.act = lambda action: acted.append(np.asarray(action)) or real_act(action)
        with RobotClient(url, timeout_s=2) as client:
            loop = ControlLoop(
                robot, client, rate_hz=RATE, allow_fps_mismatch=True, strategy="receding", execute_steps=2
            )
            episode = loop.run_episode(seed=1, max_steps=16)
            loop.close()
            for _ in replies[1:]:  # the client alone refuses each of them
                with pytest.raises(ServerError, match="bad_chunk"):
                    client.infer(robot.observe())
        fake.shutdown()
        robot.close()
    assert episode.errors.get("bad_chunk", 0) >= 3 and episode.held_steps > 0
    assert len(acted) == 16 and all(np.isfinite(a).all() and a.shape == (dim,) for a in acted)
