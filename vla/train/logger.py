"""Training metrics: metrics.jsonl always; tensorboard scalars by default; wandb when installed and asked
for."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import TrainConfig


class MetricsLogger:
    """One row per step to metrics.jsonl; scalars to tensorboard or wandb on ``force``d rows."""

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
