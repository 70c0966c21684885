"""Sampling by optimizer step, so that any number of processes and a mid-epoch resume see the same data.

Each epoch is one seeded permutation of the dataset (repeated if the dataset is smaller than a batch).
Step ``s`` of an epoch uses the contiguous slice ``[s*G, (s+1)*G)`` of it (G = global batch), and process
``r`` of ``W`` takes the ``r``-th of W equal parts of that slice. One process with batch G therefore
sees exactly the union, in order, of what W processes with batch G/W see.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys for one process, starting at ``start_step`` of ``epoch``."""

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        steps_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = steps_per_epoch
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_step = 0

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Begin the next iteration at ``start_step`` of ``epoch`` (a step of this epoch: one past its end would
        give an empty iteration)."""
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start step {start_step} is outside the epoch's steps 0..{self.steps_per_epoch - 1}")
        self.epoch = epoch
        self.start_step = start_step

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        needed = self.steps_per_epoch * self.global_batch
        repeats = -(-needed // self.dataset_size)
        order = torch.cat([torch.randperm(self.dataset_size, generator=generator) for _ in range(repeats)])
        return order[:needed]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            begin = step * self.global_batch + self.rank * self.local_batch
            for index in order[begin : begin + self.local_batch].tolist():
                yield (self.epoch, index)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch
