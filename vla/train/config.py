"""Typed training config (mirrored by ``configs/train.yaml`` and ``configs/trainer/default.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vla.data.config import DataConfig
from vla.models.config import PolicyConfig


@dataclass
class TrainerConfig:
    steps: int = 2000  # optimizer steps
    batch_size: int = 32  # global batch (split across processes)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # DUST defaults: AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-5
    # learning-rate multipliers by parameter-name prefix, e.g. {grounding.stem: 3.0}: a small conv stem
    # trained from scratch wants a higher rate than the transformer head beside it (typed Any: a hydra
    # override replaces the whole mapping, as `trainer.lr_scale={grounding.stem:3}` expects)
    lr_scale: Any = None
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 1e-5  # not applied to biases and norms (1-D parameters)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 = no EMA; EMA weights are what checkpoints export
    mixed_precision: str = "no"  # no | bf16 | fp16 (fp16 only on GPUs)
    checkpoint_every: int = 500
    keep_last: int = 3
    val_every: int = 250
    val_batches: int = 4
    eval_episodes: int = (
        0  # > 0: evaluate each periodic checkpoint in the dataset's env (vla eval), log success
    )
    log_every: int = 10
    # multi-task data: draw windows so that every task gets the same share of each batch (short-episode
    # tasks are otherwise under-sampled: builtin/reach has 27% of the built-in suite's frames)
    balance_tasks: bool = False
    # with balance_tasks: each task's share of a batch in proportion to its weight (tasks not named: 1), e.g.
    # {builtin/push: 3} puts push in 3/4 of the built-in suite's draws, where reach is learned long before
    # push
    task_weights: Any = None  # a mapping task name -> weight (typed Any, as lr_scale)
    seed: int = 0
    cpu: bool = False  # force CPU even when a GPU is visible
    logger: str = "tensorboard"  # tensorboard | wandb | none
    # memoize frozen encoders' outputs per dataset frame (auto: when the backbone is composite and
    # frozen and augmentation is off, i.e. when every epoch would recompute the same features)
    cache_features: Any = "auto"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    name: str | None = None  # run name; null = <policy>-<head>
    out: str | None = None  # run directory; null = runs/<date>-<name>
    resume: Any = False  # true: continue from the newest checkpoint in `out`; auto: resume if there is one
