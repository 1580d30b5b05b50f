"""Reading a vla trajectory dataset (`TrajectoryStore`) and opening Zarr groups by URL."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import schema
from .codecs import describe_storage
from .schema import DatasetMeta, SchemaError

Stats = dict[str, dict[str, np.ndarray]]  # key -> statistic name -> per-dimension values


class PartialTailWarning(UserWarning):
    """A writer died mid-episode; the frames after the last committed episode are ignored (reader) or removed
    (writer)."""


def normalize_url(url: str | os.PathLike) -> str:
    """Local paths and ``file://`` URLs become plain paths (Zarr's atomic LocalStore); other URLs
    (``memory://``, ``s3://``, ``gs://``) go to Zarr's fsspec store unchanged."""
    url = os.fspath(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    return url


def is_local(url: str) -> bool:
    return "://" not in url


def dataset_exists(url: str | os.PathLike) -> bool:
    url = normalize_url(url)
    if is_local(url):
        return (Path(url) / "zarr.json").exists()
    try:
        zarr.open_group(url, mode="r")
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return False


def open_group(url: str | os.PathLike, mode: str = "r") -> zarr.Group:
    url = normalize_url(url)
    if mode in ("r", "r+") and not dataset_exists(url):
        raise FileNotFoundError(f"no Zarr dataset at {url!r} (expected a directory with zarr.json)")
    try:
        return zarr.open_group(url, mode=mode)
    except ImportError as e:  # e.g. s3fs missing for s3://
        raise ImportError(f"opening {url!r} needs an fsspec backend that is not installed: {e}") from e


def _array_shape(group: zarr.Group, path: str) -> tuple[int, ...] | None:
    """An array's shape; None if it is missing or its metadata unreadable (reported where it is opened)."""
    try:
        return tuple(group[path].shape)
    except Exception:  # noqa: BLE001 - KeyError, a broken zarr.json (JSONDecodeError), zarr's own errors
        return None


def meta_from_group(group: zarr.Group, url: str = "dataset", check: bool = True) -> DatasetMeta:
    """The dataset's metadata from its attrs, liberally: what the attrs leave out and the arrays say (cameras,
    each camera's (H, W), state_dim, the action dim and, lacking them, its bounds) is read from the arrays;
    attrs that contradict the arrays are a SchemaError naming both (``check=False``: left to the caller,
    as `validate` reports them per array)."""
    attrs = dict(group.attrs.asdict())
    if attrs.get("format") != schema.FORMAT:
        return DatasetMeta.from_attrs(attrs)  # its error names the format
    derived: list[str] = []
    if "cameras" not in attrs:
        try:
            attrs["cameras"] = sorted(group[schema.IMAGES].array_keys())
        except KeyError:
            raise SchemaError(f"{url}: attrs name no cameras and there is no {schema.IMAGES} group") from None
        derived.append("cameras")
    cameras = [str(c) for c in attrs["cameras"]]
    shapes = {cam: _array_shape(group, f"{schema.IMAGES}/{cam}") for cam in cameras}
    stored = {
        cam: tuple(int(v) for v in shape[1:3]) for cam, shape in shapes.items() if shape and len(shape) == 4
    }
    if "image_size" not in attrs:
        unknown = [cam for cam in cameras if cam not in stored]
        if unknown:
            raise SchemaError(
                f"{url}: attrs leave out image_size and cameras {unknown} have no (N, H, W, 3) array under "
                f"{schema.IMAGES} to read it from"
            )
        attrs["image_size"] = stored
        derived.append("image_size")
    else:
        declared = schema.image_sizes_per_camera(attrs["image_size"], cameras)
        clash = [
            f"images[{cam!r}]: attrs.image_size says {list(declared[cam])}, the array is {list(hw)}"
            for cam, hw in stored.items()
            if declared.get(cam) != hw
        ]
        if clash and check:
            raise SchemaError(f"{url}: attrs contradict the arrays: {'; '.join(clash)} (H, W)")

    def dim(declared: Any, name: str, path: str) -> int:
        """``declared`` (None: left out) checked against, or read from, the (N, D) array at ``path``."""
        shape = _array_shape(group, path)
        known = shape is not None and len(shape) == 2
        if declared is None:
            if not known:
                raise SchemaError(
                    f"{url}: attrs leave out {name} and there is no (N, D) {path} to read it from"
                )
            derived.append(name)
            return shape[1]
        if check and known and int(declared) != shape[1]:
            raise SchemaError(
                f"{url}: attrs contradict the arrays: {name} is {declared}, {path} has {shape[1]}"
            )
        return int(declared)

    attrs["state_dim"] = dim(attrs.get("state_dim"), "state_dim", schema.STATE)
    action = dict(attrs.get("action_space") or {})
    action["dim"] = dim(action.get("dim"), "action_space.dim", schema.ACTION)
    shape = _array_shape(group, schema.ACTION)
    if "low" not in action or "high" not in action:
        values = np.asarray(group[schema.ACTION][:], dtype=np.float64) if shape and shape[0] else None
        action.setdefault("low", values.min(0).tolist() if values is not None else -np.inf)
        action.setdefault("high", values.max(0).tolist() if values is not None else np.inf)
        derived.append("action_space bounds (the data's min/max)")
    attrs["action_space"] = action
    meta = DatasetMeta.from_attrs(attrs)
    if derived:
        meta.extra = {**meta.extra, "derived_from_arrays": derived}
    return meta


@dataclass
class CommitState:
    """What is committed in a dataset, and what lies beyond the commit point."""

    episode_ends: np.ndarray
    uncommitted_episodes: int = 0  # episode_ends entries resized but never written
    extra_rows: dict[str, int] = field(default_factory=dict)  # array path -> rows past the commit point
    short_rows: dict[str, int] = field(default_factory=dict)  # array path -> rows missing (corruption)
    # what an interrupted write cannot explain (a lost episode_ends chunk, say): nothing may be dropped then
    inconsistencies: list[str] = field(default_factory=list)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def num_frames(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def has_partial_tail(self) -> bool:
        return self.uncommitted_episodes > 0 or bool(self.extra_rows)

    def describe_tail(self) -> str:
        parts = []
        if self.uncommitted_episodes:
            parts.append(
                f"{self.uncommitted_episodes} uncommitted episode_ends "
                f"entr{'y' if self.uncommitted_episodes == 1 else 'ies'}"
            )
        frame_rows = {k: v for k, v in self.extra_rows.items() if k.startswith("data/")}
        if frame_rows:
            parts.append(f"{max(frame_rows.values())} uncommitted frame(s) in {sorted(frame_rows)}")
        ep_rows = {k: v for k, v in self.extra_rows.items() if k.startswith("meta/")}
        if ep_rows:
            parts.append(f"uncommitted per-episode rows in {sorted(ep_rows)}")
        return "; ".join(parts)


def damage_message(url: str, state: CommitState) -> str:
    """Why a dataset's commit point cannot be trusted, and how to recover; nothing has been changed."""
    return (
        f"{url} is damaged, and nothing was changed: {'; '.join(state.inconsistencies)}. Its frames are "
        "probably intact: `vla data validate` names the missing or unreadable chunk files; restore them (or "
        "the "
        "dataset) from a copy. Until then no writer appends to it, since that would drop the episodes the "
        "damaged commit record no longer lists."
    )


def optional_frame_paths(meta: DatasetMeta) -> list[str]:
    """The per-frame arrays this dataset's metadata declares beyond images, state and action."""
    targets = [schema.TARGETS] if meta.target_names else []
    return targets + ([schema.SOURCE, schema.TIMESTAMP] if meta.source_names else [])


def frame_array_paths(meta: DatasetMeta) -> list[str]:
    images = [f"{schema.IMAGES}/{cam}" for cam in meta.cameras]
    return images + [schema.STATE, schema.ACTION] + optional_frame_paths(meta)


def read_commit_state(group: zarr.Group, meta: DatasetMeta) -> CommitState:
    """Find the committed episodes: ``episode_ends`` is written last, so a trailing fill value
    (`schema.UNCOMMITTED`) or arrays longer than ``episode_ends[-1]`` are a crashed append."""
    raw = np.asarray(group[schema.EPISODE_ENDS][:], dtype=np.int64)
    n_raw = len(raw)
    while len(raw) and raw[-1] == schema.UNCOMMITTED:
        raw = raw[:-1]
    state = CommitState(episode_ends=raw, uncommitted_episodes=n_raw - len(raw))
    # A writer appends one episode at a time and writes its episode_ends entry last, so a crash leaves at most
    # one unwritten entry, and per-episode rows at most one past the commit. More than that is damage (a lost
    # or truncated chunk reads back as the fill value), and treating it as a partial tail would drop committed
    # episodes.
    if state.uncommitted_episodes > 1:
        state.inconsistencies.append(
            f"{schema.EPISODE_ENDS} has {state.uncommitted_episodes} trailing unwritten entries (a crash "
            "leaves at "
            "most 1): a chunk of it is probably missing or unreadable"
        )
    if (raw == schema.UNCOMMITTED).any():
        state.inconsistencies.append(
            f"{schema.EPISODE_ENDS} has unwritten entries among written ones (first at index "
            f"{int(np.argmax(raw == schema.UNCOMMITTED))}): a chunk of it is probably missing"
        )
    for path in schema.EPISODE_ARRAYS:
        if path in group and group[path].shape[0] > state.num_episodes + 1:
            state.inconsistencies.append(
                f"{path} has {group[path].shape[0]} rows but only {state.num_episodes} episodes are "
                "committed "
                "(an interrupted write leaves at most 1 more)"
            )
    expected = {path: state.num_frames for path in frame_array_paths(meta)}
    expected |= {
        path: state.num_episodes for path in (*schema.EPISODE_ARRAYS, *schema.OPTIONAL_EPISODE_ARRAYS)
    }
    for path, rows_committed in expected.items():
        if path in group:
            rows = group[path].shape[0] - rows_committed
            if rows > 0:
                state.extra_rows[path] = rows
            elif rows < 0:
                state.short_rows[path] = -rows
    return state


class TrajectoryStore:
    """Read-only view of a vla trajectory dataset.

    Only committed episodes are visible. If a writer died mid-episode, the partial tail is
    ignored here with a `PartialTailWarning` (reopen with `TrajectoryWriter` to remove it).
    """

    def __init__(self, url: str | os.PathLike):
        self.url = normalize_url(url)
        self.group = open_group(self.url, mode="r")
        self.meta = meta_from_group(self.group, self.url)
        for path in [schema.EPISODE_ENDS, *schema.EPISODE_ARRAYS, *frame_array_paths(self.meta)]:
            if path not in self.group:
                raise SchemaError(f"dataset {self.url} is missing array {path!r}")
        self.commit = read_commit_state(self.group, self.meta)
        if self.commit.inconsistencies:
            raise SchemaError(damage_message(self.url, self.commit))
        if self.commit.has_partial_tail:
            warnings.warn(
                f"{self.url}: ignoring a partial tail left by an interrupted write "
                f"({self.commit.describe_tail()}); "
                f"{self.num_episodes} committed episodes are intact. Open it with TrajectoryWriter to drop "
                "the tail.",
                PartialTailWarning,
                stacklevel=2,
            )
        self.episode_ends = self.commit.episode_ends

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return self.commit.num_episodes

    @property
    def num_frames(self) -> int:
        return self.commit.num_frames

    def __len__(self) -> int:
        return self.num_episodes

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    def episode_slice(self, index: int) -> slice:
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range for a dataset with {self.num_episodes} episodes")
        index %= self.num_episodes
        return slice(int(self.episode_starts[index]), int(self.episode_ends[index]))

    # -- arrays ------------------------------------------------------------------------------
    def array(self, path: str) -> zarr.Array:
        """The raw Zarr array at ``path`` (may extend past the commit point; slice with num_frames)."""
        return self.group[path]

    def images(self, camera: str) -> zarr.Array:
        if camera not in self.meta.cameras:
            raise KeyError(f"unknown camera {camera!r}; dataset cameras are {self.meta.cameras}")
        return self.group[f"{schema.IMAGES}/{camera}"]

    def load(self, key: str) -> np.ndarray:
        """Read a whole committed frame array into memory: ``state``, ``action``, ``targets`` or
        ``images/<camera>``."""
        path = key if key.startswith("data/") else f"data/{key}"
        return np.asarray(self.group[path][: self.num_frames])

    @property
    def instructions(self) -> np.ndarray:
        return np.asarray(self.group[schema.INSTRUCTION][: self.num_episodes], dtype=object)

    @property
    def tasks(self) -> np.ndarray:
        return np.asarray(self.group[schema.TASK][: self.num_episodes], dtype=object)

    @property
    def success(self) -> np.ndarray:
        return np.asarray(self.group[schema.SUCCESS][: self.num_episodes], dtype=bool)

    @property
    def seeds(self) -> np.ndarray | None:
        """Env reset seed of each episode (-1 where unknown); None when the dataset has no seed array."""
        if schema.SEED not in self.group:
            return None
        return np.asarray(self.group[schema.SEED][: self.num_episodes], dtype=np.int64)

    def episode(self, index: int) -> dict[str, Any]:
        """One whole episode: images per camera, state, action (targets, source and timestamp, if the dataset
        has them) and its per-episode fields."""
        sl = self.episode_slice(index)
        index %= self.num_episodes
        optional = {
            path.split("/")[-1]: np.asarray(self.group[path][sl]) for path in optional_frame_paths(self.meta)
        }
        return optional | {
            "images": {cam: np.asarray(self.images(cam)[sl]) for cam in self.meta.cameras},
            "state": np.asarray(self.group[schema.STATE][sl]),
            "action": np.asarray(self.group[schema.ACTION][sl]),
            "instruction": str(self.group[schema.INSTRUCTION][index]),
            "task": str(self.group[schema.TASK][index]),
            "success": bool(self.group[schema.SUCCESS][index]),
        }

    # -- stats -------------------------------------------------------------------------------
    def stats(self, allow_stale: bool = False) -> Stats | None:
        """Stored normalization stats (``vla.data.stats`` computes and writes them), or None when absent (or
        stale, unless ``allow_stale``)."""
        if schema.STATS not in self.group:
            return None
        sgroup = self.group[schema.STATS]
        computed_over = sgroup.attrs.get("num_frames")
        if computed_over is None:  # written last: a stats group without it is treated as absent
            return None
        if computed_over != self.num_frames and not allow_stale:
            warnings.warn(
                f"stored stats cover {computed_over} frames but the dataset has {self.num_frames}; "
                "recompute with `vla data stats PATH --recompute`",
                stacklevel=2,
            )
            return None
        return {
            key: {name: np.asarray(sgroup[f"{key}/{name}"][:]) for name in schema.STAT_NAMES}
            for key in sgroup.attrs.get("keys", [])
        }

    # -- summary -----------------------------------------------------------------------------
    def nbytes_stored(self) -> int:
        if is_local(self.url):
            return sum(f.stat().st_size for f in Path(self.url).rglob("*") if f.is_file())
        return int(
            sum(a.nbytes_stored() for _, a in self.group.arrays())
            + sum(a.nbytes_stored() for _, g in self.group.groups() for _, a in g.arrays())
        )

    def summary(self) -> dict[str, Any]:
        """Everything `vla data info` shows, as JSON-typed values."""
        lengths = self.episode_lengths
        tasks = Counter(self.tasks.tolist())
        stored = self.nbytes_stored()
        raw = self.num_frames * (
            sum(int(np.prod(self.images(c).shape[1:])) for c in self.meta.cameras)
            + 4 * (self.meta.state_dim + self.meta.action_dim)
        )
        stats_attrs = self.group[schema.STATS].attrs.asdict() if schema.STATS in self.group else None
        return {
            "url": self.url,
            "format": f"{schema.FORMAT} v{self.group.attrs.get('version')}",
            "episodes": self.num_episodes,
            "frames": self.num_frames,
            "fps": self.meta.fps,
            "duration_s": round(self.num_frames / self.meta.fps, 2),
            "robot": self.meta.robot,
            "env": self.meta.env,
            "cameras": self.meta.cameras,
            "image_size": {cam: list(hw) for cam, hw in self.meta.image_sizes.items()},
            "image_storage": {cam: describe_storage(self.images(cam)) for cam in self.meta.cameras},
            "state_dim": self.meta.state_dim,
            "action_space": {
                "dim": self.meta.action_dim,
                "kind": self.meta.action_space.kind,
                "low": self.meta.action_space.low,
                "high": self.meta.action_space.high,
            },
            "episode_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "success_rate": round(float(self.success.mean()), 4) if self.num_episodes else None,
            "tasks": dict(tasks.most_common()),
            "unique_instructions": len(set(self.instructions.tolist())),
            "bytes_stored": stored,
            "compression_ratio": round(raw / stored, 2) if stored else None,
            "stats": (
                None
                if stats_attrs is None
                else ("stale" if stats_attrs.get("num_frames") != self.num_frames else "up to date")
            ),
            "partial_tail": self.commit.describe_tail() or None,
            "created_with": self.meta.created_with,
        }
