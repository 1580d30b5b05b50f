"""Wire format and request validation, without a server: byte-exact with openpi's msgpack_numpy,
malformed input refused with a message saying what was expected."""

import msgpack
import numpy as np
import pytest
import torch
from conftest import make_meta
from openpi_client import msgpack_numpy as openpi

from vla.serve import ProtocolError, packb, unpackb
from vla.serve.observation import ObservationParser
from vla.serve.protocol import parse_error


def _observation(rng):
    return {
        "images": {
            "front": rng.integers(0, 255, (12, 16, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 255, (12, 16, 3), dtype=np.uint8),
        },
        "state": rng.standard_normal(3).astype(np.float32),
        "instruction": "put the red block on the pad",
    }


def test_encoding_is_byte_exact_with_openpi():
    rng = np.random.default_rng(0)
    messages = [
        _observation(rng),
        {
            "a": np.arange(6, dtype=np.int64).reshape(2, 3),
            "b": np.float16(1.5),
            "c": [np.bool_(True), 3, "x"],
            "d": np.zeros((0, 4), np.float64),
            "e": np.asfortranarray(np.arange(6, dtype=np.uint16).reshape(2, 3)),
        },
        {"actions": rng.standard_normal((8, 7)).astype(np.float32), "server_timing": {"infer_ms": 1.5}},
    ]
    for message in messages:
        ours = packb(message)
        assert ours == openpi.packb(message)
        back = unpackb(openpi.packb(message))
        theirs = openpi.unpackb(ours)
        for decoded in (back, theirs):
            for key, value in message.items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(decoded[key], value)
                    assert decoded[key].dtype == value.dtype
    assert unpackb(packb({"x": np.int32(7)}))["x"].dtype == np.int32


@pytest.mark.parametrize("bad", [np.array([object()]), np.zeros(2, np.complex64), np.zeros(2, "V4")])
def test_refuses_to_send_object_complex_void(bad):
    with pytest.raises(TypeError):
        packb({"x": bad})


def _ndarray(data=b"\0" * 8, dtype="<f4", shape=(2,)):
    return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}})


@pytest.mark.parametrize(
    "raw, expect",
    [
        (_ndarray(dtype="|O"), "not allowed"),
        (_ndarray(dtype="<c8"), "not allowed"),
        (_ndarray(dtype="|V8"), "not allowed"),
        (_ndarray(dtype="nonsense"), "unknown array dtype"),
        (_ndarray(dtype=5), "dtype string"),
        (_ndarray(data=b"\0" * 7), "needs 8 bytes, got 7"),
        (_ndarray(data=b"\0" * 9), "needs 8 bytes, got 9"),
        (_ndarray(shape=(-1,)), "non-negative"),
        (_ndarray(shape=[1] * 9, data=b"\0" * 4), "at most 8"),
        (_ndarray(shape="2"), "shape must be"),
        (_ndarray(data="text"), "raw bytes"),
        (b"\xc1", "msgpack type 0xc1 is not accepted"),
        (b"", "not a valid msgpack"),
        (packb({"x": 1})[:-1], "not a valid msgpack"),
        (packb({"x": 1}) + b"\x00", "not a valid msgpack"),
        (msgpack.packb(msgpack.ExtType(1, b"abc")), "0xc7 is not accepted .*extension types"),
        (b"\x91" * 100_000 + b"\xc0", "deeper than 8 levels"),  # nesting far deeper than any decoder allows
        (b"\xdd\xff\xff\xff\xff", "more than 4096 values"),  # an array claiming 4 billion elements
    ],
)
def test_malformed_messages_raise_protocol_error(raw, expect):
    with pytest.raises(ProtocolError, match=expect):
        unpackb(raw)


def test_message_size_limit():
    with pytest.raises(ProtocolError, match="exceeds the limit of 100 bytes"):
        unpackb(b"\x00" * 101, max_bytes=100)
    with pytest.raises(ProtocolError, match="binary msgpack frame"):
        unpackb("a text frame")


def test_error_text_round_trip():
    assert parse_error('{"error": "bad_request", "message": "m"}') == ("bad_request", "m")
    assert parse_error("Traceback (most recent call last): ...")[0] == "server_error"


@pytest.fixture
def parser():
    return ObservationParser(make_meta(), horizon=8)


def test_parser_accepts_the_contract_and_control_fields(parser):
    rng = np.random.default_rng(1)
    obs = _observation(rng)
    request = parser.parse(dict(obs, seed=np.int64(5), request_id="r1", rtc={"offset": 3, "delay": 2}))
    assert request.seed == 5 and request.request_id == "r1" and request.rtc == (3, 2)
    np.testing.assert_array_equal(request.obs["images"]["wrist"], obs["images"]["wrist"])
    assert request.obs["state"].dtype == np.float32 and request.obs["instruction"] == obs["instruction"]
    # a list state and float64 are converted, not refused
    request = parser.parse(dict(obs, state=[1, 2.5, 3]))
    np.testing.assert_array_equal(request.obs["state"], np.float32([1, 2.5, 3]))


def test_parser_checks_each_camera_at_its_own_size():
    parser = ObservationParser(make_meta(image_size={"front": (12, 16), "wrist": (6, 8)}))
    obs = {
        "images": {"front": np.zeros((12, 16, 3), np.uint8), "wrist": np.zeros((6, 8, 3), np.uint8)},
        "state": np.zeros(3, np.float32),
        "instruction": "go",
    }
    assert parser.parse(obs).obs["images"]["wrist"].shape == (6, 8, 3)
    obs["images"]["wrist"] = np.zeros((12, 16, 3), np.uint8)  # the front camera's size
    with pytest.raises(
        ProtocolError, match=r"images\['wrist'\]: expected a uint8 array of shape \(6, 8, 3\)"
    ):
        parser.parse(obs)


def test_key_map_translates_openpi_style_flat_keys():
    parser = ObservationParser(
        make_meta(),
        {
            "observation/image": "images.front",
            "observation/wrist_image": "images.wrist",
            "observation/state": "state",
            "prompt": "instruction",
        },
    )
    obs = _observation(np.random.default_rng(2))
    request = parser.parse(
        {
            "observation/image": obs["images"]["front"],
            "observation/wrist_image": obs["images"]["wrist"],
            "observation/state": obs["state"],
            "prompt": "go",
        }
    )
    np.testing.assert_array_equal(request.obs["images"]["front"], obs["images"]["front"])
    assert request.obs["instruction"] == "go"
    with pytest.raises(ValueError, match="not a contract path"):
        ObservationParser(make_meta(), {"observation/image": "images.nope"})


@pytest.mark.parametrize(
    "change, expect",
    [
        (lambda o: o.pop("state"), "missing 'state'"),
        (lambda o: o.pop("instruction"), "instruction: expected a string, got nothing"),
        (lambda o: o["images"].pop("wrist"), r"missing cameras \['wrist'\]"),
        (lambda o: o["images"].update(side=o["images"]["front"]), r"unknown cameras \['side'\]"),
        (
            lambda o: o["images"].update(front=o["images"]["front"].astype(np.float32)),
            r"expected a uint8 array of shape \(12, 16, 3\)",
        ),
        (
            lambda o: o["images"].update(front=np.zeros((480, 640, 3), np.uint8)),
            r"got uint8 array of shape \(480, 640, 3\)",
        ),
        (lambda o: o["images"].update(front=np.zeros((3, 12, 16), np.uint8)), "H, W, RGB"),
        (lambda o: o["images"].update(front="pixels"), "got str"),
        (lambda o: o.update(images=[1, 2]), "camera name -> image"),
        (lambda o: o.update(state=np.zeros(5, np.float32)), r"state: expected float32 array of shape \(3,\)"),
        (
            lambda o: o.update(state=np.array([1.0, np.nan, 0.0], np.float32)),
            r"non-finite values .* indices \[1\]",
        ),
        (lambda o: o.update(state=np.array([1.0, 2.0, np.inf])), "non-finite"),
        (lambda o: o.update(state=np.array([True, False, True])), "state: expected"),
        (lambda o: o.update(instruction=7), "instruction: expected a string, got int"),
        (lambda o: o.update(instruction="x" * 2001), "the limit is 2000"),
        (lambda o: o.update(extra=1), "unknown key 'extra'"),
        (lambda o: o.update({3: 1}), "keys must be strings"),
        (lambda o: o.update(seed=-1), "seed: expected an int"),
        (lambda o: o.update(seed="1"), "seed: expected an int"),
        (lambda o: o.update(request_id=[1]), "request_id"),
        (lambda o: o.update(rtc={"offset": 1}), "rtc: expected"),
        (lambda o: o.update(rtc={"offset": 1, "delay": 99}), "exceeds the chunk length 8"),
    ],
)
def test_parser_errors_name_the_problem_and_the_expectation(parser, change, expect):
    obs = _observation(np.random.default_rng(3))
    change(obs)
    with pytest.raises(ProtocolError, match=expect):
        parser.parse(obs)


def test_parser_refuses_non_dict(parser):
    with pytest.raises(ProtocolError, match="must be a map"):
        parser.parse([1, 2, 3])


def test_batched_prediction_with_per_sample_generators_matches_single(random_checkpoint):
    """What the server relies on: a request's chunk depends on its own seed, not its batch mates."""
    from vla.models import load_policy

    policy = load_policy(random_checkpoint)
    rng = np.random.default_rng(4)
    obs = [
        {
            "images": {"top": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)},
            "state": rng.standard_normal(4).astype(np.float32),
            "instruction": text,
        }
        for text in ("push the red block", "push the blue block onto the green pad", "go")
    ]
    singles = [
        policy.predict_chunk(o, generator=torch.Generator().manual_seed(10 + i))[0] for i, o in enumerate(obs)
    ]
    batch = {
        "images": {"top": np.stack([o["images"]["top"] for o in obs])},
        "state": np.stack([o["state"] for o in obs]),
        "instruction": [o["instruction"] for o in obs],
    }
    batched = policy.predict_chunk(batch, generator=[torch.Generator().manual_seed(10 + i) for i in range(3)])
    np.testing.assert_allclose(batched, np.stack(singles), atol=1e-5)
    assert not np.allclose(singles[0], singles[1])


BOMB = 15 * 2**20  # the size of the frames that blocked the server for 7-9 s (issue 25)


@pytest.mark.parametrize(
    "bomb, expect",
    [
        (b"\xdd" + BOMB.to_bytes(4, "big") + b"\xc0" * BOMB, "more than 4096 values"),  # array of nils
        (b"\xdf" + (BOMB // 2).to_bytes(4, "big") + b"\xa0\x80" * (BOMB // 2), "more than 4096"),  # map of {}
        (b"\x91" * BOMB + b"\xc0", "deeper than 8 levels"),
        (b"\x81\xa4seed\xdb" + BOMB.to_bytes(4, "big") + b"7" * BOMB, "string of 15728640 bytes"),
        (b"\xdc" + (4000).to_bytes(2, "big") + (b"\x9f" + b"\xc0" * 15) * 4000, "more than 4096 values"),
    ],
    ids=["array", "map-of-maps", "nesting", "huge-string", "many-values"],
)
def test_decoding_bombs_are_refused_before_msgpack_builds_anything(bomb, expect, monkeypatch):
    """The frame's headers are walked first: the limit is hit after at most 4096 values, and msgpack, which
    would allocate every declared element, never runs."""
    import vla_client.protocol as protocol

    def never(*args, **kwargs):
        raise AssertionError("msgpack.unpackb ran on a bomb")

    monkeypatch.setattr(protocol.msgpack, "unpackb", never)
    with pytest.raises(ProtocolError, match=expect) as error:
        unpackb(bomb)
    assert len(str(error.value)) < 200


def test_error_messages_quote_a_bounded_excerpt_of_what_was_sent():
    from vla.serve.protocol import MAX_ERROR_CHARS, error_text

    parser = ObservationParser(make_meta(cameras=["top"], image_size=(8, 8), state_dim=2))
    good = {
        "images": {"top": np.zeros((8, 8, 3), np.uint8)},
        "state": np.zeros(2, np.float32),
        "instruction": "x",
    }
    huge = "9" * 4000  # the longest string a frame may hold
    for bad in (
        dict(good, seed=huge),
        dict(good, seed=b"\x00" * 10_000_000),
        dict(good, request_id=huge),
        dict(good, rtc=[huge, 1]),
        dict(good, **{huge: 1}),
        dict(good, images={"top": np.zeros((8, 8, 3), np.uint8), huge: 1}),
    ):
        with pytest.raises(ProtocolError) as error:
            parser.parse(unpackb(packb(bad)))
        assert len(str(error.value)) < 400, str(error.value)[:100]
    reply = error_text("bad_request", "x" * 10_000_000)
    assert len(reply) < MAX_ERROR_CHARS + 100  # whatever a check quotes, the reply stays small


def test_a_failed_batch_is_rerun_request_by_request():
    """One request that makes the forward pass raise fails alone; its batch mates get their own results."""
    import asyncio

    from vla.serve.batcher import MicroBatcher

    calls = []

    def run_batch(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("this request breaks the model")
        return [item.upper() for item in items]

    async def main():
        batcher = MicroBatcher(run_batch, max_batch=8, max_wait_s=1.0, expected=lambda: 3)
        batcher.start()
        try:
            jobs = asyncio.gather(*(batcher.submit(x) for x in ("a", "bad", "c")), return_exceptions=True)
            return await asyncio.wait_for(jobs, 30)
        finally:
            await batcher.stop()

    (a, a_info), bad, (c, c_info) = asyncio.run(main())
    assert (a, c) == ("A", "C") and a_info.size == c_info.size == 3
    assert isinstance(bad, ValueError) and "breaks the model" in str(bad)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # one batch, then each request alone
