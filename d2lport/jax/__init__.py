"""d2lport's JAX backend: ``from d2lport import jax as d2p``.

Every registered network hand-written as a Flax **linen** module (``googlenet.py``,
``vgg.py``, ``lecture.py``, built from the blocks of ``layers.py``), plus data, training
(optax, a ``jax.jit``-compiled step), summaries and canonical weights.  Imports neither
PyTorch, TensorFlow nor MXNet.

Why linen: the book's JAX tab (D2L 1.0) writes its networks as linen modules (``setup`` /
``__call__``, parameters apart from the module); NNX, Flax's newer API, keeps parameters in
the module like PyTorch does.  A linen module holds no weights, so a JAX *net* is the pair
:class:`Model` (``.module``, the hand-written network; ``.variables``, its ``params`` and
BatchNorm ``batch_stats``): ``create_model`` returns it, ``set_weights`` and ``train``
replace its variables in place, and :func:`network` gives the module.  Every function of the
backend contract takes and returns what it does in the other backends.

Layouts: the models run NHWC and ``net(x)`` takes NHWC batches (Flax's convention; the data
pipeline yields them).  Everything that names shapes for people or for comparisons takes and
reports (N, C, H, W) like the other backends: ``block_outputs`` (NCHW input, NCHW outputs),
``layer_shapes``/``summary`` (rows (C, H, W)), ``get_weights``/``set_weights`` (torch layouts).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import jax as _jax
import numpy as _np
from flax import linen as _nn

from .. import registry as _registry
from .. import weights as _weights
from ..common import (AuxOutputs, History, Row, batch_shape,  # noqa: F401
                      format_table, plot_history, print_summary)
from .data import (LABELS, FashionMNISTLoader, get_fashion_mnist_labels,  # noqa: F401
                   load_data_fashion_mnist, to_tensor)
from .googlenet import GoogLeNet, GoogLeNetV1, Inception, InceptionAux  # noqa: F401
from .layers import Model, Net, SingleBlock, init_model  # noqa: F401
from .layers import (_nchw, check_input, count_leaves, get_path, set_path,
                     torch_variables as _torch_variables, unbound_params)
from .lecture import InceptionA, InceptionANet, ResidualBlock, ResidualNet  # noqa: F401
from .models import MODELS
from .vgg import VGG, vgg_block  # noqa: F401
from .train import evaluate, loss_fn, predict, train, try_gpu  # noqa: F401
from .steps import StepKit, cpu_scope  # noqa: F401

FRAMEWORK = "jax"
list_models = _registry.list_models


def create_model(name: str, seed: Optional[int] = None, **kwargs) -> Model:
    """Build a registered model (``d2lport models`` lists them) and initialise its
    variables from ``jax.random.PRNGKey(seed or 0)``: Xavier-uniform kernels, zero biases."""
    _registry.get_spec(name, **kwargs)          # unknown names and keywords fail here
    key, fixed = _registry.resolve(name)
    return init_model(MODELS[key](**{**fixed, **kwargs}), seed)


def network(net):
    """The hand-written network of a net: the linen module of a :class:`Model` (anything
    else is returned as it is)."""
    return net.module if isinstance(net, Model) else net


def _to_nhwc(x):
    x = _np.asarray(x, _np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {x.shape}")
    return _np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _to_canonical(t) -> _np.ndarray:
    a = _np.asarray(t, _np.float32)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def _check_nchw(net: Model, x) -> None:
    check_input(net.spec, (x.shape[0],) + tuple(x.shape[2:]) + (x.shape[1],))


def block_outputs(net: Model, x, include_aux: bool = True) -> "OrderedDict[str, _np.ndarray]":
    """Every block's output for NCHW input ``x`` in inference mode, as numpy arrays in
    canonical layout (NCHW / (N, F)); auxiliary heads too when ``include_aux``."""
    x = _np.asarray(x, _np.float32)
    if x.ndim == 4:
        _check_nchw(net, x)
    outs = net.forward_blocks(_to_nhwc(x), include_aux=include_aux)
    return OrderedDict((k, _to_canonical(v)) for k, v in outs.items())


def logits(net: Model, x) -> _np.ndarray:
    """The network's own ``__call__`` in inference mode on an NCHW batch: (N, classes)."""
    x = _np.asarray(x, _np.float32)
    if x.ndim == 4:
        _check_nchw(net, x)
    return _to_canonical(net(_to_nhwc(x), training=False))


def count_params(obj) -> int:
    """Trainable parameters (the ``params`` collection; BatchNorm statistics are
    ``batch_stats``) of a Model, a bound module (``net.block(name)``) or an unbound one
    (``Inception(192, ...)``: counted from its init's shapes, nothing computed)."""
    if isinstance(obj, Model):
        return count_leaves(obj.variables.get("params", {}))
    if isinstance(obj, _nn.Module):
        if obj.scope is not None:
            return count_leaves(obj.variables.get("params", {}))
        return count_leaves(unbound_params(obj))
    return count_leaves(obj.get("params", obj))        # a variables / params tree


def layer_shapes(net: Model, input_shape: Sequence[int] = None) -> List[Row]:
    """One row per block: name, per-example output shape (C, H, W) or (F,), parameters,
    for an (N, C, H, W) input (measured by tracing the network on a zero batch)."""
    shape = batch_shape(net.spec, input_shape)
    if len(shape) == 4:
        _check_nchw(net, _np.zeros((1,) + tuple(shape[1:]), _np.float32))
    else:
        check_input(net.spec, shape)
    nhwc = _jax.ShapeDtypeStruct((shape[0],) + tuple(shape[2:]) + (shape[1],), _np.float32)
    outs = _jax.eval_shape(lambda v, x: net.module.apply(v, x, method="forward_blocks",
                                                         include_aux=True),
                           net.variables, nhwc)
    bound = net.bound()
    return [Row(name, _nchw(out.shape[1:]), count_params(bound.block(name)))
            for name, out in outs.items()]


def summary(net: Model, input_shape: Sequence[int] = None, print_fn=print) -> List[Row]:
    """Print the block table (the same rows as the other backends) and return its rows."""
    return print_summary(net.spec, layer_shapes(net, input_shape), FRAMEWORK, input_shape,
                         print_fn)


# --------------------------------------------------------------------------- weights
def get_weights(net: Model) -> Dict[str, _np.ndarray]:
    """Canonical weights: numpy arrays keyed by the path of linen module names
    (``b3.inception3a.branch2.conv2.weight``), in PyTorch's layouts."""
    return {key: _np.ascontiguousarray(to(_np.asarray(get_path(net.variables[col], path),
                                                      _np.float32)))
            for key, col, path, to, _ in _torch_variables(net)}


def set_weights(net: Model, weights, strict: bool = True) -> Model:
    """Load canonical weights (a mapping, or the path of a ``.npz`` weight file) into the
    net's variables (replaced in place); returns the net."""
    if not isinstance(weights, dict):
        weights, _ = _weights.load(weights)
    _weights.check(net.spec, weights, strict)
    variables = dict(net.variables)
    for key, col, path, _, back in _torch_variables(net):
        if key in weights:
            old = get_path(variables[col], path)
            value = _jax.numpy.asarray(back(_np.asarray(weights[key], _np.float32)), old.dtype)
            variables[col] = set_path(variables[col], path, value)
    net.variables = variables
    return net


def save_weights(net: Model, path, **meta):
    return _weights.save(path, get_weights(net), {"model": net.spec.name, "framework": FRAMEWORK,
                                                  **meta})
