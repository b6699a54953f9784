"""Fashion-MNIST as a ``tf.data`` pipeline: float32 NHWC in [0, 1], resized on whole batches.

The sample order of every epoch is ``ArrayBatches.order(epoch)`` (seeded by (seed, epoch)),
the very order the PyTorch and MXNet loaders use; tf.data then gathers, converts and resizes
whole batches in parallel and prefetches, with no Python work per image.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from .. import data as _data
from ..loader import ArrayBatches, check_resize, fashion_mnist_splits

LABELS = _data.LABELS


def get_fashion_mnist_labels(labels):
    """Text labels for numeric ones (D2L's helper)."""
    return [LABELS[int(i)] for i in np.asarray(labels)]


def to_tensor(images, resize=None) -> tf.Tensor:
    """uint8 (B, 28, 28) -> float32 (B, H, W, 1); bilinear resize of the whole batch.

    ``tf.image.resize`` samples at half-pixel centres without antialiasing by default, the
    same function as PyTorch's ``interpolate(mode='bilinear', align_corners=False)``.
    """
    x = tf.cast(tf.convert_to_tensor(images), tf.float32)[..., tf.newaxis] / 255.0
    size = check_resize(resize)
    if size is not None and tuple(x.shape[1:3]) != size:
        x = tf.image.resize(x, size, method="bilinear")
    return x


class FashionMNISTLoader:
    """Iterable of ``(X float32 (B, H, W, 1), y int64 (B,))``, reshuffled every epoch.

    ``dataset(epoch)`` is the ``tf.data.Dataset`` of one epoch (for ``model.fit`` and
    friends); iterating the loader walks the next epoch's dataset.
    """

    def __init__(self, batches: ArrayBatches, resize=None):
        self.batches, self.resize = batches, check_resize(resize)
        # Held once as tensors; each batch is one gather, not a Python loop over images.
        self._images = tf.constant(batches.images)
        self._labels = tf.constant(batches.labels)

    def __len__(self):
        return len(self.batches)

    @property
    def num_examples(self):
        return self.batches.num_examples

    def resume_at(self, epoch: int, batch: int = 0) -> None:
        """The next iteration is epoch ``epoch`` from batch ``batch`` on (a resumed run)."""
        self.batches.resume_at(epoch, batch)

    def dataset(self, epoch: Optional[int] = None, start: int = 0) -> tf.data.Dataset:
        """One epoch's batches, from batch ``start`` of its seeded order on."""
        order = self.batches.order(self.batches.epoch if epoch is None else epoch)
        order = order[start * self.batches.batch_size:]

        def load(idx):
            return (to_tensor(tf.gather(self._images, idx), self.resize),
                    tf.gather(self._labels, idx))

        return (tf.data.Dataset.from_tensor_slices(order)
                .batch(self.batches.batch_size)
                .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))

    def __iter__(self):
        ds = self.dataset(start=self.batches.skip)
        self.batches.epoch, self.batches.skip = self.batches.epoch + 1, 0
        return iter(ds)


def load_data_fashion_mnist(batch_size: int, resize=None, limit: Optional[int] = None,
                            seed: int = 0, root=None):
    """(train_iter, test_iter) over real Fashion-MNIST, NHWC batches.

    ``limit`` keeps a seeded subset of at most that many examples of each split (smoke
    runs; the same subset in every framework); ``root`` names a directory with the four IDX
    files (else the usual search: ``D2LPORT_DATA``, the user cache, Debian's package).
    """
    xtr, ytr, xte, yte = fashion_mnist_splits(limit, seed, root)
    return (FashionMNISTLoader(ArrayBatches(xtr, ytr, batch_size, True, seed), resize),
            FashionMNISTLoader(ArrayBatches(xte, yte, batch_size, False, seed), resize))
