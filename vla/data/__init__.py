"""The Zarr trajectory store: schema, writer, reader, validation, stats, normalizer, training windows."""

from . import codecs
from .normalizer import Normalizer
from .schema import ActionSpace, DatasetMeta, SchemaError
from .stats import compute_stats, ensure_stats
from .store import PartialTailWarning, TrajectoryStore
from .validate import ValidationReport, validate
from .window import WindowConfig, WindowDataset, split_episodes
from .writer import EpisodeRecorder, TrajectoryWriter

codecs.register()  # camera arrays stored with a lossy image codec read back through plain zarr

__all__ = [
    "ActionSpace",
    "DatasetMeta",
    "EpisodeRecorder",
    "Normalizer",
    "PartialTailWarning",
    "SchemaError",
    "TrajectoryStore",
    "TrajectoryWriter",
    "ValidationReport",
    "WindowConfig",
    "WindowDataset",
    "compute_stats",
    "ensure_stats",
    "split_episodes",
    "validate",
]
