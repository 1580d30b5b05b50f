"""Runs inside LeRobot's own Python 3.12 venv (`make test-lerobot`), never in vla's: LeRobot's reader and
writer, driven by tests/test_lerobot_compat.py through files.

    python lerobot_side.py read ROOT OUT.npz    LeRobotDataset(ROOT): every frame (images HWC uint8, state,
                                                action, task string, episode index) and its metadata
    python lerobot_side.py write SRC.npz ROOT   LeRobotDataset.create + add_frame/save_episode/finalize from
                                                the arrays and features in SRC.npz
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

logging.disable(logging.WARNING)  # torchcodec's failed load and its PyAV fallback print long tracebacks


def read(root: str, out: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/under-test", root=root)
    cameras = [k for k, f in ds.meta.features.items() if f["dtype"] in ("video", "image")]
    frames = [ds[i] for i in range(len(ds))]
    arrays = {
        "state": np.stack([f["observation.state"].numpy() for f in frames]),
        "action": np.stack([f["action"].numpy() for f in frames]),
        "episode_index": np.array([int(f["episode_index"]) for f in frames]),
        "frame_index": np.array([int(f["frame_index"]) for f in frames]),
    }
    for key in cameras:  # LeRobot returns float CHW in [0, 1]
        chw = np.stack([f[key].numpy() for f in frames])
        arrays[f"images/{key}"] = np.round(chw.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    meta = {
        "tasks": [f["task"] for f in frames],
        "fps": ds.meta.fps,
        "robot_type": ds.meta.robot_type,
        "features": {k: {**f, "shape": list(f["shape"])} for k, f in ds.meta.features.items()},
        "num_episodes": ds.meta.total_episodes,
    }
    np.savez(out, meta=json.dumps(meta), **arrays)


def write(src: str, root: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    data = np.load(src)
    spec = json.loads(str(data["spec"]))
    ds = LeRobotDataset.create(
        "local/written-by-lerobot",
        fps=spec["fps"],
        features=spec["features"],
        root=root,
        robot_type=spec["robot_type"],
        use_videos=True,  # features declared "video" become MP4s (LeRobot's default codec), "image" stay PNG
    )
    ends = data["episode_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    for e, (s, t) in enumerate(zip(starts, ends, strict=True)):
        for i in range(s, t):
            frame = {key: data[key][i] for key in spec["features"]}
            ds.add_frame(frame | {"task": spec["tasks"][e]})
        ds.save_episode()
    ds.finalize()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"read": read, "write": write}[command](*args)
    Path(args[-1]).exists() or sys.exit(f"{command} wrote nothing at {args[-1]}")
