"""`vla train`: a Zarr dataset + a config -> a run directory with checkpoints.

accelerate runs the same loop on CPU, one GPU, or DDP across processes (``torchrun`` /
``accelerate launch --multi_gpu``). Reproducibility: the batches of a step come from a seeded
per-epoch permutation (the global batch, each process taking its slice) and every random draw of
the loss from a generator seeded with (seed, step), so a resumed run repeats the uninterrupted one
and an N-process run matches the single-process run with the same global batch.

Run directory::

    config.yaml  metrics.jsonl  tb/  checkpoints/step_000500/{config.yaml, model.safetensors,
    norm_stats.json, meta.json, trainer_state.pt}  checkpoints/best/
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, default_collate

from vla.data import Normalizer, TrajectoryStore, WindowConfig, WindowDataset, ensure_stats, split_episodes
from vla.models import Policy

from .config import TrainConfig

STATE_FILE = "trainer_state.pt"


class TrainError(ValueError):
    """A config, dataset or run directory that cannot be trained on; raised before any compute."""


# -- setup ---------------------------------------------------------------------------------------
def run_dir(cfg: TrainConfig) -> Path:
    name = cfg.name or f"{cfg.policy.name}-{cfg.policy.head.kind}"
    return Path(cfg.out) if cfg.out else Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def check_setup(cfg: TrainConfig, out: Path) -> TrajectoryStore:
    """Every error a run can hit before its first step, with what was expected."""
    if not cfg.data.path:
        raise TrainError("data.path is not set: name a dataset, e.g. data.path=data/push.zarr")
    store = TrajectoryStore(cfg.data.path)  # FileNotFoundError names the path
    if store.num_episodes < 2 and cfg.data.val_fraction > 0:
        raise TrainError(f"{cfg.data.path} has {store.num_episodes} episode(s); a validation split needs >= 2 "
                         "(or data.val_fraction=0)")
    if cfg.data.horizon not in (cfg.policy.horizon, WindowConfig.horizon):
        raise TrainError(f"data.horizon={cfg.data.horizon} but the policy predicts chunks of {cfg.policy.horizon}; "
                         "leave data.horizon alone (it follows policy.horizon)")
    if cfg.data.cameras is not None:
        unknown = set(cfg.data.cameras) - set(store.meta.cameras)
        if unknown:
            raise TrainError(f"data.cameras {sorted(unknown)} are not in {cfg.data.path} (it has {store.meta.cameras})")
    t = cfg.trainer
    if t.batch_size < 1 or t.steps < 1 or t.grad_accum < 1:
        raise TrainError(f"trainer.steps, batch_size and grad_accum must be >= 1 (got {t.steps}, {t.batch_size}, {t.grad_accum})")
    if t.mixed_precision not in ("no", "bf16", "fp16"):
        raise TrainError(f"trainer.mixed_precision must be no, bf16 or fp16, got {t.mixed_precision!r}")
    if t.task_weights:
        if not t.balance_tasks:
            raise TrainError("trainer.task_weights sets each task's share of a batch: it needs trainer.balance_tasks=true")
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
        raise TrainError(f"trainer.eval_episodes={t.eval_episodes} but {cfg.data.path} names no env to evaluate in")
    if t.cache_features not in (True, False, "auto"):
        raise TrainError(f"trainer.cache_features must be true, false or auto, got {t.cache_features!r}")
    if t.cache_features is True and (cfg.policy.backbone.kind != "composite" or cfg.policy.backbone.finetune != "frozen"
                                     or cfg.data.augment.enabled):
        raise TrainError("trainer.cache_features=true needs a composite backbone with finetune=frozen and "
                         "data.augment.enabled=false (otherwise features change between epochs)")
    if cfg.resume not in (True, False, "auto"):
        raise TrainError(f"resume must be true, false or auto, got {cfg.resume!r}")
    existing = latest_checkpoint(out)
    if cfg.resume is True and existing is None:
        raise TrainError(f"resume=true but {out} has no checkpoint with {STATE_FILE}")
    if cfg.resume is False and existing is not None:
        raise TrainError(f"{out} already holds checkpoints ({existing.name}); pass resume=true to continue it, "
                         "or choose another out=")
    return store


def make_datasets(cfg: TrainConfig, store: TrajectoryStore) -> tuple[WindowDataset, WindowDataset | None]:
    window = WindowConfig(
        n_obs_steps=cfg.data.n_obs_steps, horizon=cfg.policy.horizon,
        future_offset=cfg.policy.horizon if cfg.policy.head.kind == "dual_stream" else cfg.data.future_offset,
        cameras=cfg.data.cameras, in_memory=cfg.data.in_memory, max_memory_gb=cfg.data.max_memory_gb,
        augment=cfg.data.augment)
    train_eps, val_eps = split_episodes(store.num_episodes, cfg.data.val_fraction, cfg.data.split_seed)
    train = WindowDataset(store, window, train_eps)
    val = None
    if len(val_eps):
        val_window = WindowConfig(**{**window.__dict__, "augment": type(window.augment)()})
        val = WindowDataset(store, val_window, val_eps, arrays=train.arrays)
    return train, val


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / STATE_FILE).exists())
    return found[-1] if found else None


# -- batches -------------------------------------------------------------------------------------
def global_batch_indices(n: int, batch: int, seed: int, epoch: int, index: int,
                         weights: np.ndarray | None = None) -> np.ndarray:
    """Indices of global batch ``index`` of ``epoch``: a seeded permutation (the last partial batch is
    dropped), or with ``weights`` (per-window probabilities) a seeded draw with replacement."""
    if weights is not None:
        return np.random.default_rng([seed, epoch, index]).choice(n, batch, replace=True, p=weights)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[index * batch : (index + 1) * batch]


def task_balanced_weights(tasks: np.ndarray, shares: dict[str, float] | None = None) -> np.ndarray:
    """Per-window sampling probabilities that give every task the same share of the draws, or with ``shares``
    (task name -> relative weight, 1 for tasks it does not name) a share proportional to its weight."""
    names, inverse, counts = np.unique(tasks, return_inverse=True, return_counts=True)
    shares = dict(shares or {})
    unknown = sorted(set(shares) - set(names))
    if unknown:
        raise TrainError(f"trainer.task_weights names {unknown}, which are not tasks of this dataset; its tasks: "
                         f"{names.tolist()}")
    if any(w <= 0 for w in shares.values()):
        raise TrainError(f"trainer.task_weights must be positive, got {shares}")
    weight = np.array([shares.get(name, 1.0) for name in names])
    return (weight / weight.sum())[inverse] / counts[inverse]


def batches_per_epoch(n: int, batch: int) -> int:
    if n < batch:
        raise TrainError(f"the training split has {n} windows, fewer than one global batch of {batch}")
    return n // batch


def collate(dataset: WindowDataset, indices: np.ndarray) -> dict[str, Any]:
    return default_collate([dataset[int(i)] for i in indices])


class StepBatches:
    """This process's slice of every global (micro-)batch from ``start`` on: a DataLoader batch sampler,
    so DataLoader workers prefetch while the order stays a pure function of (seed, step)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int, world: int,
                 weights: np.ndarray | None = None):
        self.n, self.batch, self.seed, self.start, self.stop, self.weights = n, batch, seed, start, stop, weights
        self.per_epoch, self.local, self.rank = batches_per_epoch(n, batch), batch // world, rank

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for global_index in range(self.start, self.stop):
            epoch, index = divmod(global_index, self.per_epoch)
            indices = global_batch_indices(self.n, self.batch, self.seed, epoch, index, self.weights)
            yield indices[self.rank * self.local : (self.rank + 1) * self.local].tolist()


# -- the loop ------------------------------------------------------------------------------------
def param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 lr_scale: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: biases and norm scales get no decay; ``lr_scale`` multiplies the rate of the parameters
    whose names start with a key (the first matching key wins)."""
    lr_scale = dict(lr_scale or {})
    unmatched = [p for p in lr_scale if not any(n.startswith(p) for n, q in model.named_parameters() if q.requires_grad)]
    if unmatched:
        raise TrainError(f"trainer.lr_scale names {unmatched}, which match no trainable parameter; names start with "
                         f"{sorted({n.split('.')[0] for n, _ in model.named_parameters()})} (e.g. backbone.conv_stem)")
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = next((v for p, v in lr_scale.items() if name.startswith(p)), 1.0)
            groups.setdefault((scale, param.ndim >= 2), []).append(param)
    return [{"params": params, "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0}
            for (scale, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))]


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
    accelerator = Accelerator(cpu=t.cpu or not torch.cuda.is_available(), mixed_precision=t.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world, rank = accelerator.num_processes, accelerator.process_index
    if t.batch_size % world:
        raise TrainError(f"trainer.batch_size={t.batch_size} must divide evenly over {world} processes")
    local = t.batch_size // world
    train_set, val_set = make_datasets(cfg, store)
    batches_per_epoch(len(train_set), t.batch_size)  # fails early when the split is smaller than one batch

    if accelerator.is_main_process:
        ensure_stats(store.url)  # computed once, stored in the dataset
    accelerator.wait_for_everyone()
    normalizer = Normalizer.from_stats(TrajectoryStore(store.url).stats(), cfg.policy.normalization)
    torch.manual_seed(t.seed)  # identical initial weights on every process
    meta = store.meta
    if cfg.data.cameras is not None:
        meta = type(meta)(**{**meta.__dict__, "cameras": list(cfg.data.cameras)})
    policy = Policy(cfg.policy, meta, normalizer)
    cached = t.cache_features is True or (t.cache_features == "auto" and cfg.policy.backbone.kind == "composite"
                                          and cfg.policy.backbone.finetune == "frozen" and not cfg.data.augment.enabled)
    if cached:
        policy.backbone.cache_features(store.num_frames * len(meta.cameras))
    # fused: one kernel over all parameters instead of a Python loop per parameter (which showed in a small-preset
    # step's CPU profile); the EMA likewise
    optimizer = torch.optim.AdamW(param_groups(policy, t.weight_decay, t.lr, t.lr_scale), lr=t.lr, betas=tuple(t.betas),
                                  fused=True)
    scheduler = get_cosine_schedule_with_warmup(optimizer, t.warmup_steps, t.steps)
    ema = (EMAModel([p for p in policy.parameters() if p.requires_grad], decay=t.ema_decay, foreach=True)
           if t.ema_decay > 0 else None)

    start_step, best_val = 0, math.inf
    resume_from = latest_checkpoint(out)
    resume = cfg.resume is True or (cfg.resume == "auto" and resume_from is not None)
    if resume:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
        policy.load_weights(state["model"], resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_step, best_val = state["step"], state["best_val"]
        torch.set_rng_state(state["torch_rng"])
    elif rank == 0:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if cached and (t.steps - start_step) * t.batch_size >= store.num_frames:
        # the run will draw about every frame anyway: encode them all up front, in the encoder's fast batch size
        prefill_features(policy, train_set, progress and accelerator.is_main_process)
    # The scheduler stays ours: accelerate would step it once per process (it assumes per-process batches).
    model, optimizer = accelerator.prepare(policy, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    logger = _Logger(out, t.logger, enabled=accelerator.is_main_process, cfg=cfg)
    bar = tqdm(total=t.steps, initial=start_step, desc=f"train {out.name}", unit="step",
               disable=not (progress and accelerator.is_main_process))
    started, samples = time.perf_counter(), 0
    final = None
    weights = task_balanced_weights(train_set.window_tasks(), t.task_weights) if t.balance_tasks else None
    sampler = StepBatches(len(train_set), t.batch_size, t.seed, start_step * t.grad_accum, t.steps * t.grad_accum, rank, world,
                          weights)
    loader = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers))
    for step in range(start_step, t.steps):
        model.train()
        parts: dict[str, float] = {}
        for micro in range(t.grad_accum):
            global_index = step * t.grad_accum + micro
            batch = next(loader)
            noise = policy.draw_noise(t.batch_size, torch.Generator().manual_seed(t.seed * 1_000_003 + global_index))
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
        row = {"step": done, **{k: round(v, 6) for k, v in parts.items()}, "lr": scheduler.get_last_lr()[0],
               "processes": world,
               "samples_per_s": round(samples / (time.perf_counter() - started), 1)}
        if val_set is not None and (done % t.val_every == 0 or done == t.steps):
            row["val_loss"] = validate_loss(policy, val_set, ema, t, accelerator)
        logger.log(row, force=done % t.log_every == 0 or "val_loss" in row or done == t.steps)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()} | {"lr": f"{row['lr']:.1e}",
                                                                        "sps": row["samples_per_s"]})
        is_best = row.get("val_loss", math.inf) < best_val
        if is_best:
            best_val = row["val_loss"]
        if done % t.checkpoint_every == 0 or done == t.steps or is_best:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                periodic = done % t.checkpoint_every == 0 or done == t.steps
                final = save_checkpoint(out, done, policy, optimizer, scheduler, ema, best_val, t.keep_last,
                                        periodic=periodic, best=is_best)
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
    with tqdm(total=count * len(frames), desc="encode frames (frozen encoder)", unit="frame",
              disable=not progress) as bar:
        for cam_frames in frames.values():
            policy.backbone.prefill_features(cam_frames, count, bar=bar)


@torch.no_grad()
def validate_loss(policy: Policy, val_set: WindowDataset, ema, t, accelerator) -> float:
    """Mean loss over the first ``val_batches`` validation batches, with EMA weights, fixed noise."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    policy.eval()
    losses = []
    n = len(val_set)
    for b in range(min(t.val_batches, max(1, n // t.batch_size))):
        indices = np.arange(b * t.batch_size, min((b + 1) * t.batch_size, n))
        noise = policy.draw_noise(len(indices), torch.Generator().manual_seed(10_000 + b))
        with accelerator.autocast():
            losses.append(float(policy.compute_loss(collate(val_set, indices), noise)["loss"]))
    if ema is not None:
        ema.restore(params)
    policy.train()
    return round(float(np.mean(losses)), 6)


def periodic_eval(checkpoint: Path, step: int, episodes: int, out: Path) -> dict[str, Any]:
    """Success rate of a checkpoint in the env its dataset names (vla eval, no videos)."""
    from vla.eval import EvalConfig, evaluate

    report = evaluate(EvalConfig(checkpoint=str(checkpoint), episodes=episodes, videos=0,
                                 out=str(out / "eval" / f"step_{step:06d}")), progress=False)
    return {"step": step, **{f"success/{task}": r["success_rate"] for task, r in report["tasks"].items()}}


def save_checkpoint(out: Path, step: int, policy: Policy, optimizer, scheduler, ema, best_val: float,
                    keep_last: int, periodic: bool, best: bool) -> Path:
    """A policy checkpoint (EMA weights) + trainer state, written atomically; prune to keep_last."""
    ckpt_dir = out / "checkpoints"
    params = [p for p in policy.parameters() if p.requires_grad]
    raw_model = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    path = ckpt_dir / f"step_{step:06d}"
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    if best:
        policy.save(ckpt_dir / "best")
    if periodic:
        policy.save(path)
    if ema is not None:
        ema.restore(params)
    if not periodic:
        return ckpt_dir / "best"
    state = {"step": step, "model": raw_model, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "ema": ema.state_dict() if ema is not None else None, "best_val": best_val, "torch_rng": torch.get_rng_state()}
    tmp = path / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / STATE_FILE)  # a step directory counts for resume only once this exists
    steps = sorted(ckpt_dir.glob("step_*"), key=lambda p: int(re.sub(r"\D", "", p.name)))
    for old in steps[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


class _Logger:
    """metrics.jsonl always; tensorboard scalars by default; wandb when installed and asked for."""

    def __init__(self, out: Path, kind: str, enabled: bool, cfg: TrainConfig):
        self.enabled, self.kind, self.writer = enabled, kind, None
        if not enabled:
            return
        self.file = (out / "metrics.jsonl").open("a")
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))
        elif kind == "wandb":
            import wandb

            self.writer = wandb.init(project="vla", name=out.name, config=asdict(cfg), dir=str(out))

    def log(self, row: dict[str, Any], force: bool) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if not force:
            return
        if self.kind == "tensorboard":
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(k, v, row["step"])
        elif self.kind == "wandb":
            self.writer.log(row, step=row["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.kind == "tensorboard":
                self.writer.close()
            elif self.kind == "wandb":
                self.writer.finish()


__all__ = ["TrainError", "train"]
