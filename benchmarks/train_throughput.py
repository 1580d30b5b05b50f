"""Training throughput (samples/s) and peak memory per preset and head, on CPU.

    python benchmarks/train_throughput.py [key=value ...]   (keys: configs/bench/train_throughput.yaml)

Each (preset, head) trains in its own process (so peak RSS is its own) through `vla.train.train`
on built-in push demos; samples/s is measured over the timed steps only. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "small"])
    heads: list[str] = field(default_factory=lambda: ["dual_stream", "flow", "diffusion"])
    batch_size: int = 32
    steps: int = 12
    warmup: int = 3
    episodes: int = 20
    image_size: int = 64
    # trainer.cache_features settings to compare; with the memo on, the timed steps span several
    # epochs (cache_steps), so the figure includes the first epoch, which fills the memo
    cache_features: list[bool] = field(default_factory=lambda: [False, True])
    cache_steps: int = 60
    # the small preset's frozen vision encoder alone (what trainer.cache_features prefills): ms per frame
    # by batch size and backbone.vision_dtype, over encoder_frames frames
    encoder_batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64])
    encoder_dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16", "auto"])
    encoder_frames: int = 256


def one_run(dataset: str, preset: str, head: str, cfg: BenchConfig, out: str, cache: bool) -> dict:
    """Runs in a child process: warm-up steps, then timed steps (resumed from the warm-up checkpoint)."""
    from vla.config import compose, to_object
    from vla.train import TrainConfig, train

    base = [
        f"data.path={dataset}",
        f"policy={preset}",
        f"head={head}",
        f"out={out}",
        "data.num_workers=0",
        f"trainer.batch_size={cfg.batch_size}",
        "trainer.logger=none",
        "trainer.val_every=1000000",
        "trainer.ema_decay=0.999",
        "data.val_fraction=0.1",
        f"trainer.cache_features={'auto' if cache else 'false'}",
    ]
    steps = cfg.cache_steps if cache else cfg.steps
    warm = to_object(
        compose("train", base + [f"trainer.steps={cfg.warmup}", f"trainer.checkpoint_every={cfg.warmup}"]),
        TrainConfig,
    )
    train(warm, progress=False)
    timed = to_object(
        compose(
            "train",
            base
            + [f"trainer.steps={cfg.warmup + steps}", "resume=true", f"trainer.checkpoint_every={10**6}"],
        ),
        TrainConfig,
    )
    t0 = time.perf_counter()
    train(timed, progress=False)
    seconds = time.perf_counter() - t0
    import torch

    from vla.models import load_policy

    policy = load_policy(Path(out) / "checkpoints" / f"step_{cfg.warmup + steps:06d}")
    cached = (
        cache and policy.config.backbone.kind == "composite" and policy.config.backbone.finetune == "frozen"
    )
    return {
        "preset": preset,
        "head": head,
        "batch_size": cfg.batch_size,
        "cache_features": cached,
        "timed_steps": steps,
        "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 2),
        "trainable_m": round(sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6, 2),
        "samples_per_s": round(cfg.batch_size * steps / seconds, 1),
        "step_s": round(seconds / steps, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }


def encoder_rows(dataset: str, cfg: BenchConfig) -> list[dict]:
    """ms per frame of the small preset's vision encoder (EfficientNet-Lite0, 128 px), on the dataset's
    frames, median of 3 passes, after one warm-up batch."""
    import numpy as np
    import torch

    from vla.config import compose, to_object
    from vla.data import TrajectoryStore
    from vla.models.backbone import CompositeBackbone
    from vla.train import TrainConfig

    store = TrajectoryStore(dataset)
    frames = torch.as_tensor(np.asarray(store.images(store.meta.cameras[0])[: cfg.encoder_frames]))
    rows = []
    for dtype in cfg.encoder_dtypes:
        policy = to_object(
            compose("train", ["policy=small", f"policy.backbone.vision_dtype={dtype}"]), TrainConfig
        ).policy
        backbone = CompositeBackbone(policy.backbone, 32, store.meta.cameras).eval()
        for batch in cfg.encoder_batch_sizes:
            times = []
            with torch.inference_mode():
                backbone.encode_images(frames[:batch])
                for _ in range(3):
                    t0 = time.perf_counter()
                    for start in range(0, len(frames), batch):
                        backbone.encode_images(frames[start : start + batch])
                    times.append(time.perf_counter() - t0)
            rows.append(
                {
                    "encoder": policy.backbone.vision,
                    "vision_dtype": dtype,
                    "runs_in": backbone.vision_dtype,
                    "batch": batch,
                    "image_size": policy.backbone.image_size,
                    "ms_per_frame": round(1000 * sorted(times)[1] / len(frames), 2),
                }
            )
    return rows


def main(argv: list[str]) -> dict:
    from envs.collect import CollectConfig, collect
    from vla.config import compose, to_object

    cfg: BenchConfig = to_object(compose("bench/train_throughput", argv), BenchConfig)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vla-train-bench-") as tmp:
        dataset = str(Path(tmp) / "push.zarr")
        collect(
            CollectConfig(episodes=cfg.episodes, out=dataset, image_size=cfg.image_size, videos=0),
            progress=False,
        )
        encoder = encoder_rows(dataset, cfg) if cfg.encoder_batch_sizes else []
        for preset in cfg.presets:
            for head in cfg.heads:
                for cache in cfg.cache_features:
                    if cache and preset == "tiny":
                        continue  # tiny's encoders train (finetune: full): nothing to memoize
                    out = str(Path(tmp) / f"run-{preset}-{head}-{cache}")
                    child = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--one",
                            dataset,
                            preset,
                            head,
                            out,
                            json.dumps(asdict(cfg)),
                            str(cache),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
                    print(rows[-1], file=sys.stderr, flush=True)
    from vla.hardware import cpu_info

    return {
        "benchmark": "train_throughput",
        "config": asdict(cfg),
        "device": "cpu",
        "rows": rows,
        "encoder": encoder,
        "machine": {
            **cpu_info(),
            "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        _, _, dataset, preset, head, out, cfg_json, cache = sys.argv
        print(
            json.dumps(
                one_run(dataset, preset, head, BenchConfig(**json.loads(cfg_json)), out, cache == "True")
            )
        )
    else:
        print(json.dumps(main(sys.argv[1:]), indent=2))
