"""`vla serve` under attack: honest clients' answers and latency beside hostile clients, and the server's RSS.

    python benchmarks/serve_attack.py [key=value ...]     (keys: configs/bench/serve_attack.yaml)

The server runs as its own process (`vla serve` of the tiny preset, API key set). ``honest`` clients (threads,
closed loop, seeded requests) check every answer against the policy run in this process. Each round runs them
twice for ``seconds``: alone (the baseline), then beside one attacker of each kind, each in its own process:

- ``bomb``: 15 MB frames declaring millions of values (a map of empty maps);
- ``echo``: frames whose ``seed`` is a 12 MB byte string (refused; the reply must stay small);
- ``garbage``: random bytes;
- ``flood``: valid requests as fast as the server answers;
- ``nan``: a finite but extreme state (1e30) that drives the policy to NaN;
- ``mute``: valid requests sent without ever reading a reply.

Prints one JSON object: per round, the honest p50/p99 with and without attackers and their ratio, wrong or
failed honest answers, attackers' replies, and the server's RSS after the round (from /proc).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from policy_latency import builtin_push_meta, identity_normalizer, machine  # noqa: E402

from vla.config import compose, to_object  # noqa: E402
from vla.models import Policy, PolicyConfig, load_policy, save_policy  # noqa: E402
from vla.serve import RobotClient, ServerProcess, packb  # noqa: E402

KEY = "attack-bench-key"
ATTACKS = ("bomb", "echo", "garbage", "flood", "nan", "mute")


@dataclass
class BenchConfig:
    honest: int = 8  # honest clients
    seconds: float = 4.0  # per phase (alone, under attack)
    rounds: int = 5
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    bomb_mb: float = 15.0
    image_size: int = 64
    server: list[str] = field(
        default_factory=list
    )  # extra `vla serve` overrides, e.g. [error_backoff_max_s=0]


def observation(i: int, size: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "images": {"top": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
        "state": rng.normal(size=4).astype(np.float32),
        "instruction": ["push the red block onto the blue pad", "reach the green block"][i % 2],
    }


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def attacker(kind: str, url: str, stop, size: int, bomb_mb: float, sent) -> None:
    """One hostile client (its own process): sends its kind of frame until ``stop`` is set."""
    from websockets.sync.client import connect

    bomb_size = int(bomb_mb * 2**20)
    frames = {
        "bomb": b"\xdf" + (bomb_size // 2).to_bytes(4, "big") + b"\xa0\x80" * (bomb_size // 2),
        "echo": packb(dict(observation(0, size), seed=b"\x00" * int(0.8 * bomb_size))),
        "garbage": np.random.default_rng(0).bytes(100_000),
        "flood": packb(dict(observation(1, size), seed=1)),
        "nan": packb(dict(observation(2, size), state=np.full(4, 1e30, np.float32), seed=1)),
        "mute": packb(dict(observation(3, size), seed=1)),
    }
    frame = frames[kind]
    while not stop.is_set():
        try:
            with connect(
                url,
                additional_headers={"Authorization": f"Api-Key {KEY}"},
                max_size=None,
                open_timeout=10,
                close_timeout=1,
            ) as ws:
                ws.recv(timeout=10)  # metadata
                while not stop.is_set():
                    ws.send(frame)
                    with sent.get_lock():
                        sent.value += 1
                    if kind != "mute":
                        reply = ws.recv(timeout=30)
                        if kind in ("echo", "bomb", "garbage", "nan") and len(reply) > 4096:
                            raise SystemExit(f"{kind}: a {len(reply)}-byte error reply")
        except SystemExit:
            raise
        except Exception:  # noqa: BLE001 - the server may close an attacker's connection: reconnect
            time.sleep(0.05)


def honest_phase(url: str, cfg: BenchConfig, expected: dict, seconds: float) -> dict:
    """``cfg.honest`` closed-loop clients for ``seconds``; ``expected``: (observation, seed) -> chunk."""
    latencies, wrong, failed = [], [], []
    lock = threading.Lock()

    def run(c: int) -> None:
        client = RobotClient(url, api_key=KEY, timeout_s=30)
        deadline, k = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline:
            i, seed = (c + k) % 4, 1000 * c + k % 4  # one of the pairs `expected` holds
            try:
                t0 = time.perf_counter()
                reply = client.infer(observation(i, cfg.image_size), seed=seed)
                dt = time.perf_counter() - t0
                ok = np.allclose(reply.actions, expected[(i, seed)], atol=1e-5)
                with lock:
                    latencies.append(dt * 1e3)
                    if not ok:
                        wrong.append((c, k))
            except Exception as e:  # noqa: BLE001
                with lock:
                    failed.append(f"{type(e).__name__}: {str(e)[:100]}")
            k += 1
        client.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in range(cfg.honest)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.asarray(latencies) if latencies else np.full(1, np.nan)
    return {
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "wrong": len(wrong),
        "failed": len(failed),
        "failures": failed[:3],
    }


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/serve_attack", argv), BenchConfig)
    unknown = set(cfg.attacks) - set(ATTACKS)
    if unknown:
        raise SystemExit(f"unknown attacks {sorted(unknown)}; available: {list(ATTACKS)}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="vla-attack-") as tmp:
        torch.manual_seed(0)
        policy = Policy(PolicyConfig(), builtin_push_meta(cfg.image_size), identity_normalizer()).eval()
        checkpoint = str(save_policy(policy, os.path.join(tmp, "tiny")))
        policy = load_policy(checkpoint)
        # every honest request is one of these (observation, seed) pairs: answers are checked exactly
        expected = {}
        for c in range(cfg.honest):
            for k in range(4):
                for i in range(4):
                    seed = 1000 * c + k
                    expected[(i, seed)] = policy.predict_chunk(
                        observation(i, cfg.image_size), generator=[torch.Generator().manual_seed(seed)]
                    )[0]
        server = ServerProcess(checkpoint, f"api_key={KEY}", "max_message_mb=16", "warmup=true", *cfg.server)
        ctx = mp.get_context("spawn")
        rounds = []
        try:
            for r in range(cfg.rounds):
                alone = honest_phase(server.url, cfg, expected, cfg.seconds)
                stop, counters, procs = ctx.Event(), {}, []
                for kind in cfg.attacks:
                    counters[kind] = ctx.Value("i", 0)
                    proc = ctx.Process(
                        target=attacker,
                        args=(kind, server.url, stop, cfg.image_size, cfg.bomb_mb, counters[kind]),
                        daemon=True,
                    )
                    proc.start()
                    procs.append(proc)
                deadline = time.monotonic() + 120  # spawned attackers import numpy and torch first
                while any(v.value == 0 for v in counters.values()) and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(0.5)
                attacked = honest_phase(server.url, cfg, expected, cfg.seconds)
                stop.set()
                for proc in procs:
                    proc.join(15)
                    if proc.is_alive():
                        proc.kill()
                time.sleep(1.0)  # the server sees the attackers' connections close
                rounds.append(
                    {
                        "round": r + 1,
                        "alone": alone,
                        "attacked": attacked,
                        "p99_ratio": round(attacked["p99_ms"] / alone["p99_ms"], 2),
                        "attacker_frames": {k: v.value for k, v in counters.items()},
                        "attacker_exit_codes": {
                            k: p.exitcode for k, p in zip(cfg.attacks, procs, strict=True)
                        },
                        "server_rss_mb": round(rss_mb(server.proc.pid), 1),
                        "server_alive": server.alive(),
                    }
                )
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        finally:
            server.stop()
    growth = rounds[-1]["server_rss_mb"] - rounds[0]["server_rss_mb"]
    return {
        "benchmark": "serve_attack",
        "config": asdict(cfg),
        "rounds": rounds,
        "rss_growth_after_round_1_mb": round(growth, 1),
        "worst_p99_ratio": max(r["p99_ratio"] for r in rounds),
        "honest_wrong": sum(r["attacked"]["wrong"] + r["alone"]["wrong"] for r in rounds),
        "honest_failed": sum(r["attacked"]["failed"] + r["alone"]["failed"] for r in rounds),
        "machine": {
            **machine(torch.get_num_threads()),
            "note": "server, honest clients and attackers share this machine's cores",
        },
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
