"""Diffusion Policy ReplayBuffer Zarr (zarr v2: ``data/<key>``, ``meta/episode_ends``) -> vla Zarr.

``key_map`` maps source keys to vla keys: ``images/<camera>``, ``state`` or ``action``. Several
source keys mapped to ``state`` are concatenated in the order given. Float images in [0, 255]
(pusht stores them so) are rounded to uint8; float images in [0, 1] are scaled by 255.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from ..schema import ActionSpace, DatasetMeta
from ..writer import TrajectoryWriter
from .common import ConversionError, staged_dataset, summarize

DEFAULT_KEY_MAP = {"img": "images/image", "state": "state", "action": "action"}


def _open_source(src: str) -> zarr.Group:
    if str(src).endswith(".zip"):
        return zarr.open_group(zarr.storage.ZipStore(src, mode="r"), mode="r")
    return zarr.open_group(str(src), mode="r")


def _to_uint8(name: str, frames: np.ndarray) -> np.ndarray:
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ConversionError(f"data/{name} has dtype {frames.dtype}; expected uint8 or float images")
    scale = 255.0 if frames.max(initial=0) <= 1.0 else 1.0
    if frames.min(initial=0) < 0 or frames.max(initial=0) * scale > 255:
        raise ConversionError(
            f"data/{name} has values outside [0, 255] (or [0, 1]); cannot store as uint8 images"
        )
    return np.rint(frames * scale).astype(np.uint8)


def from_diffusion_policy(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key_map: dict[str, str] | None = None,
    instruction: str = "complete the task",
    fps: float = 10.0,
    env: str | None = None,
    image_codec: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    started = time.perf_counter()
    key_map = dict(key_map or DEFAULT_KEY_MAP)
    root = _open_source(str(src))
    for required in ("data", "meta/episode_ends"):
        if required not in root:
            raise ConversionError(
                f"{src}: no {required!r}; not a diffusion_policy ReplayBuffer (data/<key>, meta/episode_ends)"
            )
    data = root["data"]
    missing = [k for k in key_map if k not in data]
    if missing:
        raise ConversionError(f"{src}: key_map names {missing}, not in data/ (has {sorted(data.keys())})")
    targets = set(key_map.values())
    if "action" not in targets or not any(t.startswith("images/") for t in targets):
        raise ConversionError(
            f"key_map must map some key to 'action' and at least one to 'images/<camera>', got {key_map}"
        )
    bad = [
        t for t in targets if t not in ("state", "action") and not (t.startswith("images/") and len(t) > 7)
    ]
    if bad:
        raise ConversionError(f"key_map targets must be 'state', 'action' or 'images/<camera>'; got {bad}")
    ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
    n = int(ends[-1]) if len(ends) else 0
    for k in key_map:
        if data[k].shape[0] != n:
            raise ConversionError(
                f"{src}: data/{k} has {data[k].shape[0]} rows but meta/episode_ends[-1] = {n}"
            )
    cameras = {t.split("/", 1)[1]: k for k, t in key_map.items() if t.startswith("images/")}
    state_keys = [k for k, t in key_map.items() if t == "state"]
    action_key = next(k for k, t in key_map.items() if t == "action")
    action = np.asarray(data[action_key][:], dtype=np.float32)
    state = (
        np.concatenate([np.asarray(data[k][:], dtype=np.float32).reshape(n, -1) for k in state_keys], axis=1)
        if state_keys
        else np.zeros((n, 0), np.float32)
    )
    meta = DatasetMeta(
        fps=fps,
        cameras=list(cameras),
        image_size={cam: data[key].shape[1:3] for cam, key in cameras.items()},
        state_dim=state.shape[1],
        action_space=ActionSpace(
            dim=action.shape[1], low=action.min(0).tolist(), high=action.max(0).tolist()
        ),
        robot="unknown",
        env=env,
        extra={"source": "diffusion_policy", "key_map": key_map},
    )
    starts = np.concatenate([[0], ends[:-1]])
    with (
        staged_dataset(dst, overwrite) as tmp,
        TrajectoryWriter(tmp, meta, image_codec=image_codec) as writer,
    ):
        for s, e in tqdm(
            list(zip(starts, ends, strict=True)), desc="diffusion_policy", unit="ep", disable=not progress
        ):
            writer.add_episode(
                images={cam: _to_uint8(k, np.asarray(data[k][s:e])) for cam, k in cameras.items()},
                state=state[s:e],
                action=action[s:e],
                instruction=instruction,
                task=env or "",
                success=True,
            )
    return summarize(str(dst), str(src), "diffusion_policy", started)
