"""The canonical weight format: numpy arrays keyed by structural layer name, torch layouts.

Keys are ``<layer path>.<param>``, e.g. ``b3.inception3a.branch2.conv2.weight`` (conv kernels
OIHW, dense weights (out, in) applied to a C,H,W-ordered flatten) and
``block1.conv1.bn.running_mean``.  ``specs.canonical_shapes(spec)`` lists the keys a model
has; every backend's ``get_weights`` returns exactly those and ``set_weights`` takes them.
Files are ``.npz`` archives of that mapping plus a ``__meta__`` entry (model name, kwargs).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np

from . import specs

Weights = Dict[str, np.ndarray]


class WeightsError(ValueError):
    pass


def check(spec: specs.NetSpec, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
    """Raise WeightsError naming missing/unexpected keys or wrong shapes for ``spec``."""
    expected = specs.canonical_shapes(spec, include_aux=True)
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k}: got {tuple(np.shape(weights[k]))}, expected {expected[k]}"
             for k in expected if k in weights and tuple(np.shape(weights[k])) != expected[k]]
    problems = []
    if strict and missing:
        problems.append(f"missing {len(missing)} keys (first: {missing[:3]})")
    if strict and unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (first: {unexpected[:3]})")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:3]))
    if problems:
        raise WeightsError(f"weights do not fit {spec.name} {spec.input_shape}: "
                           + ", ".join(problems) + ". Were they exported from the same model "
                           "with the same keyword arguments (num_classes, in_channels, "
                           "width_ratio, batch_norm, image_size)?")


def random_weights(spec: specs.NetSpec, seed: int = 0, scale: float = 1.0) -> Weights:
    """Seeded canonical weights (He-uniform kernels, small biases, non-trivial BN
    statistics): the one set every framework receives in parity tests and comparisons."""
    rng = np.random.default_rng(seed)
    out: Weights = {}
    for key, shape in specs.canonical_shapes(spec).items():
        if key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("running_mean") or (key.endswith(".bias")):
            out[key] = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
        elif ".bn.weight" in key:
            out[key] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            bound = scale * np.sqrt(6.0 / fan_in)
            out[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def save(path, weights: Mapping[str, np.ndarray], meta: Optional[dict] = None) -> Path:
    """Write atomically and durably: a temporary file, fsynced, renamed into place, then the
    directory fsynced, so neither a failure nor a power cut leaves a half-written file or
    destroys the previous one."""
    from .checkpoint import fsync_dir
    path = Path(path)
    if path.suffix != ".npz":
        raise WeightsError(f"weight files are .npz archives; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta or {}).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())          # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync_dir(path.parent)            # and the rename itself survives a crash
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def load(path) -> tuple:
    """(weights, meta) from a file written by :func:`save`."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"no weight file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # zipfile/ValueError: not an npz archive
        raise WeightsError(f"{path} is not a readable .npz weight file ({err})") from None
    try:
        meta = json.loads(bytes(arrays.pop("__meta__", np.zeros(0, np.uint8))).decode() or "{}")
    except (UnicodeDecodeError, ValueError) as err:
        raise WeightsError(f"{path}: its __meta__ entry is corrupt ({err}); the file was not "
                           "written by d2lport's save_weights, or was damaged") from None
    return arrays, meta
