"""Data order of a training run: which samples each iteration (and each process of a torchrun job) reads.

Orders are drawn from ``(seed, epoch)`` alone, so a resumed run and a run with another number of DataLoader
workers read the same samples in the same order; a sampler yields ``(epoch, index)`` pairs so that workers use
the right augmentation draws however they were started.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ava_pipeline.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ava_pipeline.training.distributed import Distributed


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for epoch ``epoch`` of a run seeded ``seed`` (independent streams per epoch)."""
    return int(np.random.SeedSequence([seed, epoch, 0x5A3D]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` for the samples of one epoch: a permutation drawn from ``(seed, epoch)`` with
    ``shuffle``, else ``0..size-1``. The epoch travels with each index, so DataLoader workers use the right
    augmentation draws however they were started."""

    def __init__(self, size: int, *, seed: int, shuffle: bool):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        return iter([(self.epoch, index) for index in self.order()])

    def __len__(self) -> int:
        return self.size


def per_process_batch(batch_size: int, job: Optional[Distributed]) -> int:
    """Clips per process and iteration for the global ``batch_size``; raises ``ConfigError`` when the number of
    processes does not divide it (PySlowFast asserts the same)."""
    if job is None:
        return batch_size
    if batch_size % job.world_size:
        raise ConfigError(f"TRAIN.BATCH_SIZE {batch_size} (--batch-size) is the global batch and must be divisible "
                          f"by the {job.world_size} processes of the job; choose a multiple of {job.world_size}")
    return batch_size // job.world_size


class ShardedEpochSampler(EpochSampler):
    """This process's share of each iteration's global batch: ``(epoch, index)`` for positions
    ``i * B + rank * b .. i * B + (rank + 1) * b - 1`` of the epoch's order (``B`` global batch, ``b = B / W``),
    for the ``floor(size / B)`` iterations of the epoch (drop_last)."""

    def __init__(self, size: int, *, seed: int, shuffle: bool, batch_size: int, job: Distributed):
        super().__init__(size, seed=seed, shuffle=shuffle)
        self.batch_size, self.per_process, self.rank = batch_size, per_process_batch(batch_size, job), job.rank

    def __iter__(self):
        order = self.order()
        shard = []
        for start in range(0, (self.size // self.batch_size) * self.batch_size, self.batch_size):
            first = start + self.rank * self.per_process
            shard += order[first:first + self.per_process]
        return iter([(self.epoch, index) for index in shard])

    def __len__(self) -> int:
        return (self.size // self.batch_size) * self.per_process
