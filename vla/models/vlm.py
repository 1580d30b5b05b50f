"""A whole transformers vision-language model as the backbone (``backbone.kind: vlm``).

Loaded with ``AutoModelForImageTextToText`` + ``AutoProcessor`` from ``vlm_path`` (a local directory
or a hub id): Idefics3 / SmolVLM-class, PaliGemma-class and Qwen2.5-VL-class models. The prompt is
one image placeholder per camera followed by the instruction; hidden states from ``layer`` form the
prefix: each camera's image tokens average-pooled to ``tokens_per_image``, then the text tokens.
The world-model target is the model's own image features (vision tower + connector) of the future
frame, pooled to the head's vision tokens.

Only the language model's first ``layer + 1`` decoder layers run (``_layers_needed``): the layers after
``layer`` cannot change its hidden states, and the last one kept is there because transformers reports the
last layer's output after the final norm. SmolVLM-256M with DUST's layer 12 runs 13 of its 30 layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig
from .finetune import apply_finetune
from .pretrained import from_pretrained


def _pool_sequence(tokens: torch.Tensor, out: int) -> torch.Tensor:
    """(N, T, D) -> (N, out, D): average pooling along the token axis."""
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), out).transpose(1, 2)


class VLMBackbone(nn.Module):
    lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj"]

    def __init__(self, config: BackboneConfig, width: int, cameras: list[str], state_dim: int = 0):
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not config.vlm_path:
            raise ValueError("backbone.kind=vlm needs backbone.vlm_path (a local directory or hub id)")
        self.config, self.cameras, self.width = config, list(cameras), width
        self.processor = from_pretrained(AutoProcessor, config.vlm_path, "backbone.vlm_path")
        model = from_pretrained(AutoModelForImageTextToText, config.vlm_path, "backbone.vlm_path")
        self.model = apply_finetune(model, config.finetune, config.lora_rank, self.lora_targets)
        mcfg = model.config
        self.image_token_id = getattr(mcfg, "image_token_id", None) or getattr(
            mcfg, "image_token_index", None
        )
        if self.image_token_id is None:
            raise ValueError(f"{config.vlm_path}: the model config names no image token id")
        text_cfg = getattr(mcfg, "text_config", mcfg)
        self.hidden = text_cfg.hidden_size
        self.feature_dim = self.hidden  # image features come out of the connector in the LM's width
        self.proj = nn.Linear(self.hidden, width)
        self.camera_embed = nn.Parameter(torch.zeros(len(self.cameras), 1, width))
        self.state_proj = nn.Linear(state_dim, width) if config.state_token and state_dim else None
        self.is_qwen = "qwen" in mcfg.model_type

    def train(self, mode: bool = True) -> VLMBackbone:
        super().train(mode)
        if self.config.finetune != "full":
            self.model.eval()
        return self

    def _placeholder(self) -> str:
        if self.is_qwen:
            return "<|vision_start|><|image_pad|><|vision_end|>"
        return getattr(self.processor, "image_token", "<image>")

    def _encode(self, images: dict[str, torch.Tensor], instructions: list[str]):
        per_sample = [
            [images[c][i].cpu().numpy().astype(np.uint8) for c in self.cameras]
            for i in range(len(instructions))
        ]
        prompts = [self._placeholder() * len(self.cameras) + text for text in instructions]
        inputs = self.processor(text=prompts, images=per_sample, return_tensors="pt", padding=True)
        return inputs.to(self.proj.weight.device)

    @contextlib.contextmanager
    def _layers_needed(self) -> Iterator[None]:
        """The language model runs only up to the prefix's layer (+ 1, whose normed output transformers puts
        last in ``hidden_states``; the one before it stays as it was) inside the block."""
        decoder = self.model.get_decoder()
        config = getattr(decoder, "config", None)
        total = getattr(config, "num_hidden_layers", None)
        layer = self.config.layer
        if not isinstance(total, int) or layer < 0 or layer + 1 >= total:
            yield
            return
        config.num_hidden_layers = layer + 1
        try:
            yield
        finally:
            config.num_hidden_layers = total

    def forward(
        self, images: dict[str, torch.Tensor], instructions: list[str], state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self._encode(images, instructions)
        with self._layers_needed():
            out = self.model(**inputs, output_hidden_states=True)
        hidden = out.hidden_states[self.config.layer]
        ids, attn = inputs["input_ids"], inputs["attention_mask"].bool()
        is_image = ids == self.image_token_id
        prefixes = []
        n_cams, k = len(self.cameras), self.config.tokens_per_image
        for b in range(ids.shape[0]):
            img = hidden[b][is_image[b]]
            if img.shape[0] % n_cams:
                raise ValueError(f"{img.shape[0]} image tokens do not split evenly over {n_cams} cameras")
            img = _pool_sequence(img.view(n_cams, -1, self.hidden), k)  # (n_cams, k, D)
            img = (self.proj(img) + self.camera_embed).reshape(n_cams * k, self.width)
            text = self.proj(hidden[b][~is_image[b] & attn[b]])
            prefixes.append(torch.cat([img, text]))
        length = max(p.shape[0] for p in prefixes)
        prefix = hidden.new_zeros(len(prefixes), length, self.width)
        mask = torch.zeros(len(prefixes), length, dtype=torch.bool, device=hidden.device)
        for b, p in enumerate(prefixes):
            prefix[b, : len(p)], mask[b, : len(p)] = p, True
        if self.state_proj is not None and state is not None:
            prefix = torch.cat([prefix, self.state_proj(state)[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        return prefix, mask

    def target_features(self, images: torch.Tensor, tokens: int) -> torch.Tensor:
        """The VLM's own image features (vision tower + connector) of (future) frames, pooled; no gradient."""
        with torch.no_grad():
            pixels = self.processor.image_processor(
                [[img.cpu().numpy().astype(np.uint8)] for img in images], return_tensors="pt"
            ).to(self.proj.weight.device)
            keys = ("pixel_values", "pixel_attention_mask", "image_grid_thw")
            out = self.model.model.get_image_features(**{k: v for k, v in pixels.items() if k in keys})
            feats = getattr(out, "last_hidden_state", out)
            if isinstance(feats, (list, tuple)):
                feats = torch.stack(list(feats))
            return _pool_sequence(feats.reshape(images.shape[0], -1, feats.shape[-1]), tokens)
