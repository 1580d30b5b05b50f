"""Zarr store throughput: write time, size on disk, compression, training windows/s.

    python benchmarks/data_throughput.py [key=value ...]     (keys: configs/bench/data_throughput.yaml)
    vla bench data_throughput episodes=50

Prints one JSON object. Images are procedurally rendered scenes (shaded, textured static background, moving
coloured blocks, no per-frame noise), which compress like simulator renders rather than noise.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch.utils.data import DataLoader

from vla.config import compose, to_object
from vla.data import ActionSpace, DatasetMeta, TrajectoryStore, TrajectoryWriter, WindowConfig, WindowDataset
from vla.hardware import cpu_info


@dataclass
class BenchConfig:
    episodes: int = 200
    episode_length: int = 50
    cameras: int = 2
    image_size: int = 96
    state_dim: int = 9
    action_dim: int = 7
    n_obs_steps: int = 2
    horizon: int = 16
    batch_size: int = 64
    seconds: float = 5.0
    out: str | None = None


def render_episode(rng: np.random.Generator, length: int, size: int, camera: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    shading = 60 + 50 * yy + 15 * np.sin(9 * xx + camera) * np.cos(7 * yy)  # smooth light falloff
    texture = rng.integers(-6, 7, (size, size, 3))  # static table texture, as in a render
    background = np.clip(shading[..., None] + texture + [20 * camera, 10, 0], 0, 255).astype(np.uint8)
    frames = np.repeat(background[None], length, axis=0)
    for _ in range(3):
        color = rng.integers(0, 256, 3)
        start, velocity = rng.uniform(10, size - 20, 2), rng.uniform(-0.5, 0.5, 2)
        for t in range(length):
            y, x = (start + velocity * t).astype(int)
            frames[t, max(y, 0) : y + 10, max(x, 0) : x + 10] = color
    return frames


def median_rate(fn, seconds: float, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / repeats:
            n += fn()
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/data_throughput", argv), BenchConfig)
    tmp = None if cfg.out else tempfile.mkdtemp(prefix="vla-bench-")
    url = cfg.out or str(Path(tmp) / "bench.zarr")
    cams = [f"cam{i}" for i in range(cfg.cameras)]
    meta = DatasetMeta(
        fps=10,
        cameras=cams,
        image_size=(cfg.image_size, cfg.image_size),
        state_dim=cfg.state_dim,
        action_space=ActionSpace(dim=cfg.action_dim, low=-1.0, high=1.0),
        robot="bench",
    )
    rng = np.random.default_rng(0)
    episodes = []  # rendered up front so the write timing is the store's alone
    for _ in range(cfg.episodes):
        episodes.append(
            dict(
                images={
                    c: render_episode(rng, cfg.episode_length, cfg.image_size, i) for i, c in enumerate(cams)
                },
                state=rng.normal(size=(cfg.episode_length, cfg.state_dim)).astype(np.float32),
                action=rng.uniform(-1, 1, (cfg.episode_length, cfg.action_dim)).astype(np.float32),
                instruction="push the red block onto the blue pad",
                task="bench",
                success=True,
            )
        )
    try:
        t0 = time.perf_counter()
        with TrajectoryWriter(url, meta, overwrite=True) as w:
            for ep in episodes:
                w.add_episode(**ep)
        write_s = time.perf_counter() - t0
        del episodes
        store = TrajectoryStore(url)
        summary = store.summary()
        window_cfg = WindowConfig(n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon, in_memory=True)
        t0 = time.perf_counter()
        ds = WindowDataset(store, window_cfg)
        load_s = time.perf_counter() - t0
        order = np.random.default_rng(1).permutation(len(ds))
        pos = [0]

        def one_window() -> int:
            ds[int(order[pos[0] % len(order)])]
            pos[0] += 1
            return 1

        def loader_rate(dataset: WindowDataset, workers: int) -> float:
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                shuffle=True,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
            it = iter(loader)
            next(it)  # worker start-up is not throughput

            def one_batch() -> int:
                nonlocal it
                try:
                    return len(next(it)["instruction"])
                except StopIteration:
                    it = iter(loader)
                    return 0

            return median_rate(one_batch, cfg.seconds)

        zarr_ds = WindowDataset(
            store, WindowConfig(n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon, in_memory=False)
        )
        zpos = [0]

        def one_zarr_window() -> int:
            zarr_ds[int(order[zpos[0] % len(order)])]
            zpos[0] += 1
            return 1

        result = {
            "benchmark": "data_throughput",
            "config": asdict(cfg),
            "frames": store.num_frames,
            "write_s": round(write_s, 2),
            "write_frames_per_s": round(store.num_frames / write_s, 1),
            "bytes_stored": summary["bytes_stored"],
            "mib_stored": round(summary["bytes_stored"] / 2**20, 1),
            "compression_ratio": summary["compression_ratio"],
            "load_into_memory_s": round(load_s, 2),
            "windows_per_s": {
                "single_process_getitem": round(median_rate(one_window, cfg.seconds), 1),
                "dataloader_workers_0": round(loader_rate(ds, 0), 1),
                "dataloader_workers_2": round(loader_rate(ds, 2), 1),
                "zarr_direct_getitem": round(median_rate(one_zarr_window, min(cfg.seconds, 3.0)), 1),
            },
            "target_single_process": 2000,
            "machine": {
                **cpu_info(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            },
        }
        result["meets_target"] = result["windows_per_s"]["single_process_getitem"] >= 2000
        return result
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
