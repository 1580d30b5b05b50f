"""robomimic HDF5 -> vla Zarr.

robomimic layout: ``data/demo_<i>/{obs/<key>, actions, states, rewards, dones}``, with ``data``
attrs ``env_args`` (JSON: env_name, env_kwargs with control_freq, camera_names, robots).
Camera observations are the ``*_image`` keys; low-dim keys listed in ``state_keys`` are
concatenated (in that order) into ``state``.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from ..schema import ActionSpace, DatasetMeta
from ..writer import TrajectoryWriter
from .common import ConversionError, staged_dataset, summarize

DEFAULT_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
INSTRUCTIONS = {
    "Lift": "lift the red cube",
    "PickPlaceCan": "pick up the can and place it in the bin",
    "NutAssemblySquare": "put the square nut on the square peg",
    "ToolHang": "hang the tool on the frame",
    "TwoArmTransport": "hand the object over and place it in the bin",
}


def _demo_names(data: Any) -> list[str]:
    names = [k for k in data.keys() if re.fullmatch(r"demo_\d+", k)]
    if not names:
        raise ConversionError(f"no demo_<i> groups under 'data' (found keys {sorted(data.keys())[:10]})")
    return sorted(names, key=lambda k: int(k.split("_")[1]))


def from_robomimic(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    state_keys: list[str] | None = None,
    instruction: str | None = None,
    fps: float | None = None,
    image_codec: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    import h5py

    started = time.perf_counter()
    with h5py.File(src, "r") as f:
        if "data" not in f:
            raise ConversionError(f"{src}: no 'data' group; not a robomimic HDF5 file")
        data = f["data"]
        demos = _demo_names(data)
        env_args = json.loads(data.attrs.get("env_args", "{}"))
        env_name = env_args.get("env_name", "unknown")
        env_kwargs = env_args.get("env_kwargs", {})
        first_obs = data[demos[0]].get("obs")
        if first_obs is None:
            raise ConversionError(f"{src}: data/{demos[0]} has no 'obs' group")
        camera_keys = sorted(k for k in first_obs if k.endswith("_image"))
        if not camera_keys:
            raise ConversionError(
                f"{src}: no '*_image' observation keys in data/{demos[0]}/obs (keys: {sorted(first_obs)})"
            )
        if state_keys is None:
            state_keys = [k for k in DEFAULT_STATE_KEYS if k in first_obs] or sorted(
                k for k in first_obs if not k.endswith("_image") and first_obs[k].ndim == 2
            )
        missing = [k for k in state_keys if k not in first_obs]
        if missing:
            raise ConversionError(
                f"{src}: state keys {missing} not in data/{demos[0]}/obs (keys: {sorted(first_obs)})"
            )
        actions_all = [np.asarray(data[d]["actions"]) for d in demos]
        amin, amax = np.min([a.min(0) for a in actions_all], 0), np.max([a.max(0) for a in actions_all], 0)
        low = np.where(amin >= -1, -1.0, amin)  # OSC actions live in [-1, 1]; widen only if the data does not
        high = np.where(amax <= 1, 1.0, amax)
        robots = env_kwargs.get("robots") or ["unknown"]
        meta = DatasetMeta(
            fps=fps or env_kwargs.get("control_freq", 20),
            cameras=[k[: -len("_image")] for k in camera_keys],
            image_size={k[: -len("_image")]: first_obs[k].shape[1:3] for k in camera_keys},
            state_dim=sum(int(first_obs[k].shape[1]) for k in state_keys),
            action_space=ActionSpace(
                dim=actions_all[0].shape[1], low=low.tolist(), high=high.tolist(), kind="robomimic"
            ),
            robot=str(robots[0] if isinstance(robots, list) else robots).lower(),
            env=f"robosuite/{env_name}",
            extra={"source": "robomimic", "state_keys": list(state_keys)},
        )
        text = instruction or INSTRUCTIONS.get(env_name, f"perform the {env_name} task")
        with (
            staged_dataset(dst, overwrite) as tmp,
            TrajectoryWriter(tmp, meta, image_codec=image_codec) as writer,
        ):
            for name, actions in tqdm(
                list(zip(demos, actions_all, strict=True)),
                desc=f"robomimic {env_name}",
                unit="demo",
                disable=not progress,
            ):
                obs = data[name]["obs"]
                length = len(actions)
                for key in [*camera_keys, *state_keys]:
                    if key not in obs:
                        raise ConversionError(f"{src}: data/{name}/obs has no {key!r}")
                    if len(obs[key]) != length:
                        raise ConversionError(
                            f"{src}: data/{name}/obs/{key} has {len(obs[key])} frames but actions has "
                            f"{length}"
                        )
                writer.add_episode(
                    images={k[: -len("_image")]: np.asarray(obs[k]) for k in camera_keys},
                    state=np.concatenate([np.asarray(obs[k], dtype=np.float64) for k in state_keys], axis=1),
                    action=actions,
                    instruction=text,
                    task=env_name,
                    success=True,
                )
    return summarize(str(dst), str(src), "robomimic", started)
