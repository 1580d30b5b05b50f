"""Chunk execution shared by evaluation and the robot loop: how predicted action chunks become
one action per control step."""

from .chunking import (
    ChunkExecutor,
    RealTimeChunking,
    RecedingHorizon,
    TemporalEnsemble,
    make_executor,
    request_seed,
    rtc_guide,
)

__all__ = [
    "ChunkExecutor",
    "RealTimeChunking",
    "RecedingHorizon",
    "TemporalEnsemble",
    "make_executor",
    "request_seed",
    "rtc_guide",
]
