"""`vla collect`: run a scripted expert in an env and append its episodes to a Zarr dataset.

Episodes are written in seed order whatever the number of worker processes, so a collection is
reproducible. The next seed to try is stored in the dataset (``attrs["collect"]``) after every
committed episode: rerunning the same command after a kill resumes where it stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.data import EpisodeRecorder, TrajectoryWriter


@dataclass
class CollectConfig:
    """Mirrors ``configs/collect.yaml``."""

    env: str = "builtin/push"
    episodes: int = 100  # episodes the dataset should hold when done (existing ones count)
    out: str | None = None  # dataset path; null = data/<suite>_<task>.zarr
    seed: int = 0  # first episode seed; episode i of a fresh dataset uses seed + i
    keep: str = "success"  # "success": drop failed demos; "all": keep them, marked success=False
    noise_std: float = 0.0  # Gaussian action noise (fraction of the action range) executed; labels stay clean
    workers: int = 1  # env processes (spawn)
    cameras: list[str] | None = None  # null = the env's default cameras
    image_size: Any = None  # null = the env default; an int, [H, W], or {camera: int | [H, W]} (mixed rigs)
    # null = raw frames (blosc, lossless); "jpeg", "avif:75", ... or {camera: codec} (vla.data.codecs)
    image_codec: Any = None
    max_steps: int | None = None
    control_freq: float | None = None
    render_quality: str | None = (
        None  # fast | high for the MuJoCo simulators; null = the env's default (fast)
    )
    videos: int = 2  # mp4s of the first kept episodes, next to the dataset
    max_attempts: int | None = None  # stop after this many tries; null = 3 x episodes + 20
    env_options: dict[str, Any] = field(default_factory=dict)  # extra env-specific options

    def __post_init__(self) -> None:
        if self.keep not in ("success", "all"):
            raise ValueError(f"keep must be 'success' or 'all', got {self.keep!r}")
        if self.episodes < 1 or self.workers < 1:
            raise ValueError(f"episodes and workers must be >= 1, got {self.episodes} and {self.workers}")

    def env_kwargs(self) -> dict[str, Any]:
        opts = dict(
            cameras=self.cameras,
            image_size=self.image_size,
            max_steps=self.max_steps,
            control_freq=self.control_freq,
            render_quality=self.render_quality,
        )
        return {**{k: v for k, v in opts.items() if v is not None}, **self.env_options}

    def dataset_path(self) -> str:
        return self.out or f"data/{self.env.replace('/', '_').lower()}.zarr"


# -- one episode (runs in the main process or a spawned worker) --------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(env_name: str, env_kwargs: dict[str, Any], noise_std: float) -> None:
    import envs
    from envs.experts import make_expert

    env = envs.make(env_name, **env_kwargs)
    _WORKER.update(env=env, expert=make_expert(env), noise_std=noise_std)


def _run_episode(seed: int) -> dict[str, Any]:
    from envs.experts import add_noise

    env, expert = _WORKER["env"], _WORKER["expert"]
    rng = np.random.default_rng([seed, 1])
    low, high = env.action_space.low, env.action_space.high
    recorder = EpisodeRecorder(env.unwrapped.meta.cameras)
    # privileged per-frame targets (e.g. the named object's position) for auxiliary losses, if the env has
    # them
    training_targets = getattr(env.unwrapped, "training_targets", None)
    obs, info = env.reset(seed=seed)
    expert.reset()
    success = False
    while True:
        label = np.asarray(expert.act(), dtype=np.float32)
        recorder.add(obs, label, training_targets() if training_targets else None)
        obs, _, terminated, truncated, info = env.step(add_noise(label, _WORKER["noise_std"], rng, low, high))
        success = bool(info.get("success", False))
        if terminated or truncated or success:
            break
    return {"seed": seed, "success": success, "task": env.unwrapped.name, **recorder.episode()}


def _save_video(path: Path, episode: dict[str, Any], fps: float) -> None:
    from vla.data.video import write_mp4

    # cameras side by side
    write_mp4(path, np.concatenate([episode["images"][c] for c in episode["images"]], axis=2), fps)


def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Collect until the dataset holds ``cfg.episodes`` episodes; returns a JSON-able summary."""
    from tqdm import tqdm

    out = cfg.dataset_path()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    _init_worker(cfg.env, cfg.env_kwargs(), cfg.noise_std)  # also validates env name and options
    meta = _WORKER["env"].unwrapped.meta
    writer = TrajectoryWriter(out, meta, image_codec=cfg.image_codec)
    state = writer.group.attrs.get("collect") or {}
    if state and state.get("env") != cfg.env:
        raise ValueError(
            f"{out} was collected from {state.get('env')!r}, not {cfg.env!r}; choose another out="
        )
    # Each committed episode carries its seed, so a kill between a commit and the attrs update
    # below never repeats a seed; attrs also remember seeds of dropped failures.
    next_seed = int(state.get("next_seed", cfg.seed))
    if writer.num_episodes and "meta/seed" in writer.group:
        next_seed = max(next_seed, int(np.asarray(writer.group["meta/seed"][writer.num_episodes - 1])) + 1)
    needed = cfg.episodes - writer.num_episodes
    summary: dict[str, Any] = {
        "dataset": out,
        "env": cfg.env,
        "resumed_from_episode": writer.num_episodes,
        "resumed_from_seed": next_seed,
    }
    if needed <= 0:
        _WORKER["env"].close()
        return {
            **summary,
            "added": 0,
            "attempts": 0,
            "episodes": writer.num_episodes,
            "note": f"already holds {writer.num_episodes} >= {cfg.episodes} episodes",
        }
    max_attempts = cfg.max_attempts or 3 * needed + 20
    seeds = list(range(next_seed, next_seed + max_attempts))
    video_dir = Path(out).with_suffix("").with_name(Path(out).stem + "_videos")
    videos: list[str] = []
    added = attempts = successes = frames = 0
    t0 = time.perf_counter()
    pool = None
    if cfg.workers > 1:
        pool = mp.get_context("spawn").Pool(
            cfg.workers, _init_worker, (cfg.env, cfg.env_kwargs(), cfg.noise_std)
        )
        results = pool.imap(_run_episode, seeds)
    else:
        results = map(_run_episode, seeds)
    bar = tqdm(total=needed, unit="ep", desc=f"collect {cfg.env}", disable=not progress)
    try:
        for episode in results:
            attempts += 1
            successes += episode["success"]
            seed = episode["seed"]
            if episode["success"] or cfg.keep == "all":
                writer.add_episode(**episode)
                added += 1
                frames += len(episode["action"])
                if len(videos) < cfg.videos:
                    video_dir.mkdir(parents=True, exist_ok=True)
                    tag = "success" if episode["success"] else "failure"
                    path = video_dir / f"episode_{writer.num_episodes - 1:04d}_seed{seed}_{tag}.mp4"
                    _save_video(path, episode, meta.fps)
                    videos.append(str(path))
                bar.update(1)
            writer.group.attrs["collect"] = {"env": cfg.env, "next_seed": seed + 1}
            elapsed = time.perf_counter() - t0
            bar.set_postfix(success=f"{successes / attempts:.0%}", fps=f"{frames / max(elapsed, 1e-9):.0f}")
            if added >= needed:
                break
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        _WORKER["env"].close()  # release the GL context before interpreter exit
    elapsed = time.perf_counter() - t0
    if added < needed:
        raise RuntimeError(
            f"the expert succeeded in {successes}/{attempts} attempts; {added}/{needed} episodes collected "
            f"into {out} "
            f"(rerun to continue, or raise max_attempts / use keep=all)"
        )
    return {
        **summary,
        "added": added,
        "attempts": attempts,
        "episodes": writer.num_episodes,
        "expert_success_rate": round(successes / attempts, 4),
        "frames": frames,
        "seconds": round(elapsed, 1),
        "frames_per_s": round(frames / elapsed, 1),
        "videos": videos,
        "config": asdict(cfg),
    }


__all__ = ["CollectConfig", "collect"]
