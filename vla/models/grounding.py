"""A trainable, language-conditioned conv encoder that sits beside the (frozen) vision encoder.

Frozen ImageNet features pooled to a few tokens leave two things to the action head: where exactly
things are, and which of them the instruction names. This stem does both before the head:

- **FiLM** (Perez et al. 2018, as in RT-1): after every conv, each channel is scaled and shifted by
  an affine function of the pooled instruction embedding, so the feature maps can light up only
  the object the instruction names.
- **Coordinates**: two coordinate channels at the input (CoordConv), and a spatial-softmax
  keypoint readout (Levine et al. 2016, Diffusion Policy's ResNet): each channel's expected
  (x, y) position.
- **Language queries**: ``queries`` vectors computed from the instruction score every location's
  features; the softmax over locations gives one expected (x, y) per query. Finding "the red block"
  is then one dot product away, which FiLM-gated channels alone learned more slowly on the
  built-in reach demos (docs/results.md).

Output per camera: ``tokens`` grid tokens (learned 2-D position embedding) plus one keypoint token.
While training, the stem applies DrQ-style random shifts itself (pad + crop), so the frozen
encoder's features stay memoizable (``trainer.cache_features``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FiLMConv(nn.Module):
    """conv -> GroupNorm -> FiLM(text) -> SiLU."""

    def __init__(self, cin: int, cout: int, stride: int, text_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(min(8, cout), cout)
        self.film = nn.Linear(text_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)  # start as identity: scale 1, shift 0
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(text)[:, :, None, None].chunk(2, dim=1)
        return F.silu(self.norm(self.conv(x)) * (1 + scale) + shift)


def coordinate_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(2, h, w) pixel-centre coordinates in [-1, 1], x then y."""
    ys = (torch.arange(h, device=device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device) + 0.5) / w * 2 - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"))


def spatial_softmax(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, 2): each channel's softmax-weighted mean (x, y) position in [-1, 1]."""
    b, c, h, w = features.shape
    weights = features.flatten(2).softmax(-1)  # (B, C, h*w)
    grid = coordinate_grid(h, w, features.device).flatten(1)  # (2, h*w)
    return torch.einsum("bcp,kp->bck", weights, grid)


class GroundedConvStem(nn.Module):
    def __init__(self, channels: int, tokens: int, width: int, text_dim: int, shift_pad: int = 4, queries: int = 8):
        super().__init__()
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"conv_tokens must be a square number, got {tokens}")
        self.side, self.shift_pad = side, shift_pad
        c = channels
        self.blocks = nn.ModuleList([
            FiLMConv(3 + 2, c, 2, text_dim),
            FiLMConv(c, 2 * c, 2, text_dim),
            FiLMConv(2 * c, 2 * c, 1, text_dim),
        ])
        self.keypoint_logits = nn.Conv2d(2 * c, c, 1)
        self.queries = nn.Linear(text_dim, queries * 2 * c)
        self.n_queries = queries
        self.down = FiLMConv(2 * c, 2 * c, 2, text_dim)
        self.grid_proj = nn.Linear(2 * c, width)
        self.grid_pos = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.keypoint_proj = nn.Linear(2 * c + 2 * queries, width)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """Random translation of up to ``shift_pad`` pixels per image (replicate-pad + crop)."""
        pad = self.shift_pad
        b, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), device=x.device)
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, x.shape[1], h, w + 2 * pad)
        x = padded.gather(2, rows)
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, x.shape[1], h, w)
        return x.gather(3, cols)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) + pooled instruction (B, text_dim) -> (B, tokens + 1, width)."""
        x = images.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        if self.training and self.shift_pad:
            x = self.shift(x)
        b, _, h, w = x.shape
        x = torch.cat([x, coordinate_grid(h, w, x.device).expand(b, -1, -1, -1)], 1)
        for block in self.blocks:
            x = block(x, text)
        keypoints = spatial_softmax(self.keypoint_logits(x)).flatten(1)  # (B, 2c)
        queries = self.queries(text).view(b, self.n_queries, x.shape[1])
        scores = torch.einsum("bnc,bchw->bnhw", queries, x) / math.sqrt(x.shape[1])
        named = spatial_softmax(scores).flatten(1)  # (B, 2 * queries): where the instruction points
        keypoints = torch.cat([keypoints, named], 1)
        grid = F.adaptive_avg_pool2d(self.down(x, text), self.side).flatten(2).transpose(1, 2)
        grid = self.grid_proj(grid) + self.grid_pos
        return torch.cat([grid, self.keypoint_proj(keypoints)[:, None]], 1)
