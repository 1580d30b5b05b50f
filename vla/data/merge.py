"""Merge datasets into one (multi-task training: the built-in suite, MetaWorld MT10): episodes
are copied in order with their instruction, task, success and seed (and training targets, when every
source has the same ones). Cameras, image size and dims
must agree; the merged ``env`` is the shared env, else the shared suite (``builtin``,
``metaworld``), which `vla eval` expands to its tasks."""

from __future__ import annotations

import os
import time
from typing import Any

from tqdm import tqdm

from .convert.common import ConversionError, staged_dataset, summarize
from .store import TrajectoryStore
from .writer import TrajectoryWriter


def merged_env(envs: list[str | None]) -> str | None:
    names = {e for e in envs if e}
    if len(names) <= 1:
        return next(iter(names), None)
    suites = {name.split("/", 1)[0] for name in names}
    return suites.pop() if len(suites) == 1 else None


def merge(
    sources: list[str | os.PathLike], dst: str | os.PathLike, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Copy every episode of ``sources`` (in order) into a new dataset at ``dst``; validated and
    given stats before it appears at ``dst``."""
    started = time.perf_counter()
    if len(sources) < 2:
        raise ConversionError(f"merge needs at least two datasets, got {len(sources)}")
    stores = [TrajectoryStore(s) for s in sources]
    first = stores[0]
    for store in stores[1:]:
        first.meta.check_compatible(store.meta, what=store.url, other_what=first.url)
        if store.meta.fps != first.meta.fps:
            raise ConversionError(
                f"{store.url} runs at {store.meta.fps} fps, {first.url} at {first.meta.fps}"
            )
    # privileged training targets survive a merge only when every source has the same ones
    keep_targets = all(s.meta.target_names == first.meta.target_names for s in stores)
    extra = {k: v for k, v in first.meta.extra.items() if k != "targets" or keep_targets}
    meta = type(first.meta)(
        **{
            **first.meta.__dict__,
            "env": merged_env([s.meta.env for s in stores]),
            "extra": extra,
            "created_with": f"vla data merge ({len(stores)} datasets)",
        }
    )
    total = sum(s.num_episodes for s in stores)
    with staged_dataset(dst, overwrite=overwrite) as tmp, TrajectoryWriter(tmp, meta) as writer:
        bar = tqdm(total=total, desc="merge", unit="episode", disable=not progress)
        for store in stores:
            seeds = store.seeds
            for i in range(store.num_episodes):
                episode = store.episode(i)
                writer.add_episode(
                    episode["images"],
                    episode["state"],
                    episode["action"],
                    episode["instruction"],
                    task=episode["task"] or store.meta.env,
                    success=episode["success"],
                    seed=None if seeds is None or seeds[i] < 0 else int(seeds[i]),
                    targets=episode.get("targets") if meta.target_names else None,
                )
                bar.update(1)
        bar.close()
    return summarize(str(dst), ", ".join(s.url for s in stores), "merge", started) | {"env": meta.env}
