"""Runs inside LeRobot's own Python 3.12 venv (`make test-lerobot`), with vla-client installed there:
LeRobot's real `SO101Follower` driven by vla_client's `ControlLoop` against a real `vla serve`, without
hardware.

    python lerobot_robot_side.py URL FRAMES_DIR WORK_DIR OUT.json

The serial port is replaced by `FeetechServos`, an emulation of six STS3215 servos at the byte level (Feetech
protocol 0: ping, read, write, sync read, sync write, checksums), so every layer above it is LeRobot's own:
`FeetechMotorsBus` (handshake, calibration check, configuration, normalization) and `SO101Follower`. The
servos reach each goal position within a tick. The camera is a LeRobot `Camera` that serves image files.
OUT.json gets every goal position the servos received (decoded by LeRobot's own normalization), the
positions they held before each, and the loop's episode log.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np

MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
RANGE = (1024, 3072)  # every servo's calibrated range, raw ticks
START = [3000, 2048, 1100, 2048, 2048, 1500]  # where the arm rests at connect (raw ticks)
GOAL, PRESENT, TORQUE = 42, 56, 40  # STS3215 control table addresses


class FeetechServos:
    """Six STS3215 servos on one bus, at the level of the bytes on the wire."""

    def __init__(self):
        self.memory = {i: bytearray(256) for i in range(1, len(MOTORS) + 1)}
        for i, mem in self.memory.items():
            mem[0:2] = bytes([3, 10])  # firmware 3.10
            mem[3:5] = (777).to_bytes(2, "little")  # model number of the STS3215
            mem[9:11] = RANGE[0].to_bytes(2, "little")  # Min_Position_Limit
            mem[11:13] = RANGE[1].to_bytes(2, "little")  # Max_Position_Limit
            mem[PRESENT : PRESENT + 2] = START[i - 1].to_bytes(2, "little")
        self.goals: list[tuple[int, int, int]] = []  # (motor id, goal written, position held before)
        self.rx = bytearray()

    @staticmethod
    def status(motor: int, params: bytes = b"") -> bytes:
        body = bytes([motor, len(params) + 2, 0]) + params
        return b"\xff\xff" + body + bytes([~sum(body) & 0xFF])

    def write(self, motor: int, address: int, data: bytes) -> None:
        mem = self.memory[motor]
        if address == GOAL and mem[TORQUE]:
            goal = int.from_bytes(data[:2], "little") & 0x7FFF  # sign-magnitude, bit 15
            self.goals.append((motor, goal, int.from_bytes(mem[PRESENT : PRESENT + 2], "little")))
            mem[PRESENT : PRESENT + 2] = data[:2]  # a servo at rest reaches its goal within a tick
        mem[address : address + len(data)] = data

    def handle(self, packet: bytes) -> None:
        assert packet[:2] == b"\xff\xff", packet
        motor, length, instruction = packet[2], packet[3], packet[4]
        params = packet[5 : 3 + length]
        assert packet[3 + length] == ~sum(packet[2 : 3 + length]) & 0xFF, "bad checksum"
        if instruction == 0x01 and motor in self.memory:  # ping
            self.rx += self.status(motor)
        elif instruction == 0x02 and motor in self.memory:  # read
            address, n = params[0], params[1]
            self.rx += self.status(motor, bytes(self.memory[motor][address : address + n]))
        elif instruction == 0x03:  # write
            targets = self.memory if motor == 0xFE else [motor] if motor in self.memory else []
            for m in targets:
                self.write(m, params[0], bytes(params[1:]))
            if motor in self.memory:
                self.rx += self.status(motor)
        elif instruction == 0x82:  # sync read: each servo answers in turn
            address, n = params[0], params[1]
            for m in params[2:]:
                if m in self.memory:
                    self.rx += self.status(m, bytes(self.memory[m][address : address + n]))
        elif instruction == 0x83:  # sync write: no answer
            address, n = params[0], params[1]
            for at in range(2, len(params), n + 1):
                if params[at] in self.memory:
                    self.write(params[at], address, bytes(params[at + 1 : at + 1 + n]))


SERVOS = FeetechServos()


class FakeSerial:
    """What `scservo_sdk.PortHandler` opens instead of ``serial.Serial``: bytes go to the servos."""

    def __init__(self, port=None, baudrate=None, bytesize=None, timeout=None):
        self.port, self.is_open = port, True

    @property
    def in_waiting(self) -> int:
        return len(SERVOS.rx)

    def read(self, n: int) -> bytes:
        out = bytes(SERVOS.rx[:n])
        del SERVOS.rx[:n]
        return out

    def write(self, packet) -> int:
        SERVOS.handle(bytes(packet))
        return len(packet)

    def reset_input_buffer(self) -> None:
        SERVOS.rx.clear()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.is_open = False


def image_file_camera(frames_dir: Path):
    from lerobot.cameras.camera import Camera
    from lerobot.cameras.configs import CameraConfig

    files = sorted(frames_dir.glob("*.png"))

    class ImageFileCamera(Camera):
        """A LeRobot camera whose frames are image files, served in turn."""

        def __init__(self):
            import cv2

            self.frames = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
            h, w = self.frames[0].shape[:2]
            super().__init__(CameraConfig(fps=30, width=w, height=h))
            self.count, self._connected = 0, False

        @property
        def is_connected(self) -> bool:
            return self._connected

        @staticmethod
        def find_cameras():
            return []

        def connect(self, warmup: bool = True) -> None:
            self._connected = True

        def read(self):
            frame = self.frames[self.count % len(self.frames)]
            self.count += 1
            return frame.copy()

        def async_read(self, timeout_ms: float = 200):
            return self.read()

        def read_latest(self, max_age_ms: int = 500):
            return self.read()

        def disconnect(self) -> None:
            self._connected = False

    return ImageFileCamera()


def main(url: str, frames_dir: str, work: str, out: str) -> None:
    from lerobot.motors import MotorCalibration
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig
    from vla_client import ControlLoop, RobotClient, RobotSpec, SafetyConfig
    from vla_client.adapters.lerobot import LeRobotRobot

    calibration = Path(work) / "calibration"
    calibration.mkdir(parents=True, exist_ok=True)
    calib = {m: MotorCalibration(i, 0, 0, *RANGE).__dict__ for i, m in enumerate(MOTORS, 1)}
    (calibration / "arm.json").write_text(json.dumps(calib))
    client = RobotClient(url, timeout_s=5)
    spec = RobotSpec.from_server(client.connect())
    config = SO101FollowerConfig(port="/dev/ttyFAKE", id="arm", calibration_dir=calibration)
    with patch("scservo_sdk.port_handler.serial.Serial", FakeSerial):
        robot = SO101Follower(config)
        robot.cameras = {"front_cam": image_file_camera(Path(frames_dir))}
        robot.connect(calibrate=False)  # LeRobot's handshake, calibration check and motor configuration
        arm = LeRobotRobot(robot, spec, instruction="pick up the cube", camera_map={"front": "front_cam"})
        start = arm.observe()["state"].tolist()
        SERVOS.goals.clear()
        loop = ControlLoop(arm, client, execute_steps=4, safety=SafetyConfig())
        began = time.perf_counter()
        episode = loop.run_episode(seed=0, max_steps=24)
        loop.close()
        decode = robot.bus._normalize  # LeRobot's own raw -> degrees / 0..100
        goals, before = [], []
        for at in range(0, len(SERVOS.goals), len(MOTORS)):
            tick = sorted(SERVOS.goals[at : at + len(MOTORS)])  # one sync write: every servo once
            assert [m for m, _, _ in tick] == list(range(1, 7)), tick
            goals.append(list(decode({m: g for m, g, _ in tick}).values()))
            before.append(list(decode({m: p for m, _, p in tick}).values()))
        arm.close()
    client.close()
    result = {
        "start": start,
        "goals": goals,
        "before": before,
        "actions": episode.actions,
        "sources": episode.sources,
        "steps": episode.steps,
        "wall_s": time.perf_counter() - began,
        "rate_hz": loop.rate_hz,
        "torque_after_close": [SERVOS.memory[i][TORQUE] for i in range(1, 7)],
        "limited": episode.limited_actions,
        "state_keys": arm.state_keys,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
