"""The wire format: msgpack with numpy arrays encoded as openpi's ``msgpack_numpy`` does.

An array travels as a map ``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [..]}``
and a numpy scalar as ``{b"__npgeneric__": True, b"data": <item>, b"dtype": ..}``, so an unmodified
``openpi_client.WebsocketClientPolicy`` talks to `vla serve`, and our client talks to an openpi
server. Nothing is ever unpickled: decoding checks the dtype against a whitelist and the byte count
against the shape before it builds an array. Text frames carry errors (openpi's client raises
them as ``RuntimeError``); ours are JSON ``{"error": kind, "message": ...}``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import numpy as np

# kinds a numpy array may have on the wire: bool, signed/unsigned int, float. Object, void and
# complex arrays are refused both ways (object arrays are how pickle sneaks in).
ALLOWED_KINDS = "biuf"
MAX_NDIM = 8


class ProtocolError(ValueError):
    """A request that cannot be decoded or does not match the observation contract."""

    kind = "bad_request"


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ALLOWED_KINDS:
        raise TypeError(f"cannot send a numpy array of dtype {obj.dtype}: only bool/int/uint/float travel")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _dtype(value: Any) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or len(value) > 8:
        raise ProtocolError(f"array dtype must be a numpy dtype string such as '<f4', got {value!r}")
    try:
        dtype = np.dtype(value)
    except TypeError as e:
        raise ProtocolError(f"unknown array dtype {value!r}") from e
    if dtype.kind not in ALLOWED_KINDS:
        raise ProtocolError(f"array dtype {value!r} is not allowed: expected bool, int, uint or float")
    return dtype


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        data, shape = obj.get(b"data"), obj.get(b"shape")
        dtype = _dtype(obj.get(b"dtype"))
        if not isinstance(data, bytes):
            raise ProtocolError("array 'data' must be raw bytes")
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) > MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise ProtocolError(
                f"array shape must be a list of at most {MAX_NDIM} non-negative ints, got {shape!r}"
            )
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise ProtocolError(
                f"array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as e:
            raise ProtocolError(f"bad numpy scalar of dtype {dtype.str}: {e}") from e
    return obj


def packb(obj: Any) -> bytes:
    """Encode a message (dicts, lists, str, numbers, numpy arrays) as openpi does."""
    return msgpack.packb(obj, default=_pack_default)


def unpackb(data: bytes, max_bytes: int | None = None) -> Any:
    """Decode a message; anything malformed raises `ProtocolError` with what was wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a binary msgpack frame, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    limit = len(data)  # no container can declare more elements than there are bytes
    try:
        return msgpack.unpackb(
            bytes(data),
            object_hook=_unpack_hook,
            raw=False,
            strict_map_key=False,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except (
        Exception
    ) as e:  # msgpack raises ValueError, TypeError, StackError, ExtraData, UnicodeDecodeError...
        raise ProtocolError(f"not a valid msgpack message ({type(e).__name__}: {e})") from None


def error_text(kind: str, message: str) -> str:
    """The text frame sent for a failed request: JSON, readable when openpi's client prints it."""
    return json.dumps({"error": kind, "message": message})


def parse_error(text: str) -> tuple[str, str]:
    """(kind, message) from an error text frame (any text: openpi servers send a traceback)."""
    try:
        obj = json.loads(text)
        return str(obj["error"]), str(obj["message"])
    except (ValueError, KeyError, TypeError):
        return "server_error", text
