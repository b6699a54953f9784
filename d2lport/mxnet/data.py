"""Fashion-MNIST as MXNet batches: float32 NCHW in [0, 1], resized on whole batches."""
from __future__ import annotations

from typing import Optional, Tuple

import mxnet as mx
import numpy as np

from .. import data as _data
from ..loader import ArrayBatches, BatchLoader, check_resize, fashion_mnist_splits

LABELS = _data.LABELS


def as_nd(array, ctx=None, dtype=None) -> mx.nd.NDArray:
    """A dense NDArray from a numpy array (float32 unless ``dtype``).  Calls MXNet's dense
    constructor directly: ``mx.nd.array`` first tests for a scipy CSR matrix through the
    ``scipy.sparse.csr`` namespace, which newer scipy deprecates with a warning per call."""
    return mx.nd.ndarray.array(array, ctx=ctx, dtype=dtype)


def get_fashion_mnist_labels(labels):
    """Text labels for numeric ones (D2L's helper); takes NDArrays, arrays or lists."""
    if isinstance(labels, mx.nd.NDArray):
        labels = labels.asnumpy()
    return [LABELS[int(i)] for i in labels]


def to_tensor(images: np.ndarray, resize=None) -> mx.nd.NDArray:
    """uint8 (B, 28, 28) -> float32 NDArray (B, 1, H, W); bilinear resize of the whole batch.

    ``align_corners=False`` (half-pixel centres) is passed explicitly: MXNet's
    ``BilinearResize2D`` defaults to ``align_corners=True``, while torch's
    ``F.interpolate(mode='bilinear')`` and ``tf.image.resize`` use half-pixel centres.
    With it the three agree to float rounding (about 1e-7 here, 28 -> 14/32/96/224 px).
    """
    x = as_nd(np.asarray(images, np.float32)[:, None] / np.float32(255.0))
    size = check_resize(resize)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = mx.nd.contrib.BilinearResize2D(x, height=size[0], width=size[1],
                                           align_corners=False)
    return x


class FashionMNISTLoader(BatchLoader):
    """Iterable of ``(X float32 (B, 1, H, W), y int32 (B,))`` NDArrays on the CPU, with a
    per-epoch reshuffle (``train`` moves them to the device)."""

    def convert(self, images, labels) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
        return to_tensor(images, self.resize), as_nd(labels, dtype="int32")


def load_data_fashion_mnist(batch_size: int, resize=None, limit: Optional[int] = None,
                            seed: int = 0, root=None):
    """(train_iter, test_iter) over real Fashion-MNIST.

    ``limit`` keeps a seeded subset of at most that many examples of each split (smoke
    runs; the same subset as the other backends); ``root`` names a directory with the four
    IDX files (else the usual search: ``D2LPORT_DATA``, the user cache, Debian's
    ``dataset-fashion-mnist``).
    """
    xtr, ytr, xte, yte = fashion_mnist_splits(limit, seed, root)
    return (FashionMNISTLoader(ArrayBatches(xtr, ytr, batch_size, True, seed), resize),
            FashionMNISTLoader(ArrayBatches(xte, yte, batch_size, False, seed), resize))
