"""Check a decoded request against the checkpoint's observation contract (DESIGN.md) and turn it
into the policy's observation dict, or raise `ProtocolError` saying what was wrong and what was
expected. A per-robot key map (``obs_keys``) and transforms (`ObsTransforms`: channels-first images,
rotation, resizing, concatenated state keys, a default prompt) let clients with other conventions, such
as openpi's LIBERO, ALOHA and DROID example clients, talk to the server unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.data.schema import DatasetMeta

from .config import ObsTransforms
from .protocol import ProtocolError, excerpt

# request fields that are not observation: the sampling seed, an id echoed in the reply (lets a
# client drop a late reply), and real-time chunking against this connection's previous chunk
CONTROL_KEYS = ("seed", "request_id", "rtc")
_ID_TYPES = (str, int)


@dataclass
class Request:
    obs: dict  # {"images": {cam: uint8 (H, W, 3)}, "state": float32 (D,), "instruction": str}
    seed: int | None = None
    request_id: str | int | None = None
    rtc: tuple[int, int] | None = None  # (offset into the previous chunk, delay in steps)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


class ObservationParser:
    """``obs_keys`` maps a client's key to a contract path: ``images.<camera>``, ``state`` or
    ``instruction``; keys already in the contract layout need no entry."""

    def __init__(
        self,
        meta: DatasetMeta,
        obs_keys: dict[str, str] | None = None,
        max_instruction_chars: int = 2000,
        horizon: int | None = None,
        transforms: ObsTransforms | None = None,
    ):
        self.meta, self.max_instruction_chars, self.horizon = meta, max_instruction_chars, horizon
        self.obs_keys = dict(obs_keys or {})
        self.transforms = transforms or ObsTransforms()
        targets = {"state", "instruction"} | {f"images.{c}" for c in meta.cameras}
        for src, dst in self.obs_keys.items():
            if dst not in targets:
                raise ValueError(
                    f"obs_keys[{src!r}] = {dst!r} is not a contract path; expected one of {sorted(targets)}"
                )
        unknown = sorted((set(self.transforms.chw) | set(self.transforms.rotate)) - set(meta.cameras))
        if unknown:
            raise ValueError(f"transforms name cameras {unknown}; this policy has {meta.cameras}")
        self.image_shapes = {cam: meta.image_shape(cam) for cam in meta.cameras}

    def expected(self) -> str:
        keys = [
            "images: {" + ", ".join(f"{c!r}: uint8 {shape}" for c, shape in self.image_shapes.items()) + "}",
            f"state float32 ({self.meta.state_dim},)",
            "instruction str",
        ]
        if self.obs_keys:
            keys.append(f"or the mapped keys {sorted(self.obs_keys)}")
        return "; ".join(keys)

    def parse(self, message: Any) -> Request:
        if not isinstance(message, dict):
            raise ProtocolError(
                f"a request must be a map (the observation dict), got {_describe(message)}; "
                f"expected {self.expected()}"
            )
        images: dict[str, Any] = {}
        fields: dict[str, Any] = {}
        state_parts: dict[str, Any] = {}
        for key, value in message.items():
            if not isinstance(key, str):
                raise ProtocolError(f"request keys must be strings, got {excerpt(key)}")
            target = self.obs_keys.get(key, key)
            if key in self.transforms.state_keys:
                state_parts[key] = value
            elif target in CONTROL_KEYS:
                fields[target] = value
            elif target == "images":
                if not isinstance(value, dict):
                    raise ProtocolError(f"'images' must map camera name -> image, got {_describe(value)}")
                for (
                    cam,
                    img,
                ) in value.items():  # a nested camera may be renamed: images.<theirs>: images.<ours>
                    mapped = self.obs_keys.get(f"images.{cam}", f"images.{cam}")
                    images[mapped.split(".", 1)[1] if isinstance(cam, str) else cam] = img
            elif target.startswith("images."):
                images[target.split(".", 1)[1]] = value
            elif target in ("state", "instruction"):
                fields[target] = value
            else:
                raise ProtocolError(
                    f"unknown key {excerpt(key)}; expected {self.expected()} "
                    f"(and optionally {', '.join(CONTROL_KEYS)})"
                )
        if self.transforms.state_keys:
            fields["state"] = self._concat_state(state_parts)
        if fields.get("instruction") is None and self.transforms.default_prompt is not None:
            fields["instruction"] = self.transforms.default_prompt
        obs = {
            "images": self._images(images),
            "state": self._state(fields.get("state")),
            "instruction": self._instruction(fields.get("instruction")),
        }
        return Request(
            obs,
            seed=self._seed(fields.get("seed")),
            request_id=self._request_id(fields.get("request_id")),
            rtc=self._rtc(fields.get("rtc")),
        )

    def _images(self, images: dict) -> dict[str, np.ndarray]:
        unknown = sorted(str(c) for c in set(images) - set(self.meta.cameras))
        if unknown:
            raise ProtocolError(
                f"unknown cameras {excerpt(unknown, 200)}; this policy takes {self.meta.cameras}"
            )
        missing = [c for c in self.meta.cameras if c not in images]
        if missing:
            raise ProtocolError(f"missing cameras {missing}; expected images for {self.meta.cameras}")
        out = {}
        for cam in self.meta.cameras:
            img = self._transform(cam, images[cam])
            if (
                not isinstance(img, np.ndarray)
                or img.dtype != np.uint8
                or img.shape != self.image_shapes[cam]
            ):
                raise ProtocolError(
                    f"images[{cam!r}]: expected a uint8 array of shape {self.image_shapes[cam]} (H, W, RGB), "
                    f"got {_describe(img)}"
                )
            out[cam] = img
        return out

    def _transform(self, cam: str, img: Any) -> Any:
        """Channels-first -> last, rotation, resize, as the transforms say (the result is checked later)."""
        t = self.transforms
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            return img
        if cam in t.chw:
            if img.shape[0] != 3:
                raise ProtocolError(
                    f"images[{cam!r}]: expected channels first (3, H, W), got shape {img.shape}"
                )
            img = img.transpose(1, 2, 0)
        if t.rotate.get(cam):
            img = np.rot90(img, k=t.rotate[cam] // 90)
        expected = self.image_shapes[cam]
        if t.resize and img.shape != expected and img.shape[2] == 3 and min(img.shape[:2]) > 0:
            from PIL import Image

            img = np.asarray(
                Image.fromarray(np.ascontiguousarray(img)).resize(expected[1::-1], Image.BILINEAR)
            )
        return np.ascontiguousarray(img)

    def _concat_state(self, parts: dict[str, Any]) -> np.ndarray:
        missing = [k for k in self.transforms.state_keys if k not in parts]
        if missing:
            raise ProtocolError(
                f"missing {missing}: the state is the concatenation of {self.transforms.state_keys}"
            )
        vectors = []
        for key in self.transforms.state_keys:
            value = parts[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = np.asarray([value], dtype=np.float64)
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.ndim > 1:
                raise ProtocolError(
                    f"{key}: expected a number or a 1-D numeric array, got {_describe(value)}"
                )
            vectors.append(value.reshape(-1).astype(np.float32))
        return np.concatenate(vectors)

    def _state(self, state: Any) -> np.ndarray:
        expected = f"float32 array of shape ({self.meta.state_dim},)"
        if state is None:
            raise ProtocolError(f"missing 'state': expected {expected}")
        if isinstance(state, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in state
        ):
            state = np.asarray(state, dtype=np.float64)
        if (
            not isinstance(state, np.ndarray)
            or state.dtype.kind not in "iuf"
            or state.shape != (self.meta.state_dim,)
        ):
            raise ProtocolError(f"state: expected {expected}, got {_describe(state)}")
        state = state.astype(np.float32)
        if not np.isfinite(state).all():
            raise ProtocolError(
                "state has non-finite values (NaN or inf) at indices "
                f"{np.flatnonzero(~np.isfinite(state)).tolist()}"
            )
        return state

    def _instruction(self, text: Any) -> str:
        if isinstance(text, np.ndarray) and text.dtype.kind == "u" and text.ndim == 1:
            text = bytes(text.astype(np.uint8)).decode("utf-8", "replace")  # some clients send UTF-8 bytes
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            raise ProtocolError(
                f"instruction: expected a string, got {_describe(text) if text is not None else 'nothing'}"
            )
        if len(text) > self.max_instruction_chars:
            raise ProtocolError(
                f"instruction has {len(text)} characters; the limit is {self.max_instruction_chars}"
            )
        return text

    @staticmethod
    def _seed(seed: Any) -> int | None:
        if seed is None:
            return None
        if isinstance(seed, np.integer):
            seed = int(seed)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ProtocolError(f"seed: expected an int in [0, 2**63), got {excerpt(seed)}")
        return seed

    @staticmethod
    def _request_id(request_id: Any) -> str | int | None:
        if request_id is None:
            return None
        if (
            not isinstance(request_id, _ID_TYPES)
            or isinstance(request_id, bool)
            or len(str(request_id)) > 128
        ):
            raise ProtocolError(
                f"request_id: expected a str or int (at most 128 characters), got {excerpt(request_id)}"
            )
        return request_id

    def _rtc(self, rtc: Any) -> tuple[int, int] | None:
        if rtc is None:
            return None
        ok = (
            isinstance(rtc, dict)
            and set(rtc) == {"offset", "delay"}
            and all(
                isinstance(rtc[k], int) and not isinstance(rtc[k], bool) and rtc[k] >= 0
                for k in ("offset", "delay")
            )
        )
        if not ok:
            raise ProtocolError(
                f"rtc: expected {{'offset': int >= 0, 'delay': int >= 0}} (steps into the previous "
                f"chunk, steps until this answer is used), got {excerpt(rtc)}"
            )
        if self.horizon is not None and rtc["delay"] > self.horizon:
            raise ProtocolError(f"rtc delay {rtc['delay']} exceeds the chunk length {self.horizon}")
        return rtc["offset"], rtc["delay"]
