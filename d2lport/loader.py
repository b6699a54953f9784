"""Framework-neutral batching over in-memory Fashion-MNIST arrays.

Each backend wraps :class:`ArrayBatches` and only converts a whole uint8 batch to its own
tensor type (scale, add the channel axis, resize on the batch): no Python work per image.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import numpy as np

from . import data


class ArrayBatches:
    """Mini-batches of ``(images uint8 (B, 28, 28), labels int64 (B,))``.

    With ``shuffle`` the sample order is a fresh permutation every epoch, drawn from
    ``(seed, epoch)``: reproducible, and the same order in every framework.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
                 shuffle: bool, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.epoch = 0
        self.skip = 0          # batches the next epoch starts after (a resumed run)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.labels))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))

    def resume_at(self, epoch: int, batch: int = 0) -> None:
        """The next iteration is epoch ``epoch`` (0-based) from batch ``batch`` on: the
        order is seeded, so a position in it is two numbers."""
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"cannot resume at epoch {epoch}, batch {batch} of {len(self)}")
        self.epoch, self.skip = int(epoch), int(batch)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        order = self.order(self.epoch)
        self.epoch += 1
        first, self.skip = self.skip * self.batch_size, 0
        for start in range(first, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.images[idx], self.labels[idx]


class BatchLoader:
    """Base of the backends' Fashion-MNIST loaders: iterates :class:`ArrayBatches` and
    converts each whole batch with ``convert(images, labels)`` (the framework's part)."""

    def __init__(self, batches: ArrayBatches, resize=None):
        self.batches, self.resize = batches, resize

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_examples(self) -> int:
        return self.batches.num_examples

    def convert(self, images: np.ndarray, labels: np.ndarray):
        raise NotImplementedError

    def resume_at(self, epoch: int, batch: int = 0) -> None:
        """See :meth:`ArrayBatches.resume_at` (``train(..., resume=True)`` calls it)."""
        self.batches.resume_at(epoch, batch)

    def __iter__(self):
        for images, labels in self.batches:
            yield self.convert(images, labels)


def fashion_mnist_splits(limit: Optional[int] = None, seed: int = 0, root=None):
    """(train_images, train_labels, test_images, test_labels); ``limit`` keeps a seeded
    subset of at most ``limit`` examples of each split (the same subset in every framework)."""
    splits = []
    for split in ("train", "test"):
        images, labels = data.load_arrays(split, root=root)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be a positive number of examples, got {limit}")
            idx = data.subset_indices(len(labels), limit, seed)
            images, labels = images[idx], labels[idx]
        splits += [images, labels]
    return tuple(splits)


def check_resize(resize) -> Optional[Tuple[int, int]]:
    if resize is None:
        return None
    size = (resize, resize) if isinstance(resize, int) else tuple(resize)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"resize must be a positive int or (height, width), got {resize!r}")
    return size
