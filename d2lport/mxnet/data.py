"""Fashion-MNIST as MXNet batches: float32 NCHW in [0, 1], resized on whole batches.

Batches are arrays of the current mode: ``mx.nd`` NDArrays, or ``mxnet.np`` arrays after
``npx.set_np()`` (D2L 1.0's convention), decided when each batch is made."""
from __future__ import annotations

from typing import Optional, Tuple

import mxnet as mx
import numpy as np

from mxnet.util import is_np_array

from .. import data as _data
from ..loader import ArrayBatches, BatchLoader, check_resize, fashion_mnist_splits

LABELS = _data.LABELS


def as_array(array, ctx=None, dtype=None):
    """An MXNet array of the current mode from a numpy array or list (float32 unless
    ``dtype``): ``mxnet.np.ndarray`` in numpy mode, else a dense ``mx.nd.NDArray`` (MXNet's
    dense constructor directly: ``mx.nd.array`` first tests for a scipy CSR matrix through
    ``scipy.sparse.csr``, which newer scipy deprecates with a warning per call)."""
    if is_np_array():
        return mx.np.array(array, ctx=ctx, dtype=dtype or np.float32)
    return mx.nd.ndarray.array(array, ctx=ctx, dtype=dtype)


as_nd = as_array      # the older name


def to_ctx(x, ctx):
    """``x`` on device ``ctx`` (mxnet.np renamed ``as_in_context`` to ``as_in_ctx``)."""
    return x.as_in_ctx(ctx) if isinstance(x, mx.np.ndarray) else x.as_in_context(ctx)


def get_fashion_mnist_labels(labels):
    """Text labels for numeric ones (D2L's helper); takes NDArrays, arrays or lists."""
    if isinstance(labels, (mx.nd.NDArray, mx.np.ndarray)):
        labels = labels.asnumpy()
    return [LABELS[int(i)] for i in labels]


def to_tensor(images: np.ndarray, resize=None):
    """uint8 (B, 28, 28) -> float32 (B, 1, H, W) array of the current mode; bilinear resize
    of the whole batch.

    ``align_corners=False`` (half-pixel centres) is passed explicitly: MXNet's
    ``BilinearResize2D`` defaults to ``align_corners=True``, while torch's
    ``F.interpolate(mode='bilinear')`` and ``tf.image.resize`` use half-pixel centres.
    With it the three agree to float rounding (about 1e-7 here, 28 -> 14/32/96/224 px).
    """
    x = mx.nd.ndarray.array(np.asarray(images, np.float32)[:, None] / np.float32(255.0))
    size = check_resize(resize)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = mx.nd.contrib.BilinearResize2D(x, height=size[0], width=size[1],
                                           align_corners=False)
    return x.as_np_ndarray() if is_np_array() else x     # numpy mode has no resize operator


class FashionMNISTLoader(BatchLoader):
    """Iterable of ``(X float32 (B, 1, H, W), y int32 (B,))`` arrays of the current mode on
    the CPU, with a per-epoch reshuffle (``train`` moves them to the device)."""

    def convert(self, images, labels) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
        return to_tensor(images, self.resize), as_array(labels, dtype="int32")


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
