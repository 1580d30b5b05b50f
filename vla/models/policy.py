"""Policy = normalizer -> backbone (+ optional grounding) -> action head -> unnormalizer.

Checkpoints (``save_policy`` / ``load_policy``) live in ``checkpoint.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla.data.normalizer import Normalizer
from vla.data.observation import as_batch
from vla.data.schema import DatasetMeta, SchemaError
from vla.hardware import acting_threads, intra_op_threads

from .backbone import build_backbone
from .config import PolicyConfig
from .grounding import Grounding
from .heads import build_head


def _last_frame(x: torch.Tensor, frame_ndim: int) -> torch.Tensor:
    """Windows carry (B, T, ...) observation stacks; the policy looks at the latest frame."""
    return x[:, -1] if x.ndim == frame_ndim + 2 else x


Prefix = tuple[torch.Tensor, torch.Tensor]  # tokens (B, L, width), mask (B, L)


class Policy(nn.Module):
    # torch threads while predict_chunk runs: "auto" (vla.hardware.acting_threads: one at batch 1 under
    # passive OpenMP waiting), an int, or None (the process's setting)
    act_threads: int | str | None = "auto"

    def __init__(self, config: PolicyConfig, meta: DatasetMeta, normalizer: Normalizer):
        super().__init__()
        self.config, self.meta, self.normalizer = config, meta, normalizer
        if config.grounding.enabled and config.backbone.kind != "composite":
            raise ValueError(
                "policy.grounding works with the composite backbone; disable it for backbone.kind="
                f"{config.backbone.kind}"
            )
        self.backbone = build_backbone(config.backbone, config.head.width, meta.cameras, meta.state_dim)
        self.grounding = None
        condition_dim = meta.state_dim
        if config.grounding.enabled:
            self.grounding = Grounding(
                config.grounding,
                config.head.width,
                meta.cameras,
                config.backbone.tokens_per_image,
                meta.state_dim,
                meta.target_names,
                config.horizon,
                meta.action_dim,
            )
            condition_dim = self.grounding.condition_dim
        self.head = build_head(
            config.head, condition_dim, meta.action_dim, config.horizon, self.backbone.feature_dim
        )
        if self.grounding is not None:
            self.grounding.reset_readouts()
        self.register_buffer(
            "action_low", torch.tensor(meta.action_space.low, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "action_high", torch.tensor(meta.action_space.high, dtype=torch.float32), persistent=False
        )

    def compile_for_acting(self) -> Policy:
        """``torch.compile`` the frozen vision encoder's acting copy (its folded weights frozen into the
        graph; weights loaded later are compiled again at the next chunk). The first chunk of each batch size
        takes tens of seconds; the gain is measured in benchmarks/peer_latency.py. The head is not compiled:
        with torch 2.13 its compiled graph corrupted the heap on one thread of an AVX-512 CPU, and it gained
        2-3 ms where it ran (docs/architecture.md, "Compiled acting")."""
        vision = getattr(self.backbone, "vision", None)
        if hasattr(vision, "compile_for_acting"):
            vision.compile_for_acting()
        return self

    @property
    def device(self) -> torch.device:
        return self.action_low.device

    def _inputs(
        self, images: dict, state: Any, instructions: list[str]
    ) -> tuple[dict, torch.Tensor, list[str]]:
        missing = set(self.meta.cameras) - set(images)
        if missing:
            raise SchemaError(
                f"observation lacks cameras {sorted(missing)}; the policy was trained on {self.meta.cameras}"
            )
        imgs = {
            c: _last_frame(
                torch.as_tensor(np.asarray(images[c]) if not torch.is_tensor(images[c]) else images[c]), 3
            ).to(self.device)
            for c in self.meta.cameras
        }
        state = _last_frame(torch.as_tensor(state, dtype=torch.float32), 1).to(self.device)
        if state.shape[-1] != self.meta.state_dim:
            raise SchemaError(f"state has dim {state.shape[-1]}, the policy expects {self.meta.state_dim}")
        return (
            imgs,
            self.normalizer.normalize("state", state) if self.meta.state_dim else state,
            list(instructions),
        )

    def _prefix(self, images: dict, state: torch.Tensor, instructions: list[str]) -> Prefix:
        if self.grounding is None:
            return self.backbone(images, instructions, state)
        # composite backbones only
        return self.backbone(images, instructions, state, self.grounding.camera_tokens)

    def encode(self, obs: dict) -> tuple[Prefix, torch.Tensor]:
        """An observation (single or batched, the DESIGN.md contract) -> the prefix and the normalized
        state."""
        batch = as_batch(obs)
        images, state, instructions = self._inputs(batch["images"], batch["state"], batch["instruction"])
        return self._prefix(images, state, instructions), state

    def condition(
        self, prefix: Prefix, state: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The head's global condition: the normalized state, plus what the grounding module adds."""
        if self.grounding is None:
            return state
        normalize = (
            (lambda t: self.normalizer.normalize("targets", t)) if "targets" in self.normalizer.keys else None
        )
        return self.grounding.condition(prefix[0], state, targets, normalize)

    def forward(self, batch: dict, noise: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """`compute_loss` (forward is what DDP wraps)."""
        return self.compute_loss(batch, noise)

    def draw_noise(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All random draws of one training step for n samples (see the head's draw_noise)."""
        return self.head.draw_noise(n, generator)

    def compute_loss(
        self, batch: dict, noise: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Batch from a collated `WindowDataset` (images (B, T, H, W, 3) uint8, state, action, action_mask,
        instruction; future_images / future_valid for a head that needs future frames; targets)."""
        images, state, instructions = self._inputs(batch["images"], batch["state"], batch["instruction"])
        prefix = self._prefix(images, state, instructions)
        targets = (
            torch.as_tensor(batch["targets"], dtype=torch.float32).to(self.device)
            if "targets" in batch
            else None
        )
        head_prefix = prefix
        if self.grounding is not None:
            if self.grounding.config.locate_condition and targets is None:
                raise KeyError(
                    "grounding.locate_condition trains the head on the data's true targets, and this batch "
                    "has none"
                )
            head_prefix = self.grounding.head_prefix(prefix)
        condition = self.condition(head_prefix, state, targets)
        head_batch = {
            "state": condition,
            "action": self.normalizer.normalize(
                "action", torch.as_tensor(batch["action"], dtype=torch.float32).to(self.device)
            ),
            "action_mask": torch.as_tensor(batch["action_mask"]).to(self.device),
        }
        if self.head.needs_future_frames:
            if "future_images" not in batch:
                raise KeyError(
                    f"the {self.config.head.kind} head needs future_images: set data.future_offset to the "
                    "horizon"
                )
            primary = self.meta.cameras[0]  # the world-model target is the primary camera's future frame
            future = torch.as_tensor(batch["future_images"][primary]).to(self.device)
            target = self.backbone.target_features(future, self.config.head.vision_tokens)
            # per-token normalized target
            head_batch["future_features"] = F.layer_norm(target, target.shape[-1:])
            head_batch["future_valid"] = torch.as_tensor(batch["future_valid"]).to(self.device)
        losses = self.head.loss(head_prefix, head_batch, noise)
        if self.grounding is not None:
            losses = self.grounding.add_losses(
                losses, prefix[0], condition, head_batch["action"], head_batch["action_mask"], targets
            )
        return losses

    @torch.no_grad()
    def sample_chunk(
        self,
        prefix: Prefix,
        condition: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        action_steps: int | None = None,
        vision_steps: int | None = None,
        guide: np.ndarray | None = None,
        guide_weights: np.ndarray | None = None,
        noise_scale: float = 1.0,
    ) -> np.ndarray:
        """The head's chunk for an encoded observation, in env units and bounds: (B, H, D_action) float32."""
        if guide is not None:
            if not self.head.supports_guidance:
                raise ValueError(
                    f"the {self.config.head.kind} head does not take a guided prefix (real-time "
                    "chunking); it is implemented for the flow heads"
                )
            guide = self.normalizer.normalize(
                "action", torch.as_tensor(np.asarray(guide), dtype=torch.float32).to(self.device)
            )
            guide_weights = torch.as_tensor(np.asarray(guide_weights), dtype=torch.float32)
        chunk = self.head.sample(
            prefix,
            condition,
            action_steps=action_steps,
            vision_steps=vision_steps,
            generator=generator,
            guide=guide,
            guide_weights=guide_weights,
            noise_scale=noise_scale,
        )
        chunk = self.normalizer.unnormalize("action", chunk)
        chunk = torch.maximum(torch.minimum(chunk, self.action_high), self.action_low)
        return chunk.float().cpu().numpy()

    @torch.no_grad()
    def predict_chunk(
        self, obs: dict, generator: torch.Generator | list[torch.Generator] | None = None, **sampling: Any
    ) -> np.ndarray:
        """Observation dict (DESIGN.md contract; batched or single) -> (B, H, D_action) float32 in env units.
        ``generator``: one, or a list with one per sample (batch-independent noise, as the server uses).
        ``sampling``: ``sample_chunk``'s options: ``action_steps`` / ``vision_steps`` (the head's defaults
        when absent); ``guide`` (B or 1, H, D_action) in env units + ``guide_weights`` (H,) or (B, H),
        real-time chunking's prefix (heads with ``supports_guidance``); ``noise_scale``, the sampling
        temperature (the initial noise's scale; 0 = deterministic). Runs on ``act_threads`` torch threads."""
        batch = as_batch(obs)
        threads = self.act_threads
        if threads == "auto":
            threads = acting_threads(len(batch["instruction"]))
        with intra_op_threads(threads):
            prefix, state = self.encode(batch)
            return self.sample_chunk(prefix, self.condition(prefix, state), generator, **sampling)
