"""`vla serve`: a checkpoint behind a websocket, wire-compatible with openpi's client.

One port serves both the websocket (metadata on connect, then msgpack observation -> msgpack
``{"actions": (H, D) float32, "server_timing": {...}}``) and plain HTTP: ``/healthz``,
``/metadata`` (JSON) and ``/metrics`` (Prometheus text). A bad request gets a JSON text frame
``{"error": kind, "message": ...}`` and the connection keeps working; nothing a client sends can
stop the server or reach another client's reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import json
import logging
import signal
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from vla.control import rtc_guide
from vla.data.observation import stack_observations

from .batcher import MicroBatcher, ServerClosing
from .config import ServeConfig
from .metrics import ServerMetrics
from .observation import ObservationParser
from .protocol import ProtocolError, error_text, packb, unpackb

log = logging.getLogger("vla.serve")

ROUTES = ("/", "/healthz", "/metadata", "/metrics")  # the paths the HTTP metrics label by name


@dataclass
class Job:
    obs: dict
    seed: int
    guide: tuple[np.ndarray, np.ndarray] | None = None  # (H, D) env units, (H,) weights


class InferenceEngine:
    """Runs a batch of jobs through the policy: one forward pass, per-job noise (so each reply
    depends only on its own request and seed, not on its batch mates)."""

    def __init__(self, policy, action_steps: int | None = None, vision_steps: int | None = None):
        self.policy, self.action_steps, self.vision_steps = policy, action_steps, vision_steps
        self.horizon = policy.config.horizon
        self.supports_guide = policy.head.supports_guidance

    def __call__(self, jobs: list[Job]) -> list[np.ndarray]:
        import torch

        obs = stack_observations([j.obs for j in jobs], self.policy.meta.cameras)
        generators = [torch.Generator().manual_seed(j.seed) for j in jobs]
        guide = weights = None
        if any(j.guide is not None for j in jobs):
            dim = self.policy.meta.action_space.dim
            guide = np.zeros((len(jobs), self.horizon, dim), np.float32)
            weights = np.zeros((len(jobs), self.horizon), np.float32)  # weight 0: an unguided batch mate
            for i, j in enumerate(jobs):
                if j.guide is not None:
                    guide[i], weights[i] = j.guide
        chunks = self.policy.predict_chunk(
            obs,
            generator=generators,
            action_steps=self.action_steps,
            vision_steps=self.vision_steps,
            guide=guide,
            guide_weights=weights,
        )
        return list(chunks)

    def warmup(self, batch_sizes: list[int]) -> None:
        meta = self.policy.meta
        obs = {
            "images": {c: np.zeros(meta.image_shape(c), np.uint8) for c in meta.cameras},
            "state": np.zeros(meta.state_dim, np.float32),
            "instruction": "warm up",
        }
        for n in sorted(set(batch_sizes)):
            self([Job(obs, seed=i) for i in range(n)])


class _Connection:
    """Per-client state: the request count (for default seeds) and the last chunk sent (for RTC)."""

    def __init__(self, index: int, base_seed: int):
        self.index, self.base_seed = index, base_seed
        self.requests = 0
        self.last_chunk: np.ndarray | None = None
        self.prev_total_ms = 0.0
        self.errors_in_a_row = 0

    def error_backoff_s(self, replied_with_error: bool, most_s: float) -> float:
        """How long to wait before reading this client's next message: 0 after an answer; after errors, 50 ms
        doubling up to ``most_s``. A client that keeps sending what the server refuses (bombs, garbage,
        observations that make NaN) is read at most about once a second, and its socket fills instead of the
        event loop."""
        self.errors_in_a_row = self.errors_in_a_row + 1 if replied_with_error else 0
        return min(most_s, 0.05 * 2 ** (self.errors_in_a_row - 1)) if self.errors_in_a_row else 0.0

    def next_seed(self) -> int:
        seq = np.random.SeedSequence([self.base_seed, self.index, self.requests])
        return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))


class PolicyServer:
    def __init__(self, cfg: ServeConfig, policy=None):
        from vla.models import load_policy

        self.cfg = cfg
        self.checkpoint = Path(cfg.checkpoint)
        self.policy = policy if policy is not None else load_policy(self.checkpoint, device=cfg.device)
        if cfg.compile:
            self.policy.compile_for_acting()
        meta = self.policy.meta
        self.engine = InferenceEngine(self.policy, cfg.action_steps, cfg.vision_steps)
        self.parser = ObservationParser(
            meta,
            cfg.obs_keys,
            cfg.max_instruction_chars,
            horizon=self.engine.horizon,
            transforms=cfg.transforms,
        )
        self.metrics = ServerMetrics(cfg.max_batch)
        self.metadata = self._metadata()
        self.max_bytes = int(cfg.max_message_mb * 2**20)
        self.connections = 0  # accepted so far (indexes per-connection seeds)
        self.active = 0  # open now (a batch stops waiting once every open connection is in it)
        self.ready, self.not_ready = False, "warming up"  # not_ready: why /healthz and handshakes get 503
        self.port: int | None = None
        self._stop: asyncio.Event | None = None

    def _metadata(self) -> dict[str, Any]:
        import vla

        meta, config = self.policy.meta, self.policy.config
        versions = {}
        meta_file = self.checkpoint / "meta.json"
        if meta_file.is_file():
            versions = json.loads(meta_file.read_text()).get("versions", {})
        return {
            "server": "vla",
            "vla_version": vla.__version__,
            "protocol": "openpi-websocket-msgpack",
            "model": {
                "name": config.name,
                "head": config.head.kind,
                "checkpoint": self.checkpoint.name,
                "trained_with": versions,
            },
            "env": meta.env,
            "robot": meta.robot,
            "cameras": list(meta.cameras),
            # [H, W] when every camera shares it (what openpi-style clients read), else {camera: [H, W]}
            "image_size": meta.json_image_size(),
            "state_dim": meta.state_dim,
            "action_dim": meta.action_space.dim,
            "action_horizon": config.horizon,
            "fps": meta.fps,
            "action_low": list(meta.action_space.low),
            "action_high": list(meta.action_space.high),
            "action_kind": meta.action_space.kind,
            # the joint order the policy was trained on: a hardware adapter orders its motors by these
            "state_names": meta.state_names,
            "action_names": meta.action_space.names,
            "obs_keys": dict(self.cfg.obs_keys),
            "transforms": asdict(self.cfg.transforms),
            "supports_rtc": self.engine.supports_guide,
            "max_batch": self.cfg.max_batch,
            "api_key_required": self.cfg.api_key is not None,
        }

    # -- HTTP on the websocket port ------------------------------------------------------------------
    def _authorized(self, headers) -> bool:
        if self.cfg.api_key is None:
            return True
        # every value, not headers.get(): with two Authorization headers that raises (a 500 and a logged
        # traceback per request, without a key); anything but exactly one header is unauthorized
        given = headers.get_all("Authorization")
        if len(given) != 1:
            return False
        return hmac.compare_digest(given[0].encode(), f"Api-Key {self.cfg.api_key}".encode())

    def _respond(self, connection, path: str, status: HTTPStatus, body: str | bytes, content_type: str):
        response = connection.respond(status, body if isinstance(body, str) else body.decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
        # a label per route from a fixed set: a label per requested path would let anyone, without a key,
        # grow the registry (and every /metrics scrape) without bound
        self.metrics.http.labels(path if path in ROUTES else "other", str(int(status))).inc()
        return response

    def _process_request(self, connection, request):
        path = request.path.split("?", 1)[0]
        method = getattr(request, "method", "GET")
        if method not in ("GET", "HEAD"):
            response = self._respond(
                connection,
                path,
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"method {method[:16]!r} is not allowed: this server answers GET (and HEAD)\n",
                "text/plain",
            )
            response.headers["Allow"] = "GET, HEAD"
            return response
        upgrade = method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
        response = self._route(connection, request, path, upgrade)
        if method == "HEAD" and response is not None:  # the GET's status and headers, without the body
            response = dataclasses.replace(response, body=b"")
        return response

    def _route(self, connection, request, path: str, upgrade: bool):
        if path == "/healthz" and not upgrade:
            if self.ready:
                return self._respond(connection, path, HTTPStatus.OK, "ok\n", "text/plain")
            return self._respond(
                connection,
                path,
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"not ready: {self.not_ready}\n",
                "text/plain",
            )
        if not self._authorized(request.headers):
            self.metrics.requests.labels("unauthorized").inc()
            return self._respond(
                connection,
                path,
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n",
                "text/plain",
            )
        if upgrade:
            if not self.ready:
                return self._respond(
                    connection, path, HTTPStatus.SERVICE_UNAVAILABLE, f"{self.not_ready}\n", "text/plain"
                )
            if self.active >= self.cfg.max_connections:
                self.metrics.requests.labels("too_many_connections").inc()
                return self._respond(
                    connection,
                    path,
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"too many connections: this server takes {self.cfg.max_connections} at once "
                    "(max_connections); try again later\n",
                    "text/plain",
                )
            return None  # go on with the websocket handshake
        if path == "/metadata":
            return self._respond(
                connection, path, HTTPStatus.OK, json.dumps(self.metadata, indent=2), "application/json"
            )
        if path == "/metrics":
            return self._respond(
                connection,
                path,
                HTTPStatus.OK,
                self.metrics.text(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        return self._respond(
            connection,
            path,
            HTTPStatus.NOT_FOUND,
            f"no such path {path[:80]!r}: use /healthz, /metadata, /metrics or a websocket\n",
            "text/plain",
        )

    # -- websocket -----------------------------------------------------------------------------------
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        conn = _Connection(self.connections, self.cfg.seed)
        self.connections += 1
        self.metrics.connections.inc()
        self.metrics.clients.inc()
        self.active += 1
        try:
            await ws.send(packb(self.metadata))
            async for message in ws:
                reply = await self._answer(conn, message)
                await ws.send(reply)
                backoff = conn.error_backoff_s(isinstance(reply, str), self.cfg.error_backoff_max_s)
                if backoff:
                    await asyncio.sleep(backoff)
        except ConnectionClosed:
            pass  # the client left (maybe mid-request): its reply, if any, is dropped
        finally:
            self.active -= 1
            self.metrics.clients.dec()
            release_memory()

    async def _answer(self, conn: _Connection, message: str | bytes) -> str | bytes:
        start = time.perf_counter()
        try:
            if isinstance(message, str):
                raise ProtocolError(
                    "text frames are not accepted: send the observation dict as a binary msgpack frame"
                )
            request = self.parser.parse(unpackb(message, self.max_bytes))
            guide = None
            if request.rtc is not None:
                if not self.engine.supports_guide:
                    raise ProtocolError(
                        f"rtc needs a flow-matching head; this checkpoint's head is "
                        f"{self.policy.config.head.kind!r}: send the request without 'rtc'"
                    )
                if conn.last_chunk is not None:
                    guide = rtc_guide(conn.last_chunk, request.rtc[0], self.engine.horizon, request.rtc[1])
            seed = request.seed if request.seed is not None else conn.next_seed()
            conn.requests += 1
            chunk, batch = await self.batcher.submit(Job(request.obs, seed, guide))
        except ProtocolError as e:
            self.metrics.requests.labels(e.kind).inc()
            return error_text(e.kind, str(e))
        except ServerClosing as e:
            self.metrics.requests.labels("unavailable").inc()
            return error_text("unavailable", str(e))
        except Exception as e:  # the model failed on an accepted request: say so, keep serving
            log.exception("inference failed")
            self.metrics.requests.labels("internal").inc()
            return error_text("internal", f"inference failed: {type(e).__name__}: {e}")
        if not np.isfinite(chunk).all():
            # np.clip and torch.clamp keep NaN: an extreme (finite) observation can make the policy emit NaN,
            # and a robot must never receive it as a command
            self.metrics.requests.labels("non_finite_action").inc()
            return error_text(
                "non_finite_action",
                "the policy produced non-finite actions (NaN or inf) for this observation, and none is sent; "
                "the observation is probably far outside the training data (check the state's scale)",
            )
        conn.last_chunk = chunk
        total_ms = (time.perf_counter() - start) * 1e3
        reply = {
            "actions": np.ascontiguousarray(chunk, dtype=np.float32),
            "server_timing": {
                "infer_ms": batch.infer_ms,
                "queue_ms": batch.queue_ms,
                "total_ms": total_ms,
                "prev_total_ms": conn.prev_total_ms,
                "batch_size": batch.size,
            },
            "chunk_id": conn.requests - 1,
            "guided": guide is not None,
        }
        if request.request_id is not None:
            reply["request_id"] = request.request_id
        conn.prev_total_ms = total_ms
        self.metrics.requests.labels("ok").inc()
        self.metrics.latency.observe(total_ms / 1e3)
        return packb(reply)

    # -- lifecycle -------------------------------------------------------------------------------------
    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference.observe(seconds)

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Open the port, warm up (``/healthz`` and handshakes answer 503 meanwhile), serve until
        SIGINT/SIGTERM (or `stop`), then close connections and drain."""
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests, benchmarks)
                pass
        self.batcher = MicroBatcher(
            self.engine,
            self.cfg.max_batch,
            self.cfg.max_wait_ms / 1e3,
            expected=lambda: self.active,
            on_batch=self._on_batch,
        )
        self.batcher.start()
        async with serve(
            self._handle,
            self.cfg.host,
            self.cfg.port,
            process_request=self._process_request,
            max_size=self.max_bytes,
            # frames read ahead per connection: a client that sends without reading its replies holds at most
            # this many (its send then waits on TCP), not websockets' default of 16 frames of max_size each
            max_queue=self.cfg.max_queued_messages,
            compression=None,
            ping_interval=self.cfg.ping_interval_s,
            server_header=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            if self.cfg.warmup:
                log.info("warming up on port %d: /healthz answers 503 until ready", self.port)
                t = time.perf_counter()
                await asyncio.to_thread(self.engine.warmup, [1, self.cfg.max_batch])
                log.info("warm-up (batch 1 and %d) took %.2f s", self.cfg.max_batch, time.perf_counter() - t)
            self.ready = True
            auth = "API key required" if self.cfg.api_key else "no API key"
            print(
                f"vla serve: {self.checkpoint} on ws://{self.cfg.host}:{self.port} ({auth}; "
                f"/healthz /metadata /metrics)",
                flush=True,
            )
            if started is not None:
                started.set()
            await self._stop.wait()
            self.ready, self.not_ready = False, "shutting down"
            log.info("shutting down: draining requests in flight")
            await self.batcher.stop()  # answers what is queued; later requests get "unavailable"
            server.close()  # then closes every connection with 1001 (going away)
            await server.wait_closed()
        print("vla serve: stopped", flush=True)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def bound_malloc() -> None:
    """glibc raises its mmap threshold to the size of the largest block freed (up to 32 MB): after one 15 MB
    frame, every later large frame comes from the heap, whose fragments are never given back (RSS grew by tens
    of MB per round of attacks and stayed). A fixed threshold keeps large buffers in their own mappings, which
    free returns to the system. No-op off glibc."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB, fixed (disables the dynamic threshold)


def release_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``), e.g. when a client leaves."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def serve(cfg: ServeConfig) -> None:
    """Blocking entry point of `vla serve`."""
    bound_malloc()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(PolicyServer(cfg).run())
