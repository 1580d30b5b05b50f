"""LeRobot dataset v3.0 <-> vla Zarr, with pyarrow and PyAV (no dependency on the lerobot package).

LeRobot v3.0 layout::

    meta/info.json                                  codebase_version, fps, features, path templates
    meta/tasks.parquet                              task string <-> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: length, tasks, dataset_from/to_index,
                                                    data/{chunk,file}_index, videos/<key>/{chunk_index,
                                                    file_index, from_timestamp, to_timestamp}
    data/chunk-000/file-000.parquet                 one row per frame: observation.state, action, timestamp,
                                                    frame_index, episode_index, index, task_index
                                                    (+ inline images for `image` features: {bytes, path})
    videos/<key>/chunk-000/file-000.mp4             frames of several episodes back to back

Video features are decoded with PyAV (AV1, H.264, ...). Writing uses ``video_codec`` (``libsvtav1``
as LeRobot does, ``libx264``, or ``libx264rgb`` which is lossless), or ``None`` to store images
inline as PNG.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..schema import ActionSpace, DatasetMeta
from ..store import TrajectoryStore
from ..writer import TrajectoryWriter
from .common import ConversionError, staged_dataset, summarize

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_PREFIX = "observation.images."
VLA_INFO_KEY = "vla"  # our export's extra info.json entry: what LeRobot's schema has no field for
CHUNKS_SIZE = 1000  # files per chunk directory, as LeRobot


# -- reading ---------------------------------------------------------------------------------
def decode_video(path: Path) -> np.ndarray:
    """All frames of a video file as uint8 (T, H, W, 3)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _decode_png(cell: Any) -> np.ndarray:
    import imageio.v3 as iio

    data = cell["bytes"] if isinstance(cell, dict) else cell
    img = np.asarray(iio.imread(io.BytesIO(data)))
    return img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)


def _read_parquets(paths: list[Path]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in paths]).to_pandas()


def _task_strings(root: Path) -> dict[int, str]:
    import pyarrow.parquet as pq

    path = root / "meta" / "tasks.parquet"
    if not path.exists():
        return {}
    df = pq.read_table(path).to_pandas()
    if "task" in df.columns:
        return dict(zip(df["task_index"].astype(int), df["task"].astype(str), strict=True))
    return {
        int(i): str(t) for t, i in zip(df.index, df["task_index"], strict=True)
    }  # LeRobot: task string is the index


def _image_hw(feature: dict[str, Any]) -> tuple[int, int]:
    """(H, W) of an image/video feature: its video info if present, else its shape (HWC or CHW)."""
    info = feature.get("info") or {}
    if "video.height" in info and "video.width" in info:
        return int(info["video.height"]), int(info["video.width"])
    shape = feature["shape"]
    if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def _feature_names(feature: dict[str, Any] | None, dim: int) -> list[str] | None:
    """A feature's per-dimension names (LeRobot writes a list, or {"motors": [...]}), if they fit ``dim``."""
    names = (feature or {}).get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def lerobot_action_kind(names: list[str] | None) -> str:
    """LeRobot robots send ``<motor>.pos`` goal positions: absolute joint targets."""
    if names and all(n.endswith(".pos") for n in names):
        return "absolute_joint_pos"
    return "continuous"


def _episode_task(episode: Any, first_frame: Any, tasks: dict[int, str]) -> str:
    """The episode's first task string, else the task of its first frame's task_index."""
    listed = episode.get("tasks")
    if listed is not None and len(listed):
        return str(listed[0])
    if "task_index" in first_frame:
        return tasks.get(int(first_frame["task_index"]), "")
    return ""


def from_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    state_key: str = "observation.state",
    action_key: str = "action",
    instruction: str | None = None,
    fps: float | None = None,
    image_codec: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Read a LeRobot v3.0 directory into a vla dataset; ``instruction`` replaces every episode's task.
    ``fps`` may only repeat what meta/info.json states (its video timestamps depend on it)."""
    started = time.perf_counter()
    root = Path(src)
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise ConversionError(f"{src}: no meta/info.json; not a LeRobot dataset")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ConversionError(
            f"{src}: LeRobot codebase_version {version!r}; only v3.x is read (convert v2.x with lerobot's "
            "own converter first)"
        )
    if fps is not None and float(fps) != float(info["fps"]):
        raise ConversionError(
            f"--fps {fps}: {src} states fps {info['fps']} in meta/info.json and its video timestamps follow "
            "it; LeRobot sources are not re-timed"
        )
    features = info.get("features", {})
    camera_keys = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
    if not camera_keys:
        raise ConversionError(
            f"{src}: no video or image features in meta/info.json (features: {sorted(features)})"
        )
    if action_key not in features:
        raise ConversionError(f"{src}: no {action_key!r} feature (features: {sorted(features)})")
    episode_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not episode_files:
        raise ConversionError(f"{src}: no meta/episodes/chunk-*/file-*.parquet")
    episodes = _read_parquets(episode_files).sort_values("episode_index").reset_index(drop=True)
    frames = _read_parquets(sorted((root / "data").glob("chunk-*/file-*.parquet")))
    frames = frames.sort_values(["episode_index", "frame_index"]).reset_index(drop=True)
    tasks = _task_strings(root)
    fps = float(info["fps"])
    video_template = info.get("video_path", VIDEO_PATH)

    action = np.stack(frames[action_key].to_numpy()).astype(np.float32)
    has_state = state_key in frames.columns
    state = (
        np.stack(frames[state_key].to_numpy()).astype(np.float32)
        if has_state
        else np.zeros((len(frames), 0), np.float32)
    )
    low, high = action.min(0), action.max(0)
    stats_path = root / "meta" / "stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text()).get(action_key, {})
        if "min" in stats and "max" in stats:
            low, high = np.minimum(low, stats["min"]), np.maximum(high, stats["max"])
    cameras = [k.removeprefix(IMAGE_PREFIX).replace("/", "_") for k in camera_keys]
    action_names = _feature_names(features[action_key], action.shape[1])
    ours = info.get(VLA_INFO_KEY) or {}  # what our own export adds to info.json
    meta = DatasetMeta(
        fps=fps,
        cameras=cameras,
        image_size={cam: _image_hw(features[key]) for cam, key in zip(cameras, camera_keys, strict=True)},
        state_dim=state.shape[1],
        state_names=_feature_names(features.get(state_key), state.shape[1]),
        action_space=ActionSpace(
            dim=action.shape[1],
            low=low.tolist(),
            high=high.tolist(),
            kind=str(ours.get("action_kind") or lerobot_action_kind(action_names)),
            names=action_names,
        ),
        robot=str(info.get("robot_type") or "unknown"),
        env=ours.get("env"),
        extra={"source": "lerobot", "codebase_version": version},
    )
    video_cache: dict[Path, np.ndarray] = {}
    with (
        staged_dataset(dst, overwrite) as tmp,
        TrajectoryWriter(tmp, meta, image_codec=image_codec) as writer,
    ):
        for _, ep in tqdm(
            episodes.iterrows(), total=len(episodes), desc="lerobot", unit="ep", disable=not progress
        ):
            e = int(ep["episode_index"])
            rows = frames.index[frames["episode_index"] == e].to_numpy()
            length = int(ep.get("length", len(rows)))
            if len(rows) != length:
                raise ConversionError(
                    f"{src}: episode {e} has {len(rows)} data rows but meta/episodes says length {length}"
                )
            images = {}
            for key, cam in zip(camera_keys, meta.cameras, strict=True):
                if features[key]["dtype"] == "image":
                    images[cam] = np.stack([_decode_png(c) for c in frames.loc[rows, key]])
                    continue
                path = root / video_template.format(
                    video_key=key,
                    chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                    file_index=int(ep[f"videos/{key}/file_index"]),
                )
                if not path.exists():
                    raise ConversionError(f"{src}: episode {e} points at missing video {path}")
                if path not in video_cache:
                    video_cache.clear()  # keep one decoded file per camera in memory at a time
                    video_cache[path] = decode_video(path)
                first = int(round(float(ep[f"videos/{key}/from_timestamp"]) * fps))
                clip = video_cache[path][first : first + length]
                if len(clip) != length:
                    raise ConversionError(
                        f"{src}: video {path} has {len(clip)} frames for episode {e} from frame {first}, "
                        f"expected {length}"
                    )
                images[cam] = clip
            task = _episode_task(ep, frames.loc[rows[0]], tasks)
            writer.add_episode(
                images=images,
                state=state[rows],
                action=action[rows],
                instruction=instruction or task,
                task=task,
                success=True,
            )
    return summarize(str(dst), str(src), "lerobot", started)


# -- writing ---------------------------------------------------------------------------------
def _encode_video(path: Path, frames: np.ndarray, fps: float, codec: str) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    lossless = codec == "libx264rgb"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height = w, h
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.options = (
            {"crf": "0", "preset": "ultrafast"} if lossless else {"crf": "30" if "av1" in codec else "18"}
        )
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """tasks.parquet as LeRobot writes it: the task string is the pandas index, ``task_index`` the column
    (LeRobotDataset reads a frame's task string from that index)."""
    import pandas as pd

    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(path)


def _image_feature(h: int, w: int, video_codec: str | None, fps: float) -> dict[str, Any]:
    feature: dict[str, Any] = {
        "dtype": "video" if video_codec else "image",
        "shape": [h, w, 3],
        "names": ["height", "width", "channels"],
    }
    if video_codec:
        feature["info"] = {
            "video.height": h,
            "video.width": w,
            "video.codec": video_codec,
            "video.pix_fmt": "rgb24" if video_codec == "libx264rgb" else "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        }
    return feature


LEROBOT_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES: q01 ... q99


def _feature_stats(values: np.ndarray) -> dict[str, Any]:
    """Per-dimension stats of a (N, D) feature, with the keys LeRobot writes (count, q01 ... q99 included)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if not len(values):
        return {}
    stats = {
        "min": values.min(0),
        "max": values.max(0),
        "mean": values.mean(0),
        "std": values.std(0),
        "count": np.array([len(values)]),
    }
    for q, value in zip(LEROBOT_QUANTILES, np.quantile(values, LEROBOT_QUANTILES, axis=0), strict=True):
        stats[f"q{round(q * 100):02d}"] = value
    return {name: value.tolist() for name, value in stats.items()}


def _image_stats(images: Any, num_frames: int, max_frames: int = 200) -> dict[str, Any]:
    """Per-channel stats of a camera in [0, 1], shaped (3, 1, 1) as LeRobot's, from up to ``max_frames``
    evenly spaced frames (LeRobot samples too)."""
    index = np.unique(np.linspace(0, num_frames - 1, min(num_frames, max_frames)).astype(int))
    frames = np.asarray(images.get_orthogonal_selection((index,)), dtype=np.float64) / 255.0
    stats = _feature_stats(frames.reshape(-1, 3))
    stats = {name: np.reshape(value, (3, 1, 1)).tolist() for name, value in stats.items() if name != "count"}
    return stats | {"count": [len(index)]}


def _encode_png(img: np.ndarray) -> dict[str, Any]:
    import imageio.v3 as iio

    return {"bytes": iio.imwrite("<bytes>", img, extension=".png"), "path": None}


def to_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    video_codec: str | None = "libsvtav1",
    episodes_per_file: int = 1000,
    instruction: str | None = None,
    fps: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a LeRobot v3.0 dataset directory. ``video_codec=None`` stores images inline (PNG);
    ``instruction`` replaces every episode's task string, ``fps`` the dataset's frame rate."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    store = TrajectoryStore(src)
    meta = store.meta
    if fps is not None and fps <= 0:
        raise ConversionError(f"fps must be > 0, got {fps}")
    fps = float(fps or meta.fps)
    instructions = [instruction or str(text) for text in store.instructions]
    out = Path(dst)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(f".{out.name}.converting")
    shutil.rmtree(tmp, ignore_errors=True)
    cam_keys = {cam: f"{IMAGE_PREFIX}{cam}" for cam in meta.cameras}
    task_list = sorted(set(instructions))
    task_index = {t: i for i, t in enumerate(task_list)}
    state_all, action_all = store.load("state"), store.load("action")
    episode_rows: list[dict[str, Any]] = []
    file_frames: dict[int, list[dict[str, Any]]] = {}
    file_videos: dict[tuple[str, int], list[np.ndarray]] = {}
    try:
        for e in tqdm(range(store.num_episodes), desc="to lerobot", unit="ep", disable=not progress):
            sl = store.episode_slice(e)
            length = sl.stop - sl.start
            file_index = e // episodes_per_file
            chunk, fidx = divmod(file_index, CHUNKS_SIZE)
            row: dict[str, Any] = {
                "episode_index": e,
                "tasks": [instructions[e]],
                "length": length,
                "data/chunk_index": chunk,
                "data/file_index": fidx,
                "dataset_from_index": sl.start,
                "dataset_to_index": sl.stop,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
            frames = file_frames.setdefault(file_index, [])
            images = {cam: np.asarray(store.images(cam)[sl]) for cam in meta.cameras}
            for cam, key in cam_keys.items():
                if video_codec is None:
                    continue
                clips = file_videos.setdefault((cam, file_index), [])
                offset = sum(len(c) for c in clips)
                clips.append(images[cam])
                row |= {
                    f"videos/{key}/chunk_index": chunk,
                    f"videos/{key}/file_index": fidx,
                    f"videos/{key}/from_timestamp": offset / fps,
                    f"videos/{key}/to_timestamp": (offset + length) / fps,
                }
            for t in range(length):
                frame = {
                    "observation.state": state_all[sl.start + t].tolist(),
                    "action": action_all[sl.start + t].tolist(),
                    "timestamp": np.float32(t / fps),
                    "frame_index": t,
                    "episode_index": e,
                    "index": sl.start + t,
                    "task_index": task_index[instructions[e]],
                }
                if video_codec is None:
                    frame |= {key: _encode_png(images[cam][t]) for cam, key in cam_keys.items()}
                frames.append(frame)
            episode_rows.append(row)
        for file_index, rows in file_frames.items():
            chunk, fidx = divmod(file_index, CHUNKS_SIZE)
            path = tmp / DATA_PATH.format(chunk_index=chunk, file_index=fidx)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
        for (cam, file_index), clips in file_videos.items():
            chunk, fidx = divmod(file_index, CHUNKS_SIZE)
            _encode_video(
                tmp / VIDEO_PATH.format(video_key=cam_keys[cam], chunk_index=chunk, file_index=fidx),
                np.concatenate(clips),
                fps,
                video_codec,
            )
        episodes_path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episode_rows), episodes_path)
        _write_tasks(tmp / "meta" / "tasks.parquet", task_list)
        features = {
            key: _image_feature(*meta.image_sizes[cam], video_codec, fps) for cam, key in cam_keys.items()
        }
        features |= {
            "observation.state": {"dtype": "float32", "shape": [meta.state_dim], "names": meta.state_names},
            "action": {"dtype": "float32", "shape": [meta.action_dim], "names": meta.action_space.names},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            **{
                k: {"dtype": "int64", "shape": [1], "names": None}
                for k in ("frame_index", "episode_index", "index", "task_index")
            },
        }
        info = {
            "codebase_version": "v3.0",
            "robot_type": meta.robot,
            "total_episodes": store.num_episodes,
            "total_frames": store.num_frames,
            "total_tasks": len(task_list),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": int(fps) if fps.is_integer() else fps,  # LeRobot declares an int
            "splits": {"train": f"0:{store.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if video_codec else None,
            "features": features,
            VLA_INFO_KEY: {"action_kind": meta.action_space.kind, "env": meta.env},
        }
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
        stats = {"observation.state": _feature_stats(state_all), "action": _feature_stats(action_all)}
        stats |= {key: _image_stats(store.images(cam), store.num_frames) for cam, key in cam_keys.items()}
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # a partial conversion never sits at dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "source": str(src),
        "to": "lerobot",
        "dataset": str(dst),
        "episodes": store.num_episodes,
        "frames": store.num_frames,
        "video_codec": video_codec,
        "seconds": round(time.perf_counter() - started, 2),
    }
