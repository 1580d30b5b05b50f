"""Training: `train(TrainConfig)` on accelerate, EMA, atomic checkpoints, exact resume, logging."""

from .config import TrainConfig, TrainerConfig
from .loop import TrainError, train

__all__ = ["TrainConfig", "TrainError", "TrainerConfig", "train"]
