"""The canonical initial weights of a recorded run: drawn once by numpy from the recipe's
seed, loaded into every framework by name, so that all start from the same point."""
from __future__ import annotations

import hashlib

import numpy as np

from .. import specs
from ..weights import Weights

SCHEMES = ("xavier", "framework")


def initial_weights(spec: specs.NetSpec, seed: int = 0, scheme: str = "xavier") -> Weights:
    """Canonical weights for ``spec``: ``xavier`` is D2L 1.0's ``init_cnn`` (Xavier-uniform
    kernels of every convolution and dense layer) with zero biases and BatchNorm at
    gamma 1, beta 0, mean 0, variance 1.  The draws follow the canonical key order, so the
    same seed gives the same bytes on every machine."""
    if scheme != "xavier":
        raise ValueError(f"initial_weights draws the 'xavier' scheme; got {scheme!r} "
                         "('framework' means each framework's own initialiser)")
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for key, shape in specs.canonical_shapes(spec).items():
        if key.endswith("running_var") or key.endswith(".bn.weight"):
            out[key] = np.ones(shape, np.float32)
        elif len(shape) == 1:             # biases, BatchNorm beta and running mean
            out[key] = np.zeros(shape, np.float32)
        else:
            # Xavier/Glorot uniform, torch's fan convention: fan = channels x kernel area
            receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
            bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
            out[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def digest(weights: Weights) -> str:
    """SHA-256 over the keys, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(weights):
        value = np.ascontiguousarray(weights[key], dtype=np.float32)
        h.update(f"{key}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()
