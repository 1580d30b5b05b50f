"""Shared fixtures: small real Zarr datasets whose values encode (episode, frame), so tests check exact
content."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from vla.data import ActionSpace, DatasetMeta, TrajectoryWriter

CAMERAS = ["front", "wrist"]
IMAGE_SIZE = (12, 16)
STATE_DIM = 3
ACTION_DIM = 2


def make_meta(**overrides) -> DatasetMeta:
    kwargs = dict(
        fps=10,
        cameras=list(CAMERAS),
        image_size=IMAGE_SIZE,
        state_dim=STATE_DIM,
        action_space=ActionSpace(
            dim=ACTION_DIM, low=[-1000.0] * ACTION_DIM, high=[1e6] * ACTION_DIM, kind="delta_ee"
        ),
        robot="panda",
        env="builtin/test",
    )
    kwargs.update(overrides)
    return DatasetMeta(**kwargs)


def make_episode(episode: int, length: int, start: int, meta: DatasetMeta | None = None) -> dict:
    """Frame t (global index g = start + t): state = [g, episode, t], action = [g, -t], image pixels = g %
    256."""
    meta = meta or make_meta()
    g = np.arange(start, start + length)
    t = np.arange(length)
    images = {}
    for ci, cam in enumerate(meta.cameras):
        h, w = meta.image_sizes[cam]
        frames = np.zeros((length, h, w, 3), dtype=np.uint8)
        frames[..., 0] = (g % 256)[:, None, None]
        frames[..., 1] = ci
        frames[..., 2] = np.arange(w, dtype=np.uint8)[None, None, :]  # not blank
        images[cam] = frames
    state = np.stack([g, np.full(length, episode), t], axis=1).astype(np.float32)[:, : meta.state_dim]
    action = np.stack([g, -t], axis=1).astype(np.float32)[:, : meta.action_dim]
    return dict(
        images=images,
        state=state,
        action=action,
        instruction=f"instruction {episode}",
        task=f"task{episode % 2}",
        success=episode % 3 != 0,
    )


def write_dataset(
    url, lengths=(5, 3, 7, 1, 4), meta: DatasetMeta | None = None, **writer_kwargs
) -> DatasetMeta:
    meta = meta or make_meta()
    with TrajectoryWriter(url, meta, **writer_kwargs) as w:
        start = w.num_frames
        for n in lengths:
            w.add_episode(**make_episode(w.num_episodes, n, start, meta))
            start += n
    return meta


def wake(policy, seed: int = 0, std: float = 0.5):
    """Give the policy's own zero-initialized weights (AdaLN-Zero gates, FiLM, camera embeddings) random
    values, in place; the encoders' weights (their biases start at zero too) are left alone.

    Freshly built, every head block is the identity and an untrained policy's actions ignore its images and
    instruction: a test on such a policy cannot see a broken prefix cache, a skipped weight load, a batch
    mate's padding or two swapped cameras. Woken, the actions depend on every input
    (``test_woken_policy_depends_on_every_input_and_only_its_own``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            encoder = name.startswith(("backbone.vision.", "backbone.text.", "backbone.model."))
            if not encoder and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return policy


def make_random_checkpoint(
    path, head: str = "dual_stream", seed: int = 0, env: str = "builtin/push", cameras=("top",), image_size=64
) -> str:
    """A tiny, untrained but woken (`wake`) policy for ``env`` (default builtin/push: its `top` camera at
    64 px, state 4, action 2), saved at ``path``."""
    import torch

    import envs
    from vla.data import Normalizer
    from vla.models import HeadConfig, Policy, PolicyConfig, save_policy

    made = envs.make(env, cameras=list(cameras), image_size=image_size)
    meta = made.unwrapped.meta
    made.close()
    torch.manual_seed(seed)
    dims = {"state": meta.state_dim, "action": meta.action_dim}
    policy = Policy(PolicyConfig(head=HeadConfig(kind=head)), meta, Normalizer.identity(dims))
    save_policy(wake(policy, seed).eval(), path)
    return str(path)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """Path of a tiny random dual-stream checkpoint for builtin/push (shared by the eval and serve tests)."""
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture
def server(random_checkpoint):
    """`vla serve` of the random checkpoint in its own process, killed after the test (which may kill it
    first). Test modules that need other server options define their own ``server``."""
    from vla.serve import ServerProcess

    srv = ServerProcess(random_checkpoint)
    yield srv
    if srv.alive():
        srv.kill()


@pytest.fixture
def dataset(tmp_path):
    """Path of a 5-episode dataset with lengths 5, 3, 7, 1, 4 (20 frames)."""
    path = tmp_path / "demo.zarr"
    write_dataset(path)
    return path
