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
import reprlib
from typing import Any

import msgpack
import numpy as np

# kinds a numpy array may have on the wire: bool, signed/unsigned int, float. Object, void and
# complex arrays are refused both ways (object arrays are how pickle sneaks in).
ALLOWED_KINDS = "biuf"
MAX_NDIM = 8
# What a request may hold, checked on the raw bytes before msgpack builds anything (``check_structure``). An
# observation is a few dozen objects (a map per camera array, the state, the instruction, control fields);
# images travel as raw bytes, which these limits do not touch. A 15 MB frame of empty maps or a 15 MB string
# would otherwise be decoded (seconds of the event loop, a GB of Python objects) before any check ran.
MAX_DEPTH = 8  # nested maps / arrays
MAX_OBJECTS = 4096  # values of every kind, keys included
MAX_STR_BYTES = 4096  # one string (instructions, keys, dtype strings, request ids)
MAX_ERROR_CHARS = 1024  # an error reply's message


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
        raise ProtocolError(f"array dtype must be a numpy dtype string such as '<f4', got {excerpt(value)}")
    try:
        dtype = np.dtype(value)
    except TypeError as e:
        raise ProtocolError(f"unknown array dtype {excerpt(value)}") from e
    if dtype.kind not in ALLOWED_KINDS:
        raise ProtocolError(f"array dtype {excerpt(value)} is not allowed: expected bool, int, uint or float")
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
                f"array shape must be a list of at most {MAX_NDIM} non-negative ints, got {excerpt(shape)}"
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


def excerpt(value: Any, limit: int = 60) -> str:
    """A short repr of a value from a request, for an error message: never the value itself when it is long
    (a 15 MB string must not come back inside the reply that refuses it)."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        size = len(value)
        text = repr(bytes(value[:limit]) if isinstance(value, memoryview) else value[:limit])
        return (
            text
            if size <= limit
            else f"{text}... ({size} {'characters' if isinstance(value, str) else 'bytes'})"
        )
    text = repr(value) if isinstance(value, (int, float, bool, type(None))) else reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# msgpack's first byte -> (bytes of the length field, what follows: "items", "pairs" or "raw")
_SIZED = {
    0xC4: (1, "raw"),
    0xC5: (2, "raw"),
    0xC6: (4, "raw"),  # bin 8/16/32
    0xD9: (1, "str"),
    0xDA: (2, "str"),
    0xDB: (4, "str"),  # str 8/16/32
    0xDC: (2, "items"),
    0xDD: (4, "items"),  # array 16/32
    0xDE: (2, "pairs"),
    0xDF: (4, "pairs"),  # map 16/32
}
_FIXED = {
    0xC0: 0,
    0xC2: 0,
    0xC3: 0,
    0xCA: 4,
    0xCB: 8,
    0xCC: 1,
    0xCD: 2,
    0xCE: 4,
    0xCF: 8,
    0xD0: 1,
    0xD1: 2,
    0xD2: 4,
    0xD3: 8,
}  # nil, bools, floats, ints: payload bytes after the type byte


def check_structure(data: bytes) -> None:
    """Walk the msgpack headers of ``data`` without building anything: at most ``MAX_OBJECTS`` values
    declared, nested at most ``MAX_DEPTH`` deep, strings of at most ``MAX_STR_BYTES``, no extension types,
    nothing after the message. Stops at the first limit, so it costs at most ``MAX_OBJECTS`` steps whatever
    the frame holds."""
    pos, size, declared = 0, len(data), 1
    pending = [1]  # values still to read at each open nesting level

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > size:
            raise ProtocolError("not a valid msgpack message (truncated)")
        value = int.from_bytes(data[pos : pos + n], "big")
        pos += n
        return value

    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        head = read(1)
        children = 0
        if head <= 0x7F or head >= 0xE0:  # fixint
            continue
        if 0x80 <= head <= 0x8F:
            children = 2 * (head & 0x0F)
        elif 0x90 <= head <= 0x9F:
            children = head & 0x0F
        elif 0xA0 <= head <= 0xBF:
            pos += head & 0x1F
        elif head in _FIXED:
            pos += _FIXED[head]
        elif head in _SIZED:
            width, what = _SIZED[head]
            length = read(width)
            if what == "str" and length > MAX_STR_BYTES:
                raise ProtocolError(f"a string of {length} bytes exceeds the limit of {MAX_STR_BYTES}")
            if what in ("raw", "str"):
                pos += length
            else:
                children = length * (2 if what == "pairs" else 1)
        else:
            raise ProtocolError(
                f"msgpack type 0x{head:02x} is not accepted (extension types and 0xc1 are refused)"
            )
        if pos > size:
            raise ProtocolError("not a valid msgpack message (truncated)")
        if children:
            declared += children
            if declared > MAX_OBJECTS:
                raise ProtocolError(
                    f"message declares more than {MAX_OBJECTS} values; an observation needs a few dozen"
                )
            if len(pending) >= MAX_DEPTH:
                raise ProtocolError(f"message nests containers deeper than {MAX_DEPTH} levels")
            pending.append(children)
    if pos != size:
        raise ProtocolError(f"not a valid msgpack message ({size - pos} bytes after its end)")


def packb(obj: Any) -> bytes:
    """Encode a message (dicts, lists, str, numbers, numpy arrays) as openpi does."""
    return msgpack.packb(obj, default=_pack_default)


def unpackb(data: bytes, max_bytes: int | None = None) -> Any:
    """Decode a message; anything malformed raises `ProtocolError` with what was wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a binary msgpack frame, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    data = bytes(data)
    check_structure(data)  # bounded work before msgpack allocates anything
    limit = len(data)
    try:
        return msgpack.unpackb(
            data,
            object_hook=_unpack_hook,
            raw=False,
            strict_map_key=False,
            max_bin_len=limit,
            max_str_len=min(limit, MAX_STR_BYTES),
            max_array_len=min(limit, MAX_OBJECTS),
            max_map_len=min(limit, MAX_OBJECTS),
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except (
        Exception
    ) as e:  # msgpack raises ValueError, TypeError, StackError, ExtraData, UnicodeDecodeError...
        raise ProtocolError(
            f"not a valid msgpack message ({type(e).__name__}: {excerpt(str(e), 200)})"
        ) from None


def error_text(kind: str, message: str) -> str:
    """The text frame sent for a failed request: JSON, readable when openpi's client prints it. The message is
    cut at ``MAX_ERROR_CHARS``: whatever a check quoted, a reply never grows with the request."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + f"... ({len(message)} characters)"
    return json.dumps({"error": kind[:64], "message": message})


def parse_error(text: str) -> tuple[str, str]:
    """(kind, message) from an error text frame (any text: openpi servers send a traceback)."""
    try:
        obj = json.loads(text)
        return str(obj["error"]), str(obj["message"])
    except (ValueError, KeyError, TypeError):
        return "server_error", text
