"""A policy checkpoint is a directory: ``config.yaml`` (PolicyConfig), ``model.safetensors``,
``norm_stats.json`` (Normalizer), ``meta.json`` (DatasetMeta + versions). ``load_policy(path)`` rebuilds the
policy from it alone.

Checkpoints written before the grounding module had its own config (``backbone.conv_*`` keys, weights under
``backbone.conv_stem``, ``grounding_readout`` and ``locate_readout``) load through ``_upgrade``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vla.data.normalizer import Normalizer
from vla.data.schema import DatasetMeta, SchemaError

from .config import PolicyConfig
from .policy import Policy

FILES = ("config.yaml", "model.safetensors", "norm_stats.json", "meta.json")

# backbone.conv_<name> -> grounding.<name>, for checkpoints of vla 0.1 before the grounding module
_OLD_GROUNDING_KEYS = {
    "conv_tokens": "tokens",
    "conv_shift": "shift",
    "conv_second_stride": "second_stride",
    "conv_text": "text",
    "conv_aux_weight": "action_weight",
    "conv_locate_weight": "locate_weight",
    "conv_locate_condition": "locate_condition",
    "conv_head_gradient": "head_gradient",
}
_OLD_WEIGHT_PREFIXES = {
    "backbone.conv_stem.": "grounding.stem.",
    "grounding_readout.": "grounding.action_readout.",
    "locate_readout.": "grounding.locate_readout.",
}


def save_policy(policy: Policy, path: str | os.PathLike) -> Path:
    """Write the checkpoint directory atomically (temp dir + rename)."""
    import safetensors.torch
    import transformers

    import vla

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(policy.config)))
        state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / "model.safetensors"))
        policy.normalizer.save(tmp / "norm_stats.json")
        meta = policy.meta.to_attrs() | {
            "versions": {
                "vla": vla.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_config(path: Path) -> DictConfig:
    """A checkpoint's ``config.yaml`` as plain data: an omegaconf interpolation (``${oc.env:SECRET}``,
    ``${a.b}``) would be resolved on load and could put the server's environment into the metadata it sends
    every client, so any value that holds one is refused, naming its key."""
    config = OmegaConf.load(path)

    def check(node: object, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                check(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                check(v, f"{key}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise SchemaError(
                f"checkpoint {path.parent} has an interpolation in config.yaml at {key} ({node[:60]!r}): a "
                "checkpoint's config is data, and vla does not resolve it; write the value itself"
            )

    check(OmegaConf.to_container(config, resolve=False), "")
    return config


def _upgrade(config: DictConfig, source: Path) -> DictConfig:
    """A config from before the grounding module: its ``backbone.conv_*`` keys become ``grounding``."""
    backbone = config.get("backbone") or {}
    old = {k: backbone[k] for k in list(backbone) if str(k).startswith("conv_")}
    if not old:
        return config
    for key in old:
        del backbone[key]
    if old.get("conv_first_stride", 2) != 2 or not old.get("conv_keypoint_condition", True):
        raise SchemaError(
            f"checkpoint {source} uses a grounding setting this vla no longer has "
            f"(conv_first_stride={old.get('conv_first_stride')}, conv_keypoint_condition="
            f"{old.get('conv_keypoint_condition')}): retrain it"
        )
    grounding = {new: old[key] for key, new in _OLD_GROUNDING_KEYS.items() if key in old}
    grounding |= {"enabled": bool(old.get("conv_channels", 0)), "channels": old.get("conv_channels") or 16}
    config.grounding = grounding
    return config


def load_weights(policy: Policy, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``load_state_dict`` with an error that says which checkpoint does not fit this code, and why."""
    for old, new in _OLD_WEIGHT_PREFIXES.items():
        state = {new + k[len(old) :] if k.startswith(old) else k: v for k, v in state.items()}
    try:
        result = policy.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that do not fit: torch lists every tensor, which can run to pages
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:300])
        raise SchemaError(
            f"checkpoint {source} does not fit the {policy.config.name} policy its config builds ({first}; "
            f"{str(e).count('size mismatch')} tensors differ): the weights and config.yaml do not belong "
            "together"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise SchemaError(
            f"checkpoint {source} does not match this version of vla's {policy.config.name} policy "
            f"(missing weights: {result.missing_keys[:4]}, unexpected: {result.unexpected_keys[:4]}); it was "
            "probably written by an older vla: retrain it, or start a fresh run directory instead of resuming"
        )


def load_policy(path: str | os.PathLike, expect: DatasetMeta | None = None, device: str = "cpu") -> Policy:
    """Rebuild a policy from its checkpoint directory; ``expect`` (an env's or dataset's metadata)
    must match the checkpoint's cameras, image size and dims, else a SchemaError names the mismatch."""
    import safetensors.torch

    from vla.config import to_object

    path = Path(path)
    for name in FILES:
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} is not a vla checkpoint: {name} is missing")
    config = to_object(_upgrade(_read_config(path / "config.yaml"), path), PolicyConfig)
    attrs = json.loads((path / "meta.json").read_text())
    attrs.pop("versions", None)
    meta = DatasetMeta.from_attrs(attrs)
    if expect is not None:
        expect.check_compatible(meta, what="the environment/dataset", other_what=f"checkpoint {path}")
    policy = Policy(config, meta, Normalizer.load(path / "norm_stats.json"))
    load_weights(policy, safetensors.torch.load_file(str(path / "model.safetensors")), path)
    return policy.to(device).eval()
