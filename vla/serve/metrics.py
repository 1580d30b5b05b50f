"""Prometheus metrics of one server (its own registry, so several servers in a process don't mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vla_requests",
            "Inference requests by outcome (ok or the error kind)",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vla_request_latency_seconds",
            "Request received -> reply ready",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "vla_batch_inference_seconds",
            "One batched forward pass",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, max_batch})
        self.batch_size = Histogram(
            "vla_batch_size", "Requests per forward pass", buckets=buckets, registry=self.registry
        )
        self.clients = Gauge("vla_connected_clients", "Open websocket connections", registry=self.registry)
        self.connections = Counter(
            "vla_connections", "Websocket connections accepted", registry=self.registry
        )
        self.http = Counter(
            "vla_http_requests",
            "Plain HTTP requests by path and status",
            ["path", "status"],
            registry=self.registry,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)
