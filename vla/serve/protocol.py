"""The wire format lives in the robot-side package (`vla_client.protocol`): one copy for both ends."""

from vla_client.protocol import (
    ALLOWED_KINDS,
    MAX_DEPTH,
    MAX_ERROR_CHARS,
    MAX_NDIM,
    MAX_OBJECTS,
    MAX_STR_BYTES,
    ProtocolError,
    check_structure,
    error_text,
    excerpt,
    packb,
    parse_error,
    unpackb,
)

__all__ = [
    "ALLOWED_KINDS",
    "MAX_DEPTH",
    "MAX_ERROR_CHARS",
    "MAX_NDIM",
    "MAX_OBJECTS",
    "MAX_STR_BYTES",
    "ProtocolError",
    "check_structure",
    "error_text",
    "excerpt",
    "packb",
    "parse_error",
    "unpackb",
]
