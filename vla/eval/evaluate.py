"""`vla eval`: roll a checkpoint (or the scripted expert) out in simulation and write a report.

Episode ``i`` of a task is reset with seed ``seed + i`` and samples its chunks with a generator
seeded by (episode seed, control step), so results depend on neither ``num_envs`` nor the vector
backend. Output directory: ``eval.json``, ``eval.md``, ``success.png``, ``videos/<task>/*.mp4``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class EvalConfig:
    """Mirrors ``configs/eval.yaml``."""

    checkpoint: str | None = None
    url: str | None = None  # evaluate the policy behind a server speaking the protocol (`vla serve`, openpi)
    api_key: str | None = None  # url: the server's API key
    expert: bool = False  # evaluate the scripted expert instead of a checkpoint (the reference row)
    env: Any = None  # an env name, a suite ("builtin"), or a list of them; null = the checkpoint's env
    episodes: int = 50  # per task
    seed: int = 0
    num_envs: int = 4
    vectorization: str = "sync"  # sync | async (spawned processes)
    backend: str = "vector"  # vector: envs on this machine | ray: episodes spread over Ray workers
    ray_address: str | None = (
        None  # backend=ray: an existing cluster ("auto", "ray://host:10001"); null = local
    )
    strategy: str = "receding"  # receding | ensemble | rtc
    execute_steps: int | None = None  # receding: actions executed per chunk (null = horizon // 2)
    ensemble_decay: float = 0.01
    rtc_delay: int = 2  # rtc: simulated inference delay in control steps (frozen prefix length)
    action_steps: int | None = None  # N_A (null = the checkpoint's)
    vision_steps: int | None = None  # N_o: DUST test-time scaling (null = the checkpoint's)
    noise_scale: float = (
        1.0  # sampling temperature: the scale of the head's initial noise (0 = deterministic)
    )
    instruction_swap: bool = (
        False  # give the policy another target's instruction; success is w.r.t. the original
    )
    max_steps: int | None = None
    videos: int = 2  # first episodes per task saved as mp4
    record_actions: bool = False  # each episode's executed actions (per step) in its result row
    out: str | None = None  # null = <checkpoint>/../../eval or runs/eval-expert

    def __post_init__(self) -> None:
        self.api_key = self.api_key or None
        if sum([self.expert, bool(self.checkpoint), bool(self.url)]) != 1:
            raise ValueError(
                "give exactly one policy: checkpoint=<dir>, url=ws://host:port (a server), or expert=true"
            )
        if self.url and self.backend != "vector":
            raise ValueError("url= evaluates through a server from this machine: use backend=vector")
        if self.backend not in ("vector", "ray"):
            raise ValueError(f"backend must be vector or ray, got {self.backend!r}")
        if self.vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be sync or async, got {self.vectorization!r}")
        if self.episodes < 1 or self.num_envs < 1:
            raise ValueError("episodes and num_envs must be >= 1")
        if not self.noise_scale >= 0:
            raise ValueError(f"noise_scale (the sampling temperature) must be >= 0, got {self.noise_scale}")


def _task_names(cfg: EvalConfig, default_env: str | None) -> list[str]:
    import envs

    spec = cfg.env or default_env
    if not spec:
        raise ValueError("no env given and the checkpoint names none: pass env=<name>")
    names: list[str] = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        names += envs.list(part) if "/" not in part else [part]
    for name in names:
        envs.spec(name)  # unknown names fail here, naming what exists
    return names


class _ExpertPolicy:
    """The scripted expert behind the chunk interface (one-step chunks, privileged state)."""

    def __init__(self, vec):
        from envs.experts import make_expert

        self.experts = [make_expert(env) for env in vec.envs]
        self.horizon = 1

    def reset(self, i: int) -> None:
        self.experts[i].reset()

    def chunk(self, i: int, obs: dict, request) -> np.ndarray:
        return np.asarray(self.experts[i].act(), dtype=np.float32)[None]


class _CheckpointPolicy:
    def __init__(self, policy, cfg: EvalConfig):
        self.policy, self.cfg = policy, cfg
        self.horizon = policy.config.horizon

    def reset(self, i: int) -> None:
        pass

    def chunk(self, i: int, obs: dict, request) -> np.ndarray:
        import torch

        g, w = request.guide if request.guide is not None else (None, None)
        return self.policy.predict_chunk(
            obs,
            generator=[torch.Generator().manual_seed(request.seed)],
            action_steps=self.cfg.action_steps,
            vision_steps=self.cfg.vision_steps,
            noise_scale=self.cfg.noise_scale,
            guide=None if g is None else g[None],
            guide_weights=w,
        )[0]


class _ServedPolicy:
    """A policy behind a server (``url=``): one connection per env slot, so the server batches them; each
    chunk is requested with the same seed a local checkpoint would sample with, and rtc continues the
    connection's previous chunk on the server."""

    def __init__(self, cfg: EvalConfig, n: int):
        from vla_client import RobotClient

        self.clients = [RobotClient(cfg.url, api_key=cfg.api_key, timeout_s=60.0) for _ in range(n)]
        self.metadata = self.clients[0].connect()
        self.horizon = self.metadata.get("action_horizon")  # openpi servers do not say: the first chunk does

    def reset(self, i: int) -> None:
        pass

    def chunk(self, i: int, obs: dict, request) -> np.ndarray:
        return self.clients[i].infer(obs, seed=request.seed, rtc=request.rtc).actions

    def close(self) -> None:
        for client in self.clients:
            client.close()


def served_meta(metadata: dict[str, Any]):
    """The DatasetMeta a server declares (cameras, sizes, dims, bounds, env), or None when it declares none
    (openpi servers): the env then runs with its own defaults."""
    from vla_client import RobotSpec

    from vla.data.schema import ActionSpace, DatasetMeta

    try:
        spec = RobotSpec.from_server(metadata)
    except ValueError:
        return None
    action = spec.action_space
    return DatasetMeta(
        fps=spec.fps,
        cameras=spec.cameras,
        image_size=spec.image_size,
        state_dim=spec.state_dim,
        action_space=ActionSpace(action.dim, action.low, action.high, action.kind, action.names),
        env=metadata.get("env"),
        state_names=spec.state_names,
    )


def _obs_at(obs: dict, i: int) -> dict:
    return {
        "images": {c: v[i] for c, v in obs["images"].items()},
        "state": obs["state"][i],
        "instruction": obs["instruction"][i],
    }


def rollout_task(
    name: str,
    cfg: EvalConfig,
    policy,
    meta,
    video_dir: Path | None,
    seeds: list[int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Episodes of one task (``seeds``, default all of cfg's); returns per-episode results and chunk
    latencies."""
    from tqdm import tqdm
    from vla_client.chunking import ChunkRequest, EpisodeStepper

    import envs

    options: dict[str, Any] = {"max_steps": cfg.max_steps}
    if meta is not None:
        options |= {"cameras": list(meta.cameras), "image_size": meta.image_size}
    queue = list(seeds) if seeds is not None else [cfg.seed + k for k in range(cfg.episodes)]
    n = min(cfg.num_envs, len(queue))
    vectorization = "sync" if cfg.expert else cfg.vectorization  # experts read env internals
    vec = envs.make_vec(name, n, vectorization=vectorization, autoreset_mode="Disabled", **options)
    actor = None
    try:
        if meta is not None:
            env_meta = (
                vec.envs[0].unwrapped.meta
                if vectorization == "sync"
                else envs.make(name, **options).unwrapped.meta
            )
            env_meta.check_compatible(meta, what=f"environment {name}", other_what="the checkpoint")
        actor = (
            _ExpertPolicy(vec)
            if cfg.expert
            else _ServedPolicy(cfg, n)
            if cfg.url
            else _CheckpointPolicy(policy, cfg)
        )
        seeds = [queue.pop(0) for _ in range(n)]
        obs, _ = vec.reset(seed=seeds)
        if actor.horizon is None:  # a server that does not declare its chunk length: ask once
            actor.horizon = len(actor.chunk(0, _obs_at(obs, 0), ChunkRequest(0, cfg.seed)))
        # the robot loop's stepper (vla_client): its requests, seeds and chunk hand-overs, answered at once
        steppers = [
            EpisodeStepper(
                cfg.strategy if actor.horizon > 1 else "receding",
                actor.horizon,
                cfg.execute_steps if actor.horizon > 1 else 1,
                cfg.ensemble_decay,
                cfg.rtc_delay,
                seed=seeds[i],
            )
            for i in range(n)
        ]
        steps = [0] * n
        active = [True] * n
        frames: list[list[np.ndarray]] = [[] for _ in range(n)]
        executed: list[list[list[float]]] = [[] for _ in range(n)]
        swapped = _swaps(vec, seeds, cfg) if cfg.instruction_swap else None
        for i in range(n):
            actor.reset(i)
        results, latencies = [], []
        action_dim = vec.single_action_space.shape[0]
        bar = tqdm(total=len(queue) + n, desc=f"eval {name}", unit="ep", disable=not progress)
        while any(active):
            actions = np.zeros((n, action_dim), dtype=np.float32)
            for i in range(n):
                if not active[i]:
                    continue
                if steppers[i].wants_chunk(steps[i]):
                    o = _obs_at(obs, i)
                    if swapped is not None:
                        o["instruction"] = swapped[i]
                    request = steppers[i].request(steps[i])
                    t0 = time.perf_counter()
                    steppers[i].receive(actor.chunk(i, o, request), request)
                    latencies.append((time.perf_counter() - t0) * 1000)
                actions[i] = steppers[i].action(steps[i])
                if cfg.record_actions:
                    executed[i].append(actions[i].tolist())
                if video_dir is not None and seeds[i] < cfg.seed + cfg.videos:
                    frames[i].append(np.concatenate([obs["images"][c][i] for c in obs["images"]], axis=1))
            obs, _, terminated, truncated, info = vec.step(actions)
            reset_mask = np.zeros(n, dtype=bool)
            for i in range(n):
                if not active[i]:
                    continue
                steps[i] += 1
                if terminated[i] or truncated[i]:
                    success = bool(info["success"][i])
                    results.append(
                        {
                            "seed": seeds[i],
                            "success": success,
                            "length": steps[i],
                            "instruction": swapped[i] if swapped else None,
                        }
                        | ({"actions": executed[i]} if cfg.record_actions else {})
                    )
                    executed[i] = []
                    bar.update(1)
                    bar.set_postfix(success=f"{sum(r['success'] for r in results) / len(results):.0%}")
                    if frames[i] and video_dir is not None:
                        from vla.data.video import write_mp4

                        video_dir.mkdir(parents=True, exist_ok=True)
                        write_mp4(
                            video_dir / f"seed{seeds[i]}_{'success' if success else 'failure'}.mp4",
                            np.stack(frames[i]),
                            meta.fps if meta is not None else 10,
                        )
                    frames[i] = []
                    if queue:
                        seeds[i], steps[i] = queue.pop(0), 0
                        steppers[i].restart(seeds[i], keep_seed=False)
                        actor.reset(i)
                    else:
                        active[i] = False  # idle until the others finish (reset so it may keep stepping)
                    reset_mask[i] = True
            if reset_mask.any():
                obs, _ = vec.reset(
                    seed=[s if m else None for s, m in zip(seeds, reset_mask, strict=True)],
                    options={"reset_mask": reset_mask},
                )
                if swapped is not None:
                    new = _swaps(vec, seeds, cfg)
                    swapped = [new[i] if reset_mask[i] else swapped[i] for i in range(n)]
                for i in np.flatnonzero(reset_mask):
                    actor.reset(int(i))
        bar.close()
        return {"episodes": sorted(results, key=lambda r: r["seed"]), "latency_ms": latencies}
    finally:
        vec.close()
        if isinstance(actor, _ServedPolicy):
            actor.close()


def _rollout_ray(name: str, cfg: EvalConfig, video_dir: Path | None) -> dict[str, Any]:
    """Spread the task's episode seeds over ``num_envs`` Ray tasks (each loads the checkpoint itself);
    seeded episodes make the merged results identical to the vector backend's."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=cfg.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            num_cpus=None if cfg.ray_address else os.cpu_count(),
        )
    seeds = [cfg.seed + k for k in range(cfg.episodes)]
    shards = [seeds[i :: cfg.num_envs] for i in range(min(cfg.num_envs, len(seeds)))]
    remote = ray.remote(_rollout_shard)
    parts = ray.get(
        [remote.remote(name, asdict(cfg), shard, str(video_dir) if video_dir else None) for shard in shards]
    )
    return {
        "episodes": sorted((e for p in parts for e in p["episodes"]), key=lambda e: e["seed"]),
        "latency_ms": [x for p in parts for x in p["latency_ms"]],
    }


def _rollout_shard(name: str, cfg_dict: dict, seeds: list[int], video_dir: str | None) -> dict[str, Any]:
    """One Ray task: a single env working through its seeds (runs in a Ray worker process)."""
    cfg = EvalConfig(**{**cfg_dict, "num_envs": 1, "vectorization": "sync", "backend": "vector"})
    policy = meta = None
    if not cfg.expert:
        from vla.models import load_policy

        policy = load_policy(cfg.checkpoint)
        meta = policy.meta
    return rollout_task(name, cfg, policy, meta, Path(video_dir) if video_dir else None, seeds)


def _swaps(vec, seeds: list[int], cfg: EvalConfig) -> list[str]:
    try:
        swapped = list(vec.call("swapped_instruction", 0))
    except AttributeError as e:
        raise ValueError(
            "instruction_swap needs a language-conditioned env (builtin/*, robosuite/LiftColor)"
        ) from e
    if any(s is None for s in swapped):
        raise ValueError("instruction_swap needs a language-conditioned env (builtin/*, robosuite/LiftColor)")
    return swapped


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate every task; write the report files; return the report dict."""
    from vla.eval.metrics import wilson

    started = time.perf_counter()
    policy = meta = None
    if cfg.url:
        from vla_client import RobotClient

        with RobotClient(cfg.url, api_key=cfg.api_key) as client:
            meta = served_meta(client.connect())
    elif not cfg.expert:
        from vla.models import load_policy

        policy = load_policy(cfg.checkpoint)
        meta = policy.meta
    names = _task_names(cfg, meta.env if meta is not None else None)
    default_out = Path("runs") / ("eval-served" if cfg.url else "eval-expert")
    out = (
        Path(cfg.out)
        if cfg.out
        else (Path(cfg.checkpoint).parent.parent / "eval" if cfg.checkpoint else default_out)
    )
    out.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for name in names:
        t0 = time.perf_counter()
        video_dir = out / "videos" / name.replace("/", "_") if cfg.videos else None
        if cfg.backend == "ray":
            result = _rollout_ray(name, cfg, video_dir)
        else:
            result = rollout_task(name, cfg, policy, meta, video_dir, progress=progress)
        eps = result["episodes"]
        wins = sum(e["success"] for e in eps)
        lo, hi = wilson(wins, len(eps))
        lat = result["latency_ms"]
        tasks[name] = {
            "episodes": len(eps),
            "successes": wins,
            "success_rate": round(wins / len(eps), 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "mean_length": round(float(np.mean([e["length"] for e in eps])), 1),
            "latency_ms": {
                "median": round(float(np.median(lat)), 2),
                "p95": round(float(np.percentile(lat, 95)), 2),
            },
            "wall_s": round(time.perf_counter() - t0, 1),
            "results": eps,
        }
        if progress:
            print(f"{name}: {wins}/{len(eps)} ({wins / len(eps):.0%})", flush=True)
    report = {
        "policy": "expert" if cfg.expert else "server" if cfg.url else "checkpoint",
        "checkpoint": cfg.checkpoint or cfg.url,
        "config": asdict(cfg),
        "tasks": tasks,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    (out / "eval.md").write_text(_markdown(report))
    _plot(report, out / "success.png")
    report["out"] = str(out)
    return report


def _markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"# Evaluation: {report['checkpoint'] or 'scripted expert'}",
        "",
        f"{cfg['episodes']} episodes per task, seeds {cfg['seed']}..{cfg['seed'] + cfg['episodes'] - 1}, "
        f"strategy `{cfg['strategy']}`"
        + (", **instruction swapped**" if cfg["instruction_swap"] else "")
        + f"; wall time {report['wall_s']} s.",
        "",
        "| task | success | 95% CI | mean length | chunk latency median / p95 (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, t in report["tasks"].items():
        lines.append(
            f"| {name} | {t['successes']}/{t['episodes']} ({t['success_rate']:.0%}) | "
            f"{t['ci95'][0]:.2f}-{t['ci95'][1]:.2f} | {t['mean_length']} | "
            f"{t['latency_ms']['median']} / {t['latency_ms']['p95']} |"
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["tasks"])
    rates = [report["tasks"][n]["success_rate"] for n in names]
    err = np.array(
        [
            [r - report["tasks"][n]["ci95"][0], report["tasks"][n]["ci95"][1] - r]
            for n, r in zip(names, rates, strict=True)
        ]
    ).T
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names)), 3))
    ax.bar(range(len(names)), rates, yerr=err, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
