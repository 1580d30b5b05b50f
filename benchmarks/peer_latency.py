"""Chunk latency of our `small` preset beside LeRobot's ACT, in one run on one machine, batch 1.

    python benchmarks/peer_latency.py [key=value ...]     (keys: configs/bench/peer_latency.yaml)
    make test-lerobot                                      (builds the LeRobot venv it needs, once)

ACT runs in LeRobot's own venv (benchmarks/_lerobot_act_latency.py, LeRobot 0.6.1's default ACT), ours in
this process, on the same observation shapes (one 64 px camera, state 4, action 2: the built-in push task),
under the same environment (OpenMP wait policy, threads, and any ISA cap such as ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2``, which makes this CPU compute as an AVX2-only one without bf16). Ours is timed in
every combination of ``vision_dtypes`` (`auto`: this CPU's choice; `float32`: what a CPU without native bf16
runs), ``encoder_sizes`` (the preset's 128 px, which upsamples the camera's 64 px, or the camera's own size)
and ``compile`` (eager, or ``Policy.compile_for_acting``), with ``Policy.act_threads = "auto"``. Prints one
JSON object with ACT, each of our rows, and each row's ratio ours / ACT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_latency import builtin_push_meta, identity_normalizer, machine, time_chunks  # noqa: E402

from vla.config import compose, config_dir, to_object  # noqa: E402
from vla.models import Policy, PolicyConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    preset: str = "small"
    head: str = "dual_stream"
    vision_dtypes: list[str] = field(default_factory=lambda: ["float32"])
    encoder_sizes: list[int | None] = field(default_factory=lambda: [128, 64])  # None: the camera's own
    compile: list[bool] = field(default_factory=lambda: [False, True])
    act_threads: list[str | None] = field(default_factory=lambda: ["auto"])  # None: `threads` throughout
    # trained checkpoints timed too (e.g. the grounding-stem recipe), on observations of their own shapes
    checkpoints: list[str] = field(default_factory=list)
    repeats: int = 30
    threads: int = 2
    image_size: int = 64
    lerobot_python: str = ".venv-lerobot/bin/python"


def timed(policy: Policy, repeats: int, **sampling) -> dict:
    """Batch-1 chunk latency of ``policy`` on a random observation of its own shapes, and what it ran."""
    meta, rng = policy.meta, np.random.default_rng(0)
    obs = {
        "images": {c: rng.integers(0, 256, (1, *meta.image_shape(c)), dtype=np.uint8) for c in meta.cameras},
        "state": rng.normal(size=(1, meta.state_dim)).astype(np.float32),
        "instruction": ["push the red block onto the blue pad"],
    }
    times = time_chunks(policy, obs, repeats, **sampling)
    vision = next((p for n, p in policy.named_parameters() if n.startswith("backbone.vision")), None)
    return {
        "vision_dtype_resolved": None if vision is None else str(vision.dtype).removeprefix("torch."),
        "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 2),
        "chunk_shape": [1, policy.config.horizon, meta.action_dim],
        "median_ms": round(float(np.median(times)), 1),
        "p95_ms": round(float(np.percentile(times, 95)), 1),
    }


def ours(
    cfg: BenchConfig, vision_dtype: str, encoder_size: int | None, compiled: bool, act_threads: str | None
) -> dict:
    config = to_object(
        yaml.safe_load((config_dir() / "policy" / f"{cfg.preset}.yaml").read_text()), PolicyConfig
    )
    config.head.kind = cfg.head
    config.backbone.vision_dtype = vision_dtype
    config.backbone.image_size = encoder_size
    torch.manual_seed(0)
    policy = Policy(config, builtin_push_meta(cfg.image_size), identity_normalizer()).eval()
    policy.act_threads = act_threads
    if compiled:
        policy.compile_for_acting()
    extra = {"vision_steps": 0} if cfg.head == "dual_stream" else {}
    return {
        "policy": f"vla {cfg.preset} {cfg.head}" + (" (N_A = 4, N_o = 0)" if extra else ""),
        "vision_dtype": vision_dtype,
        "encoder_size": encoder_size,
        "compiled": compiled,
        "act_threads": act_threads,
        **timed(policy, cfg.repeats, **extra),
    }


def trained(cfg: BenchConfig, path: str, compiled: bool) -> dict:
    """A trained checkpoint (its own recipe: grounding, tokens, encoder size), batch 1, eager or compiled."""
    from vla.models import load_policy

    policy = load_policy(path)
    if compiled:
        policy.compile_for_acting()
    meta = policy.meta
    return {
        "policy": f"checkpoint {path}",
        "grounding": policy.config.grounding.enabled,
        "head": policy.config.head.kind,
        "encoder_size": policy.config.backbone.image_size,
        "cameras": {c: list(meta.image_shape(c)) for c in meta.cameras},
        "compiled": compiled,
        **timed(policy, cfg.repeats),
    }


def act(cfg: BenchConfig) -> dict:
    python = Path(cfg.lerobot_python)
    python = python if python.is_absolute() else ROOT / python
    if not python.exists():
        raise SystemExit(
            f"no LeRobot venv at {python}: run `make test-lerobot` once (it builds it), or pass "
            "lerobot_python="
        )
    args = [str(python), str(ROOT / "benchmarks" / "_lerobot_act_latency.py")]
    args += [str(v) for v in (cfg.image_size, 4, 2, cfg.repeats, cfg.threads)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1200)
    if out.returncode:
        raise SystemExit(f"ACT latency failed in {python}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/peer_latency", argv), BenchConfig)
    torch.set_num_threads(cfg.threads)
    peer = act(cfg)
    rows = [
        ours(cfg, dtype, size, compiled, threads)
        for dtype in cfg.vision_dtypes
        for size in cfg.encoder_sizes
        for compiled in cfg.compile
        for threads in cfg.act_threads
    ]
    rows += [trained(cfg, path, compiled) for path in cfg.checkpoints for compiled in cfg.compile]
    for row in rows:
        row["ratio_to_act"] = round(row["median_ms"] / peer["median_ms"], 3)
    return {
        "benchmark": "peer_latency",
        "config": asdict(cfg),
        "batch": 1,
        "act": peer,
        "ours": rows,
        "target_ratio": 0.5,
        "machine": machine(cfg.threads),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
