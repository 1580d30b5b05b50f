"""`vla serve` in a real subprocess on 127.0.0.1: openpi's own client gets correct actions, fuzzed
garbage gets error replies while another client keeps being served, auth is enforced, concurrent
clients are batched, HTTP endpoints answer, SIGTERM shuts down cleanly."""

import json
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from vla.models import load_policy
from vla.serve import RobotClient, ServerError, ServerProcess, packb, unpackb
from vla.serve.protocol import parse_error

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(random_checkpoint):
    # no error backoff: the fuzz test sends hundreds of refused requests on one connection
    srv = ServerProcess(
        random_checkpoint, f"api_key={KEY}", "max_wait_ms=50", "max_message_mb=1", "error_backoff_max_s=0"
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def policy(random_checkpoint):
    return load_policy(random_checkpoint)


def observation(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "images": {"top": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)},
        "state": rng.standard_normal(4).astype(np.float32),
        "instruction": ["push the red block onto the blue pad", "reach the green block", "push"][i % 3],
    }


def expected(policy, obs: dict, seed: int) -> np.ndarray:
    return policy.predict_chunk(obs, generator=[torch.Generator().manual_seed(seed)])[0]


def close_openpi(client: WebsocketClientPolicy) -> None:
    """openpi-client 0.1.2 has no close(): an idle open connection counts as a client the batcher waits for
    (max_wait_ms on every later batch), so close its socket."""
    client._ws.close()


def test_openpi_client_gets_correct_actions(server, policy):
    client = WebsocketClientPolicy(server.host, server.port, api_key=KEY)
    try:
        check_openpi_client(client, policy)
    finally:
        close_openpi(client)


def check_openpi_client(client, policy):
    meta = client.get_server_metadata()
    assert meta["cameras"] == ["top"] and meta["image_size"] == [64, 64] and meta["action_dim"] == 2
    assert meta["action_horizon"] == 8 and meta["state_dim"] == 4 and meta["fps"] == 10.0
    assert meta["action_low"] == [-1.0, -1.0] and meta["model"]["head"] == "dual_stream"
    for i in range(3):
        obs = dict(observation(i), seed=100 + i)
        reply = client.infer(obs)
        assert reply["actions"].shape == (8, 2) and reply["actions"].dtype == np.float32
        np.testing.assert_allclose(reply["actions"], expected(policy, observation(i), 100 + i), atol=1e-5)
        assert reply["server_timing"]["infer_ms"] > 0
    # an error reaches openpi's client as the RuntimeError it raises for text frames; the connection survives
    with pytest.raises(RuntimeError, match="state: expected float32 array of shape"):
        client.infer(dict(observation(0), state=np.zeros(9, np.float32)))
    assert client.infer(dict(observation(0), seed=1))["actions"].shape == (8, 2)


def test_healthz_is_503_while_warming_up_and_handshakes_wait(random_checkpoint):
    """The port opens first; until warm-up ends, /healthz says 503 (a readiness probe waits) and websocket
    handshakes are refused with 503, then both are served."""
    import asyncio
    from types import SimpleNamespace

    from vla.serve import PolicyServer, ServeConfig

    server = PolicyServer(ServeConfig(checkpoint=random_checkpoint, port=0, warmup=True))
    gate, warmup = threading.Event(), server.engine.warmup
    server.engine.warmup = lambda sizes: (gate.wait(60), warmup(sizes))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.run(),))
    thread.start()

    def healthz() -> tuple[int, str]:
        return raw_http(SimpleNamespace(host="127.0.0.1", port=server.port), "/healthz", [])

    try:
        deadline = time.monotonic() + 60
        while server.port is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert healthz() == (503, "not ready: warming up\n")
        with pytest.raises(InvalidStatus) as info:
            connect(f"ws://127.0.0.1:{server.port}", open_timeout=10)
        assert info.value.response.status_code == 503
        gate.set()
        while not server.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert healthz() == (200, "ok\n")
        with RobotClient(f"ws://127.0.0.1:{server.port}", timeout_s=30) as client:
            assert client.infer(observation(0), seed=1).actions.shape == (8, 2)
    finally:
        gate.set()
        loop.call_soon_threadsafe(server.stop)
        thread.join(60)
        loop.close()


def test_auth_is_enforced(server):
    for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": f"Bearer {KEY}"}):
        with pytest.raises(InvalidStatus) as info:
            connect(server.url, additional_headers=headers, open_timeout=10)
        assert info.value.response.status_code == 401
    with pytest.raises(ConnectionError, match="HTTP 401.*API key"):
        RobotClient(server.url, api_key="wrong").connect()
    assert server.http("/healthz") == (200, "ok\n")  # liveness needs no key
    assert server.http("/metadata")[0] == 401 and server.http("/metrics")[0] == 401
    status, body = server.http("/metadata", KEY)
    assert status == 200 and json.loads(body)["api_key_required"] is True
    assert server.http("/nope", KEY)[0] == 404


def raw_http(server, path: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    """A GET with exactly these header lines (repeats kept, which urllib would merge)."""
    import http.client

    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in headers:
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    status, body = response.status, response.read().decode()
    connection.close()
    return status, body


def test_repeated_authorization_headers_are_unauthorized_and_log_no_traceback(server):
    lines_before = len(server.lines)
    for _ in range(5):  # even the right key, twice: one header or none
        status, body = raw_http(server, "/metadata", [("Authorization", f"Api-Key {KEY}")] * 2)
        assert status == 401 and "API key" in body
    assert raw_http(server, "/metadata", [("Authorization", f"Api-Key {KEY}")])[0] == 200
    time.sleep(0.2)  # the server's log reaches us through a pipe
    logged = "".join(server.lines[lines_before:])
    assert "Traceback" not in logged and "500" not in logged


def test_http_metrics_label_a_fixed_set_of_paths_and_404s_quote_a_short_excerpt(server):
    for i in range(30):  # random paths, no key needed for the attempt
        status, body = server.http(f"/probe-{i}-" + "x" * 2000, KEY if i % 2 else None)
        assert status in (401, 404) and len(body) < 300
    metrics = server.http("/metrics", KEY)[1]
    paths = {
        line.split('path="')[1].split('"')[0]
        for line in metrics.splitlines()
        if "vla_http_requests" in line and 'path="' in line
    }
    assert paths and paths <= {"/", "/healthz", "/metadata", "/metrics", "other"}, paths
    assert "probe" not in metrics and len(metrics) < 100_000


def test_a_non_finite_chunk_is_an_error_never_an_ok_reply(server, policy):
    """A finite but extreme state (1e30) drives this policy's chunk to NaN; the server answers with an error,
    counts it, and keeps serving."""
    huge = dict(observation(0), state=np.full(4, 1e30, np.float32))
    assert not np.isfinite(expected(policy, huge, 1)).all()  # the policy itself does produce NaN here
    client = RobotClient(server.url, api_key=KEY, timeout_s=10)
    with pytest.raises(ServerError, match="non_finite_action") as error:
        client.infer(huge, seed=1)
    assert error.value.kind == "non_finite_action"
    np.testing.assert_allclose(
        client.infer(observation(1), seed=1).actions, expected(policy, observation(1), 1), atol=1e-5
    )
    client.close()
    metrics = server.http("/metrics", KEY)[1]
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith('vla_requests_total{outcome="non_finite_action"}')
    ]
    assert counted and float(counted[0].split()[-1]) >= 1


def test_error_replies_stay_small_whatever_the_request_held(server):
    """A 900 kB seed and a 4000-character key are refused with replies of a few hundred bytes (they were
    echoed back whole: 5x amplification)."""
    with connect(server.url, additional_headers={"Authorization": f"Api-Key {KEY}"}, open_timeout=10) as ws:
        ws.recv(timeout=10)  # metadata
        for bad in (dict(observation(0), seed=b"\0" * 900_000), dict(observation(0), **{"k" * 4000: 1})):
            ws.send(packb(bad))
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and len(reply) < 1200 and parse_error(reply)[0] == "bad_request"
        ws.send(packb(dict(observation(0), seed=1)))
        assert unpackb(ws.recv(timeout=10))["actions"].shape == (8, 2)  # and it keeps serving


def test_connections_over_the_cap_are_refused_with_a_reason(random_checkpoint):
    srv = ServerProcess(random_checkpoint, "max_connections=2", "warmup=false")
    try:
        first, second = (connect(srv.url, open_timeout=10) for _ in range(2))
        for ws in (first, second):
            ws.recv(timeout=10)
        with pytest.raises(InvalidStatus) as refused:
            connect(srv.url, open_timeout=10)
        assert refused.value.response.status_code == 503
        assert b"too many connections" in refused.value.response.body
        first.close()
        time.sleep(0.3)  # the server sees the close
        with connect(srv.url, open_timeout=10) as third:  # a freed slot is taken again
            assert unpackb(third.recv(timeout=10))["max_batch"] >= 1
        second.close()
    finally:
        srv.stop()


def test_http_methods_other_than_get_and_head_get_405_and_head_gets_no_body(server):
    import http.client

    for method in ("PUT", "DELETE", "TRACE", "POST", "PATCH"):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        connection.request(method, "/metadata", headers={"Authorization": f"Api-Key {KEY}"})
        response = connection.getresponse()
        assert response.status == 405 and response.getheader("Allow") == "GET, HEAD"
        assert "not allowed" in response.read().decode()
        connection.close()
    with socket.create_connection((server.host, server.port), timeout=10) as raw:  # what HEAD really sends
        raw.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := raw.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 3" in head and body == b""


def test_a_client_that_keeps_sending_refused_frames_is_read_ever_more_slowly(random_checkpoint):
    """The error backoff (default on): after each refused frame the connection's next one is read 50 ms later,
    doubling; an answered request resets it. Lower bounds only: a slow machine only adds time."""
    srv = ServerProcess(random_checkpoint, "warmup=false")
    try:
        with connect(srv.url, open_timeout=10) as ws:
            ws.recv(timeout=10)
            started = time.perf_counter()
            for _ in range(6):
                ws.send(b"\xc1 not msgpack")
                assert parse_error(ws.recv(timeout=30))[0] == "bad_request"
            assert time.perf_counter() - started >= 0.05 + 0.1 + 0.2 + 0.4 + 0.8  # waits after the first five
            ws.send(packb(dict(observation(0), seed=1)))  # read after the sixth wait, then answered
            assert unpackb(ws.recv(timeout=30))["actions"].shape == (8, 2)
            started = time.perf_counter()
            ws.send(packb(dict(observation(1), seed=1)))
            assert unpackb(ws.recv(timeout=30))["actions"].shape == (8, 2)
            assert time.perf_counter() - started < 1.0  # the answer reset the backoff
    finally:
        srv.stop()


def test_requests_without_a_seed_draw_fresh_noise_from_the_server(server):
    """openpi's client sends no seed: the server draws one per (server seed, connection, request count), so a
    connection's requests differ from each other and every reply is a valid chunk."""
    with connect(server.url, additional_headers={"Authorization": f"Api-Key {KEY}"}, open_timeout=10) as ws:
        ws.recv(timeout=10)
        chunks = []
        for _ in range(2):
            ws.send(packb(observation(0)))  # no seed
            reply = ws.recv(timeout=30)
            assert not isinstance(reply, str), reply
            chunks.append(unpackb(reply)["actions"])
    assert chunks[0].shape == (8, 2) and np.isfinite(chunks[0]).all()
    assert np.abs(chunks[0] - chunks[1]).max() > 1e-4  # another request, another draw


def _fuzz_cases(rng) -> list:
    """≥ 200 malformed requests: garbage bytes, truncations, wrong types/shapes/dtypes, NaN/inf,
    oversized frames, unknown cameras, bad array headers, text frames."""
    good = packb(dict(observation(0), seed=1))
    cases: list = [rng.bytes(int(n)) for n in rng.integers(1, 400, 60)]
    cases += [good[: int(n)] for n in rng.integers(1, len(good) - 1, 40)]
    cases += [
        msgpack.packb(x) for x in (None, 1, "obs", [1, 2], {"images": None}, {}, {"": 1}, True, 1.5, b"\x00")
    ]
    cases += [f"text frame {i}" for i in range(10)]
    for i in range(72):
        obs = observation(i)
        kind, draw = i % 12, i // 12  # every kind 6 times, each time the next of its variants
        if kind == 0:
            # oversized
            obs["images"]["top"] = rng.integers(0, 255, (int(rng.integers(65, 300)), 64, 3), dtype=np.uint8)
        elif kind == 1:
            obs["images"][f"cam_{i}"] = obs["images"]["top"]
        elif kind == 2:
            obs["images"]["top"] = obs["images"]["top"].astype(np.float32)
        elif kind == 3:
            obs["state"] = np.full(4, [np.nan, np.inf, -np.inf][draw % 3], np.float32)
        elif kind == 4:
            obs["state"] = np.zeros(int(rng.integers(5, 50)), np.float32)
        elif kind == 5:
            del obs[["images", "state", "instruction"][draw % 3]]
        elif kind == 6:
            obs["instruction"] = [None, 5, ["a"], {"x": 1}, 3.5, "x" * 5000][draw]
        elif kind == 7:
            # msgpack's widest ints (2**70 cannot be framed at all); True is an int to Python, not a seed
            obs["seed"] = [-5, "x", 2**64 - 1, 1.5, True, -(2**63)][draw]
        elif kind == 8:
            obs["rtc"] = [{"offset": -1, "delay": 0}, "rtc", {"offset": 0, "delay": 100}][draw % 3]
        elif kind == 9:
            obs[f"unexpected_{i}"] = 1
        elif kind == 10:
            obs["images"]["top"] = obs["images"]["top"][..., :2]
        else:
            obs["images"] = obs["images"]["top"]
        cases.append(packb(obs))
    header = {b"__ndarray__": True, b"data": b"\0" * 12, b"dtype": "<f4", b"shape": [3]}
    for bad in (
        {b"dtype": "|O"},
        {b"dtype": "<c8"},
        {b"shape": [5]},
        {b"shape": [-3]},
        {b"data": 5},
        {b"dtype": "?!"},
        {b"shape": "3"},
        {b"shape": [1] * 20},
    ):
        arr = header | bad
        cases.append(packb(dict(observation(1), state=arr)))
        cases.append(msgpack.packb({"images": {"top": arr}, "state": [0, 0, 0, 0], "instruction": "x"}))
    # issue 25's attacks, under this server's 1 MB frame limit: bombs, values that used to come back whole
    n = 400_000
    cases += [
        b"\xdf" + n.to_bytes(4, "big") + b"\xa0\x80" * n,  # a map of 400k empty maps
        b"\xdd" + (2 * n).to_bytes(4, "big") + b"\xc0" * (2 * n),  # an array of 800k nils
        b"\x91" * (2 * n) + b"\xc0",  # nesting 800k deep
        packb(dict(observation(2), seed="7" * 5000)),  # strings over 4096 bytes
        packb(dict(observation(2), seed=b"\x00" * 900_000)),  # echoed whole before
        packb(dict(observation(2), request_id="r" * 4000)),
        packb(dict(observation(2), rtc=["x" * 4000, 1])),
        packb(dict(observation(2), **{"k" * 4000: 1})),
        packb(dict(observation(2), images={"top": observation(2)["images"]["top"], "c" * 4000: 1})),
        packb(dict(observation(2), seed=1)) + b"\x00" * 1000,  # trailing bytes
        msgpack.packb({"images": msgpack.ExtType(7, b"\x00" * 1000)}),
    ]
    return cases


def test_fuzz_cases_draw_every_variant():
    """Each malformed kind cycles through its variants (not one fixed element per kind)."""
    decoded = []
    for case in _fuzz_cases(np.random.default_rng(0)):
        try:
            decoded.append(unpackb(case))
        except Exception:  # noqa: BLE001 - garbage and bombs: not what this test counts
            continue
    maps = [d for d in decoded if isinstance(d, dict)]
    seeds = {repr(d["seed"]) for d in maps if "seed" in d}
    assert {"-5", "'x'", str(2**64 - 1), "1.5", "True", str(-(2**63))} <= seeds, seeds
    states = [d["state"] for d in maps if isinstance(d.get("state"), np.ndarray) and d["state"].shape == (4,)]
    assert {"nan", "inf", "-inf"} <= {str(x[0]) for x in states}
    assert {k for k in ("images", "state", "instruction") if any(k not in d for d in maps)} == {
        "images",
        "state",
        "instruction",
    }


def test_fuzzed_requests_get_errors_while_another_client_is_served(server, policy):
    cases = _fuzz_cases(np.random.default_rng(0))
    assert len(cases) >= 200
    stop, good_replies, failures = threading.Event(), [], []

    def well_behaved():
        with RobotClient(server.url, api_key=KEY, timeout_s=30) as client:
            i = 0
            while not stop.is_set():
                reply = client.infer(observation(i), seed=i)
                if not np.allclose(reply.actions, expected(policy, observation(i), i), atol=1e-5):
                    failures.append(i)
                good_replies.append(i)
                i += 1

    thread = threading.Thread(target=well_behaved)
    thread.start()

    def wait_for_replies(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(good_replies) < n and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert len(good_replies) >= n, (
            f"the well-behaved client got {len(good_replies)} replies, expected {n}"
        )

    wait_for_replies(1)  # it is being served before the fuzzing starts
    kinds = {}
    with connect(server.url, additional_headers={"Authorization": f"Api-Key {KEY}"}, max_size=None) as ws:
        unpackb(ws.recv(timeout=10))  # metadata
        for case in cases:
            ws.send(case)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str), f"no error for {case[:60]!r}"
            kind, message = parse_error(reply)
            assert kind == "bad_request" and len(message) > 10
            assert len(reply) < 1200, (
                f"a {len(reply)}-character reply to {case[:60]!r}"
            )  # bounded, never an echo
            kinds[message.split(":")[0]] = kinds.get(message.split(":")[0], 0) + 1
        ws.send(packb(dict(observation(5), seed=5)))  # the fuzzed connection still works
        np.testing.assert_allclose(
            unpackb(ws.recv(timeout=30))["actions"], expected(policy, observation(5), 5), atol=1e-5
        )
    # clients that vanish mid-request, and a message over max_message_mb (closes that connection only: 1009)
    for _ in range(5):
        ws = connect(server.url, additional_headers={"Authorization": f"Api-Key {KEY}"})
        ws.recv(timeout=10)
        ws.send(packb(observation(0)))
        ws.close()
    with connect(server.url, additional_headers={"Authorization": f"Api-Key {KEY}"}, max_size=None) as ws:
        ws.recv(timeout=10)
        ws.send(b"\0" * (2 << 20))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd.code == 1009
    wait_for_replies(len(good_replies) + 2)  # ...and is still served after it
    stop.set()
    thread.join(60)
    assert server.alive() and not failures
    assert len(kinds) >= 10, kinds  # many different problems were named
    metrics = server.http("/metrics", KEY)[1]
    bad = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith('vla_requests_total{outcome="bad_request"}')
        )
    )
    assert bad >= len(cases)


def test_batching_serves_8_concurrent_clients_correctly(server, policy):
    rounds, n = 3, 8
    barrier = threading.Barrier(n)
    results, errors = {}, []

    def client_thread(c):
        try:
            with RobotClient(server.url, api_key=KEY, timeout_s=60) as client:
                client.connect()
                for r in range(rounds):
                    barrier.wait(timeout=60)
                    i = c * 10 + r
                    results[i] = client.infer(observation(i), seed=i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    before = server.http("/metrics", KEY)[1]
    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == rounds * n
    for i, reply in results.items():
        np.testing.assert_allclose(reply.actions, expected(policy, observation(i), i), atol=1e-4)
    sizes = [reply.server_timing["batch_size"] for reply in results.values()]
    assert max(sizes) > 1, sizes  # requests that arrived together shared a forward pass
    after = server.http("/metrics", KEY)[1]

    def sample(text: str, name: str) -> float:
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))

    # the histogram counts every request once, in fewer forward passes than requests
    assert sample(after, "vla_batch_size_sum") - sample(before, "vla_batch_size_sum") == rounds * n
    assert 0 < sample(after, "vla_batch_size_count") - sample(before, "vla_batch_size_count") < rounds * n


def test_rtc_continues_the_connection_previous_chunk(server):
    with RobotClient(server.url, api_key=KEY, timeout_s=30) as client:
        first = client.infer(observation(0), seed=1, rtc=(0, 2))
        assert not first.guided  # nothing to continue yet
        second = client.infer(observation(1), seed=2, rtc=(3, 2))
        assert second.guided
        # the frozen prefix: the first `delay` actions continue the previous chunk from offset 3
        np.testing.assert_allclose(second.actions[:2], first.actions[3:5], atol=1e-5)
        free = client.infer(observation(1), seed=2)
        assert not np.allclose(free.actions[:2], first.actions[3:5], atol=1e-3)


def test_client_timeout_never_returns_a_stale_chunk(server, policy):
    with RobotClient(server.url, api_key=KEY, timeout_s=30) as client:
        with pytest.raises(TimeoutError):
            client.infer(observation(0), seed=7, timeout_s=1e-4)
        assert not client.connected
        reply = client.infer(observation(1), seed=8)  # reconnects; must be the answer to *this* request
        np.testing.assert_allclose(reply.actions, expected(policy, observation(1), 8), atol=1e-5)
        assert client.reconnects == 1
        with pytest.raises(ServerError, match="bad_request: missing 'state'"):
            client.infer({"images": observation(0)["images"], "instruction": "x"})
        assert client.connected


def test_keymap_openpi_libero_serves_openpis_libero_client_keys(tmp_path):
    """configs/keymap/openpi_libero.yaml against openpi's own LIBERO client and the observation its example
    builds (examples/libero/main.py: both images rotated 180 degrees, padded/resized to 224 px with openpi's
    image_tools; an 8-D state; the prompt), on a checkpoint with robosuite's camera names at 32 px."""
    from conftest import make_meta, wake
    from openpi_client import image_tools
    from PIL import Image

    from vla.data import ActionSpace, Normalizer
    from vla.models import Policy, PolicyConfig, save_policy

    meta = make_meta(
        cameras=["agentview", "robot0_eye_in_hand"],
        image_size=(32, 32),
        state_dim=8,
        action_space=ActionSpace(dim=7, low=[-1.0] * 7, high=[1.0] * 7, kind="osc_pose_delta+gripper"),
        robot="panda",
        env="robosuite/Lift",
    )
    torch.manual_seed(0)
    libero = wake(Policy(PolicyConfig(), meta, Normalizer.identity({"state": 8, "action": 7}))).eval()
    checkpoint = save_policy(libero, tmp_path / "libero")
    rng = np.random.default_rng(0)
    # smooth scenes (a gradient and a blob per camera), as LIBERO's 256 px renders are
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    blobs = [np.exp(-((xx - 0.3 * (k + 1)) ** 2 + (yy - 0.6) ** 2) * 20) for k in range(2)]
    scenes = {
        cam: (np.stack([xx, yy * (k + 1) % 1.0, blobs[k]], -1) * 255).astype(np.uint8)
        for k, cam in enumerate(meta.cameras)
    }
    state = rng.standard_normal(8).astype(np.float32)
    element = {  # exactly as openpi's LIBERO example builds it
        "observation/image": image_tools.convert_to_uint8(
            image_tools.resize_with_pad(np.ascontiguousarray(scenes["agentview"][::-1, ::-1]), 224, 224)
        ),
        "observation/wrist_image": image_tools.convert_to_uint8(
            image_tools.resize_with_pad(
                np.ascontiguousarray(scenes["robot0_eye_in_hand"][::-1, ::-1]), 224, 224
            )
        ),
        "observation/state": state,
        "prompt": "put the bowl on the plate",
    }

    def at_32(img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((32, 32), Image.BILINEAR))

    # what the server must see: the upright scene at the checkpoint's size (the rotation undone)
    seen = {
        "images": {c: at_32(np.rot90(element[k], 2)) for c, k in
                   [("agentview", "observation/image"), ("robot0_eye_in_hand", "observation/wrist_image")]},
        "state": state,
        "instruction": element["prompt"],
    }  # fmt: skip
    for cam in meta.cameras:  # upright: close to the scene itself, far from the scene upside down
        upright = at_32(scenes[cam])
        assert np.abs(seen["images"][cam].astype(int) - upright).mean() < 4
        assert np.abs(seen["images"][cam].astype(int) - upright[::-1, ::-1]).mean() > 20
    srv = ServerProcess(str(checkpoint), "keymap=openpi_libero", "warmup=false")
    try:
        client = WebsocketClientPolicy(srv.host, srv.port)
        try:
            md = client.get_server_metadata()
            assert md["obs_keys"]["observation/wrist_image"] == "images.robot0_eye_in_hand"
            assert md["transforms"]["rotate"] == {"agentview": 180, "robot0_eye_in_hand": 180}
            reply = client.infer(dict(element, seed=4))
            np.testing.assert_allclose(reply["actions"], expected(libero, seen, 4), atol=1e-5)
            # the wrist camera really is the second one: swapping the two images changes the chunk
            swapped = dict(
                element,
                **{
                    "observation/image": element["observation/wrist_image"],
                    "observation/wrist_image": element["observation/image"],
                },
            )
            assert np.abs(client.infer(dict(swapped, seed=4))["actions"] - reply["actions"]).max() > 1e-3
            with pytest.raises(RuntimeError, match="unknown key 'observation/extra'"):
                client.infer(dict(element, **{"observation/extra": 1}))
        finally:
            close_openpi(client)
    finally:
        srv.stop()


def test_openpi_style_keys_through_obs_keys_and_graceful_shutdown(random_checkpoint, policy):
    keys = "{observation/image:images.top,observation/state:state,prompt:instruction}"
    srv = ServerProcess(random_checkpoint, f"++obs_keys={keys}", "warmup=false")
    try:
        client = WebsocketClientPolicy(srv.host, srv.port)
        assert client.get_server_metadata()["obs_keys"]["prompt"] == "instruction"
        obs = observation(2)
        reply = client.infer(
            {
                "observation/image": obs["images"]["top"],
                "observation/state": obs["state"],
                "prompt": obs["instruction"],
                "seed": 3,
            }
        )
        np.testing.assert_allclose(reply["actions"], expected(policy, obs, 3), atol=1e-5)
        start = time.monotonic()
        assert srv.stop() == 0 and time.monotonic() - start < 20
        assert any("stopped" in line for line in srv.lines)
        with pytest.raises(ConnectionClosed) as info:
            client.infer(
                {"observation/image": obs["images"]["top"], "observation/state": obs["state"], "prompt": "x"}
            )
        assert info.value.rcvd is None or info.value.rcvd.code == 1001
    finally:
        if srv.alive():
            srv.kill()
