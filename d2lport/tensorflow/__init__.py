"""d2lport's TensorFlow/Keras backend: ``from d2lport import tensorflow as d2p``.

Every registered network hand-written as a Keras 3 model (``googlenet.py``, ``vgg.py``,
``lecture.py``, built from the blocks of ``layers.py``), plus data, training, summaries and
canonical weights.  Imports neither PyTorch nor MXNet.

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
from .googlenet import GoogLeNet, GoogLeNetV1, Inception, InceptionAux  # noqa: E402,F401
from .layers import Net, SingleBlock, torch_variables as _torch_variables  # noqa: E402,F401
from .layers import _nchw  # noqa: E402
from .lecture import InceptionA, InceptionANet, ResidualBlock, ResidualNet  # noqa: E402,F401
from .models import MODELS  # noqa: E402
from .vgg import VGG, vgg_block  # noqa: E402,F401
from .train import evaluate, loss_fn, predict, train, try_gpu  # noqa: E402,F401
from .steps import StepKit, cpu_scope  # noqa: E402,F401

FRAMEWORK = "tensorflow"
list_models = _registry.list_models


def create_model(name: str, seed: Optional[int] = None, **kwargs) -> Net:
    """Build a registered model (``d2lport models`` lists them); ``seed`` fixes the init
    (``keras.utils.set_random_seed``: Python, NumPy and TF/Keras generators)."""
    _registry.get_spec(name, **kwargs)          # unknown names and keywords fail here
    if seed is not None:
        _keras.utils.set_random_seed(seed)
    key, fixed = _registry.resolve(name)
    return MODELS[key](**{**fixed, **kwargs})


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


def logits(net: Net, x) -> _np.ndarray:
    """The network's own ``call`` in inference mode on an NCHW batch: (N, classes)."""
    return _to_canonical(net(_to_nhwc(x), training=False))


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
def get_weights(net: Net) -> Dict[str, _np.ndarray]:
    """Canonical weights: numpy arrays keyed by the path of Keras layer names
    (``b3.inception3a.branch2.conv2.weight``), in PyTorch's layouts."""
    return {key: _np.ascontiguousarray(to(_np.asarray(var.numpy(), _np.float32)))
            for key, var, to, _ in _torch_variables(net)}


def set_weights(net: Net, weights, strict: bool = True) -> Net:
    """Load canonical weights (a mapping, or the path of a ``.npz`` weight file)."""
    if not isinstance(weights, dict):
        weights, _ = _weights.load(weights)
    _weights.check(net.spec, weights, strict)
    for key, var, _, back in _torch_variables(net):
        if key in weights:
            var.assign(back(_np.asarray(weights[key], _np.float32)))
    return net


def save_weights(net: Net, path, **meta):
    return _weights.save(path, get_weights(net), {"model": net.spec.name, "framework": FRAMEWORK,
                                                  **meta})
