"""The few Gluon building blocks d2lport's networks share, and the :class:`Net` base class.

Every block works in both of MXNet's array modes: legacy ``mx.nd`` (the default) and D2L
1.0's numpy mode (``from mxnet import np, npx; npx.set_np()``).  Gluon's own layers (Conv2D,
Dense, pooling, BatchNorm, Dropout) pick their operators from ``mxnet.util.is_np_array()``;
our ``hybrid_forward`` code does the same through :func:`relu`, :func:`concat` and friends.
A block's parameters are arrays of the mode it was built in, so build a network after
``npx.set_np()`` to use it in numpy mode (:meth:`Net.check_input` says so otherwise).

Child names (attribute names) are the canonical layer names: Gluon's structural parameter
paths (``Block._collect_params_with_prefix``, what ``save_parameters`` writes) are the
canonical weight keys, except BatchNorm's ``gamma``/``beta`` = torch's ``weight``/``bias``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn
from mxnet.util import is_np_array

from .. import specs
from ..common import check_input_shape

__all__ = ["BasicConv2D", "BasicDense", "GlobalAvgPool", "LRN", "Net", "Sequential",
           "XAVIER", "canonical_params", "concat", "relu", "spec_args"]

# Glorot/Xavier uniform, limit sqrt(6 / (fan_in + fan_out)): the same distribution as
# torch's xavier_uniform_ and Keras' default.  Biases and BatchNorm keep their own inits.
XAVIER = mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)


# One line per operator that has a different name in numpy mode (F is mx.nd / mx.sym).
def relu(F, x):
    # Activation, not the `relu` operator: Activation has a oneDNN kernel that works on the
    # convolution's blocked layout; `relu` forces a reorder to NCHW and a new buffer per
    # layer (GoogLeNet training, batch 128: 3.2 -> 1.9 GB peak, 50 -> 62 examples/s).
    return (F.npx.activation(x, act_type="relu") if is_np_array()
            else F.Activation(x, act_type="relu"))


def concat(F, *xs):
    return F.np.concatenate(xs, axis=1) if is_np_array() else F.concat(*xs, dim=1)


class BasicConv2D(nn.Conv2D):
    """Convolution, then (optionally) BatchNorm as child ``bn``, then (optionally) ReLU; its
    own ``weight``/``bias`` are the canonical ``<path>.weight``/``.bias``."""

    def __init__(self, channels, kernel_size, strides=1, padding=0, in_channels=0,
                 relu=True, batch_norm=False, use_bias=True):
        super().__init__(channels, kernel_size, strides=strides, padding=padding,
                         use_bias=use_bias, in_channels=in_channels)
        self._relu = relu
        self.bn = None
        if batch_norm:
            # Gluon's momentum weighs the running value: 1 - torch's momentum (0.9 = 0.1).
            self.bn = nn.BatchNorm(momentum=1.0 - specs.BN_MOMENTUM, epsilon=specs.BN_EPS,
                                   in_channels=channels)

    def hybrid_forward(self, F, x, weight, bias=None):
        x = super().hybrid_forward(F, x, weight, bias)
        if self.bn is not None:
            x = self.bn(x)
        return relu(F, x) if self._relu else x

    def __repr__(self):
        return super().__repr__() + " + BatchNorm" * (self.bn is not None) + " + ReLU" * self._relu


class BasicDense(nn.Dense):
    """Fully connected layer (flattens (C, H, W) in that order, like torch), then
    (optionally) ReLU and dropout (the identity outside ``autograd.record()``)."""

    def __init__(self, units, in_units, relu=False, dropout=0.0):
        super().__init__(units, flatten=True, in_units=in_units)
        self._relu = relu
        self.dropout = nn.Dropout(dropout) if dropout else None

    def hybrid_forward(self, F, x, weight, bias=None):
        x = super().hybrid_forward(F, x, weight, bias)
        if self._relu:
            x = relu(F, x)
        return self.dropout(x) if self.dropout is not None else x

    def __repr__(self):
        return (super().__repr__() + " + ReLU" * self._relu
                + (f" + {self.dropout}" if self.dropout is not None else ""))


class LRN(gluon.HybridBlock):
    """Cross-channel LRN.  MXNet divides alpha by the window size, like torch (checked to
    2e-6), so the constants pass through unchanged."""

    def __init__(self, size, alpha, beta, k):
        super().__init__()
        self._args = dict(nsize=size, alpha=alpha, beta=beta, knorm=k)

    def hybrid_forward(self, F, x):
        if is_np_array():   # numpy mode has no LRN: run the legacy operator on a view
            return F.LRN(x.as_nd_ndarray(), **self._args).as_np_ndarray()
        return F.LRN(x, **self._args)


class GlobalAvgPool(gluon.HybridBlock):
    """Mean over H and W: (N, C, H, W) -> (N, C), the spec's (C,) rows."""

    def hybrid_forward(self, F, x):
        return F.np.mean(x, axis=(2, 3)) if is_np_array() else F.mean(x, axis=(2, 3))


class Sequential(gluon.HybridBlock):
    """Named children called in order: ``Sequential(conv=..., pool=...)`` (HybridSequential
    would name them 0, 1, ..., and the canonical keys need ``b1.conv``)."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)

    def hybrid_forward(self, F, x):
        for child in self._children.values():
            x = child(x)
        return x


def canonical_params(block: gluon.Block) -> "OrderedDict[str, gluon.Parameter]":
    """Canonical weight key -> Parameter (BatchNorm's gamma/beta renamed weight/bias)."""
    rename = {"gamma": "weight", "beta": "bias"}
    out = OrderedDict()
    for path, param in block._collect_params_with_prefix().items():
        head, _, leaf = path.rpartition(".")
        out[f"{head}.{rename.get(leaf, leaf)}"] = param
    return out


def spec_args(factory, kwargs) -> dict:
    """``kwargs`` completed with the spec factory's defaults (the numbers stay in specs)."""
    import inspect
    bound = inspect.signature(factory).bind(**kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


class Net(gluon.HybridBlock):
    """Base of every network: a ``HybridBlock`` whose ``hybrid_forward`` calls its top-level
    blocks in order, so ``hybridize()`` makes the whole net one cached graph (GoogLeNet,
    training, batch 128: 71-74 examples/s and 1.6 GB peak, against 62-66 and 1.9 GB with
    one graph per block).  GoogLeNetV1 keeps one graph per block: see its ``hybridize``.

    Subclasses build their layers, then call :meth:`finish` (Xavier init on the CPU).
    """

    def __init__(self, spec: specs.NetSpec):
        super().__init__()
        self.spec = spec
        self._checked = set()
        self._np = is_np_array()            # the array mode the parameters are made in

    def finish(self, ctx=None) -> None:
        self.initialize(XAVIER, ctx=ctx or mx.cpu())

    @property
    def block_names(self) -> List[str]:
        return self.spec.block_names

    def block(self, name: str) -> gluon.Block:
        """The top-level block (or auxiliary head) called ``name``."""
        return self._children[name]

    def check_input(self, x) -> None:
        """InputShapeError naming the size the network takes, in Python before any graph;
        TypeError when the array's mode is not the one the net was built in."""
        if isinstance(x, mx.np.ndarray) != self._np:
            built, given = (("numpy mode (npx.set_np())", "a legacy mx.nd") if self._np else
                            ("legacy mode", "an mxnet.np"))
            raise TypeError(f"{self.spec.name} was built in {built} and got {given} array: "
                            "build the network in the array mode you use it in (call "
                            "npx.set_np() before creating it, or npx.reset_np())")
        key = tuple(x.shape[1:])
        if key not in self._checked:
            check_input_shape(self.spec, tuple(x.shape))
            self._checked.add(key)

    def forward_blocks(self, x, include_aux: bool = True) -> "OrderedDict[str, object]":
        """Every top-level block's output, and each auxiliary head's after its tap, in the
        current autograd mode (summaries, per-block comparisons)."""
        self.check_input(x)
        taps = dict(self.spec.taps)
        outs = OrderedDict()
        for name in self.block_names:
            x = outs[name] = self._children[name](x)
            if include_aux and name in taps:
                outs[taps[name].name] = self._children[taps[name].name](x)
        return outs

    def __call__(self, x, *args):
        self.check_input(x)
        return super().__call__(x, *args)
