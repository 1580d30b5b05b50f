"""Training: `train(TrainConfig)` on accelerate, EMA, atomic checkpoints, exact resume, logging."""

from .config import TrainConfig, TrainerConfig
from .errors import TrainError
from .loop import train

__all__ = ["TrainConfig", "TrainError", "TrainerConfig", "train"]
