"""Data order of :func:`medgen.train.fit`: a pure function of ``(seed, step)``, for exact resume.

Global batch ``s`` holds samples ``s*B .. s*B+B-1`` of the stream of per-epoch permutations
(epoch ``e`` permuted by a generator seeded with ``(seed, e)``, :func:`step_indices`). Each
rank loads its slice ``[r*B/W, (r+1)*B/W)`` of the global batch (:class:`StepBatchSampler`),
as a list of dataset indices that carries ``augment_key = (step, rank)`` (:class:`StepIndices`).
"""
from __future__ import annotations

import functools
from typing import Iterator

import torch
from torch.utils.data import Sampler

from medgen.utils import derive_seed


@functools.lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return tuple(torch.randperm(n, generator=gen).tolist())


def step_indices(n: int, seed: int, step: int, batch_size: int) -> list[int]:
    """Dataset indices of global batch ``step``: items ``step*B ..`` of the per-epoch permutation stream."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        out.append(_epoch_permutation(n, seed, epoch)[pos])
    return out


class StepIndices(list):
    """A batch of dataset indices that also carries ``augment_key = (step, rank)``: datasets with
    augmentation reseed it from this key, so augmented batches are a function of the step and a
    resumed run draws exactly what the uninterrupted one drew."""

    augment_key: tuple[int, int] = (0, 0)


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of global batches ``start .. stop-1`` (see :func:`step_indices`),
    as :class:`StepIndices` keyed by ``(step, rank)``."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world_size
        for step in range(self.start, self.stop):
            idx = step_indices(self.n, self.seed, step, self.batch_size)
            batch = StepIndices(idx[self.rank * per_rank:(self.rank + 1) * per_rank])
            batch.augment_key = (step, self.rank)
            yield batch
