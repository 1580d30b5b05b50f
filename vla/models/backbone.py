"""VLM backbone: images + instruction -> prefix tokens, and vision features for the world-model target.

The composite backbone pairs a transformers vision encoder (SigLIP) with a transformers text
encoder (BERT-style). Each is built from the config's sizes with random weights, or loaded with
``from_pretrained(path or hub id)``. Hidden states come from ``config.layer``; each camera's
patch features are average-pooled to ``tokens_per_image`` tokens (visual-token reduction).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig


def pool_tokens(features: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, P, D) patch features on a square grid -> (B, tokens, D) by 2-D average pooling."""
    b, p, d = features.shape
    side, out = int(math.isqrt(p)), int(math.isqrt(tokens))
    if side * side != p or out * out != tokens:
        raise ValueError(f"pooling needs square grids, got {p} patches -> {tokens} tokens")
    grid = features.transpose(1, 2).reshape(b, d, side, side)
    return F.adaptive_avg_pool2d(grid, out).flatten(2).transpose(1, 2)


def _tokenizer(path: str | None):
    if path is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()  # byte-level, needs no files: works offline with random-init text encoders


class CompositeBackbone(nn.Module):
    def __init__(self, config: BackboneConfig, width: int, cameras: list[str]):
        super().__init__()
        from transformers import BertConfig, BertModel, SiglipVisionConfig, SiglipVisionModel

        self.config, self.cameras = config, list(cameras)
        if config.vision_path:
            self.vision = SiglipVisionModel.from_pretrained(config.vision_path)
        else:
            self.vision = SiglipVisionModel(SiglipVisionConfig(
                hidden_size=config.vision_width, intermediate_size=4 * config.vision_width,
                num_hidden_layers=config.vision_layers, num_attention_heads=config.heads,
                image_size=config.image_size, patch_size=config.patch_size))
        self.tokenizer = _tokenizer(config.text_path)
        if config.text_path:
            from transformers import AutoModel

            self.text = AutoModel.from_pretrained(config.text_path)
        else:
            self.text = BertModel(BertConfig(
                vocab_size=len(self.tokenizer), hidden_size=config.text_width, intermediate_size=4 * config.text_width,
                num_hidden_layers=config.text_layers, num_attention_heads=config.heads,
                max_position_embeddings=max(config.max_text_tokens, 8)), add_pooling_layer=False)
        vision_dim, text_dim = self.vision.config.hidden_size, self.text.config.hidden_size
        self.feature_dim = vision_dim
        self.vision_proj = nn.Linear(vision_dim, width)
        self.text_proj = nn.Linear(text_dim, width)
        self.camera_embed = nn.Parameter(torch.zeros(len(self.cameras), 1, width))
        self.width = width
        if config.freeze:
            for module in (self.vision, self.text):
                module.requires_grad_(False)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> patch features (B, P, D_vision) from the configured layer."""
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # SigLIP's [-1, 1] input range
        size = self.vision.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out = self.vision(pixel_values=x, output_hidden_states=self.config.layer != -1)
        return out.last_hidden_state if self.config.layer == -1 else out.hidden_states[self.config.layer]

    def target_features(self, images: torch.Tensor, tokens: int) -> torch.Tensor:
        """Pooled vision-encoder features of (future) frames, the world-model target (no gradient)."""
        with torch.no_grad():
            return pool_tokens(self.image_features(images), tokens)

    def forward(self, images: dict[str, torch.Tensor], instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix tokens (B, L, width) over [camera tokens..., instruction tokens] and their mask (B, L)."""
        parts, masks = [], []
        for i, cam in enumerate(self.cameras):
            tokens = pool_tokens(self.image_features(images[cam]), self.config.tokens_per_image)
            parts.append(self.vision_proj(tokens) + self.camera_embed[i])
            masks.append(torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        enc = self.tokenizer(list(instructions), padding=True, truncation=True,
                             max_length=self.config.max_text_tokens, return_tensors="pt")
        device = parts[0].device
        enc = {k: v.to(device) for k, v in enc.items()}
        out = self.text(**enc, output_hidden_states=self.config.layer != -1)
        hidden = out.last_hidden_state if self.config.layer == -1 else out.hidden_states[self.config.layer]
        parts.append(self.text_proj(hidden))
        masks.append(enc["attention_mask"].bool())
        return torch.cat(parts, 1), torch.cat(masks, 1)


def build_backbone(config: BackboneConfig, width: int, cameras: list[str]) -> nn.Module:
    if config.kind != "composite":
        raise ValueError(f"unknown backbone kind {config.kind!r}; available: ['composite']")
    return CompositeBackbone(config, width, cameras)
