"""Evaluation: rollouts of a checkpoint or the scripted expert, reports, videos, plots."""

from .evaluate import EvalConfig, evaluate
from .metrics import wilson

__all__ = ["EvalConfig", "evaluate", "wilson"]
