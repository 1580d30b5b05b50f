"""Which windows make each step's batch: a pure function of (seed, step), split over processes."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import default_collate

from vla.data import WindowDataset

from .errors import TrainError


def global_batch_indices(
    n: int, batch: int, seed: int, epoch: int, index: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Indices of global batch ``index`` of ``epoch``: a seeded permutation (the last partial batch is
    dropped), or with ``weights`` (per-window probabilities) a seeded draw with replacement."""
    if weights is not None:
        return np.random.default_rng([seed, epoch, index]).choice(n, batch, replace=True, p=weights)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[index * batch : (index + 1) * batch]


def task_balanced_weights(tasks: np.ndarray, shares: dict[str, float] | None = None) -> np.ndarray:
    """Per-window sampling probabilities that give every task the same share of the draws, or with ``shares``
    (task name -> relative weight, 1 for tasks it does not name) a share proportional to its weight."""
    names, inverse, counts = np.unique(tasks, return_inverse=True, return_counts=True)
    shares = dict(shares or {})
    unknown = sorted(set(shares) - set(names))
    if unknown:
        raise TrainError(
            f"trainer.task_weights names {unknown}, which are not tasks of this dataset; its tasks: "
            f"{names.tolist()}"
        )
    if any(w <= 0 for w in shares.values()):
        raise TrainError(f"trainer.task_weights must be positive, got {shares}")
    weight = np.array([shares.get(name, 1.0) for name in names])
    return (weight / weight.sum())[inverse] / counts[inverse]


def batches_per_epoch(n: int, batch: int) -> int:
    if n < batch:
        raise TrainError(f"the training split has {n} windows, fewer than one global batch of {batch}")
    return n // batch


def collate(dataset: WindowDataset, indices: np.ndarray) -> dict[str, Any]:
    return default_collate([dataset[int(i)] for i in indices])


class StepBatches:
    """This process's slice of every global (micro-)batch from ``start`` on: a DataLoader batch sampler,
    so DataLoader workers prefetch while the order stays a pure function of (seed, step)."""

    def __init__(
        self,
        n: int,
        batch: int,
        seed: int,
        start: int,
        stop: int,
        rank: int,
        world: int,
        weights: np.ndarray | None = None,
    ):
        self.n, self.batch, self.seed, self.start, self.stop, self.weights = (
            n,
            batch,
            seed,
            start,
            stop,
            weights,
        )
        self.per_epoch, self.local, self.rank = batches_per_epoch(n, batch), batch // world, rank

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for global_index in range(self.start, self.stop):
            epoch, index = divmod(global_index, self.per_epoch)
            indices = global_batch_indices(self.n, self.batch, self.seed, epoch, index, self.weights)
            yield indices[self.rank * self.local : (self.rank + 1) * self.local].tolist()
