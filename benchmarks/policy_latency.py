"""Policy size and chunk latency (batch 1) per preset, head and number of vision steps.

    python benchmarks/policy_latency.py [key=value ...]     (keys: configs/bench/policy_latency.yaml)

Prints one JSON object: parameters (total / trainable), median and p95 latency of one
``predict_chunk`` (backbone prefix once + all denoising steps), peak RSS of the process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")

import numpy as np
import torch
import yaml

from vla.config import compose, config_dir, to_object
from vla.data import ActionSpace, DatasetMeta, Normalizer
from vla.hardware import cpu_info
from vla.models import Policy, PolicyConfig


@dataclass
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "small"])
    heads: list[str] = field(default_factory=lambda: ["dual_stream", "flow", "diffusion"])
    vision_steps: list[int] = field(default_factory=lambda: [0, 4, 16])
    repeats: int = 20
    threads: int = 2
    image_size: int = 64
    instruction_memo: list[bool] = field(default_factory=lambda: [True])  # [true, false]: both, same run


def builtin_push_meta(size: int) -> DatasetMeta:
    return DatasetMeta(
        fps=10,
        cameras=["top"],
        image_size=(size, size),
        state_dim=4,
        action_space=ActionSpace(dim=2, low=[-1, -1], high=[1, 1]),
        robot="point_pusher",
        env="builtin/push",
    )


def identity_normalizer() -> Normalizer:
    return Normalizer.identity({"state": 4, "action": 2})


def machine(threads: int) -> dict:
    """The CPU and the settings a latency depends on."""
    return {
        **cpu_info(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        # set, these cap the instruction sets torch and oneDNN use (an AVX2-only CPU on a newer one)
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def time_chunks(policy: Policy, obs: dict, repeats: int, **kwargs) -> list[float]:
    for _ in range(3):
        policy.predict_chunk(obs, **kwargs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_chunk(obs, **kwargs)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/policy_latency", argv), BenchConfig)
    torch.set_num_threads(cfg.threads)
    meta = builtin_push_meta(cfg.image_size)
    rng = np.random.default_rng(0)
    obs = {
        "images": {"top": rng.integers(0, 256, (1, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)},
        "state": rng.normal(size=(1, 4)).astype(np.float32),
        "instruction": ["push the red block onto the blue pad"],
    }
    rows = []
    for preset in cfg.presets:
        base = to_object(
            yaml.safe_load((config_dir() / "policy" / f"{preset}.yaml").read_text()), PolicyConfig
        )
        for head in cfg.heads:
            base.head.kind = head
            torch.manual_seed(0)
            policy = Policy(base, meta, identity_normalizer()).eval()
            params = sum(p.numel() for p in policy.parameters())
            trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
            settings = [{"vision_steps": n} for n in cfg.vision_steps] if head == "dual_stream" else [{}]
            memo = getattr(policy.backbone, "instruction_memo", None)  # frozen text encoders only
            modes = list(dict.fromkeys(cfg.instruction_memo)) if memo is not None else [False]
            for extra, use_memo in [(e, m) for e in settings for m in modes]:
                policy.backbone.instruction_memo = memo if use_memo else None
                times = time_chunks(policy, obs, cfg.repeats, **extra)
                row = {
                    "preset": preset,
                    "head": head,
                    "instruction_memo": use_memo,
                    **(
                        {"action_steps": base.head.action_steps}
                        if head != "diffusion"
                        else {"ddim_steps": base.head.diffusion_sample_steps}
                    ),
                    **extra,
                    "params_m": round(params / 1e6, 2),
                    "trainable_m": round(trainable / 1e6, 2),
                    "median_ms": round(float(np.median(times)), 1),
                    "p95_ms": round(float(np.percentile(times, 95)), 1),
                }
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    return {
        "benchmark": "policy_latency",
        "config": asdict(cfg),
        "batch": 1,
        "rows": rows,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": machine(cfg.threads),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
