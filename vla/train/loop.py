"""`vla train`: a Zarr dataset + a config -> a run directory with checkpoints.

accelerate runs the same loop on CPU, one GPU, or DDP across processes (``torchrun`` /
``accelerate launch --multi_gpu``). Reproducibility: the batches of a step come from a seeded
per-epoch permutation (the global batch, each process taking its slice) and every random draw of
the loss from a generator seeded with (seed, step), so a resumed run repeats the uninterrupted one
and an N-process run matches the single-process run with the same global batch.

Run directory::

    config.yaml  metrics.jsonl  tb/  checkpoints/step_000500/{config.yaml, model.safetensors,
    norm_stats.json, meta.json, trainer_state.pt}  checkpoints/best/

The pieces: ``setup`` (checks, datasets, parameter groups), ``batches`` (which windows each step sees),
``checkpointing`` (EMA export, trainer state, resume), ``logger`` (metrics.jsonl, tensorboard, wandb).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from vla.data import WindowDataset, ensure_stats
from vla.models import Policy

from .batches import StepBatches, batches_per_epoch, collate, task_balanced_weights
from .checkpointing import ema_weights, latest_checkpoint, restore, save_checkpoint
from .config import TrainConfig
from .errors import TrainError
from .logger import MetricsLogger
from .setup import build_policy, check_setup, make_datasets, param_groups, run_dir


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train; returns the final checkpoint directory."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    out = run_dir(cfg)
    store = check_setup(cfg, out)
    t = cfg.trainer
    # Pretrained encoders carry parts the prefix does not use (e.g. SigLIP's pooling head): let DDP skip them.
    accelerator = Accelerator(
        cpu=t.cpu or not torch.cuda.is_available(),
        mixed_precision=t.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % world:
        raise TrainError(f"trainer.batch_size={t.batch_size} must divide evenly over {world} processes")
    local = t.batch_size // world
    train_set, val_set = make_datasets(cfg, store)
    batches_per_epoch(len(train_set), t.batch_size)  # fails early when the split is smaller than one batch

    if accelerator.is_main_process:
        ensure_stats(store.url)  # computed once, stored in the dataset
    accelerator.wait_for_everyone()
    policy, cached = build_policy(cfg, store)
    # fused: one kernel over all parameters instead of a Python loop per parameter (which showed in a
    # small-preset step's CPU profile); the EMA likewise
    optimizer = torch.optim.AdamW(
        param_groups(policy, t.weight_decay, t.lr, t.lr_scale), lr=t.lr, betas=tuple(t.betas), fused=True
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, t.warmup_steps, t.steps)
    ema = (
        EMAModel([p for p in policy.parameters() if p.requires_grad], decay=t.ema_decay, foreach=True)
        if t.ema_decay > 0
        else None
    )

    start_step, best_val = 0, math.inf
    resume_from = latest_checkpoint(out)
    resume = cfg.resume is True or (cfg.resume == "auto" and resume_from is not None)
    if resume:
        start_step, best_val = restore(resume_from, policy, optimizer, scheduler, ema)
    elif rank == 0:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if cached and (t.steps - start_step) * t.batch_size >= store.num_frames:
        # the run will draw about every frame anyway: encode them all up front, in the encoder's fast batch
        # size
        prefill_features(policy, train_set, progress and accelerator.is_main_process)
    # The scheduler stays ours: accelerate would step it once per process (it assumes per-process batches).
    model, optimizer = accelerator.prepare(policy, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    logger = MetricsLogger(out, t.logger, enabled=accelerator.is_main_process, cfg=cfg)
    bar = tqdm(
        total=t.steps,
        initial=start_step,
        desc=f"train {out.name}",
        unit="step",
        disable=not (progress and accelerator.is_main_process),
    )
    started, samples = time.perf_counter(), 0
    final = None
    weights = task_balanced_weights(train_set.window_tasks(), t.task_weights) if t.balance_tasks else None
    sampler = StepBatches(
        len(train_set),
        t.batch_size,
        t.seed,
        start_step * t.grad_accum,
        t.steps * t.grad_accum,
        rank,
        world,
        weights,
    )
    loader = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers))
    for step in range(start_step, t.steps):
        model.train()
        parts: dict[str, float] = {}
        for micro in range(t.grad_accum):
            global_index = step * t.grad_accum + micro
            batch = next(loader)
            noise = policy.draw_noise(
                t.batch_size, torch.Generator().manual_seed(t.seed * 1_000_003 + global_index)
            )
            noise = {k: v[rank * local : (rank + 1) * local] for k, v in noise.items()}
            with accelerator.autocast():
                losses = model(batch, noise)
            accelerator.backward(losses["loss"] / t.grad_accum)
            for k, v in losses.items():
                parts[k] = parts.get(k, 0.0) + float(accelerator.reduce(v.detach(), "mean")) / t.grad_accum
        if t.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step([p for p in policy.parameters() if p.requires_grad])
        samples += t.batch_size * t.grad_accum
        done = step + 1
        row = {
            "step": done,
            **{k: round(v, 6) for k, v in parts.items()},
            "lr": scheduler.get_last_lr()[0],
            "processes": world,
            "samples_per_s": round(samples / (time.perf_counter() - started), 1),
        }
        if val_set is not None and (done % t.val_every == 0 or done == t.steps):
            row["val_loss"] = validate_loss(policy, val_set, ema, t, accelerator)
        logger.log(row, force=done % t.log_every == 0 or "val_loss" in row or done == t.steps)
        bar.update(1)
        bar.set_postfix(
            {k: f"{v:.4f}" for k, v in parts.items()}
            | {"lr": f"{row['lr']:.1e}", "sps": row["samples_per_s"]}
        )
        is_best = row.get("val_loss", math.inf) < best_val
        if is_best:
            best_val = row["val_loss"]
        if done % t.checkpoint_every == 0 or done == t.steps or is_best:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                periodic = done % t.checkpoint_every == 0 or done == t.steps
                final = save_checkpoint(
                    out,
                    done,
                    policy,
                    optimizer,
                    scheduler,
                    ema,
                    best_val,
                    t.keep_last,
                    periodic=periodic,
                    best=is_best,
                )
                if periodic and t.eval_episodes > 0:
                    logger.log(periodic_eval(final, done, t.eval_episodes, out), force=True)
    bar.close()
    logger.close()
    accelerator.wait_for_everyone()
    return final or out / "checkpoints" / f"step_{t.steps:06d}"


def prefill_features(policy: Policy, dataset: WindowDataset, progress: bool) -> None:
    """Fill the frozen encoder's memo with every frame of the dataset's store (all episodes: validation reads
    them too)."""
    from tqdm import tqdm

    frames, count = dataset.arrays.images, dataset.store.num_frames  # numpy in RAM or Zarr arrays, per camera
    with tqdm(
        total=count * len(frames), desc="encode frames (frozen encoder)", unit="frame", disable=not progress
    ) as bar:
        for cam_frames in frames.values():
            policy.backbone.prefill_features(cam_frames, count, bar=bar)


@torch.no_grad()
def validate_loss(policy: Policy, val_set: WindowDataset, ema, t, accelerator) -> float:
    """Mean loss over the first ``val_batches`` validation batches, with EMA weights, fixed noise."""
    losses = []
    n = len(val_set)
    with ema_weights(policy, ema):
        policy.eval()
        for b in range(min(t.val_batches, max(1, n // t.batch_size))):
            indices = np.arange(b * t.batch_size, min((b + 1) * t.batch_size, n))
            noise = policy.draw_noise(len(indices), torch.Generator().manual_seed(10_000 + b))
            with accelerator.autocast():
                losses.append(float(policy.compute_loss(collate(val_set, indices), noise)["loss"]))
    policy.train()
    return round(float(np.mean(losses)), 6)


def periodic_eval(checkpoint: Path, step: int, episodes: int, out: Path) -> dict[str, Any]:
    """Success rate of a checkpoint in the env its dataset names (vla eval, no videos)."""
    from vla.eval import EvalConfig, evaluate

    report = evaluate(
        EvalConfig(
            checkpoint=str(checkpoint),
            episodes=episodes,
            videos=0,
            out=str(out / "eval" / f"step_{step:06d}"),
        ),
        progress=False,
    )
    return {"step": step, **{f"success/{task}": r["success_rate"] for task, r in report["tasks"].items()}}


__all__ = ["TrainError", "train"]
