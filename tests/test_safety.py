"""The robot-side safety layer: what a hold means for each action kind, the per-step limit, refused actions,
and the loop under injected faults (NaN chunks, jumps, a killed server, an exception in the driver, SIGINT /
SIGTERM to a `vla robot` process), against a real `vla serve` on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from vla_client import (
    ActionKind,
    ActionSpec,
    ControlLoop,
    Robot,
    RobotClient,
    RobotSpec,
    SafetyConfig,
    SafetyLayer,
    packb,
    unpackb,
)

from vla.serve import ServerProcess


def so101_spec(kind: str = "absolute_joint_pos") -> RobotSpec:
    names = [f"{m}.pos" for m in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")]
    names.append("gripper.pos")
    return RobotSpec(
        fps=30,
        cameras=["front"],
        image_size=(48, 64),
        state_dim=6,
        action_space=ActionSpec(6, [-100] * 5 + [0], [100] * 5 + [100], kind, names),
        state_names=names,
    )


@pytest.mark.parametrize(
    "kind, mode, gripper",
    [
        ("absolute_joint_pos", "absolute", False),
        ("joint_pos", "absolute", False),
        ("ee_position+gripper", "absolute", True),
        ("osc_pose_delta+gripper", "delta", True),
        ("delta_xyz+gripper", "delta", True),
        ("planar_velocity", "velocity", False),
        ("joint_velocity+gripper", "velocity", True),
        ("continuous", "unknown", False),
    ],
)
def test_action_kinds_parse(kind, mode, gripper):
    assert ActionKind.parse(kind) == ActionKind(mode, gripper)


def test_an_absolute_robot_holds_where_it_is_not_at_zero():
    """The issue's SO-101: holding [60, 50, 10, 70, 0, 40], a zero hold would move up to 70 units in one tick
    and close the gripper. An absolute kind holds the measured position, every joint and the gripper."""
    layer = SafetyLayer(so101_spec())
    measured = np.float32([60, 50, 10, 70, 0, 40])
    np.testing.assert_array_equal(layer.hold(measured, None, "no_chunk"), measured)
    assert layer.hold_mode == "measured" and layer.counts.holds == {"no_chunk": 1}
    # the state may order its entries differently: names decide which one measures which action dimension
    spec = so101_spec()
    spec.state_names = spec.state_names[::-1]
    np.testing.assert_array_equal(SafetyLayer(spec).hold(measured[::-1], None, "x"), measured)
    # a kind that says nothing cannot be held safely by default: the error says what to set
    with pytest.raises(ValueError, match="safety.action_kind"):
        SafetyLayer(so101_spec("continuous"))
    assert SafetyLayer(so101_spec("continuous"), SafetyConfig(action_kind="absolute")).hold_mode == "measured"


def test_delta_and_velocity_hold_at_zero_and_keep_the_gripper():
    spec = so101_spec("delta_ee+gripper")
    spec.action_space = ActionSpec(4, [-1] * 3 + [-1], [1] * 3 + [1], "delta_ee+gripper")
    layer = SafetyLayer(spec)
    last = np.float32([0.5, -0.2, 0.1, 1.0])
    np.testing.assert_array_equal(layer.hold(None, last, "x"), [0, 0, 0, 1.0])
    np.testing.assert_array_equal(layer.hold(None, None, "x"), [0, 0, 0, 0])
    # a zero outside the bounds is clamped into them
    spec.action_space = ActionSpec(1, [0.2], [1.0], "joint_velocity")
    np.testing.assert_allclose(SafetyLayer(spec).hold(None, None, "x"), [0.2])


def test_step_limit_position_limits_and_refusals():
    layer = SafetyLayer(so101_spec(), SafetyConfig(position_low=[-50] * 6, position_high=[50] * 5 + [90]))
    measured = np.float32([0, 0, 0, 0, 0, 0])
    # default limit: a tenth of the range per tick (20 units for the joints, 10 for the gripper)
    command, ok = layer.filter([60, -5, 3, -100, 0, 100], measured, None)
    assert ok and layer.counts.limited == 1
    np.testing.assert_allclose(command, [20, -5, 3, -20, 0, 10])
    command, ok = layer.filter([45, 0, 0, 0, 0, 0], np.float32([40, 0, 0, 0, 0, 0]), None)
    np.testing.assert_allclose(command, [45, 0, 0, 0, 0, 0])  # within every limit: unchanged
    command, _ = layer.filter([100, 0, 0, 0, 0, 0], np.float32([45, 0, 0, 0, 0, 0]), None)
    assert command[0] == 50  # the position limit
    # NaN, inf, a wrong length, not numbers: refused, and the robot holds where it is
    for bad in ([np.nan, 0, 0, 0, 0, 0], [np.inf] * 6, [1, 2, 3], "nope", [[0] * 6]):
        command, ok = layer.filter(bad, measured + 7, None)
        assert not ok and np.isfinite(command).all()
        np.testing.assert_array_equal(command, measured + 7)
    assert layer.counts.refused == 5 and layer.counts.holds == {"refused": 5}
    # a delta action is limited in size, its gripper is not
    spec = so101_spec()
    spec.action_space = ActionSpec(3, -1, 1, "delta_xy+gripper")
    command, _ = SafetyLayer(spec, SafetyConfig(max_step=0.1)).filter([0.5, -0.05, 1.0], None, None)
    np.testing.assert_allclose(command, [0.1, -0.05, 1.0])


# -- the loop under faults ------------------------------------------------------------------------------
class ServoArm(Robot):
    """A simulated position-controlled arm (each command is a joint target it reaches within a tick, as a
    hobby servo at low speed does): the state is the measured joint positions. Every command is logged with
    the position measured before it, and observe / act can be made to fail."""

    def __init__(self, meta: RobotSpec, start: np.ndarray, fail_observe_at: int | None = None):
        self.meta, self.start, self.fail_observe_at = meta, np.asarray(start, np.float32), fail_observe_at
        self.commands: list[tuple[np.ndarray, np.ndarray]] = []  # (measured before, command)
        self.stopped = 0
        self.images = {c: np.zeros(meta.image_shape(c), np.uint8) for c in meta.cameras}

    def reset(self, seed=None):
        self.q = self.start.copy()
        self.observations = 0

    def observe(self):
        self.observations += 1
        if self.fail_observe_at is not None and self.observations > self.fail_observe_at:
            raise OSError("camera unplugged")
        state = np.zeros(self.meta.state_dim, np.float32)
        state[: len(self.q)] = self.q
        return {"images": dict(self.images), "state": state, "instruction": "push the red block"}

    def act(self, action):
        action = np.asarray(action, np.float32)
        assert action.shape == self.q.shape
        self.commands.append((self.q.copy(), action.copy()))
        self.q = action.copy()

    def stop(self):
        self.stopped += 1


class FaultProxy:
    """A websocket proxy between the robot and a real `vla serve`: replies pass through, except that reply
    number ``n`` in ``faults`` is changed (``nan``: one action becomes NaN; ``jump``: every action += 50;
    ``shape``: one action too few)."""

    def __init__(self, upstream: str, faults: dict[int, str]):
        self.upstream, self.faults, self.replies = upstream, faults, 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)
        self.url = f"ws://127.0.0.1:{self.port}"

    def _run(self, ready):
        from websockets.asyncio.client import connect
        from websockets.asyncio.server import serve

        async def handle(client):
            async with connect(self.upstream, max_size=None) as server:
                await client.send(await server.recv())  # metadata
                async for message in client:
                    await server.send(message)
                    reply = unpackb(await server.recv())
                    fault = self.faults.get(self.replies)
                    self.replies += 1
                    actions = np.array(reply["actions"])
                    if fault == "nan":
                        actions[1, 0] = np.nan
                    elif fault == "jump":
                        actions += 50
                    elif fault == "shape":
                        actions = actions[:-1]
                    await client.send(packb(reply | {"actions": actions}))

        async def main():
            async with serve(handle, "127.0.0.1", 0, max_size=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await asyncio.Future()

        self.loop.run_until_complete(main())


def arm_for(url: str, **arm_options) -> ServoArm:
    """A 2-joint position-controlled arm with the served policy's cameras and state (its actions, in
    [-1, 1], are taken as joint targets)."""
    with RobotClient(url) as client:
        spec = RobotSpec.from_server(client.connect())
    spec.action_space.kind = "absolute_joint_pos"
    spec.action_space.names, spec.state_names = None, None
    return ServoArm(spec, start=[0.9, -0.9], **arm_options)


def assert_safe(arm: ServoArm, limit: float) -> None:
    for measured, command in arm.commands:
        assert np.isfinite(command).all()
        assert np.abs(command - measured).max() <= limit + 1e-6, (measured, command)


def test_faulty_chunks_never_reach_the_robot_and_jumps_are_limited(server):
    proxy = FaultProxy(server.url, faults={2: "nan", 4: "jump", 6: "shape"})
    arm = arm_for(proxy.url)
    client = RobotClient(proxy.url, timeout_s=5)
    # state entries 0 and 1 measure the two joints (the rest is velocity)
    safety = SafetyConfig(state_to_action=[0, 1], max_step=0.05)
    loop = ControlLoop(arm, client, rate_hz=20, allow_fps_mismatch=True, execute_steps=3, safety=safety)
    episode = loop.run_episode(seed=1, max_steps=40)
    loop.close()
    client.close()
    assert episode.steps == 40 and len(arm.commands) == 40
    assert episode.errors.get("bad_chunk") == 2  # the NaN chunk and the short one, refused whole
    assert_safe(arm, 0.05)  # |a - q| <= limit at every step, through NaN, a +50 jump and a wrong shape
    assert episode.limited_actions > 0
    # the arm started at (0.9, -0.9): the random policy's first targets are far away, so it walks there at
    # the limit instead of jumping
    first = np.abs(arm.commands[0][1] - arm.commands[0][0])
    assert first.max() == pytest.approx(0.05, abs=1e-6)
    # a hold sends the measured position (absolute kind): the arm does not move on a held step
    for (measured, command), source in zip(arm.commands, episode.sources, strict=True):
        if source == "hold":
            np.testing.assert_array_equal(command, measured)


def test_a_driver_exception_or_a_killed_server_ends_in_a_hold(server):
    arm = arm_for(server.url, fail_observe_at=12)
    client = RobotClient(server.url, timeout_s=0.5, retry_s=0.2)
    loop = ControlLoop(arm, client, rate_hz=20, allow_fps_mismatch=True, execute_steps=3,
                       safety=SafetyConfig(state_to_action=[0, 1]))  # fmt: skip
    # a driver that raises mid-episode: the loop sends a hold, calls stop(), and re-raises
    with pytest.raises(OSError, match="camera unplugged"):
        loop.run_episode(seed=0, max_steps=50)
    # observation 1 asked for the first chunk, 2-12 ran eleven ticks, 13 raised: eleven commands and the hold
    assert arm.stopped == 1 and len(arm.commands) == 12
    measured, command = arm.commands[-1]
    np.testing.assert_array_equal(command, measured)  # held where it is, not sent to zero
    assert_safe(arm, 0.2)  # the default limit: a tenth of the [-1, 1] range

    # the server killed mid-episode: the arm holds its measured position every tick until the end
    arm.fail_observe_at, arm.commands = None, []
    threading.Timer(1.0, server.kill).start()
    episode = loop.run_episode(seed=0, max_steps=50)
    assert episode.steps == 50 and episode.holds.get("no_chunk", 0) > 10
    assert episode.sources[-1] == "hold" and arm.stopped == 1
    first_hold = episode.sources.index("hold")
    assert set(episode.sources[first_hold:]) == {"hold"}
    for measured, command in arm.commands[first_hold:]:
        np.testing.assert_array_equal(command, measured)
    assert_safe(arm, 0.2)
    loop.close()
    client.close()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_vla_robot_holds_then_stops(server, tmp_path, sig, code):
    cmd = [sys.executable, "-m", "vla.cli", "robot", f"url={server.url}", "episodes=3", f"out={tmp_path}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    err_chunks: list[str] = []
    reader = threading.Thread(target=lambda: err_chunks.extend(iter(lambda: proc.stderr.read(1), "")))
    reader.start()
    deadline = time.monotonic() + 60
    while "Hz" not in "".join(err_chunks) and time.monotonic() < deadline:  # the progress bar: episodes run
        time.sleep(0.1)
    time.sleep(1.0)  # ten ticks into the first episode
    proc.send_signal(sig)
    proc.wait(timeout=60)
    reader.join(10)
    err = "".join(err_chunks)
    assert proc.returncode == code, err[-2000:]
    control = json.loads((tmp_path / "control.json").read_text())
    assert control["stopped_by"] == sig.name and control["episodes"] == 1
    last = control["per_episode"][-1]
    assert last["stopped_by"] == sig.name and last["holds"].get("stop") == 1
    assert control["sources"][-1][-1] == "hold" and control["actions"][-1][-1] == [0.0, 0.0]
    assert f"stopped by {sig.name}" in err


@pytest.mark.slow
def test_robosuites_panda_through_the_robot_interface_holds_still_and_keeps_its_grip(tmp_path):
    """The stand-in for a Franka behind an end-effector delta controller: robosuite's Panda (OSC pose delta +
    gripper) as a `Robot`, served a policy, then the server killed: every held step commands zero motion and
    keeps the last gripper command."""
    from conftest import make_random_checkpoint

    from vla.serve import SimRobot

    checkpoint = make_random_checkpoint(tmp_path / "lift", env="robosuite/Lift", cameras=["agentview"],
                                        image_size=64)  # fmt: skip
    server = ServerProcess(checkpoint)
    robot = SimRobot("robosuite/Lift", cameras=["agentview"], image_size=64)
    try:
        client = RobotClient(server.url, timeout_s=1.0, retry_s=0.2)
        loop = ControlLoop(robot, client, execute_steps=4)
        assert str(loop.safety.kind) == "delta+gripper" and loop.safety.hold_mode == "zero"
        threading.Timer(2.0, server.kill).start()
        episode = loop.run_episode(seed=0, max_steps=120)  # 6 s at robosuite's 20 Hz
        loop.close()
        client.close()
    finally:
        robot.close()
        if server.alive():
            server.kill()
    assert episode.steps == 120 and episode.sources.count("policy") >= 8
    first_hold = episode.sources.index("hold")
    actions = np.asarray(episode.actions)
    assert set(episode.sources[first_hold:]) == {"hold"}
    np.testing.assert_array_equal(actions[first_hold:, :6], 0)  # the arm stops
    assert (actions[first_hold:, 6] == actions[first_hold - 1, 6]).all()  # the grip stays as it was
