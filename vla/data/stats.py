"""Per-key normalization statistics, computed once and stored in the dataset under ``stats/``."""

from __future__ import annotations

import os

import numpy as np
import zarr

from . import schema
from .store import Stats, TrajectoryStore, open_group


def stat_keys(store: TrajectoryStore) -> tuple[str, ...]:
    """The keys a dataset has stats for: state and action, and its privileged targets when it has them."""
    return schema.LOW_DIM_KEYS + (("targets",) if store.meta.target_names else ())


def compute_stats(store: TrajectoryStore, keys: tuple[str, ...] | None = None) -> Stats:
    """mean, std, min, max, q01, q99 per dimension over every committed frame (of ``stat_keys`` by
    default)."""
    if store.num_frames == 0:
        raise ValueError(f"{store.url} has no frames; cannot compute stats")
    out: Stats = {}
    for key in keys or stat_keys(store):
        x = store.load(key).astype(np.float64)
        out[key] = {
            "mean": x.mean(axis=0),
            "std": x.std(axis=0),
            "min": x.min(axis=0),
            "max": x.max(axis=0),
            "q01": np.quantile(x, 0.01, axis=0),
            "q99": np.quantile(x, 0.99, axis=0),
        }
        out[key] = {k: v.astype(np.float32) for k, v in out[key].items()}
    return out


def write_stats(group: zarr.Group, stats: Stats, num_frames: int) -> None:
    """Replace ``stats/`` with ``stats``; ``num_frames`` records what they were computed over."""
    if schema.STATS in group:
        del group[schema.STATS]
    sgroup = group.create_group(schema.STATS)
    for key, values in stats.items():
        for name, arr in values.items():
            sgroup.create_array(f"{key}/{name}", data=np.asarray(arr, dtype=np.float32))
    # Written last: a stats group without num_frames is treated as absent.
    sgroup.attrs.update({"num_frames": int(num_frames), "keys": sorted(stats)})


def ensure_stats(url: str | os.PathLike, recompute: bool = False) -> Stats:
    """Stored stats if up to date and complete, else compute them and store them in the dataset."""
    store = TrajectoryStore(url)
    stats = None if recompute else store.stats()
    # stats stored before targets had stats lack them: recomputed, not an error
    if stats is None or set(stat_keys(store)) - set(stats):
        stats = compute_stats(store)
        write_stats(open_group(store.url, mode="r+"), stats, store.num_frames)
    return stats
