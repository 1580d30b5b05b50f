"""A multi-stream diffusion transformer (MMDiT after SD3/DUST), short and readable.

Each stream has its own weights in every block: AdaLN modulation from its own timestep embedding,
QKV, output projection and MLP. Block modes:

- ``joint``: the streams' tokens are concatenated for one attention, then split (MMDiT);
- ``self``:  each stream attends to itself only (the per-stream DiT blocks);
- ``cross``: each stream attends to the VLM prefix (GR00T-style conditioning).

diffusers' ``JointTransformerBlock`` feeds both streams the same timestep embedding and ignores
attention masks, so it cannot express per-stream noise levels or a padded prefix: hence our own.
Prefix keys/values of the cross blocks depend only on the prefix, so ``prefix_cache`` computes
them once per control step and every denoising step reuses them. Likewise the AdaLN parameters depend
only on the time embeddings: ``modulations`` computes them for a whole sampling schedule at once (a
leading step axis), and each step indexes its own (``at_step``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class StreamWeights(nn.Module):
    """One stream's weights inside one block."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width)
        )
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.adaln[1].weight)  # AdaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.adaln[1].bias)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, streams: int, mode: str):
        super().__init__()
        if mode not in ("joint", "self", "cross"):
            raise ValueError(f"block mode must be joint, self or cross, got {mode!r}")
        self.heads, self.mode = heads, mode
        self.streams = nn.ModuleList(StreamWeights(width) for _ in range(streams))
        self.prefix_kv = nn.Linear(width, 2 * width) if mode == "cross" else None

    def prefix_cache(self, prefix: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        if self.prefix_kv is None:
            return None
        k, v = self.prefix_kv(prefix).chunk(2, dim=-1)
        # no mask when nothing is padded (batch 1): attention without a mask is the faster kernel on CPU
        attn_mask = None if bool(mask.all()) else mask[:, None, None, :]
        return _heads(k, self.heads), _heads(v, self.heads), attn_mask

    def modulation(self, tembs: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
        """Each stream's AdaLN parameters (shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2), each
        (..., B, 1, width), from its time embedding (..., B, width)."""
        mods = []
        for temb, w in zip(tembs, self.streams, strict=False):
            shift1, scale1, gate1, shift2, scale2, gate2 = w.adaln(temb).unsqueeze(-2).chunk(6, dim=-1)
            mods.append((shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2))
        return mods

    def forward(
        self, xs: list[torch.Tensor], mods: list[tuple[torch.Tensor, ...]], cache
    ) -> list[torch.Tensor]:
        qkvs = []
        # zip stops at len(xs): a block built for two streams also runs the action stream alone
        for x, (shift1, scale1, _, _, _, _), w in zip(xs, mods, self.streams, strict=False):
            h = torch.addcmul(shift1, w.norm1(x), scale1)
            if self.mode == "cross":  # keys and values come from the prefix: only the queries are needed
                width = h.shape[-1]
                qkvs.append((_heads(F.linear(h, w.qkv.weight[:width], w.qkv.bias[:width]), self.heads),))
                continue
            b, n, _ = h.shape
            qkvs.append(w.qkv(h).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0))
        if self.mode == "joint":
            lengths = [q.shape[2] for q, _, _ in qkvs]
            q, k, v = (torch.cat([t[i] for t in qkvs], dim=2) for i in range(3))
            attended = _merge(F.scaled_dot_product_attention(q, k, v)).split(lengths, dim=1)
        elif self.mode == "self":
            attended = [_merge(F.scaled_dot_product_attention(q, k, v)) for q, k, v in qkvs]
        else:
            pk, pv, pmask = cache
            attended = [_merge(F.scaled_dot_product_attention(q, pk, pv, attn_mask=pmask)) for (q,) in qkvs]
        out = []
        for x, a, (_, _, gate1, shift2, scale2, gate2), w in zip(
            xs, attended, mods, self.streams, strict=False
        ):
            x = torch.addcmul(x, gate1, w.out(a))
            x = torch.addcmul(x, gate2, w.mlp(torch.addcmul(shift2, w.norm2(x), scale2)))
            out.append(x)
        return out


class MultiStreamTransformer(nn.Module):
    """``joint_blocks`` MMDiT blocks (joint / cross alternating) then ``stream_blocks`` per-stream
    blocks (self / cross alternating), then a final AdaLN per stream."""

    def __init__(self, width: int, heads: int, streams: int, joint_blocks: int, stream_blocks: int):
        super().__init__()
        modes = [("joint", "cross")[i % 2] for i in range(joint_blocks)]
        modes += [("self", "cross")[i % 2] for i in range(stream_blocks)]
        self.blocks = nn.ModuleList(Block(width, heads, streams, m) for m in modes)
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_adaln = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width)) for _ in range(streams)
        )

    def prefix_cache(self, prefix: torch.Tensor, mask: torch.Tensor) -> list:
        """Keys/values of every cross block: compute once per control step, reuse every denoising step."""
        return [block.prefix_cache(prefix, mask) for block in self.blocks]

    def modulations(self, tembs: list[torch.Tensor]) -> list:
        """Every block's AdaLN parameters, then the final AdaLN's (shift, 1 + scale) per stream, from the
        streams' time embeddings (..., B, width). With a leading step axis this is a whole sampling
        schedule in one matmul per block instead of one per block and step."""
        mods = [block.modulation(tembs) for block in self.blocks]
        final = []
        for temb, adaln in zip(tembs, self.final_adaln, strict=False):
            shift, scale = adaln(temb).unsqueeze(-2).chunk(2, dim=-1)
            final.append((shift, 1 + scale))
        return [*mods, final]

    @staticmethod
    def at_step(mods: list, step: int) -> list:
        """One step's modulations out of ``modulations`` of a schedule (leading step axis)."""
        return [[tuple(t[step] for t in stream) for stream in block] for block in mods]

    def forward(self, xs: list[torch.Tensor], mods: list, cache: list) -> list[torch.Tensor]:
        """``mods``: ``modulations(tembs)`` for these tokens' time embeddings."""
        for block, block_mods, block_cache in zip(self.blocks, mods[:-1], cache, strict=True):
            xs = block(xs, block_mods, block_cache)
        return [
            torch.addcmul(shift, self.final_norm(x), scale)
            for x, (shift, scale) in zip(xs, mods[-1], strict=False)
        ]
