"""Grounding: auxiliary pointing supervision, one optional component of the policy (``policy.grounding``).

A trainable, language-conditioned conv stem sits beside the (frozen) vision encoder; its tokens join each
camera's prefix tokens and its keypoint token joins the head's condition. Datasets that carry privileged
training targets (``data/targets``: where the named objects are) also teach it to point: a linear readout of
those positions from its keypoint tokens (``loss_locate``), which the head can be conditioned on
(``locate_condition``). ``Grounding`` is what the policy talks to: tokens for the prefix, the head's
condition, and the auxiliary losses.

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
- **Reading the instruction**: ``text="mean"`` conditions all of this on the mean of the instruction's
  token embeddings; ``text="attention"`` on learned queries that cross-attend over the tokens
  (`InstructionReader`), one read for FiLM and one per keypoint query. The mean blurs which colour goes
  with which noun: MiniLM's mean-pooled "push the red block onto the blue pad" and "push the blue
  block onto the red pad" have cosine similarity 0.997.

Output per camera: ``tokens`` grid tokens (learned 2-D position embedding) plus one keypoint token.
While training, the stem applies DrQ-style random shifts itself (pad + crop), so the frozen
encoder's features stay memoizable (``trainer.cache_features``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import GroundingConfig
from .losses import masked_mse


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


class InstructionReader(nn.Module):
    """``reads`` learned queries cross-attend over the instruction's tokens: (B, L, D) -> (B, reads, D)."""

    def __init__(self, dim: int, reads: int, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(reads, dim) * dim**-0.5)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        read, _ = self.attention(queries, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        return self.norm(read)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) tokens, (B, L) bool mask -> (B, D) mean over the real tokens."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class GroundedConvStem(nn.Module):
    def __init__(
        self,
        channels: int,
        tokens: int,
        width: int,
        text_dim: int,
        shift_pad: int = 4,
        queries: int = 8,
        text: str = "mean",
        second_stride: int = 2,
        keypoint_scale: float | None = None,
    ):
        super().__init__()
        if text not in ("mean", "attention"):
            raise ValueError(f"grounding.text must be 'mean' or 'attention', got {text!r}")
        if second_stride not in (1, 2):
            raise ValueError(f"grounding.second_stride must be 1 or 2, got {second_stride}")
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"grounding.tokens must be a square number, got {tokens}")
        self.side, self.shift_pad = side, shift_pad
        c = channels
        self.blocks = nn.ModuleList(
            [
                FiLMConv(3 + 2, c, 2, text_dim),
                FiLMConv(c, 2 * c, second_stride, text_dim),
                FiLMConv(2 * c, 2 * c, 1, text_dim),
            ]
        )
        self.keypoint_logits = nn.Conv2d(2 * c, c, 1)
        self.n_queries = queries
        # attention: one read for FiLM plus one per keypoint query, each projected to a query vector
        self.reader = InstructionReader(text_dim, 1 + queries) if text == "attention" else None
        self.queries = nn.Linear(text_dim, 2 * c) if self.reader else nn.Linear(text_dim, queries * 2 * c)
        self.down = FiLMConv(2 * c, 2 * c, 2, text_dim)
        self.grid_proj = nn.Linear(2 * c, width)
        self.grid_pos = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.keypoint_proj = nn.Linear(2 * c + 2 * queries, width)
        # a learned multiplier on the keypoint maps' logits, kept positive as exp(log): a near-uniform softmax
        # over the map points at the image centre whatever the scene, and gives loss_locate little to pull on
        self.log_keypoint_scale = (
            nn.Parameter(torch.tensor(math.log(keypoint_scale))) if keypoint_scale is not None else None
        )

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """Random translation of up to ``shift_pad`` pixels per image (replicate-pad + crop)."""
        pad = self.shift_pad
        b, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), device=x.device)
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(
            b, x.shape[1], h, w + 2 * pad
        )
        x = padded.gather(2, rows)
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(
            b, x.shape[1], h, w
        )
        return x.gather(3, cols)

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """uint8 (B, H, W, 3) + the instruction -> (B, tokens + 1, width). ``text``: its tokens (B, L,
        text_dim) with their ``text_mask`` (B, L), or (``text="mean"`` only) an already pooled (B,
        text_dim)."""
        if self.reader is not None:
            if text.ndim != 3 or text_mask is None:
                raise ValueError(
                    "the attention-reading conv stem needs the instruction's tokens (B, L, D) and their mask"
                )
            reads = self.reader(text, text_mask)
            text, query_text = reads[:, 0], reads[:, 1:]
        elif text.ndim == 3:
            text = masked_mean(text, text_mask)
        x = images.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        if self.training and self.shift_pad:
            x = self.shift(x)
        b, _, h, w = x.shape
        x = torch.cat([x, coordinate_grid(h, w, x.device).expand(b, -1, -1, -1)], 1)
        for block in self.blocks:
            x = block(x, text)
        scale = 1.0 if self.log_keypoint_scale is None else self.log_keypoint_scale.exp()
        keypoints = spatial_softmax(self.keypoint_logits(x) * scale).flatten(1)  # (B, 2c)
        queries = (self.queries(query_text) if self.reader is not None else self.queries(text)).view(
            b, self.n_queries, x.shape[1]
        )
        scores = torch.einsum("bnc,bchw->bnhw", queries, x) * (scale / math.sqrt(x.shape[1]))
        named = spatial_softmax(scores).flatten(1)  # (B, 2 * queries): where the instruction points
        keypoints = torch.cat([keypoints, named], 1)
        grid = F.adaptive_avg_pool2d(self.down(x, text), self.side).flatten(2).transpose(1, 2)
        grid = self.grid_proj(grid) + self.grid_pos
        return torch.cat([grid, self.keypoint_proj(keypoints)[:, None]], 1)


class Grounding(nn.Module):
    """The stem, its readouts and how the policy uses them (``GroundingConfig``).

    The backbone calls ``camera_tokens`` for every camera and appends them after that camera's encoder tokens,
    so a camera's block in the prefix is ``tokens_per_image`` encoder tokens, ``tokens`` grid tokens, one
    keypoint token. The policy asks ``condition`` for the head's condition and ``add_losses`` for the
    auxiliary losses."""

    def __init__(
        self,
        config: GroundingConfig,
        width: int,
        cameras: list[str],
        tokens_per_image: int,
        state_dim: int,
        target_names: list[str],
        horizon: int,
        action_dim: int,
    ):
        super().__init__()
        self.config, self.cameras, self.tokens_per_image = config, list(cameras), tokens_per_image
        locates = bool(target_names) and config.locate_weight > 0
        if config.locate_condition and not locates:
            raise ValueError(
                "grounding.locate_condition needs grounding.locate_weight > 0 and a dataset with "
                f"privileged targets (data/targets); this dataset's targets: {list(target_names) or 'none'}"
            )
        if not config.head_gradient and not locates:
            raise ValueError(
                "grounding.head_gradient=false leaves the stem loss_locate alone to learn from: it needs "
                "grounding.locate_weight > 0 and a dataset with privileged targets (data/targets); "
                f"this dataset's targets: {list(target_names) or 'none'}"
            )
        self.stem = GroundedConvStem(
            config.channels,
            config.tokens,
            width,
            width,
            config.shift,
            text=config.text,
            second_stride=config.second_stride,
            keypoint_scale=config.keypoint_scale,
        )
        keypoints = len(self.cameras) * width
        # the head's condition: the normalized state, every camera's keypoint token, then (locate_condition)
        # the located targets
        self.condition_dim = state_dim + keypoints + (len(target_names) if config.locate_condition else 0)
        # the readouts' initial weights are drawn after the head's (the policy calls reset_readouts), so a
        # seed gives the same initial weights as when the readouts belonged to the policy
        with torch.random.fork_rng(devices=[]):
            hidden = 4 * width
            # loss_ground: a mean-squared error cannot be lowered by heading for *a* block, only for the named
            # one, so it pulls the stem's FiLM and queries to the instruction (a flow head alone can model
            # "any of the blocks" as a multimodal chunk distribution and never needs the words)
            self.action_readout = (
                nn.Sequential(
                    nn.Linear(self.condition_dim, hidden), nn.SiLU(), nn.Linear(hidden, horizon * action_dim)
                )
                if config.action_weight > 0
                else None
            )
            self.locate_readout = nn.Linear(keypoints, len(target_names)) if locates else None

    def reset_readouts(self) -> None:
        for readout in (self.action_readout, self.locate_readout):
            for layer in readout.modules() if readout is not None else []:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    @property
    def camera_tokens(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """uint8 (B, H, W, 3) images + the projected instruction tokens and mask -> (B, tokens + 1, width)."""
        return self.stem

    def _block(self) -> int:
        return self.tokens_per_image + self.config.tokens + 1

    def keypoint_tokens(self, prefix: torch.Tensor) -> torch.Tensor:
        """Every camera's keypoint token in the prefix: (B, cameras * width)."""
        block = self._block()
        return prefix[:, [i * block + block - 1 for i in range(len(self.cameras))]].flatten(1)

    def locate(self, prefix: torch.Tensor) -> torch.Tensor:
        """Where the stem reads the data's targets: (B, n_targets), in the data's units."""
        if self.locate_readout is None:
            raise ValueError(
                "this policy has no locate readout (trained without data/targets or locate_weight = 0)"
            )
        return self.locate_readout(self.keypoint_tokens(prefix))

    def head_prefix(self, prefix: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix the head trains on: with ``head_gradient=false`` the stem's tokens are cut from the
        graph."""
        if self.config.head_gradient:
            return prefix
        block, tokens = self._block(), prefix[0]
        stem = torch.zeros(tokens.shape[1], dtype=torch.bool, device=tokens.device)
        for i in range(len(self.cameras)):
            stem[i * block + self.tokens_per_image : (i + 1) * block] = True
        return torch.where(stem[:, None], tokens.detach(), tokens), prefix[1]

    def condition(
        self,
        prefix: torch.Tensor,
        state: torch.Tensor,
        targets: torch.Tensor | None = None,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The head's condition: normalized state, keypoint tokens, then (``locate_condition``) the located
        targets: ``targets`` when given (training: the data's), else the readout's; ``normalize`` maps them to
        the head's scale (the readout itself predicts them raw)."""
        keypoints = self.keypoint_tokens(prefix)
        if not self.config.locate_condition:
            return torch.cat([state, keypoints], -1)
        located = targets if targets is not None else self.locate_readout(keypoints)
        return torch.cat([state, keypoints, normalize(located) if normalize else located], -1)

    def add_losses(
        self,
        losses: dict[str, torch.Tensor],
        prefix: torch.Tensor,
        condition: torch.Tensor,
        action: torch.Tensor,
        action_mask: torch.Tensor,
        targets: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The head's ``losses`` with the auxiliary ones added, each weighted into ``loss``. ``action``: the
        normalized chunk (B, H, A); ``prefix``: the backbone's tokens (the stem's not cut from the graph)."""
        if self.action_readout is not None:
            chunk = self.action_readout(condition).view(action.shape)
            losses["loss_ground"] = masked_mse(chunk, action, action_mask)
            losses["loss"] = losses["loss"] + self.config.action_weight * losses["loss_ground"]
        if self.locate_readout is not None and targets is not None:
            losses["loss_locate"] = F.mse_loss(self.locate(prefix), targets)
            losses["loss"] = losses["loss"] + self.config.locate_weight * losses["loss_locate"]
        return losses
