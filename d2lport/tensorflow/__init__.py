"""d2lport's TensorFlow/Keras backend: ``from d2lport import tensorflow as d2p``.

Every registered network as a Keras 3 model built from the shared spec, plus data,
training, summaries and canonical weights.  Imports neither PyTorch nor MXNet.

Layouts: the models run NHWC and ``net(x)`` takes NHWC batches (Keras' convention; the data
pipeline yields them).  Everything that names shapes for people or for comparisons takes and
reports (N, C, H, W) like the other backends: ``block_outputs`` (NCHW input, NCHW outputs),
``layer_shapes``/``summary`` (rows (C, H, W)), ``get_weights``/``set_weights`` (torch layouts).
"""
from __future__ import annotations

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before TF's first import: no banner

from collections import OrderedDict  # noqa: E402
from typing import Dict, List, Optional, Sequence  # noqa: E402

import keras as _keras  # noqa: E402
import numpy as _np  # noqa: E402
import tensorflow as _tf  # noqa: E402

from .. import registry as _registry  # noqa: E402
from .. import weights as _weights  # noqa: E402
from ..common import (AuxOutputs, History, Row, batch_shape,  # noqa: E402,F401
                      format_table, plot_history, print_summary)
from .data import (LABELS, FashionMNISTLoader, get_fashion_mnist_labels,  # noqa: E402,F401
                   load_data_fashion_mnist, to_tensor)
from .models import (GoogLeNet, GoogLeNetV1, Inception, InceptionA,  # noqa: E402,F401
                     InceptionANet, Net, ResidualBlock, ResidualNet, VGG, build, vgg_block)
from .models import ConvLayer as _Conv, iter_leaves as _iter_leaves, nchw as _nchw  # noqa: E402
from .train import evaluate, loss_fn, predict, train, try_gpu  # noqa: E402,F401
from .steps import StepKit, cpu_scope  # noqa: E402,F401

FRAMEWORK = "tensorflow"
list_models = _registry.list_models


def create_model(name: str, seed: Optional[int] = None, **kwargs) -> Net:
    """Build a registered model (``d2lport models`` lists them); ``seed`` fixes the init
    (``keras.utils.set_random_seed``: Python, NumPy and TF/Keras generators)."""
    spec = _registry.get_spec(name, **kwargs)
    if seed is not None:
        _keras.utils.set_random_seed(seed)
    return build(spec)


def _to_nhwc(x):
    x = _np.asarray(x, _np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {x.shape}")
    return _tf.constant(x.transpose(0, 2, 3, 1))


def _to_canonical(t) -> _np.ndarray:
    a = _np.asarray(_tf.cast(t, _tf.float32))
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def block_outputs(net: Net, x, include_aux: bool = True) -> "OrderedDict[str, _np.ndarray]":
    """Every block's output for NCHW input ``x`` in inference mode, as numpy arrays in
    canonical layout (NCHW / (N, F)); auxiliary heads too when ``include_aux``."""
    outs = net.forward_blocks(_to_nhwc(x), include_aux=include_aux)
    return OrderedDict((k, _to_canonical(v)) for k, v in outs.items())


def count_params(layer) -> int:
    """Trainable parameters (Keras' own ``count_params`` includes BatchNorm statistics)."""
    return int(sum(_np.prod(v.shape) for v in layer.trainable_weights))


def layer_shapes(net: Net, input_shape: Sequence[int] = None) -> List[Row]:
    """One row per block: name, per-example output shape (C, H, W) or (F,), parameters,
    for an (N, C, H, W) input (measured by running a zero batch through the network)."""
    shape = batch_shape(net.spec, input_shape)
    outs = net.forward_blocks(_to_nhwc(_np.zeros(shape, _np.float32)), include_aux=True)
    return [Row(name, tuple(int(s) for s in _nchw(out.shape[1:])), count_params(net.block(name)))
            for name, out in outs.items()]


def summary(net: Net, input_shape: Sequence[int] = None, print_fn=print) -> List[Row]:
    """Print the block table (the same rows as the other backends) and return its rows."""
    return print_summary(net.spec, layer_shapes(net, input_shape), FRAMEWORK, input_shape,
                         print_fn)


# --------------------------------------------------------------------------- weights
# Keras BatchNormalization variable -> canonical (torch) name.
_BN = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
       ("moving_variance", "running_var"))


def _dense_to_canonical(layer, kernel: _np.ndarray) -> _np.ndarray:
    """Keras (in, out) -> torch (out, in); after a flatten the rows are in H, W, C order
    and become C, H, W columns."""
    if layer.flatten and len(layer.in_shape) == 3:
        c, h, w = layer.in_shape
        return kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * w)
    return kernel.T


def _dense_from_canonical(layer, weight: _np.ndarray) -> _np.ndarray:
    if layer.flatten and len(layer.in_shape) == 3:
        c, h, w = layer.in_shape
        return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    return weight.T


def _pairs(net: Net):
    """(canonical key, Keras variable, to_canonical, from_canonical) for every weight."""
    same = lambda a: a  # noqa: E731
    for path, layer in [p for root in net.rows() for p in _iter_leaves(root)]:
        if isinstance(layer, _Conv):
            # HWIO <-> OIHW
            yield (f"{path}.weight", layer.kernel, lambda a: a.transpose(3, 2, 0, 1),
                   lambda a: a.transpose(2, 3, 1, 0))
        else:
            yield (f"{path}.weight", layer.kernel, lambda a, l=layer: _dense_to_canonical(l, a),
                   lambda a, l=layer: _dense_from_canonical(l, a))
        if layer.bias is not None:
            yield f"{path}.bias", layer.bias, same, same
        if getattr(layer, "bn", None) is not None:
            for keras_name, torch_name in _BN:
                yield f"{path}.bn.{torch_name}", getattr(layer.bn, keras_name), same, same


def get_weights(net: Net) -> Dict[str, _np.ndarray]:
    """Canonical weights: numpy arrays keyed by structural layer name, torch layouts."""
    return {key: _np.ascontiguousarray(to(_np.asarray(var.numpy(), _np.float32)))
            for key, var, to, _ in _pairs(net)}


def set_weights(net: Net, weights, strict: bool = True) -> Net:
    """Load canonical weights (a mapping, or the path of a ``.npz`` weight file)."""
    if not isinstance(weights, dict):
        weights, _ = _weights.load(weights)
    _weights.check(net.spec, weights, strict)
    for key, var, _, back in _pairs(net):
        if key in weights:
            var.assign(back(_np.asarray(weights[key], _np.float32)))
    return net


def save_weights(net: Net, path, **meta):
    return _weights.save(path, get_weights(net), {"model": net.spec.name, "framework": FRAMEWORK,
                                                  **meta})
