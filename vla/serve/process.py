"""Run `vla serve` as a subprocess and talk to its HTTP endpoints (tests, benchmarks, notebooks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


class ServerProcess:
    """`vla serve` in a subprocess (port 0: a free one), for tests, benchmarks and notebooks.
    Returns once the server prints its address (after warm-up); ``stop()`` sends SIGTERM (graceful),
    ``kill()`` SIGKILL. ``VLA_API_KEY`` is not inherited: pass ``api_key=...`` as an override."""

    def __init__(self, checkpoint: str, *overrides: str, port: int = 0, timeout_s: float = 120.0):
        cmd = [
            sys.executable,
            "-m",
            "vla.cli",
            "serve",
            f"checkpoint={checkpoint}",
            f"port={port}",
            *overrides,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "VLA_API_KEY"} | {"PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r"on ws://([\d.]+):(\d+)", line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                self.url = f"ws://{self.host}:{self.port}"
                threading.Thread(target=self._drain, daemon=True).start()  # keep the pipe from filling
                return
        self.proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def http(self, path: str, api_key: str | None = None) -> tuple[int, str]:
        """(status, body) of a plain HTTP GET on the server's port."""
        request = urllib.request.Request(f"http://{self.host}:{self.port}{path}")
        if api_key:
            request.add_header("Authorization", f"Api-Key {api_key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
