"""The robot side's connection to `vla serve` (or to any openpi-protocol server).

`RobotClient.infer` never returns a stale chunk: every request carries a ``request_id`` the server
echoes, replies with another id are dropped, and a request that times out closes the connection,
so its late reply cannot be read by the next request. The next call reconnects (at most once per
``retry_s`` while the server is unreachable, so a background caller does not spin).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np

from .protocol import ProtocolError, packb, parse_error, unpackb

_WEBSOCKETS_MAJOR = int(version("websockets").split(".")[0])


class ServerError(RuntimeError):
    """The server answered the request with an error (the connection stays usable)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


@dataclass
class Reply:
    actions: np.ndarray  # (H, D) float32, env units
    chunk_id: int | None = None
    guided: bool = False
    round_trip_ms: float = 0.0
    server_timing: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """A serialized request (`RobotClient.prepare`)."""

    request_id: int
    payload: bytes


class RobotClient:
    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 2.0,
        connect_timeout_s: float = 5.0,
        retry_s: float = 0.5,
    ):
        self.url = url if url.startswith(("ws://", "wss://")) else f"ws://{url}"
        self.api_key, self.timeout_s = api_key, timeout_s
        self.connect_timeout_s, self.retry_s = connect_timeout_s, retry_s
        self.metadata: dict[str, Any] | None = None
        self._ws = None
        self._ids = itertools.count()
        self._next_attempt = 0.0
        self.reconnects = -1  # connections opened after the first

    # -- connection ------------------------------------------------------------------------------
    def connect(self) -> dict[str, Any]:
        """Open the websocket and read the server's metadata (raises ConnectionError with the reason)."""
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        self.close()
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            raise ConnectionError(f"{self.url} was unreachable; next attempt in {wait:.2f} s")
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        # websockets >= 17 warns about a connection opened outside a context manager unless told it is
        # deliberate; older ones (the last for Python 3.10 is 16) take no such flag
        deliberate = {"legacy": True} if _WEBSOCKETS_MAJOR >= 17 else {}
        try:
            self._ws = connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout_s,
                compression=None,
                max_size=None,
                **deliberate,
            )
            self.metadata = unpackb(self._ws.recv(timeout=self.connect_timeout_s))
        except InvalidStatus as e:
            self._failed()
            status = e.response.status_code
            reason = (
                "missing or wrong API key"
                if status == 401
                else e.response.body.decode(errors="replace").strip()
            )
            raise ConnectionError(f"{self.url} refused the connection (HTTP {status}): {reason}") from None
        except (OSError, TimeoutError, WebSocketException, ProtocolError) as e:
            self._failed()
            raise ConnectionError(f"cannot connect to {self.url}: {type(e).__name__}: {e}") from None
        self.reconnects += 1
        return self.metadata

    def _failed(self) -> None:
        self.close()
        self._next_attempt = time.monotonic() + self.retry_s

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass  # already broken: nothing to flush
            self._ws = None

    def __enter__(self) -> RobotClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, meta) -> None:
        """Raise ValueError if the served policy does not fit this robot (cameras, sizes, dims). A server that
        does not declare a field (openpi's servers declare none of them) is not checked on it: it checks
        every request itself."""
        md = self.metadata if self.metadata is not None else self.connect()
        ours = {
            "cameras": list(meta.cameras),
            "image_size": meta.json_image_size(),
            "state_dim": meta.state_dim,
            "action_dim": meta.action_space.dim,
        }
        if md.get("obs_keys"):
            return  # the server translates this robot's layout; it checks every request itself
        theirs = {k: (list(md[k]) if k == "cameras" else md[k]) for k in ours if k in md}
        diff = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
        if diff:
            raise ValueError(
                "the served policy does not fit this robot: "
                + "; ".join(f"{k}: robot {a}, policy {b}" for k, (a, b) in diff.items())
            )

    # -- requests --------------------------------------------------------------------------------
    def _checked_actions(self, actions: Any) -> np.ndarray:
        """A reply's chunk, refused (``ServerError`` of kind ``bad_chunk``: the caller holds) unless it is a
        finite (horizon, action_dim) array, as the server's metadata declares."""
        md = self.metadata or {}
        expected = (md.get("action_horizon"), md.get("action_dim"))
        try:
            chunk = np.asarray(actions, dtype=np.float32)
        except (TypeError, ValueError):
            raise ServerError(
                "bad_chunk", f"the reply's actions are not a numeric array: {type(actions)}"
            ) from None
        if chunk.ndim != 2 or any(
            e is not None and n != e for n, e in zip(chunk.shape, expected, strict=True)
        ):
            raise ServerError(
                "bad_chunk", f"the reply's actions have shape {chunk.shape}, expected {expected}"
            )
        if not np.isfinite(chunk).all():
            raise ServerError("bad_chunk", "the reply's actions hold NaN or inf: not one of them is executed")
        return chunk

    def prepare(self, obs: dict, seed: int | None = None, rtc: tuple[int, int] | None = None) -> Request:
        """Serialize a request now. A control loop prepares on its own thread and sends from another: the
        frame holds copies of the images, so a driver that reuses its camera buffers cannot change them while
        the request is in flight."""
        request_id = next(self._ids)
        message = {k: v for k, v in obs.items() if k != "timestamp"}
        message["request_id"] = request_id
        if seed is not None:
            message["seed"] = int(seed)
        if rtc is not None:
            message["rtc"] = {"offset": int(rtc[0]), "delay": int(rtc[1])}
        return Request(request_id, packb(message))

    def infer(
        self,
        obs: dict,
        seed: int | None = None,
        rtc: tuple[int, int] | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        """One chunk for ``obs``. ``rtc=(offset, delay)`` asks the server to continue the last chunk it
        sent on this connection (real-time chunking). Raises ServerError, TimeoutError, ConnectionError."""
        return self.send(self.prepare(obs, seed, rtc), timeout_s)

    def send(self, request: Request, timeout_s: float | None = None) -> Reply:
        """Send a prepared request and wait for its chunk (see `infer`)."""
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            self.connect()
        request_id = request.request_id
        timeout = self.timeout_s if timeout_s is None else timeout_s
        start = time.perf_counter()
        deadline = start + timeout
        try:
            self._ws.send(request.payload)
            while True:
                raw = self._ws.recv(timeout=max(0.0, deadline - time.perf_counter()))
                if isinstance(raw, str):
                    raise ServerError(*parse_error(raw))  # errors are only sent for the current request
                reply = unpackb(raw)
                if reply.get("request_id", request_id) == request_id:
                    break  # anything else is a reply to an abandoned request: drop it
        except TimeoutError:
            self.close()  # a late reply must never be taken for the next request's
            raise TimeoutError(f"no reply from {self.url} within {timeout:.3f} s") from None
        except (ConnectionClosed, OSError) as e:
            self._failed()
            raise ConnectionError(f"lost the connection to {self.url}: {e}") from None
        return Reply(
            actions=self._checked_actions(reply.get("actions")),
            chunk_id=reply.get("chunk_id"),
            guided=bool(reply.get("guided", False)),
            round_trip_ms=(time.perf_counter() - start) * 1e3,
            server_timing=dict(reply.get("server_timing", {})),
        )
