"""The few Keras building blocks d2lport's networks share, and the ``Net`` base class.

Each layer is a Keras layer with PyTorch's *function*: wherever a TensorFlow default computes
something else, the line that fixes it says why (DESIGN.md, "Numerical parity").  Layers are
named like Keras applications name theirs, structurally (``name="conv1"``); the canonical
weight key of a layer is the dotted path of names from the network down
(``b3.inception3a.branch2.conv2``), so weights map by name onto the PyTorch and MXNet nets.
Keras' default initialisers are d2lport's: Glorot (Xavier) uniform kernels, zero biases.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import keras
import numpy as np
import tensorflow as tf

from .. import specs
from ..common import AuxOutputs, check_input_shape

__all__ = ["AuxOutputs", "AvgPool2D", "Conv", "Dense", "LRN", "MaxPool2D", "Net",
           "SingleBlock"]


def _same(a):
    return a


def _keras_padding(kernel_size: int, strides: int, padding: int):
    """('same', 0) where Keras' own padding equals PyTorch's symmetric ``padding``, else
    ('valid', padding): the layer pads by hand."""
    # TF's 'same' pads (k-1)/2 per side only at stride 1; a 7x7/2 conv on 96 px pads (2, 3).
    if padding and strides == 1 and 2 * padding == kernel_size - 1:
        return "same", 0
    return "valid", padding


class _TorchPadding:
    """PyTorch's explicit padding in front of a Keras conv or pool (``self.explicit_padding``)."""

    def pad(self, x, value=0.0):
        p = self.explicit_padding
        return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=value) if p else x

    def compute_output_shape(self, input_shape):      # Keras' own rule knows no explicit pad
        n, h, w, c = input_shape
        grow = lambda s: None if s is None else s + 2 * self.explicit_padding  # noqa: E731
        return super().compute_output_shape((n, grow(h), grow(w), c))


class Conv(_TorchPadding, keras.layers.Conv2D):
    """Conv2D, optional BatchNorm (child ``bn``), optional ReLU: torchvision's BasicConv2d.
    ``padding`` is PyTorch's (pixels per side)."""

    def __init__(self, filters, kernel_size, strides=1, padding=0, relu=True, batch_norm=False,
                 use_bias=True, name=None):
        mode, self.explicit_padding = _keras_padding(kernel_size, strides, padding)
        super().__init__(filters, kernel_size, strides, padding=mode, use_bias=use_bias,
                         name=name)
        self.relu = relu
        self.bn = (keras.layers.BatchNormalization(
            epsilon=specs.BN_EPS,                   # Keras' default eps is 1e-3, PyTorch's 1e-5
            momentum=1 - specs.BN_MOMENTUM,         # Keras' momentum weighs the old statistic
            name="bn") if batch_norm else None)

    def build(self, input_shape):
        super().build(input_shape)
        if self.bn is not None:
            self.bn.build(tuple(input_shape[:-1]) + (self.filters,))

    def call(self, x):
        x = super().call(self.pad(x))
        if self.bn is not None:
            x = self.bn(x)
        return tf.nn.relu(x) if self.relu else x

    def torch_weights(self):
        """(key, variable, to PyTorch layout, from PyTorch layout) for each canonical weight."""
        hwio_to_oihw = lambda k: k.transpose(3, 2, 0, 1)  # noqa: E731 Keras kernels are HWIO
        yield "weight", self.kernel, hwio_to_oihw, lambda w: w.transpose(2, 3, 1, 0)
        if self.use_bias:
            yield "bias", self.bias, _same, _same
        if self.bn is not None:
            for keras_name, torch_name in (("gamma", "weight"), ("beta", "bias"),
                                           ("moving_mean", "running_mean"),
                                           ("moving_variance", "running_var")):
                yield f"bn.{torch_name}", getattr(self.bn, keras_name), _same, _same


class Dense(keras.layers.Dense):
    """Dense with an optional flatten in front and ReLU + dropout (child ``dropout``) after."""

    def __init__(self, units, relu=False, flatten=False, dropout=0.0, name=None):
        super().__init__(units, activation="relu" if relu else None, name=name)
        self.flatten = flatten
        self.flat_shape = None                     # the (H, W, C) map a flatten sees
        self.dropout = keras.layers.Dropout(dropout, name="dropout") if dropout else None

    def build(self, input_shape):
        if self.flatten:
            self.flat_shape = tuple(int(s) for s in input_shape[1:])
            input_shape = (input_shape[0], math.prod(self.flat_shape))
        super().build(input_shape)
        self.input_spec = None                     # Dense's spec would insist on 2-D input

    def call(self, x):
        if self.flatten:
            x = tf.reshape(x, (-1, math.prod(self.flat_shape)))
        x = super().call(x)
        return self.dropout(x) if self.dropout is not None else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)        # also after a flatten

    def torch_weights(self):
        if self.flat_shape is None:                # Keras (in, out), PyTorch (out, in)
            yield "weight", self.kernel, np.transpose, np.transpose
        else:
            # Keras flattens NHWC in H, W, C order, PyTorch NCHW in C, H, W: permute the rows.
            h, w, c = self.flat_shape
            yield ("weight", self.kernel,
                   lambda k: k.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, h * w * c),
                   lambda t: t.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1))
        yield "bias", self.bias, _same, _same


class MaxPool2D(_TorchPadding, keras.layers.MaxPooling2D):
    """Max-pooling with PyTorch's ``padding``."""

    def __init__(self, pool_size, strides, padding=0, name=None):
        mode, self.explicit_padding = _keras_padding(pool_size, strides, padding)
        super().__init__(pool_size, strides, padding=mode, name=name)

    def call(self, x):
        return super().call(self.pad(x, float("-inf")))   # padding must never win a window


class AvgPool2D(_TorchPadding, keras.layers.AveragePooling2D):
    """Average pooling with PyTorch's ``padding`` (padded zeros count in the mean)."""

    def __init__(self, pool_size, strides, padding=0, name=None):
        self.explicit_padding = padding       # never 'same': TF's mean skips the padded cells
        super().__init__(pool_size, strides, padding="valid", name=name)

    def call(self, x):
        return super().call(self.pad(x))


class LRN(keras.layers.Layer):
    """Local response normalisation across channels, PyTorch's convention (``size``, ``alpha``
    over the window, ``beta``, ``k``; ``specs.GOOGLENET_LRN``, ``specs.VGG_LRN``)."""

    def __init__(self, size, alpha, beta, k, name=None):
        super().__init__(name=name)
        if size % 2 == 0:
            raise NotImplementedError(f"LRN size {size}: TF's window is symmetric, odd only")
        self.depth_radius = (size - 1) // 2        # TF takes the half-width, not the window
        self.alpha = alpha / size                  # PyTorch divides alpha by the window, TF not
        self.beta, self.k = beta, k

    def call(self, x):
        # In float32 even under mixed precision: a sum of squares.
        y = tf.nn.local_response_normalization(tf.cast(x, tf.float32), self.depth_radius,
                                               bias=self.k, alpha=self.alpha, beta=self.beta)
        return tf.cast(y, x.dtype)


# --------------------------------------------------------------------------- the network base
def _nchw(shape):
    """Canonical (C, H, W) / (F,) of a per-example NHWC / (F,) shape."""
    shape = tuple(shape)
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


class Net(keras.Model):
    """A network (NHWC input) with its spec: ``spec``, ``block_names``, ``forward_blocks``.

    A subclass creates its layers, named as the spec's blocks, writes ``call`` and ends its
    constructor with ``self.build(...)``: a zero batch then runs through every block and
    auxiliary head, so every weight exists before the first call (``get_weights``).
    """

    def __init__(self, spec: specs.NetSpec):
        super().__init__(name=spec.name)
        self.spec = spec
        self._checked = []
        specs.infer(spec)      # a spec too small for its own input fails here, by name

    @property
    def block_names(self):
        return self.spec.block_names

    def build(self, input_shape=None):
        c, h, w = self.spec.input_shape
        self.forward_blocks(tf.zeros((1, h, w, c)), include_aux=True)

    def named_blocks(self):
        """(name, layer) of the blocks, each auxiliary head after its tap (summary order)."""
        heads = dict(self.spec.taps)
        for name in self.block_names:
            yield name, self.block(name)
            if name in heads:
                yield heads[name].name, self.block(heads[name].name)

    def block(self, name: str) -> keras.layers.Layer:
        """The layer of a top-level block or auxiliary head, by canonical name."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{self.spec.name} has no block {name!r}; blocks: {self.block_names}")

    def check_input(self, x) -> None:
        shape = tuple(x.shape)
        if len(shape) == 4 and (shape[1] is None or shape[2] is None):
            return          # a dynamic size (a traced signature): checked once it is known
        if shape[1:] in self._checked:
            return
        if len(shape) == 4 and shape[1] == self.spec.input_shape[0] != shape[3]:
            raise specs.InputShapeError(
                f"{self.spec.name} takes NHWC input (Keras' layout), got {shape}, which "
                f"looks like NCHW: pass tf.transpose(x, (0, 2, 3, 1))")
        n = shape[0] if shape[0] is not None else 1
        check_input_shape(self.spec, (n,) + (_nchw(shape[1:]) if len(shape) == 4 else shape[1:]))
        self._checked.append(shape[1:])

    def __call__(self, x, *args, **kwargs):
        self.check_input(x)     # before Keras' __call__, which would rewrap the message
        return super().__call__(x, *args, **kwargs)

    def forward_blocks(self, x, include_aux=True, training=False):
        """Every block's output, NHWC (and each auxiliary head's after its tap when
        ``include_aux``); in inference unless ``training`` (the heads too, unlike ``call``)."""
        self.check_input(x)
        heads = dict(self.spec.taps)
        outs = OrderedDict()
        for name in self.block_names:
            x = outs[name] = self.block(name)(x, training=training)
            if include_aux and name in heads:
                head = heads[name].name
                outs[head] = self.block(head)(x, training=training)
        return outs


class SingleBlock(Net):
    """A block registered on its own ("inception", "inception_a", "residual_block"): a net
    whose one child is that block, named as the spec's block."""

    def __init__(self, spec: specs.NetSpec, block: keras.layers.Layer):
        super().__init__(spec)
        self.body = block
        self.build()

    def call(self, x, training=None):
        return self.body(x)


# --------------------------------------------------------------------------- canonical names
def named_layers(layer, prefix=""):
    """(dotted path of Keras layer names, layer) for everything under ``layer``, in order."""
    children = (layer.named_blocks() if isinstance(layer, Net) else
                ((c.name, c) for c in layer._flatten_layers(include_self=False, recursive=False)))
    for name, child in children:
        yield prefix + name, child
        yield from named_layers(child, f"{prefix}{name}.")


def torch_variables(layer):
    """(canonical key, Keras variable, to_torch, from_torch) for every canonical weight."""
    for path, sub in named_layers(layer):
        if isinstance(sub, (Conv, Dense)):
            for key, var, to_torch, from_torch in sub.torch_weights():
                yield f"{path}.{key}", var, to_torch, from_torch
