"""What serving costs: in-process chunk latency vs the loopback round trip through `vla serve`,
and throughput with 1 / 4 / 8 concurrent clients with and without batching.

    python benchmarks/serve_latency.py [key=value ...]     (keys: configs/bench/serve_latency.yaml)

The server runs as its own process (`vla serve`, as deployed); clients are threads here, each with
its own connection, in a closed loop (send, wait for the reply, send again). Prints one JSON object.
"""

from __future__ import annotations

import json
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
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from policy_latency import builtin_push_meta, identity_normalizer, machine, time_chunks  # noqa: E402

from vla.config import compose, config_dir, to_object  # noqa: E402
from vla.data.observation import stack_observations
from vla.models import Policy, PolicyConfig, save_policy  # noqa: E402
from vla.serve import RobotClient, ServerProcess  # noqa: E402


@dataclass
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: ["tiny", "small"])
    head: str = "dual_stream"
    repeats: int = 30  # sequential requests for the latency rows
    clients: list[int] = field(default_factory=lambda: [1, 4, 8])
    seconds: float = 5.0  # per throughput setting
    max_batch: int = 8  # the batching server; the other one has max_batch=1
    max_wait_ms: float = 5.0
    threads: int = 2
    image_size: int = 64


def observation(i: int, size: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "images": {"top": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
        "state": rng.normal(size=4).astype(np.float32),
        "instruction": "push the red block onto the blue pad",
    }


def round_trips(url: str, cfg: BenchConfig) -> dict:
    with RobotClient(url, timeout_s=60) as client:
        obs = observation(0, cfg.image_size)
        for _ in range(3):
            client.infer(obs, seed=0)
        replies = [client.infer(obs, seed=i) for i in range(cfg.repeats)]
    rt = [r.round_trip_ms for r in replies]
    server_total = [r.server_timing["total_ms"] for r in replies]
    infer = [r.server_timing["infer_ms"] for r in replies]
    return {
        "round_trip_ms": round(float(np.median(rt)), 2),
        "round_trip_p95_ms": round(float(np.percentile(rt, 95)), 2),
        "server_total_ms": round(float(np.median(server_total)), 2),
        "server_infer_ms": round(float(np.median(infer)), 2),
    }


def throughput(url: str, n_clients: int, cfg: BenchConfig) -> dict:
    stop, latencies, batch_sizes, errors = threading.Event(), [], [], []
    ready = threading.Barrier(n_clients + 1)

    def client_loop(c: int) -> None:
        try:
            with RobotClient(url, timeout_s=60) as client:
                obs = observation(c, cfg.image_size)
                client.infer(obs, seed=c)
                ready.wait()
                while not stop.is_set():
                    reply = client.infer(obs, seed=c)
                    latencies.append(reply.round_trip_ms)
                    batch_sizes.append(reply.server_timing["batch_size"])
        except Exception as e:  # noqa: BLE001 - reported in the JSON
            errors.append(repr(e))

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    time.sleep(cfg.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "clients": n_clients,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_median_ms": round(float(np.median(latencies)), 1),
        "latency_p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2),
        "errors": errors,
    }


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/serve_latency", argv), BenchConfig)
    torch.set_num_threads(cfg.threads)
    meta = builtin_push_meta(cfg.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in cfg.presets:
            config = to_object(
                yaml.safe_load((config_dir() / "policy" / f"{preset}.yaml").read_text()), PolicyConfig
            )
            config.head.kind = cfg.head
            torch.manual_seed(0)
            policy = Policy(config, meta, identity_normalizer()).eval()
            checkpoint = save_policy(policy, os.path.join(tmp, preset))
            single = observation(0, cfg.image_size)
            batched = stack_observations([single])
            in_process = float(np.median(time_chunks(policy, batched, cfg.repeats)))
            del policy
            row = {"preset": preset, "head": cfg.head, "in_process_ms": round(in_process, 2)}
            for batching, max_batch in (("batched", cfg.max_batch), ("unbatched", 1)):
                server = ServerProcess(
                    str(checkpoint), f"max_batch={max_batch}", f"max_wait_ms={cfg.max_wait_ms}"
                )
                try:
                    if batching == "batched":
                        row |= round_trips(server.url, cfg)
                        row["overhead_ms"] = round(row["round_trip_ms"] - in_process, 2)
                    row[batching] = [throughput(server.url, n, cfg) for n in cfg.clients]
                finally:
                    server.stop()
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return {
        "benchmark": "serve_latency",
        "config": asdict(cfg),
        "rows": rows,
        "machine": {**machine(cfg.threads), "note": "server and clients share this machine's cores"},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
