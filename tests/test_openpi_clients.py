"""openpi compatibility, both ways, against the observation dicts openpi's example clients build (with
openpi's own image_tools and msgpack_numpy): the ALOHA and DROID keymaps turn them into the observation
contract, and our robot loop runs against a server that speaks openpi's protocol without our metadata."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from openpi_client import image_tools, msgpack_numpy
from PIL import Image

from vla.config import compose, to_object
from vla.data import ActionSpace
from vla.serve import ControlLoop, ProtocolError, RobotClient, SimRobot
from vla.serve.config import ServeConfig
from vla.serve.observation import ObservationParser


def scene(seed: int, size: int = 256) -> np.ndarray:
    """A smooth test image (resizing keeps it recognizable)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    blob = np.exp(-((xx - 0.2 - 0.1 * seed) ** 2 + (yy - 0.6) ** 2) * 15)
    return (np.stack([xx, yy, blob], -1) * 255).astype(np.uint8)


def at(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def parser_for(keymap: str, **meta_overrides) -> ObservationParser:
    """The parser `vla serve keymap=<keymap>` builds (the keymap composed from configs/keymap/)."""
    from conftest import make_meta

    cfg = to_object(compose("serve", ["checkpoint=unused", f"keymap={keymap}"]), ServeConfig)
    return ObservationParser(make_meta(**meta_overrides), cfg.obs_keys, transforms=cfg.transforms)


def test_openpi_aloha_client_observation():
    """examples/aloha_sim/env.py: {"state": qpos, "images": {"cam_high": CHW uint8 224 px}}, no prompt."""
    parser = parser_for(
        "openpi_aloha", cameras=["top"], image_size=(48, 64), state_dim=14,
        action_space=ActionSpace(dim=14, low=-1, high=1, kind="absolute_joint_pos"),
    )  # fmt: skip
    pixels = scene(0, 240)[
        :, :, :
    ]  # the sim renders 480x640; any size is padded/resized to 224 by the client
    img = image_tools.convert_to_uint8(image_tools.resize_with_pad(pixels, 224, 224))
    qpos = np.linspace(-1, 1, 14)
    obs = parser.parse({"state": qpos, "images": {"cam_high": np.transpose(img, (2, 0, 1))}}).obs
    assert obs["images"]["top"].shape == (48, 64, 3) and obs["images"]["top"].dtype == np.uint8
    assert np.abs(obs["images"]["top"].astype(int) - at(img, 48, 64)).max() <= 1  # HWC again, resized
    np.testing.assert_allclose(obs["state"], qpos, rtol=1e-6)
    assert obs["instruction"] == "transfer the cube"  # the keymap's default prompt
    # a channels-last image where channels-first is declared is refused, naming the layout
    with pytest.raises(ProtocolError, match=r"channels first \(3, H, W\)"):
        parser.parse({"state": qpos, "images": {"cam_high": img}})
    # openpi's real ALOHA sends four cameras; a one-camera checkpoint refuses the others by name
    with pytest.raises(ProtocolError, match="unknown cameras"):
        parser.parse({"state": qpos, "images": {"cam_high": img.transpose(2, 0, 1), "cam_low": img}})


def test_openpi_droid_client_observation():
    """examples/droid/main.py: two 224 px images, joint and gripper positions as separate keys, the prompt."""
    parser = parser_for(
        "openpi_droid", cameras=["exterior_image_1_left", "wrist_image_left"], image_size=(36, 64),
        state_dim=8, action_space=ActionSpace(dim=8, low=-1, high=1, kind="joint_velocity+gripper"),
    )  # fmt: skip
    exterior, wrist = scene(1, 180), scene(2, 180)
    request = {
        "observation/exterior_image_1_left": image_tools.resize_with_pad(exterior, 224, 224),
        "observation/wrist_image_left": image_tools.resize_with_pad(wrist, 224, 224),
        "observation/joint_position": np.arange(7, dtype=np.float64) / 10,
        "observation/gripper_position": np.array([0.8]),
        "prompt": "put the marker in the cup",
    }
    obs = parser.parse(request).obs
    np.testing.assert_allclose(obs["state"], [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8], rtol=1e-6)
    assert obs["instruction"] == "put the marker in the cup"
    for cam, key in [("exterior_image_1_left", "observation/exterior_image_1_left"),
                     ("wrist_image_left", "observation/wrist_image_left")]:  # fmt: skip
        assert obs["images"][cam].shape == (36, 64, 3)
        assert np.abs(obs["images"][cam].astype(int) - at(request[key], 36, 64)).max() <= 1
    with pytest.raises(ProtocolError, match="missing \\['observation/gripper_position'\\]"):
        parser.parse({k: v for k, v in request.items() if k != "observation/gripper_position"})


def test_the_robot_loop_runs_against_a_server_speaking_openpis_protocol():
    """openpi's servers send their policy's metadata (often empty) and a dict with ``actions``; our loop used
    to raise KeyError on the missing ``cameras`` and ``action_horizon``. The chunk length comes from the first
    reply; replies are packed with openpi's own msgpack_numpy."""
    from websockets.asyncio.server import serve

    seen = []

    async def handler(ws):
        await ws.send(msgpack_numpy.packb({}))
        async for message in ws:
            obs = msgpack_numpy.unpackb(message)
            seen.append(obs)
            step = np.full((10, 2), 0.05 * (len(seen) % 3), dtype=np.float32)
            await ws.send(msgpack_numpy.packb({"actions": step, "server_timing": {"infer_ms": 1.0}}))

    ready, port = threading.Event(), []

    def run():
        async def main():
            async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
                port.append(server.sockets[0].getsockname()[1])
                ready.set()
                await asyncio.Future()

        asyncio.new_event_loop().run_until_complete(main())

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    robot = SimRobot("builtin/push", cameras=["top"], image_size=64)
    with RobotClient(f"ws://127.0.0.1:{port[0]}", timeout_s=2) as client:
        loop = ControlLoop(robot, client, rate_hz=50, execute_steps=5)
        episode = loop.run_episode(seed=0, max_steps=20)
        loop.close()
    robot.close()
    assert loop.horizon == 10 and episode.steps == 20 and not episode.errors
    assert episode.requests >= 4 and len(seen) == episode.requests
    assert set(seen[0]) == {"images", "state", "instruction", "request_id", "seed"}
    assert seen[0]["images"]["top"].shape == (64, 64, 3)
