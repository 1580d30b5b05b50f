"""Training windows over a trajectory dataset (a torch `Dataset`), and the split by episode.

For frame t of an episode [s, e) a window holds:

- ``images[cam]``  uint8 (n_obs_steps, H, W, 3): frames t-n_obs_steps+1 .. t, repeat-padded at s
- ``state``        float32 (n_obs_steps, D_state), same frames
- ``action``       float32 (horizon, D_action): actions t .. t+horizon-1, repeat-padded at e-1
- ``action_mask``  bool (horizon,): False on padded actions
- ``future_images[cam]`` uint8 (H, W, 3) and ``future_valid``: the frame t+k (clamped to e-1),
  when ``future_offset`` k is set (the target of the world-model stream)
- ``targets`` float32 (D_targets,): frame t's privileged training targets, when the dataset has them
- ``instruction``, ``task``, ``episode_index``, ``frame_index``

By default (``in_memory="auto"``) the arrays are decoded into RAM once when they fit. Otherwise frames
are read from disk, a DataLoader batch at a time (``__getitems__``), through `FrameReader` where the layout
is vla's own (Zarr's per-chunk machinery costs more than the decoding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from . import schema
from .augment import AugmentConfig, ImageAugment
from .frame_reader import FrameReader
from .store import TrajectoryStore


@dataclass
class WindowConfig:
    """How windows are cut; mirrored by ``configs/data/default.yaml``."""

    n_obs_steps: int = 2
    horizon: int = 16
    future_offset: int | None = None  # k for the future-frame target; None = no future frame
    cameras: list[str] | None = None  # None = every dataset camera
    in_memory: Any = "auto"  # True, False or "auto" (load when under max_memory_gb)
    max_memory_gb: float = 8.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.future_offset is not None and self.future_offset < 0:
            raise ValueError(f"future_offset must be >= 0 or None, got {self.future_offset}")
        if self.in_memory not in (True, False, "auto"):
            raise ValueError(f"in_memory must be true, false or 'auto', got {self.in_memory!r}")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)


def split_episodes(num_episodes: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted (train, val) episode indices; at least one val episode when val_fraction > 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if num_episodes < 1:
        raise ValueError("cannot split a dataset with no episodes")
    n_val = 0 if val_fraction == 0 else min(num_episodes - 1, max(1, round(num_episodes * val_fraction)))
    perm = np.random.default_rng(seed).permutation(num_episodes)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _Arrays:
    """Frame arrays for windows: decoded numpy in RAM, or Zarr arrays reopened lazily per process."""

    def __init__(self, store: TrajectoryStore, cameras: list[str], in_memory: bool):
        self.url, self.cameras, self.in_memory = store.url, cameras, in_memory
        self._pid = os.getpid()
        self._load(store)

    def _load(self, store: TrajectoryStore) -> None:
        self.state = store.load("state")  # low-dim arrays always live in RAM
        self.action = store.load("action")
        self.targets = store.load("targets") if store.meta.target_names else None
        if self.in_memory:
            self.images = {cam: store.load(f"images/{cam}") for cam in self.cameras}
        else:
            self._open_images(store)

    def _open_images(self, store: TrajectoryStore) -> None:
        self.images = {cam: store.images(cam) for cam in self.cameras}
        self.readers = {
            cam: FrameReader.open(self.images[cam], store.url, f"{schema.IMAGES}/{cam}")
            for cam in self.cameras
        }

    def image_frames(self, cam: str, idx: np.ndarray) -> np.ndarray:
        if self.in_memory:
            return self.images[cam][idx]
        frames, inverse = np.unique(idx, return_inverse=True)
        return self.many_frames(cam, frames)[inverse]

    def many_frames(self, cam: str, frames: np.ndarray) -> np.ndarray:
        """Sorted unique frame indices -> their images, in one read: from the chunk files directly for
        vla's own layouts (`FrameReader`), else one Zarr selection."""
        if self.in_memory:
            return self.images[cam][frames]
        self._reopen_after_fork()
        if self.readers[cam] is not None:
            return self.readers[cam].read(frames)
        return np.asarray(self.images[cam].get_orthogonal_selection((frames,)))

    def _reopen_after_fork(self) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker: Zarr's event loop does not survive fork
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store = TrajectoryStore(self.url)
            self._open_images(store)
            self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if not self.in_memory:  # zarr arrays are reopened in the worker
            state["images"], state["readers"], state["_pid"] = None, None, -1
        return state


class WindowDataset(Dataset):
    """One window per frame of the chosen episodes (see module docstring for the fields)."""

    def __init__(
        self,
        store: TrajectoryStore | str | os.PathLike,
        config: WindowConfig | None = None,
        episodes: np.ndarray | list[int] | None = None,
        arrays: _Arrays | None = None,
    ):
        self.store = store if isinstance(store, TrajectoryStore) else TrajectoryStore(store)
        self.config = config = config or WindowConfig()
        meta = self.store.meta
        self.cameras = list(config.cameras) if config.cameras is not None else list(meta.cameras)
        unknown = set(self.cameras) - set(meta.cameras)
        if unknown:
            raise KeyError(
                f"cameras {sorted(unknown)} are not in dataset {self.store.url} (has {meta.cameras})"
            )
        n_ep = self.store.num_episodes
        self.episodes = np.arange(n_ep) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if len(self.episodes) and (self.episodes.min() < 0 or self.episodes.max() >= n_ep):
            raise IndexError(f"episode indices must be in [0, {n_ep}), got {self.episodes.tolist()}")
        if arrays is None:
            arrays = _Arrays(self.store, self.cameras, self._decide_in_memory())
        self.arrays = arrays
        self.instructions = self.store.instructions
        self.tasks = self.store.tasks

        starts, ends = self.store.episode_starts, self.store.episode_ends
        lengths = ends[self.episodes] - starts[self.episodes]
        # Per window: global frame index, its episode's start and end.
        self._episode_of = np.repeat(self.episodes, lengths)
        self._start = starts[self._episode_of]
        self._end = ends[self._episode_of]
        self._frame = (
            self._start + np.concatenate([np.arange(n) for n in lengths])
            if len(lengths)
            else np.zeros(0, np.int64)
        )
        self._obs_offsets = np.arange(-config.n_obs_steps + 1, 1)
        self._act_offsets = np.arange(config.horizon)
        self.augment = ImageAugment(config.augment) if config.augment.enabled else None

    def _decide_in_memory(self) -> bool:
        cfg = self.config
        if cfg.in_memory != "auto":
            return bool(cfg.in_memory)
        sizes = self.store.meta.image_sizes
        nbytes = self.store.num_frames * sum(sizes[cam][0] * sizes[cam][1] * 3 for cam in self.cameras)
        return nbytes <= cfg.max_memory_gb * 2**30

    def __len__(self) -> int:
        return len(self._frame)

    def window_tasks(self) -> np.ndarray:
        """The task name of every window (for task-balanced sampling)."""
        return np.asarray(self.tasks)[self._episode_of]

    def _image_indices(self, i: int) -> tuple[np.ndarray, int | None]:
        """Window i's observed frames and its future frame (None without ``future_offset``)."""
        t, s, e = int(self._frame[i]), int(self._start[i]), int(self._end[i])
        future = None if self.config.future_offset is None else min(t + self.config.future_offset, e - 1)
        return np.maximum(t + self._obs_offsets, s), future

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._window(i, self.arrays.image_frames)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch of windows (torch's DataLoader calls this with a batch's indices). From Zarr, each
        camera's frames for the whole batch come in one read."""
        if self.arrays.in_memory:
            return [self[i] for i in indices]
        wanted = [self._image_indices(i) for i in indices]
        frames = np.unique(np.concatenate([np.append(obs, [] if f is None else [f]) for obs, f in wanted]))
        frames = frames.astype(np.int64)
        batch = {cam: self.arrays.many_frames(cam, frames) for cam in self.cameras}

        def lookup(cam: str, idx: np.ndarray) -> np.ndarray:
            return batch[cam][np.searchsorted(frames, idx)]

        return [self._window(i, lookup) for i in indices]

    def _window(self, i: int, image_frames: Any) -> dict[str, Any]:
        t, s, e = int(self._frame[i]), int(self._start[i]), int(self._end[i])
        obs_idx, future = self._image_indices(i)
        act_idx = t + self._act_offsets
        mask = act_idx < e
        act_idx = np.minimum(act_idx, e - 1)
        ep = int(self._episode_of[i])
        sample: dict[str, Any] = {
            "images": {cam: image_frames(cam, obs_idx) for cam in self.cameras},
            "state": self.arrays.state[obs_idx],
            "action": self.arrays.action[act_idx],
            "action_mask": mask,
            "instruction": str(self.instructions[ep]),
            "task": str(self.tasks[ep]),
            "episode_index": ep,
            "frame_index": t - s,
        }
        if self.arrays.targets is not None:
            sample["targets"] = self.arrays.targets[t]
        if future is not None:
            sample["future_valid"] = t + self.config.future_offset < e
            sample["future_images"] = {cam: image_frames(cam, np.array([future]))[0] for cam in self.cameras}
        if self.augment is not None:
            self.augment(sample)
        return sample
