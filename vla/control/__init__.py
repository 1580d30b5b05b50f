"""Chunk execution shared by evaluation and the robot loop: how predicted action chunks become one action per
control step. One copy, in the robot-side package `vla_client` (it has no torch), used here as it is."""

from vla_client.chunking import (
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
