"""Vector envs (LeRobot-style): n copies of one env, in subprocesses started with spawn."""

from __future__ import annotations

import functools

import gymnasium as gym


def _make(name: str, options: dict) -> gym.Env:
    from envs.registry import make  # imported in the child: spawn starts a fresh interpreter

    return make(name, **options)


def make_vec(
    name: str, n: int, vectorization: str = "async", autoreset_mode: str = "NextStep", **options
) -> gym.vector.VectorEnv:
    """``async``: one process per env (spawn: fork + OpenGL contexts segfault; one EGL context per
    process); ``sync``: all in this process. ``reset(seed=s)`` seeds env i with s + i."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fns = [functools.partial(_make, name, dict(options)) for _ in range(n)]
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=autoreset_mode)
    if vectorization == "async":
        # shared_memory=False: the instruction is a Text space, which shared memory cannot hold.
        return gym.vector.AsyncVectorEnv(
            fns, context="spawn", shared_memory=False, autoreset_mode=autoreset_mode
        )
    raise ValueError(f"vectorization must be 'async' or 'sync', got {vectorization!r}")
