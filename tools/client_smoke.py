"""vla-client on its own, in a venv holding only it and its three dependencies (`make test-client-pythons`
runs this on Python 3.10 and 3.13): it imports nothing heavy, and a `ControlLoop` drives a robot through the
safety layer against a server speaking the protocol (served here by a few lines over websockets, since
`vla serve` needs the full stack). Exits non-zero on any failure; prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import threading

import numpy as np
import vla_client
from vla_client import ActionSpec, ControlLoop, Robot, RobotClient, RobotSpec, packb, unpackb

HEAVY = {"torch", "zarr", "transformers", "vla", "cv2", "lerobot"}
assert not HEAVY & {m.split(".")[0] for m in sys.modules}, sorted(HEAVY & set(sys.modules))

SPEC = RobotSpec(fps=50, cameras=["front"], image_size=(24, 32), state_dim=2,
                 action_space=ActionSpec(2, -1, 1, "absolute_joint_pos"))  # fmt: skip
METADATA = {"cameras": ["front"], "image_size": [24, 32], "state_dim": 2, "action_dim": 2,
            "action_horizon": 6, "fps": 50}  # fmt: skip


class Arm(Robot):
    meta = SPEC

    def reset(self, seed=None):
        self.q, self.sent = np.array([0.9, -0.9], np.float32), []

    def observe(self):
        return {
            "images": {"front": np.zeros((24, 32, 3), np.uint8)},
            "state": self.q.copy(),
            "instruction": "x",
        }

    def act(self, action):
        self.sent.append((self.q.copy(), np.asarray(action)))
        self.q = np.asarray(action, np.float32)


def serve(port: list[int], ready: threading.Event) -> None:
    from websockets.asyncio.server import serve as ws_serve

    async def handler(ws):
        await ws.send(packb(METADATA))
        async for message in ws:
            request = unpackb(message)
            chunk = np.full((6, 2), -0.5, np.float32)
            if request["request_id"] == 2:
                chunk[0, 0] = np.nan  # refused whole by the client
            await ws.send(packb({"actions": chunk, "request_id": request["request_id"]}))

    async def main():
        async with ws_serve(handler, "127.0.0.1", 0) as server:
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            await asyncio.Future()

    asyncio.run(main())


port, ready = [], threading.Event()
threading.Thread(target=serve, args=(port, ready), daemon=True).start()
assert ready.wait(10)
arm = Arm()
with RobotClient(f"ws://127.0.0.1:{port[0]}") as client:
    loop = ControlLoop(arm, client, execute_steps=3)
    episode = loop.run_episode(seed=0, max_steps=30)
    loop.close()
moves = [float(np.abs(a - q).max()) for q, a in arm.sent]
assert episode.steps == 30 and episode.errors == {"bad_chunk": 1}, episode.summary()
assert max(moves) <= 0.2 + 1e-6 and all(np.isfinite(a).all() for _, a in arm.sent)  # a tenth of the range
np.testing.assert_allclose(arm.q, [-0.5, -0.5])  # walked there at the limit
print(json.dumps({"python": sys.version.split()[0], "numpy": np.__version__,
                  "websockets": __import__("websockets").__version__, "vla_client": vla_client.__version__,
                  "steps": episode.steps, "max_move": round(max(moves), 3), "ok": True}))  # fmt: skip
