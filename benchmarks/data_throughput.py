"""Zarr store throughput: write time, size on disk, compression, training windows/s, image codecs.

    python benchmarks/data_throughput.py [key=value ...]     (keys: configs/bench/data_throughput.yaml)
    vla bench data_throughput episodes=50 codecs=[]

Prints one JSON object. The store section's images are procedurally rendered scenes (shaded, textured static
background, moving coloured blocks, no per-frame noise), which compress like simulator renders rather than
noise. The codec section renders robosuite Lift (random actions) from 3 cameras at 224 px and writes one
dataset per image codec, cycling through the rendered frames: bytes per frame, PSNR against the renders,
write frames/s and training windows/s read from disk (DataLoader, 0 and 2 workers); then one dataset of
``large_frames`` frames with ``large_codec``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Any

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
    # codec rows: robosuite renders, none = raw frames (blosc)
    codecs: list[str] = field(default_factory=lambda: ["none", "jpeg", "jpegxl", "avif", "webp"])
    codec_cameras: list[str] = field(default_factory=lambda: ["agentview", "robot0_eye_in_hand", "frontview"])
    codec_image_size: int = 224
    codec_render_frames: int = 300  # distinct frames rendered per camera
    codec_frames: int = 3000  # frames written per codec row
    large_codec: str | None = "jpeg"  # the codec of the large from-disk row; null = no such row
    large_frames: int = 100_000


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


def render_robosuite(cameras: list[str], size: int, frames: int) -> dict[str, np.ndarray]:
    """Frames of robosuite Lift under random actions (a reset every 100 steps), per camera."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import envs

    env = envs.make("robosuite/Lift", cameras=cameras, image_size=size, seed=0)
    rng = np.random.default_rng(0)
    out: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    obs, _ = env.reset(seed=0)
    for t in range(frames):
        if t and t % 100 == 0:
            obs, _ = env.reset(seed=t)
        obs, *_ = env.step(rng.uniform(-0.6, 0.6, env.action_space.shape).astype(np.float32))
        for c in cameras:
            out[c].append(obs["images"][c])
    env.close()
    return {c: np.stack(v) for c, v in out.items()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def loader_windows_per_s(dataset: WindowDataset, workers: int, batch_size: int, seconds: float) -> float:
    """Windows/s through a shuffling DataLoader (collation included; worker start-up excluded)."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    it = iter(loader)
    next(it)

    def one_batch() -> int:
        nonlocal it
        try:
            return len(next(it)["instruction"])
        except StopIteration:
            it = iter(loader)
            return 0

    return median_rate(one_batch, seconds)


def codec_row(
    renders: dict[str, np.ndarray], codec: str, frames: int, url: Path, cfg: BenchConfig
) -> dict[str, Any]:
    """Write ``frames`` frames (the renders, cycled) with ``codec``; its size, fidelity and read rates."""
    cams = list(renders)
    size = cfg.codec_image_size
    meta = DatasetMeta(
        fps=20,
        cameras=cams,
        image_size=(size, size),
        state_dim=cfg.state_dim,
        action_space=ActionSpace(dim=cfg.action_dim, low=-1.0, high=1.0),
        robot="panda",
    )
    rendered = len(next(iter(renders.values())))
    episode_length = 100
    zeros = (
        np.zeros((episode_length, cfg.state_dim), np.float32),
        np.zeros((episode_length, cfg.action_dim), np.float32),
    )
    t0 = time.perf_counter()
    with TrajectoryWriter(url, meta, overwrite=True, image_codec=None if codec == "none" else codec) as w:
        for start in range(0, frames, episode_length):
            idx = (start + np.arange(episode_length)) % rendered
            w.add_episode(
                images={c: renders[c][idx] for c in cams}, state=zeros[0], action=zeros[1], instruction="lift"
            )
    write_s = time.perf_counter() - t0
    store = TrajectoryStore(url)
    n = store.num_frames
    image_bytes = sum(store.images(c).nbytes_stored() for c in cams)
    raw_bytes = n * len(cams) * size * size * 3
    fidelity = {c: round(psnr(np.asarray(store.images(c)[:rendered]), renders[c]), 2) for c in cams}
    disk = WindowDataset(
        store, WindowConfig(n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon, in_memory=False)
    )
    return {
        "codec": store.summary()["image_storage"][cams[0]],
        "frames": n,
        "bytes_per_frame": round(image_bytes / n),  # all cameras of one time step
        "raw_bytes_per_frame": len(cams) * size * size * 3,
        "smaller_than_raw": round(raw_bytes / image_bytes, 1),
        "lossless": all(np.isinf(v) for v in fidelity.values()),
        "psnr_db": {c: None if np.isinf(v) else v for c, v in fidelity.items()},  # None: identical frames
        "psnr_db_min": None if all(np.isinf(v) for v in fidelity.values()) else min(fidelity.values()),
        "write_frames_per_s": round(n / write_s, 1),
        "windows_per_s_from_disk": {
            f"workers_{k}": round(loader_windows_per_s(disk, k, cfg.batch_size, cfg.seconds), 1)
            for k in (0, 2)
        },
    }


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

        disk = WindowDataset(
            store, WindowConfig(n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon, in_memory=False)
        )
        zpos = [0]

        def one_disk_window() -> int:
            disk[int(order[zpos[0] % len(order)])]
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
                "dataloader_workers_0": round(loader_windows_per_s(ds, 0, cfg.batch_size, cfg.seconds), 1),
                "dataloader_workers_2": round(loader_windows_per_s(ds, 2, cfg.batch_size, cfg.seconds), 1),
                "from_disk_getitem": round(median_rate(one_disk_window, min(cfg.seconds, 3.0)), 1),
                "from_disk_dataloader_workers_0": round(
                    loader_windows_per_s(disk, 0, cfg.batch_size, cfg.seconds), 1
                ),
                "from_disk_dataloader_workers_2": round(
                    loader_windows_per_s(disk, 2, cfg.batch_size, cfg.seconds), 1
                ),
            },
            "target_single_process": 2000,
            "target_from_disk_workers_2": 2000,
            "machine": {
                **cpu_info(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            },
        }
        result["meets_target"] = result["windows_per_s"]["single_process_getitem"] >= 2000
        result["meets_from_disk_target"] = result["windows_per_s"]["from_disk_dataloader_workers_2"] >= 2000
        if cfg.codecs or cfg.large_codec:
            t0 = time.perf_counter()
            renders = render_robosuite(cfg.codec_cameras, cfg.codec_image_size, cfg.codec_render_frames)
            result["codec_render_s"] = round(time.perf_counter() - t0, 1)
            work = Path(url).parent
            result["codec_rows"] = []
            for codec in cfg.codecs:
                result["codec_rows"].append(
                    codec_row(renders, codec, cfg.codec_frames, work / f"{codec}.zarr", cfg)
                )
                shutil.rmtree(work / f"{codec}.zarr", ignore_errors=True)
            if cfg.large_codec:
                large = work / f"large-{cfg.large_codec}.zarr"
                result["large_row"] = codec_row(renders, cfg.large_codec, cfg.large_frames, large, cfg)
                shutil.rmtree(large, ignore_errors=True)
        return result
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
