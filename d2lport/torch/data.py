"""Fashion-MNIST as PyTorch batches: float32 NCHW in [0, 1], resized on whole batches."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from .. import data as _data
from ..loader import ArrayBatches, BatchLoader, check_resize, fashion_mnist_splits

LABELS = _data.LABELS


def get_fashion_mnist_labels(labels):
    """Text labels for numeric ones (D2L's helper)."""
    return [LABELS[int(i)] for i in labels]


def to_tensor(images: np.ndarray, resize=None) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float32 (B, 1, H, W); bilinear resize of the whole batch
    (half-pixel centres, like tf.image.resize), no antialiasing (D2L only upsamples)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)
    size = check_resize(resize)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


class FashionMNISTLoader(BatchLoader):
    """Iterable of ``(X float32 (B, 1, H, W), y int64 (B,))`` with a per-epoch reshuffle."""

    def convert(self, images, labels) -> Tuple[torch.Tensor, torch.Tensor]:
        return to_tensor(images, self.resize), torch.from_numpy(labels)


def load_data_fashion_mnist(batch_size: int, resize=None, limit: Optional[int] = None,
                            seed: int = 0, root=None):
    """(train_iter, test_iter) over real Fashion-MNIST.

    ``limit`` keeps a seeded subset of at most that many examples of each split (smoke
    runs); ``root`` names a directory with the four IDX files (else the usual search:
    ``D2LPORT_DATA``, the user cache, Debian's ``dataset-fashion-mnist``).
    """
    xtr, ytr, xte, yte = fashion_mnist_splits(limit, seed, root)
    return (FashionMNISTLoader(ArrayBatches(xtr, ytr, batch_size, True, seed), resize),
            FashionMNISTLoader(ArrayBatches(xte, yte, batch_size, False, seed), resize))
