"""Checkpoints of a run: the EMA weights as a policy checkpoint, plus the trainer state that exact resume
needs, written atomically and pruned to ``keep_last``; ``checkpoints/best/`` holds the best validation
loss's."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vla.models import Policy, save_policy
from vla.models.checkpoint import load_weights

STATE_FILE = "trainer_state.pt"


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(p for p in (out / "checkpoints").glob("step_*") if (p / STATE_FILE).exists())
    return found[-1] if found else None


@contextmanager
def ema_weights(policy: Policy, ema) -> Iterator[None]:
    """The policy's trainable parameters hold the EMA weights inside the block, their own after it."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        yield
    finally:
        if ema is not None:
            ema.restore(params)


def save_checkpoint(
    out: Path,
    step: int,
    policy: Policy,
    optimizer,
    scheduler,
    ema,
    best_val: float,
    keep_last: int,
    periodic: bool,
    best: bool,
) -> Path:
    """A policy checkpoint (EMA weights) + trainer state, written atomically; prune to keep_last."""
    ckpt_dir = out / "checkpoints"
    raw_model = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    path = ckpt_dir / f"step_{step:06d}"
    with ema_weights(policy, ema):
        if best:
            save_policy(policy, ckpt_dir / "best")
        if periodic:
            save_policy(policy, path)
    if not periodic:
        return ckpt_dir / "best"
    state = {
        "step": step,
        "model": raw_model,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "best_val": best_val,
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path / STATE_FILE)  # a step directory counts for resume only once this exists
    steps = sorted(ckpt_dir.glob("step_*"), key=lambda p: int(re.sub(r"\D", "", p.name)))
    for old in steps[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def restore(checkpoint: Path, policy: Policy, optimizer, scheduler, ema) -> tuple[int, float]:
    """Resume from a checkpoint's trainer state (tensors only: ``weights_only``, no pickled code runs): the
    raw weights, optimizer, scheduler, EMA and torch RNG. Returns (step, best validation loss)."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    load_weights(policy, state["model"], checkpoint)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["best_val"]
