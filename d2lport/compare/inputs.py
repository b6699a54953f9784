"""What every framework receives: the seeded input, real training batches resized in numpy
(the same arrays go to every framework), and model keyword arguments with dropout off so
that training steps can agree.  Imports no framework.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import registry, specs

INPUT_BATCH = 2
# (registered name, keyword arguments) with aliases expanded: see registry.expand.
resolve = registry.expand


def seeded_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """The one input every framework receives: standard normal, float32, from a stream
    seeded apart from the weights' (``random_weights`` uses ``default_rng(seed)``)."""
    return np.random.default_rng([seed, 1]).standard_normal(tuple(shape)).astype(np.float32)


def dropout_off(model: str, kwargs: dict) -> Tuple[dict, Optional[str]]:
    """``kwargs`` with every dropout rate the model takes set to 0, and a note saying so.

    Dropout masks come from each framework's own random generator, so no two frameworks
    can take the same training step with dropout on; the weights do not change (dropout
    has none), so the comparison still trains the very network of the block table.
    """
    factory = registry.describe(model).factory
    rates = [p for p in inspect.signature(factory).parameters if "dropout" in p]
    new = dict(kwargs, **{p: 0.0 for p in rates})
    left = [leaf.path for leaf in specs.iter_leaves(registry.get_spec(model, **new))
            if (isinstance(leaf.layer, specs.Dropout) and leaf.layer.rate > 0)
            or (isinstance(leaf.layer, specs.Dense) and leaf.layer.dropout > 0)]
    if left:
        raise ValueError(f"{model} has dropout no keyword turns off ({left[0]}): its training "
                         "steps cannot agree across frameworks")
    if not rates:
        return new, None
    return new, ("dropout off for training: " + ", ".join(f"{p}=0" for p in rates)
                 + " (each framework draws its own masks)")


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling at half-pixel centres without
    antialiasing: torch's ``interpolate(align_corners=False)`` and ``tf.image.resize``."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def images_to_input(images: np.ndarray, chw: Sequence[int]) -> np.ndarray:
    """uint8 (B, 28, 28) -> float32 (B, C, H, W) in [0, 1]: resized in numpy (the same
    array then goes to every framework) and the grey channel repeated C times."""
    c, h, w = chw
    x = images.astype(np.float64) / 255.0
    if x.shape[1:] != (h, w):
        x = np.einsum("hi,bij,wj->bhw", _bilinear_matrix(x.shape[1], h), x,
                      _bilinear_matrix(x.shape[2], w))
    return np.repeat(x[:, None], c, axis=1).astype(np.float32)


def training_batches(chw: Sequence[int], steps: int, batch_size: int, seed: int = 0,
                     root=None) -> Tuple[np.ndarray, np.ndarray]:
    """``steps`` real Fashion-MNIST batches (x (S, B, C, H, W) float32, y (S, B) int64):
    a seeded subset of the training split in the seeded order of the backends' loaders."""
    from ..loader import ArrayBatches, fashion_mnist_splits
    if not 1 <= batch_size <= 60000:
        raise ValueError(f"batch_size must be between 1 and 60000, got {batch_size}")
    images, labels, _, _ = fashion_mnist_splits(min(steps * batch_size, 60000), seed, root)
    batches = ArrayBatches(images, labels, batch_size, shuffle=True, seed=seed)
    xs, ys = [], []
    while len(xs) < steps:          # more steps than the split holds: further epochs
        for x, y in batches:
            if len(xs) == steps:
                break
            if len(y) == batch_size:    # a short last batch would change the step's scale
                xs.append(images_to_input(x, chw))
                ys.append(y.astype(np.int64))
    return np.stack(xs), np.stack(ys)

