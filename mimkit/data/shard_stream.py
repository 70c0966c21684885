"""Reading the shards format (:mod:`mimkit.data.shards`) with mosaicml-streaming's partitioning.

Streaming decides which samples each process and DataLoader worker reads (each node fetches only the shards of its
part) in an order that does not depend on the number of processes or workers, given a fixed number of canonical
nodes. mimkit keeps its own rules on top: each sample's augmentation is seeded by (seed, epoch, sample index)
through :class:`~mimkit.data.dataset.AugmentedDataset`, and the training loop sets the position (epoch, step) before
every pass, as it does with :class:`~mimkit.data.sampler.StepSampler`, so a mid-epoch resume needs no extra state.
Importing this module needs mosaicml-streaming (see :func:`mimkit.data.shards.require_streaming`).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from streaming import StreamingDataset

from mimkit.config_paths import is_url
from mimkit.data.dataset import AugmentedDataset
from mimkit.data.decode import open_image
from mimkit.data.sources import ImageSource
from mimkit.errors import DataError


class ShardImages(ImageSource):
    """Random access to the images of a shards dataset (for the reconstruction pictures and for replacing an
    unreadable image by the next one). Labels stay in the shards: pretraining does not read them."""

    def __init__(self, stream: StreamingDataset, where: str) -> None:
        self.stream = stream
        self.where = where

    def __len__(self) -> int:
        return self.stream.size

    def load(self, index: int) -> Image.Image:
        return open_image(io.BytesIO(self.stream.get_item(index)["image"]))

    def name_of(self, index: int) -> str:
        return f"{self.where}:{self.stream.get_item(index)['name']}"


class ShardStream(StreamingDataset):
    """This process's and DataLoader worker's part of each epoch, as :class:`AugmentedDataset` items once
    :meth:`read_in_steps` has set the batch; ``samples_per_epoch`` None means the number of images."""

    def __init__(
        self, path: str, cache: str | None, seed: int, samples_per_epoch: int | None, canonical_nodes: int
    ) -> None:
        remote, local = (path, cache) if is_url(path) else (None, path)
        if remote is None and not (Path(path) / "index.json").is_file():
            raise DataError(f"{path} holds no shards (no index.json); write them with mimkit shards FOLDER {path}")
        super().__init__(
            remote=remote,
            local=local,
            shuffle=True,
            shuffle_seed=seed,
            num_canonical_nodes=canonical_nodes,
            epoch_size=samples_per_epoch,
        )
        self.images = ShardImages(self, path)
        self.augmented: AugmentedDataset | None = None
        self.global_batch = 0

    def read_in_steps(self, augmented: AugmentedDataset, batch_size: int, world_size: int) -> ShardStream:
        """Iterate ``augmented``'s items (an :class:`AugmentedDataset` of :attr:`images`) in micro-batches of
        ``batch_size`` per process, ``world_size`` processes (streaming reads the same from torchrun's environment)."""
        self.augmented = augmented
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        return self

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Begin the next iteration at micro-step ``start_step`` of ``epoch`` (as
        :meth:`~mimkit.data.sampler.StepSampler.set_position`): streaming skips the samples of the earlier steps."""
        self.next_epoch = epoch
        self.load_state_dict(
            {
                "epoch": epoch,
                "sample_in_epoch": start_step * self.global_batch,
                "num_canonical_nodes": self.num_canonical_nodes,
                "shuffle_seed": self.shuffle_seed,
                "initial_physical_nodes": None,
            }
        )

    def __getitem__(self, sample_id: int) -> dict:
        """The augmented item of ``sample_id`` in the epoch being iterated (streaming counts ``next_epoch`` up, in
        memory shared by the workers, when an iteration starts)."""
        return self.augmented[(self.next_epoch - 1, int(sample_id))]
