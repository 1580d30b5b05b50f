"""Policy = normalizer -> backbone -> action head -> unnormalizer, and its checkpoint directory.

A checkpoint is a directory: ``config.yaml`` (PolicyConfig), ``model.safetensors``,
``norm_stats.json`` (Normalizer), ``meta.json`` (DatasetMeta + versions). ``load_policy(path)``
rebuilds the policy from it alone.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from vla.data.normalizer import Normalizer
from vla.data.schema import DatasetMeta, SchemaError

from .backbone import build_backbone
from .config import PolicyConfig
from .heads import build_head
from .heads.flow import masked_mse


def _last_frame(x: torch.Tensor, frame_ndim: int) -> torch.Tensor:
    """Windows carry (B, T, ...) observation stacks; the policy looks at the latest frame."""
    return x[:, -1] if x.ndim == frame_ndim + 2 else x


def _batched(obs: dict) -> dict:
    """A single observation (``instruction`` a string) as a batch of one; a batched one as it is. Returns the
    keyword arguments of ``Policy._inputs``."""
    if isinstance(obs["instruction"], str):
        return {"images": {c: np.asarray(v)[None] for c, v in obs["images"].items()},
                "state": np.asarray(obs["state"])[None], "instructions": [obs["instruction"]]}
    return {"images": obs["images"], "state": obs["state"], "instructions": obs["instruction"]}


class Policy(nn.Module):
    def __init__(self, config: PolicyConfig, meta: DatasetMeta, normalizer: Normalizer):
        super().__init__()
        self.config, self.meta, self.normalizer = config, meta, normalizer
        self.backbone = build_backbone(config.backbone, config.head.width, meta.cameras, meta.state_dim)
        self.grounded = getattr(self.backbone, "conv_stem", None) is not None
        locates = self.grounded and bool(meta.target_names) and config.backbone.conv_locate_weight > 0
        self.locate_condition = config.backbone.conv_locate_condition
        if self.locate_condition and not locates:
            raise ValueError("backbone.conv_locate_condition needs the conv stem (conv_channels > 0), "
                             "conv_locate_weight > 0 and a dataset with privileged targets (data/targets); "
                             f"this dataset's targets: {list(meta.target_names) or 'none'}")
        self.keypoint_condition = self.grounded and config.backbone.conv_keypoint_condition
        if self.grounded and not (self.keypoint_condition or self.locate_condition):
            raise ValueError("backbone.conv_keypoint_condition=false leaves the head only the located targets from the "
                             "conv stem: it needs conv_locate_condition=true")
        if self.grounded and not config.backbone.conv_head_gradient and not locates:
            raise ValueError("backbone.conv_head_gradient=false leaves the conv stem loss_locate alone to learn from: it "
                             "needs conv_locate_weight > 0 and a dataset with privileged targets (data/targets); "
                             f"this dataset's targets: {list(meta.target_names) or 'none'}")
        # the head's condition: normalized state, plus the conv stem's keypoint tokens and, with
        # conv_locate_condition, the located targets (see head_condition)
        condition_dim = (meta.state_dim + (len(meta.cameras) * config.head.width if self.keypoint_condition else 0)
                         + (len(meta.target_names) if self.locate_condition else 0))
        self.head = build_head(config.head, condition_dim, meta.action_dim, config.horizon, self.backbone.feature_dim)
        self.grounding_readout = None
        if self.grounded and config.backbone.conv_aux_weight > 0:
            # auxiliary chunk regression from the same condition: a mean-squared error cannot be lowered by
            # heading for *a* block, only for the named one, so it pulls the stem's FiLM and queries to the
            # instruction. The flow head alone can model "any of the blocks" as a multimodal chunk
            # distribution and never needs the words.
            hidden = 4 * config.head.width
            self.grounding_readout = nn.Sequential(nn.Linear(condition_dim, hidden), nn.SiLU(),
                                                   nn.Linear(hidden, config.horizon * meta.action_dim))
        self.locate_readout = None
        if locates:
            # the data carries privileged targets (where the named objects are): a linear readout of them from
            # the stem's keypoint tokens teaches the stem to find what the instruction names in a few hundred
            # steps, where the action losses alone took thousands (docs/results.md); when acting, it is used only
            # with conv_locate_condition
            self.locate_readout = nn.Linear(len(meta.cameras) * config.head.width, len(meta.target_names))
        self.register_buffer("action_low", torch.tensor(meta.action_space.low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(meta.action_space.high, dtype=torch.float32), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.action_low.device

    def _inputs(self, images: dict, state: Any, instructions: list[str]) -> tuple[dict, torch.Tensor, list[str]]:
        missing = set(self.meta.cameras) - set(images)
        if missing:
            raise SchemaError(f"observation lacks cameras {sorted(missing)}; the policy was trained on {self.meta.cameras}")
        imgs = {c: _last_frame(torch.as_tensor(np.asarray(images[c]) if not torch.is_tensor(images[c]) else images[c]),
                               3).to(self.device) for c in self.meta.cameras}
        state = _last_frame(torch.as_tensor(state, dtype=torch.float32), 1).to(self.device)
        if state.shape[-1] != self.meta.state_dim:
            raise SchemaError(f"state has dim {state.shape[-1]}, the policy expects {self.meta.state_dim}")
        return imgs, self.normalizer.normalize("state", state) if self.meta.state_dim else state, list(instructions)

    def head_condition(self, prefix: torch.Tensor, state: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The head's global condition: normalized state, then (with a conv stem) its keypoint tokens, then (with
        ``conv_locate_condition``) the located targets: ``targets`` when given (training), else the readout's;
        normalized when ``policy.normalization`` has ``targets`` (the readout itself predicts them raw)."""
        if not self.grounded:
            return state
        keypoints = self.backbone.keypoint_tokens(prefix)
        if not self.locate_condition:
            return torch.cat([state, keypoints], -1)
        located = targets if targets is not None else self.locate_readout(keypoints)
        if "targets" in self.normalizer.keys:  # policy.normalization names them: the head sees them normalized
            located = self.normalizer.normalize("targets", located)
        return torch.cat([state, keypoints, located] if self.keypoint_condition else [state, located], -1)

    def load_weights(self, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
        """``load_state_dict`` with an error that says which checkpoint does not fit this code, and why."""
        result = self.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SchemaError(
                f"checkpoint {source} does not match this version of vla's {self.config.name} policy "
                f"(missing weights: {result.missing_keys[:4]}, unexpected: {result.unexpected_keys[:4]}); it was "
                "probably written by an older vla: retrain it, or start a fresh run directory instead of resuming")

    def forward(self, batch: dict, noise: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """`compute_loss` (forward is what DDP wraps)."""
        return self.compute_loss(batch, noise)

    def draw_noise(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All random draws of one training step for n samples (see the head's draw_noise)."""
        return self.head.draw_noise(n, generator)

    def compute_loss(self, batch: dict, noise: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Batch from a collated `WindowDataset` (images (B, T, H, W, 3) uint8, state, action, action_mask,
        instruction; future_images / future_valid for the dual-stream head)."""
        images, state, instructions = self._inputs(batch["images"], batch["state"], batch["instruction"])
        prefix = self.backbone(images, instructions, state)
        targets = torch.as_tensor(batch["targets"], dtype=torch.float32).to(self.device) if "targets" in batch else None
        if self.locate_condition and targets is None:
            raise KeyError("conv_locate_condition trains the head on the data's true targets, and this batch has none")
        head_prefix = prefix
        if self.grounded and not self.config.backbone.conv_head_gradient:
            head_prefix = (self.backbone.detach_conv_stem(prefix[0]), prefix[1])
        condition = self.head_condition(head_prefix[0], state, targets if self.locate_condition else None)
        head_batch = {
            "state": condition,
            "action": self.normalizer.normalize("action", torch.as_tensor(batch["action"], dtype=torch.float32).to(self.device)),
            "action_mask": torch.as_tensor(batch["action_mask"]).to(self.device),
        }
        if self.config.head.kind == "dual_stream":
            if "future_images" not in batch:
                raise KeyError("the dual_stream head needs future_images: set data.future_offset to the horizon")
            primary = self.meta.cameras[0]  # the world-model target is the primary camera's future frame
            future = torch.as_tensor(batch["future_images"][primary]).to(self.device)
            target = self.backbone.target_features(future, self.config.head.vision_tokens)
            head_batch["future_features"] = F.layer_norm(target, target.shape[-1:])  # per-token normalized target
            head_batch["future_valid"] = torch.as_tensor(batch["future_valid"]).to(self.device)
        losses = self.head.loss(head_prefix, head_batch, noise)
        if self.grounding_readout is not None:
            chunk = self.grounding_readout(condition).view(head_batch["action"].shape)
            losses["loss_ground"] = masked_mse(chunk, head_batch["action"], head_batch["action_mask"])
            losses["loss"] = losses["loss"] + self.config.backbone.conv_aux_weight * losses["loss_ground"]
        if self.locate_readout is not None and targets is not None:
            located = self._located(prefix[0])
            losses["loss_locate"] = F.mse_loss(located, targets)
            losses["loss"] = losses["loss"] + self.config.backbone.conv_locate_weight * losses["loss_locate"]
        return losses

    @torch.no_grad()
    def locate(self, obs: dict) -> np.ndarray:
        """Where the stem reads the data's training targets (``meta.target_names``) in an observation (batched or
        single, as ``predict_chunk``): (B, n_targets) float32. Needs a policy trained with ``loss_locate``."""
        if self.locate_readout is None:
            raise ValueError("this policy has no locate readout (trained without data/targets or conv_locate_weight = 0)")
        images, state, instructions = self._inputs(**_batched(obs))
        return self._located(self.backbone(images, instructions, state)[0]).float().cpu().numpy()

    def _located(self, prefix: torch.Tensor) -> torch.Tensor:
        """The locate readout of the stem's keypoint tokens in ``prefix``: (B, n_targets)."""
        return self.locate_readout(self.backbone.keypoint_tokens(prefix))

    @torch.no_grad()
    def predict_chunk(self, obs: dict, generator: torch.Generator | list[torch.Generator] | None = None,
                      action_steps: int | None = None,
                      vision_steps: int | None = None, guide: np.ndarray | None = None,
                      guide_weights: np.ndarray | None = None, noise_scale: float = 1.0,
                      targets: np.ndarray | None = None) -> np.ndarray:
        """Observation dict (DESIGN.md contract; batched or single) -> (B, H, D_action) float32 in env units.
        ``generator``: one, or a list with one per sample (batch-independent noise, as the server uses).
        ``guide`` (B or 1, H, D_action) in env units + ``guide_weights`` (H,) or (B, H): real-time
        chunking's prefix. ``noise_scale``: the sampling temperature (the initial noise's scale; 0 = deterministic).
        ``targets`` (B or 1, n_targets): with ``conv_locate_condition``, positions to condition the head on instead
        of the stem's reading (a diagnostic: the simulator's true ones separate perception from control)."""
        images, state, instructions = self._inputs(**_batched(obs))
        prefix = self.backbone(images, instructions, state)
        if guide is not None:
            guide = self.normalizer.normalize("action", torch.as_tensor(np.asarray(guide), dtype=torch.float32).to(self.device))
            guide_weights = torch.as_tensor(np.asarray(guide_weights), dtype=torch.float32)
        if targets is not None:
            if not self.locate_condition:
                raise ValueError("targets= conditions the head on given positions; this policy was trained without "
                                 "conv_locate_condition, so its head takes none")
            targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32).to(self.device).expand(state.shape[0], -1)
        chunk = self.head.sample(prefix, self.head_condition(prefix[0], state, targets), action_steps=action_steps,
                                 vision_steps=vision_steps, generator=generator, guide=guide, guide_weights=guide_weights,
                                 noise_scale=noise_scale)
        chunk = self.normalizer.unnormalize("action", chunk)
        chunk = torch.maximum(torch.minimum(chunk, self.action_high), self.action_low)
        return chunk.float().cpu().numpy()

    # -- checkpoint --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint directory atomically (temp dir + rename)."""
        import safetensors.torch
        import transformers

        import vla

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.config)))
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            safetensors.torch.save_file(state, str(tmp / "model.safetensors"))
            self.normalizer.save(tmp / "norm_stats.json")
            meta = self.meta.to_attrs() | {"versions": {"vla": vla.__version__, "torch": torch.__version__,
                                                        "transformers": transformers.__version__}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path


def load_policy(path: str | os.PathLike, expect: DatasetMeta | None = None, device: str = "cpu") -> Policy:
    """Rebuild a policy from its checkpoint directory; ``expect`` (an env's or dataset's metadata)
    must match the checkpoint's cameras, image size and dims, else a SchemaError names the mismatch."""
    import safetensors.torch

    from vla.config import to_object

    path = Path(path)
    for name in ("config.yaml", "model.safetensors", "norm_stats.json", "meta.json"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} is not a vla checkpoint: {name} is missing")
    config = to_object(OmegaConf.load(path / "config.yaml"), PolicyConfig)
    attrs = json.loads((path / "meta.json").read_text())
    attrs.pop("versions", None)
    meta = DatasetMeta.from_attrs(attrs)
    if expect is not None:
        expect.check_compatible(meta, what="the environment/dataset", other_what=f"checkpoint {path}")
    policy = Policy(config, meta, Normalizer.load(path / "norm_stats.json"))
    policy.load_weights(safetensors.torch.load_file(str(path / "model.safetensors")), path)
    return policy.to(device).eval()
