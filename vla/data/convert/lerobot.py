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
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
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
    hw = _image_hw(features[camera_keys[0]])
    low, high = action.min(0), action.max(0)
    stats_path = root / "meta" / "stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text()).get(action_key, {})
        if "min" in stats and "max" in stats:
            low, high = np.minimum(low, stats["min"]), np.maximum(high, stats["max"])
    meta = DatasetMeta(
        fps=fps,
        cameras=[k.removeprefix(IMAGE_PREFIX).replace("/", "_") for k in camera_keys],
        image_size=hw,
        state_dim=state.shape[1],
        action_space=ActionSpace(dim=action.shape[1], low=low.tolist(), high=high.tolist()),
        robot=str(info.get("robot_type") or "unknown"),
        extra={"source": "lerobot", "codebase_version": version},
    )
    video_cache: dict[Path, np.ndarray] = {}
    with staged_dataset(dst, overwrite) as tmp, TrajectoryWriter(tmp, meta) as writer:
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


def _encode_png(img: np.ndarray) -> dict[str, Any]:
    import imageio.v3 as iio

    return {"bytes": iio.imwrite("<bytes>", img, extension=".png"), "path": None}


def to_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    video_codec: str | None = "libsvtav1",
    episodes_per_file: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a LeRobot v3.0 dataset directory. ``video_codec=None`` stores images inline (PNG)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    store = TrajectoryStore(src)
    meta = store.meta
    out = Path(dst)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(f".{out.name}.converting")
    shutil.rmtree(tmp, ignore_errors=True)
    cam_keys = {cam: f"{IMAGE_PREFIX}{cam}" for cam in meta.cameras}
    h, w = meta.image_size
    task_list = sorted(set(store.instructions.tolist()))
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
            instruction = str(store.instructions[e])
            row: dict[str, Any] = {
                "episode_index": e,
                "tasks": [instruction],
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
                    f"videos/{key}/from_timestamp": offset / meta.fps,
                    f"videos/{key}/to_timestamp": (offset + length) / meta.fps,
                }
            for t in range(length):
                frame = {
                    "observation.state": state_all[sl.start + t].tolist(),
                    "action": action_all[sl.start + t].tolist(),
                    "timestamp": np.float32(t / meta.fps),
                    "frame_index": t,
                    "episode_index": e,
                    "index": sl.start + t,
                    "task_index": task_index[instruction],
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
                meta.fps,
                video_codec,
            )
        episodes_path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episode_rows), episodes_path)
        pq.write_table(
            pa.table({"task_index": list(range(len(task_list))), "task": task_list}),
            tmp / "meta" / "tasks.parquet",
        )
        image_feature = {
            "dtype": "video" if video_codec else "image",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
        }
        if video_codec:
            image_feature["info"] = {
                "video.height": h,
                "video.width": w,
                "video.codec": video_codec,
                "video.pix_fmt": "rgb24" if video_codec == "libx264rgb" else "yuv420p",
                "video.is_depth_map": False,
                "video.fps": meta.fps,
                "video.channels": 3,
                "has_audio": False,
            }
        features = {key: image_feature for key in cam_keys.values()}
        features |= {
            "observation.state": {"dtype": "float32", "shape": [meta.state_dim], "names": None},
            "action": {"dtype": "float32", "shape": [meta.action_dim], "names": None},
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
            "fps": meta.fps,
            "splits": {"train": f"0:{store.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if video_codec else None,
            "features": features,
        }
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
        stats = store.stats(allow_stale=False) or {}
        lerobot_stats = {
            ("observation.state" if k == "state" else k): {
                n: v.tolist() for n, v in s.items() if n in ("mean", "std", "min", "max")
            }
            for k, s in stats.items()
        }
        (tmp / "meta" / "stats.json").write_text(json.dumps(lerobot_stats, indent=2))
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
