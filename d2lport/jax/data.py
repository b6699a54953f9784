"""Fashion-MNIST as JAX arrays: float32 NHWC in [0, 1], resized on whole batches.

The sample order of every epoch is ``ArrayBatches.order(epoch)`` (seeded by (seed, epoch)),
the very order the other backends' loaders use; each whole uint8 batch becomes one JAX array
and is resized by one compiled call, with no Python work per image.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import data as _data
from ..loader import ArrayBatches, BatchLoader, check_resize, fashion_mnist_splits

LABELS = _data.LABELS


def get_fashion_mnist_labels(labels):
    """Text labels for numeric ones (D2L's helper)."""
    return [LABELS[int(i)] for i in np.asarray(labels)]


@partial(jax.jit, static_argnums=1)
def _resize(x, size):
    # antialias=False: jax.image.resize low-pass filters when shrinking by default;
    # PyTorch's interpolate(mode='bilinear', align_corners=False) samples at half-pixel
    # centres without filtering (as does tf.image.resize).
    return jax.image.resize(x, (x.shape[0],) + size + (x.shape[3],), "bilinear",
                            antialias=False)


def to_tensor(images, resize=None) -> jax.Array:
    """uint8 (B, 28, 28) -> float32 (B, H, W, 1); bilinear resize of the whole batch."""
    x = jnp.asarray(np.asarray(images), jnp.float32)[..., None] / 255.0
    size = check_resize(resize)
    if size is not None and tuple(x.shape[1:3]) != size:
        x = _resize(x, size)
    return x


class FashionMNISTLoader(BatchLoader):
    """Iterable of ``(X float32 (B, H, W, 1), y int32 (B,))`` JAX arrays, reshuffled every
    epoch (labels int32: JAX's default integer without ``jax_enable_x64``)."""

    def __init__(self, batches: ArrayBatches, resize=None):
        super().__init__(batches, check_resize(resize))

    def convert(self, images, labels):
        return to_tensor(images, self.resize), jnp.asarray(labels, jnp.int32)


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
