"""Keras 3 models built from the framework-neutral spec (``d2lport.specs``).

Layout: the models run NHWC, TensorFlow's native layout, and ``net(x)`` takes an NHWC batch
like every Keras model (it is what ``tf.data`` yields and what ``model.fit`` passes).  The
package-level helpers that *talk about* shapes (``block_outputs``, ``layer_shapes``,
``summary``) take (N, C, H, W) like the PyTorch and MXNet backends and convert, so the
three summaries line up row by row.

Names: every Keras layer is named by its canonical dotted path
(``b3.inception3a.branch2.conv2``, BatchNorm ``<conv>.bn``); Keras 3 forbids only ``/`` in
layer names.  Canonical weights map onto layers through these paths, never by position.

Where TensorFlow's defaults compute something else than PyTorch's, the layers here spell out
PyTorch's function (see DESIGN.md, "Numerical parity"): explicit padding instead of
``'same'`` wherever the two differ, -inf padding for max-pooling, zero padding counted by
average pooling, BatchNorm epsilon/momentum from the spec, LRN's alpha rescaled.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from .. import specs
from ..common import AuxOutputs, check_input_shape


def _padding_mode(kernel: int, stride: int, padding: int):
    """'valid' or 'same' where that *is* PyTorch's symmetric ``padding``, else None.

    TF's SAME pads ``max((ceil(n/s) - 1) * s + k - n, 0)`` in total, the smaller half first.
    With stride 1 and an odd kernel that is (p, p), p = (k - 1) / 2, for every input size,
    so 'same' is exact; with stride 2 it depends on n (a 7x7/2 conv on 96 px pads (2, 3)
    where PyTorch pads (3, 3)), so those layers pad explicitly and use 'valid'.
    """
    if padding == 0:
        return "valid"
    if stride == 1 and kernel % 2 == 1 and padding == kernel // 2:
        return "same"
    return None


def _pad(x, p: int, value: float = 0.0):
    return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=value)


class ConvLayer(keras.layers.Conv2D):
    """Conv2D (PyTorch padding), then optionally BatchNorm (child ``<path>.bn``) and ReLU."""

    def __init__(self, layer: specs.Conv, path: str):
        mode = _padding_mode(layer.kernel, layer.stride, layer.padding)
        super().__init__(layer.out_channels, layer.kernel, strides=layer.stride,
                         padding=mode or "valid", use_bias=layer.bias,
                         kernel_initializer="glorot_uniform", bias_initializer="zeros",
                         name=path)
        self.explicit_pad = 0 if mode else layer.padding
        self.relu = layer.relu
        # Keras' defaults are eps 1e-3, momentum 0.99: pass the spec's (PyTorch's) constants.
        # Keras' momentum weighs the old statistic, PyTorch's the new one, hence 1 - m.
        self.bn = (keras.layers.BatchNormalization(epsilon=specs.BN_EPS,
                                                   momentum=1.0 - specs.BN_MOMENTUM,
                                                   name=path + ".bn")
                   if layer.bn else None)

    def call(self, x, training=None):
        if self.explicit_pad:
            x = _pad(x, self.explicit_pad)
        x = super().call(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return tf.nn.relu(x) if self.relu else x

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        grow = lambda s: None if s is None else s + 2 * self.explicit_pad  # noqa: E731
        return super().compute_output_shape((n, grow(h), grow(w), c))


class DenseLayer(keras.layers.Dense):
    """Dense with the spec's optional flatten, ReLU and dropout (child ``<path>.dropout``).

    The flatten of an NHWC map runs in H, W, C order; the canonical weight is for C, H, W
    order, so ``get_weights``/``set_weights`` permute the kernel rows (``in_shape``).
    """

    def __init__(self, layer: specs.Dense, in_shape: Tuple[int, ...], path: str):
        super().__init__(layer.out_features, kernel_initializer="glorot_uniform",
                         bias_initializer="zeros", name=path)
        self.flatten, self.relu = layer.flatten, layer.relu
        self.in_shape = tuple(int(s) for s in in_shape)      # canonical (C, H, W) or (F,)
        self.dropout = (keras.layers.Dropout(layer.dropout, name=path + ".dropout")
                        if layer.dropout else None)

    def build(self, input_shape):
        # Keras sizes the kernel by the last axis; a flattening layer sees H * W * C inputs.
        if self.flatten:
            flat = (input_shape[0], int(np.prod(input_shape[1:])))
            super().build(flat)
            self.input_spec = keras.InputSpec(ndim=len(input_shape))   # not Dense's 2-D spec
        else:
            super().build(input_shape)

    def call(self, x, training=None):
        if self.flatten:
            x = tf.reshape(x, (-1, int(np.prod(x.shape[1:]))))
        x = super().call(x)
        if self.relu:
            x = tf.nn.relu(x)
        return self.dropout(x, training=training) if self.dropout is not None else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)


class PoolLayer(keras.layers.Layer):
    """Max- or average-pooling with PyTorch's padding semantics.

    Max-pool padding must never win a window: pad with -inf.  Average-pool padding counts
    as zeros (PyTorch's ``count_include_pad=True``), where TF's SAME average divides by the
    number of real cells only: pad with zeros and pool 'valid'.
    """

    def __init__(self, layer: specs.Pool, path: str):
        super().__init__(name=path)
        self.kind, self.kernel, self.stride = layer.kind, layer.kernel, layer.stride
        mode = _padding_mode(layer.kernel, layer.stride, layer.padding)
        if layer.kind == "avg" and mode == "same":
            mode = None
        self.mode = (mode or "valid").upper()
        self.explicit_pad = 0 if mode else layer.padding

    def call(self, x, training=None):
        if self.explicit_pad:
            x = _pad(x, self.explicit_pad, float("-inf") if self.kind == "max" else 0.0)
        pool = tf.nn.max_pool2d if self.kind == "max" else tf.nn.avg_pool2d
        return pool(x, self.kernel, self.stride, self.mode)


class LRNLayer(keras.layers.Layer):
    """Local response normalisation across channels.

    The spec uses PyTorch's convention, ``a / (k + alpha/n * sum a^2) ** beta`` over a
    window of n channels; TF's op takes a radius and no division: radius (n - 1) / 2,
    alpha / n.  The window is symmetric only for odd n, which every spec uses.
    """

    def __init__(self, layer: specs.LRN, path: str):
        super().__init__(name=path)
        if layer.size % 2 == 0:
            raise NotImplementedError(f"{path}: LRN size {layer.size} is even; PyTorch's "
                                      "window is then asymmetric, which TF cannot express")
        self.lrn = dict(depth_radius=(layer.size - 1) // 2, bias=layer.k,
                        alpha=layer.alpha / layer.size, beta=layer.beta)

    def call(self, x, training=None):
        # In float32 even under mixed precision: a sum of squares, cheap at LRN's two places.
        y = tf.nn.local_response_normalization(tf.cast(x, tf.float32), **self.lrn)
        return tf.cast(y, x.dtype)


class GlobalAvgPoolLayer(keras.layers.Layer):
    def call(self, x, training=None):
        return tf.reduce_mean(x, axis=(1, 2))


class SequentialLayer(keras.layers.Layer):
    """The spec's layers in order (a Keras ``Sequential`` would insist on building itself
    as a functional graph; this one just calls its members)."""

    def __init__(self, members: Sequence[keras.layers.Layer], path: str):
        super().__init__(name=path)
        self.members = list(members)

    def call(self, x, training=None):
        for layer in self.members:
            x = layer(x, training=training)
        return x


class ConcatLayer(keras.layers.Layer):
    """Parallel branches (Inception) over one input, concatenated along channels (last)."""

    def __init__(self, branches: Sequence[keras.layers.Layer], path: str):
        super().__init__(name=path)
        self.members = list(branches)

    def call(self, x, training=None):
        return tf.concat([branch(x, training=training) for branch in self.members], axis=-1)


class ResidualLayer(SequentialLayer):
    """``relu(x + body(x))``."""

    def call(self, x, training=None):
        return tf.nn.relu(x + super().call(x, training=training))


def build_layer(layer: specs.Layer, in_shape: Tuple[int, ...], prefix: str = ""):
    """The Keras layer for one spec layer on canonical input ``in_shape`` (C, H, W)/(F,)."""
    path = prefix + layer.name
    if isinstance(layer, specs.Conv):
        return ConvLayer(layer, path)
    if isinstance(layer, specs.Dense):
        return DenseLayer(layer, in_shape, path)
    if isinstance(layer, specs.Pool):
        return PoolLayer(layer, path)
    if isinstance(layer, specs.LRN):
        return LRNLayer(layer, path)
    if isinstance(layer, specs.GlobalAvgPool):
        return GlobalAvgPoolLayer(name=path)
    if isinstance(layer, specs.Dropout):
        return keras.layers.Dropout(layer.rate, name=path)
    if isinstance(layer, specs.Sequential):
        return SequentialLayer(_chain(layer.layers, in_shape, path), path)
    if isinstance(layer, specs.Residual):
        return ResidualLayer(_chain(layer.body, in_shape, path), path)
    if isinstance(layer, specs.Concat):
        return ConcatLayer([build_layer(b, in_shape, path + ".") for b in layer.branches],
                           path)
    raise TypeError(f"unknown layer kind {type(layer).__name__}")


def _chain(layers: Sequence[specs.Layer], shape, path: str) -> List[keras.layers.Layer]:
    out = []
    for layer in layers:
        out.append(build_layer(layer, shape, path + "."))
        shape = specs.output_shape(layer, shape)
    return out


def iter_leaves(layer):
    """(path, layer) for every ConvLayer and DenseLayer under ``layer``, in spec order."""
    if isinstance(layer, (ConvLayer, DenseLayer)):
        yield layer.name, layer
    for child in getattr(layer, "members", ()):
        yield from iter_leaves(child)


def nchw(shape: Sequence) -> Tuple:
    """Canonical (C, H, W) / (F,) of a per-example NHWC / (F,) shape."""
    shape = tuple(shape)
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


class Net(keras.Model):
    """A network (or a single block) built from a :class:`specs.NetSpec`; takes NHWC.

    In training (``net(x, training=True)``) a net with auxiliary heads returns
    ``AuxOutputs(logits, (aux1, aux2))``; otherwise the logits.  Built on construction (a
    zero batch at the spec's input size runs through every block and head).
    """

    def __init__(self, spec: specs.NetSpec):
        super().__init__(name=spec.name)
        self.spec = spec
        self._checked: List[tuple] = []
        specs.infer(spec)      # a spec too small for its own input fails here, by name
        shape = tuple(spec.input_shape)
        shapes = {}
        blocks = []
        for block in spec.blocks:
            blocks.append(build_layer(block, shape))
            shape = specs.output_shape(block, shape)
            shapes[block.name] = shape
        self.blocks = blocks
        self.heads = [build_layer(head, shapes[tap]) for tap, head in spec.taps]
        self._tap_of = {tap: i for i, (tap, _) in enumerate(spec.taps)}
        c, h, w = spec.input_shape
        self.forward_blocks(tf.zeros((1, h, w, c)), include_aux=True)
        self.built = True

    @property
    def block_names(self) -> List[str]:
        return self.spec.block_names

    def rows(self) -> List[keras.layers.Layer]:
        """Blocks and auxiliary heads in summary order (each head after its tap)."""
        out = []
        for name, layer in zip(self.block_names, self.blocks):
            out.append(layer)
            if name in self._tap_of:
                out.append(self.heads[self._tap_of[name]])
        return out

    def block(self, name: str) -> keras.layers.Layer:
        """The layer of a top-level block or auxiliary head, by canonical name."""
        for layer in self.rows():
            if layer.name == name:
                return layer
        raise KeyError(f"{self.spec.name} has no block {name!r}; blocks: {self.block_names}")

    def check_input(self, x) -> None:
        shape = tuple(x.shape)
        if len(shape) == 4 and (shape[1] is None or shape[2] is None):
            return          # a dynamic size (a traced signature): checked once it is known
        key = shape[1:]
        if key in self._checked:
            return
        if len(shape) == 4 and shape[1] == self.spec.input_shape[0] != shape[3]:
            raise specs.InputShapeError(
                f"{self.spec.name} takes NHWC input (Keras' layout), got {shape}, which "
                f"looks like NCHW: pass tf.transpose(x, (0, 2, 3, 1))")
        n = shape[0] if shape[0] is not None else 1
        check_input_shape(self.spec, (n,) + (nchw(shape[1:]) if len(shape) == 4 else shape[1:]))
        self._checked.append(key)

    def __call__(self, x, *args, **kwargs):
        # Checked before Keras' __call__, which would rewrap the error's message.
        self.check_input(x)
        return super().__call__(x, *args, **kwargs)

    def call(self, x, training=None):
        aux = []
        for name, layer in zip(self.block_names, self.blocks):
            x = layer(x, training=training)
            if training and name in self._tap_of:
                aux.append(self.heads[self._tap_of[name]](x, training=training))
        return AuxOutputs(x, tuple(aux)) if aux else x

    def forward_blocks(self, x, include_aux: bool = True, training: bool = False):
        """Every block's output (and the auxiliary heads' when ``include_aux``), NHWC; in
        inference unless ``training`` (the heads too, unlike ``call``)."""
        self.check_input(x)
        outs = OrderedDict()
        for name, layer in zip(self.block_names, self.blocks):
            x = layer(x, training=training)
            outs[name] = x
            if include_aux and name in self._tap_of:
                head = self.heads[self._tap_of[name]]
                outs[head.name] = head(x, training=training)
        return outs


# --------------------------------------------------------------------------- named classes
def build(spec: specs.NetSpec) -> Net:
    return Net(spec)


class GoogLeNet(Net):
    """D2L's GoogLeNet (``specs.googlenet``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 96):
        super().__init__(specs.googlenet(num_classes, in_channels, image_size))


class GoogLeNetV1(Net):
    """The 2014 paper's GoogLeNet with auxiliary heads (``specs.googlenet_v1``)."""

    def __init__(self, num_classes: int = 1000, **kwargs):
        super().__init__(specs.googlenet_v1(num_classes, **kwargs))


class VGG(Net):
    """A VGG configuration ("A", "A-LRN", "B", "C", "D", "E"); see ``specs.vgg``."""

    def __init__(self, config: str = "A", **kwargs):
        super().__init__(specs.vgg(config, **kwargs))


class InceptionANet(Net):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__(specs.inception_a_net(num_classes, in_channels))


class ResidualNet(Net):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__(specs.residual_net(num_classes, in_channels))


# Single blocks, D2L style; Keras builds them on their first (NHWC) call, so the input
# channel count is accepted for the same signature as the other backends but not needed.
def Inception(in_channels: int, c1: int, c2: Sequence[int], c3: Sequence[int], c4: int,
              image_size: int = 28) -> ConcatLayer:
    """One Inception block: ``Inception(192, 64, (96, 128), (16, 32), 32)``."""
    return build_layer(specs.inception("inception", c1, tuple(c2), tuple(c3), c4),
                       (in_channels, image_size, image_size))


def InceptionA(in_channels: int) -> ConcatLayer:
    """The lecture's InceptionA block: ``in_channels`` -> 88 channels."""
    return build_layer(specs.inception_a(), (in_channels, 1, 1))


def ResidualBlock(channels: int) -> ResidualLayer:
    """The lecture's residual block: ``relu(x + conv2(relu(conv1(x))))``."""
    return build_layer(specs.residual("residual", channels), (channels, 1, 1))


def vgg_block(num_convs: int, in_channels: int, out_channels: int,
              batch_norm: bool = False) -> SequentialLayer:
    """D2L's ``vgg_block``: ``num_convs`` 3x3 convs (padding 1) + ReLU, then a 2x2 max-pool."""
    layers = tuple(specs.Conv(f"conv{i + 1}", out_channels, 3, padding=1, bn=batch_norm)
                   for i in range(num_convs)) + (specs.Pool("pool", "max", 2, 2),)
    return build_layer(specs.Sequential("block", layers), (in_channels, 2, 2))
