"""d2lport's PyTorch backend: ``from d2lport import torch as d2p``.

Every registered network as a hand-written ``nn.Module`` (``googlenet.py``, ``vgg.py``,
``lecture.py``; building blocks in ``layers.py``) that equals its spec in
:mod:`d2lport.specs`, plus data, training, summaries and canonical weights.  Imports neither
TensorFlow nor MXNet.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as _np
import torch as _torch

from .. import registry as _registry
from .. import weights as _weights
from ..common import (AuxOutputs, History, Row, batch_shape, format_table,  # noqa: F401
                      plot_history, print_summary)
from .data import (LABELS, FashionMNISTLoader, get_fashion_mnist_labels,  # noqa: F401
                   load_data_fashion_mnist, to_tensor)
from .googlenet import GoogLeNet, GoogLeNetV1, Inception  # noqa: F401
from .layers import Net  # noqa: F401
from .lecture import InceptionA, InceptionANet, ResidualBlock, ResidualNet  # noqa: F401
from .models import MODELS, create_model  # noqa: F401
from .vgg import VGG, vgg_block  # noqa: F401
from .train import evaluate, loss_fn, predict, train, try_gpu  # noqa: F401
from .steps import StepKit, cpu_scope  # noqa: F401

FRAMEWORK = "torch"
list_models = _registry.list_models


@_torch.no_grad()
def block_outputs(net: Net, x, include_aux: bool = True) -> "OrderedDict[str, _np.ndarray]":
    """Every block's output for input ``x`` (NCHW numpy or tensor) in inference mode (no
    dropout, BatchNorm running statistics), like every backend's ``block_outputs``;
    numpy arrays in canonical layout (NCHW / (N, F)).  Auxiliary heads included on request."""
    t = x if isinstance(x, _torch.Tensor) else _torch.from_numpy(_np.asarray(x, _np.float32))
    t = t.to(next(net.parameters()).device)
    was_training = net.training
    net.eval()
    try:
        outs = net.forward_blocks(t, include_aux=include_aux)
    finally:
        net.train(was_training)
    return OrderedDict((k, v.float().cpu().numpy()) for k, v in outs.items())


@_torch.no_grad()
def logits(net: Net, x) -> _np.ndarray:
    """The network's own ``forward`` on ``x`` (NCHW numpy or tensor) in inference mode."""
    t = x if isinstance(x, _torch.Tensor) else _torch.from_numpy(_np.asarray(x, _np.float32))
    was_training = net.training
    net.eval()
    try:
        out = net(t.to(next(net.parameters()).device))
    finally:
        net.train(was_training)
    return out.float().cpu().numpy()


def count_params(module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def layer_shapes(net: Net, input_shape: Sequence[int] = None) -> List[Row]:
    """One row per block: name, per-example output shape (C, H, W) or (F,), parameters.
    Shapes are measured by running a zero batch through the network."""
    shape = batch_shape(net.spec, input_shape)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    outs = net.forward_blocks(_torch.zeros(shape, device=device), include_aux=True)
    net.train(was_training)
    return [Row(name, tuple(out.shape[1:]), count_params(net.block(name)))
            for name, out in outs.items()]


def summary(net: Net, input_shape: Sequence[int] = None, print_fn=print) -> List[Row]:
    """Print the block table (D2L's layer-by-layer shapes) and return its rows."""
    return print_summary(net.spec, layer_shapes(net, input_shape), FRAMEWORK, input_shape,
                         print_fn)


def get_weights(net: Net) -> Dict[str, _np.ndarray]:
    """Canonical weights: numpy arrays keyed by structural layer name, torch layouts."""
    return {k: v.detach().float().cpu().numpy().copy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def set_weights(net: Net, weights, strict: bool = True) -> Net:
    """Load canonical weights (a mapping, or the path of a ``.npz`` weight file)."""
    if not isinstance(weights, dict):
        weights, _ = _weights.load(weights)
    _weights.check(net.spec, weights, strict)
    state = net.state_dict()
    with _torch.no_grad():
        for key, value in weights.items():
            state[key].copy_(_torch.from_numpy(_np.asarray(value)).to(state[key].dtype))
    return net


def save_weights(net: Net, path, **meta):
    return _weights.save(path, get_weights(net), {"model": net.spec.name, "framework": FRAMEWORK,
                                                  **meta})
