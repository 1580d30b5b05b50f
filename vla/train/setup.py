"""Before the first step: the run directory, every check a config can fail, the datasets and the optimizer's
parameter groups."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from vla.data import Normalizer, TrajectoryStore, WindowConfig, WindowDataset, split_episodes
from vla.models import Policy
from vla.models.heads import head_class

from .batches import task_balanced_weights
from .checkpointing import STATE_FILE, latest_checkpoint
from .config import TrainConfig
from .errors import TrainError


def run_dir(cfg: TrainConfig) -> Path:
    name = cfg.name or f"{cfg.policy.name}-{cfg.policy.head.kind}"
    return Path(cfg.out) if cfg.out else Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def check_setup(cfg: TrainConfig, out: Path) -> TrajectoryStore:
    """Every error a run can hit before its first step, with what was expected."""
    if not cfg.data.path:
        raise TrainError("data.path is not set: name a dataset, e.g. data.path=data/push.zarr")
    store = TrajectoryStore(cfg.data.path)  # FileNotFoundError names the path
    if store.num_episodes < 2 and cfg.data.val_fraction > 0:
        raise TrainError(
            f"{cfg.data.path} has {store.num_episodes} episode(s); a validation split needs >= 2 "
            "(or data.val_fraction=0)"
        )
    if cfg.data.horizon not in (cfg.policy.horizon, WindowConfig.horizon):
        raise TrainError(
            f"data.horizon={cfg.data.horizon} but the policy predicts chunks of {cfg.policy.horizon}; "
            "leave data.horizon alone (it follows policy.horizon)"
        )
    if cfg.data.cameras is not None:
        unknown = set(cfg.data.cameras) - set(store.meta.cameras)
        if unknown:
            raise TrainError(
                f"data.cameras {sorted(unknown)} are not in {cfg.data.path} (it has {store.meta.cameras})"
            )
    t = cfg.trainer
    if t.batch_size < 1 or t.steps < 1 or t.grad_accum < 1:
        raise TrainError(
            f"trainer.steps, batch_size and grad_accum must be >= 1 (got {t.steps}, {t.batch_size}, "
            f"{t.grad_accum})"
        )
    every = {key: getattr(t, key) for key in ("checkpoint_every", "val_every", "log_every")}
    if min(every.values()) < 1:
        raise TrainError(
            f"trainer.checkpoint_every, val_every and log_every are step intervals and must be >= 1 (got "
            f"{', '.join(str(v) for v in every.values())}); to skip validation set data.val_fraction=0"
        )
    if t.mixed_precision not in ("no", "bf16", "fp16"):
        raise TrainError(f"trainer.mixed_precision must be no, bf16 or fp16, got {t.mixed_precision!r}")
    for key in ("lr_scale", "task_weights"):
        value = getattr(t, key)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value.values())
        ):
            raise TrainError(
                f"trainer.{key} must be a mapping of names to numbers, e.g. {{grounding.stem: 3}}, "
                f"got {value!r}"
            )
    if t.task_weights:
        if not t.balance_tasks:
            raise TrainError(
                "trainer.task_weights sets each task's share of a batch: it needs trainer.balance_tasks=true"
            )
        task_balanced_weights(store.tasks, t.task_weights)  # names and values, before any compute
    if t.logger not in ("tensorboard", "wandb", "none"):
        raise TrainError(f"trainer.logger must be tensorboard, wandb or none, got {t.logger!r}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"run directory {out} is not writable: {e}") from e
    if t.eval_episodes > 0 and not store.meta.env:
        raise TrainError(
            f"trainer.eval_episodes={t.eval_episodes} but {cfg.data.path} names no env to evaluate in"
        )
    if t.cache_features not in (True, False, "auto"):
        raise TrainError(f"trainer.cache_features must be true, false or auto, got {t.cache_features!r}")
    if t.cache_features is True and (
        cfg.policy.backbone.kind != "composite"
        or cfg.policy.backbone.finetune != "frozen"
        or cfg.data.augment.enabled
    ):
        raise TrainError(
            "trainer.cache_features=true needs a composite backbone with finetune=frozen and "
            "data.augment.enabled=false (otherwise features change between epochs)"
        )
    if cfg.resume not in (True, False, "auto"):
        raise TrainError(f"resume must be true, false or auto, got {cfg.resume!r}")
    existing = latest_checkpoint(out)
    if cfg.resume is True and existing is None:
        raise TrainError(f"resume=true but {out} has no checkpoint with {STATE_FILE}")
    if cfg.resume is False and existing is not None:
        raise TrainError(
            f"{out} already holds checkpoints ({existing.name}); pass resume=true to continue it, "
            "or choose another out="
        )
    return store


def make_datasets(cfg: TrainConfig, store: TrajectoryStore) -> tuple[WindowDataset, WindowDataset | None]:
    window = WindowConfig(
        n_obs_steps=cfg.data.n_obs_steps,
        horizon=cfg.policy.horizon,
        future_offset=cfg.policy.horizon
        if head_class(cfg.policy.head.kind).needs_future_frames
        else cfg.data.future_offset,
        cameras=cfg.data.cameras,
        in_memory=cfg.data.in_memory,
        max_memory_gb=cfg.data.max_memory_gb,
        augment=cfg.data.augment,
    )
    train_eps, val_eps = split_episodes(store.num_episodes, cfg.data.val_fraction, cfg.data.split_seed)
    train = WindowDataset(store, window, train_eps)
    val = None
    if len(val_eps):
        val_window = WindowConfig(**{**window.__dict__, "augment": type(window.augment)()})
        val = WindowDataset(store, val_window, val_eps, arrays=train.arrays)
    return train, val


def param_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, lr_scale: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: biases and norm scales get no decay; ``lr_scale`` multiplies the rate of the parameters
    whose names start with a key (the first matching key wins)."""
    lr_scale = dict(lr_scale or {})
    unmatched = [
        p
        for p in lr_scale
        if not any(n.startswith(p) for n, q in model.named_parameters() if q.requires_grad)
    ]
    if unmatched:
        raise TrainError(
            f"trainer.lr_scale names {unmatched}, which match no trainable parameter; names start with "
            f"{sorted({n.split('.')[0] for n, _ in model.named_parameters()})} (e.g. grounding.stem)"
        )
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = next((v for p, v in lr_scale.items() if name.startswith(p)), 1.0)
            groups.setdefault((scale, param.ndim >= 2), []).append(param)
    return [
        {"params": params, "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0}
        for (scale, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def build_policy(cfg: TrainConfig, store: TrajectoryStore) -> tuple[Policy, bool]:
    """The policy to train (its initial weights drawn from ``trainer.seed``, identical on every process), and
    whether its frozen encoders' features are memoized (``trainer.cache_features``)."""
    t = cfg.trainer
    normalizer = Normalizer.from_stats(TrajectoryStore(store.url).stats(), cfg.policy.normalization)
    torch.manual_seed(t.seed)
    meta = store.meta
    if cfg.data.cameras is not None:
        meta = type(meta)(**{**meta.__dict__, "cameras": list(cfg.data.cameras)})
    policy = Policy(cfg.policy, meta, normalizer)
    cached = t.cache_features is True or (
        t.cache_features == "auto"
        and cfg.policy.backbone.kind == "composite"
        and cfg.policy.backbone.finetune == "frozen"
        and not cfg.data.augment.enabled
    )
    if cached:
        policy.backbone.cache_features(store.num_frames * len(meta.cameras))
    return policy, cached
