"""Serve a LeRobot-trained policy (ACT) over our wire protocol, inside LeRobot's own venv.

    python _lerobot_act_server.py CHECKPOINT --env builtin/push [--port 8010] [--threads 2]

CHECKPOINT is a ``lerobot-train`` checkpoint's ``pretrained_model`` directory. The policy is loaded with
LeRobot's own ``from_pretrained`` and wrapped in its own pre- and post-processors
(``make_pre_post_processors`` with the checkpoint's saved pipelines: batching, normalization with the
dataset's statistics, unnormalized actions), as ``lerobot-eval`` runs it. The robot side is the thin robot
package (``vla_client.protocol``), so ``vla eval url=ws://127.0.0.1:PORT`` evaluates it exactly as it
evaluates ``vla serve``: same seeds, same report. benchmarks/lerobot_act_compare.py starts it. One request
at a time; a bad request gets an error frame and the server keeps serving.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from vla_client.protocol import ProtocolError, error_text, packb, unpackb  # noqa: E402

MAX_FRAME = 16 * 2**20


def load(checkpoint: Path):
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    policy = ACTPolicy.from_pretrained(str(checkpoint)).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    return policy, pre, post


def metadata(policy, env: str, fps: float) -> dict:
    """What `vla eval url=` reads: the env, the cameras and sizes, the dims, the chunk length."""
    images = {k: v.shape for k, v in policy.config.image_features.items()}
    sizes = {k.removeprefix("observation.images."): list(shape[1:]) for k, shape in images.items()}
    (size,) = {tuple(s) for s in sizes.values()}  # our envs give every camera one size
    return {
        "server": "lerobot",
        "protocol": "openpi-websocket-msgpack",
        "model": {"name": f"lerobot {type(policy).__name__}", "chunk_size": policy.config.chunk_size},
        "env": env,
        "cameras": list(sizes),
        "image_size": list(size),
        "state_dim": int(policy.config.robot_state_feature.shape[0]),
        "action_dim": int(policy.config.action_feature.shape[0]),
        "action_horizon": int(policy.config.n_action_steps),
        "fps": fps,
    }


def chunk(policy, pre, post, md: dict, request: dict) -> np.ndarray:
    """One observation (our contract) -> (n_action_steps, action_dim) actions in env units."""
    if not isinstance(request, dict) or not isinstance(request.get("images"), dict):
        raise ProtocolError("a request must be a map with 'images' (camera -> uint8 HxWx3), 'state'")
    batch = {}
    for cam in md["cameras"]:
        image = np.asarray(request["images"].get(cam))
        if image.dtype != np.uint8 or image.shape != (*md["image_size"], 3):
            raise ProtocolError(
                f"images.{cam}: expected uint8 {(*md['image_size'], 3)}, got {image.dtype} {image.shape}"
            )
        batch[f"observation.images.{cam}"] = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    state = np.asarray(request.get("state"), dtype=np.float32)
    if state.shape != (md["state_dim"],):
        raise ProtocolError(f"state: expected float32 ({md['state_dim']},), got shape {state.shape}")
    batch["observation.state"] = torch.from_numpy(state)
    batch["task"] = str(request.get("instruction", ""))
    with torch.inference_mode():
        actions = policy.predict_action_chunk(pre(batch))[:, : md["action_horizon"]]
        actions = post(actions)
    return actions[0].float().numpy()


def serve(args) -> None:
    from websockets.sync.server import serve as ws_serve

    torch.set_num_threads(args.threads)
    policy, pre, post = load(args.checkpoint)
    md = metadata(policy, args.env, args.fps)

    def handler(ws) -> None:
        ws.send(packb(md))
        for raw in ws:
            if isinstance(raw, str):
                ws.send(error_text("bad_request", "requests are binary msgpack frames"))
                continue
            try:
                request = unpackb(raw, max_bytes=MAX_FRAME)
                t0 = time.perf_counter()
                actions = chunk(policy, pre, post, md, request)
                infer_ms = (time.perf_counter() - t0) * 1e3
            except (ProtocolError, ValueError, TypeError) as e:
                ws.send(error_text("bad_request", str(e)))
                continue
            reply = {"actions": actions.astype(np.float32), "server_timing": {"infer_ms": infer_ms}}
            if isinstance(request.get("request_id"), int):
                reply["request_id"] = request["request_id"]
            ws.send(packb(reply))

    with ws_serve(handler, "127.0.0.1", args.port, compression=None, max_size=MAX_FRAME) as server:
        print(json.dumps({"ready": f"ws://127.0.0.1:{args.port}", **md}), flush=True)
        server.serve_forever()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--env", required=True)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--threads", type=int, default=2)
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
