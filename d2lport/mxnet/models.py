"""Gluon blocks built from the framework-neutral spec (``d2lport.specs``).

Every layer is a ``HybridBlock`` registered under its spec name, so Gluon's structural
parameter paths (``Block._collect_params_with_prefix``, what ``save_parameters`` writes)
are the canonical weight keys, except BatchNorm's ``gamma``/``beta`` which are torch's
``weight``/``bias`` (see :func:`canonical_params`).

Hybridization and auxiliary heads: a hybridized block traces its graph once, on its first
call, so its output structure is frozen by the mode of that call (MXNet 1.9
``HybridBlock._build_cache``).  GoogLeNet v1 returns ``AuxOutputs`` in training and bare
logits in inference, so :class:`Net` is a plain ``gluon.Block``: it walks the top-level
blocks in Python, checks the input shape, and calls the heads only when
``autograd.is_training()``.  Each top-level block and head is a ``HybridBlock`` that
``net.hybridize()`` turns into its own cached graph (dropout inside a graph still obeys
the mode at run time).  One graph for the whole of D2L's GoogLeNet was no faster on CPU
(1.22 s vs 1.17 s per training step at batch 64, 96 px), so nothing is lost.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Tuple

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

from .. import specs
from ..common import AuxOutputs, check_input_shape

# Glorot/Xavier uniform, limit sqrt(6 / (fan_in + fan_out)): the same distribution as
# torch's xavier_uniform_ and Keras' default kernel initialiser.  Biases use the layers'
# own 'zeros', BatchNorm gamma/beta/running stats their own ones/zeros.
XAVIER = mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)
# Gluon's BatchNorm momentum is the weight of the running value: 1 - torch's momentum.
# (Training differs in one detail: MXNet updates running_var with the biased batch
# variance, torch with the unbiased one, a factor n/(n-1) over n = N*H*W values.)
BN_MOMENTUM = 1.0 - specs.BN_MOMENTUM


class ConvLayer(nn.Conv2D):
    """Convolution, then (optionally) BatchNorm as child ``bn``, then (optionally) ReLU.
    ``in_channels`` is given, so the kernel's shape is known before initialisation."""

    def __init__(self, in_channels: int, layer: specs.Conv, **kwargs):
        super().__init__(layer.out_channels, layer.kernel, strides=layer.stride,
                         padding=layer.padding, use_bias=layer.bias,
                         in_channels=in_channels, **kwargs)
        self._relu = layer.relu
        self.bn = None
        if layer.bn:
            with self.name_scope():
                self.bn = nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=specs.BN_EPS,
                                       in_channels=layer.out_channels, prefix="bn_")

    def hybrid_forward(self, F, x, weight, bias=None):
        x = super().hybrid_forward(F, x, weight, bias)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self._relu else x

    def __repr__(self):
        return super().__repr__() + " + BatchNorm" * (self.bn is not None) + " + ReLU" * self._relu


class DenseLayer(nn.Dense):
    """Fully connected layer with the spec's flatten (C, H, W order, like torch), ReLU and
    dropout (training only: the Dropout operator is the identity outside training)."""

    def __init__(self, in_units: int, layer: specs.Dense, **kwargs):
        super().__init__(layer.out_features, flatten=True, in_units=in_units, **kwargs)
        self._relu, self._rate = layer.relu, layer.dropout

    def hybrid_forward(self, F, x, weight, bias=None):
        x = super().hybrid_forward(F, x, weight, bias)
        if self._relu:
            x = F.relu(x)
        return F.Dropout(x, p=self._rate) if self._rate else x

    def __repr__(self):
        return (super().__repr__() + " + ReLU" * self._relu
                + (f" + Dropout({self._rate})" if self._rate else ""))


class LRNLayer(gluon.HybridBlock):
    """Cross-channel LRN.  MXNet's operator divides alpha by the window size, like torch
    (``a / (knorm + alpha / nsize * sum a^2) ** beta``; checked to 2e-6 against torch), so
    the spec's numbers pass through unchanged."""

    def __init__(self, layer: specs.LRN, **kwargs):
        super().__init__(**kwargs)
        self._args = dict(alpha=layer.alpha, beta=layer.beta, knorm=layer.k, nsize=layer.size)

    def hybrid_forward(self, F, x):
        return F.LRN(x, **self._args)


class GlobalAvgPool(gluon.HybridBlock):
    """Mean over H and W: (N, C, H, W) -> (N, C), like the spec's (C,) output."""

    def hybrid_forward(self, F, x):
        return F.mean(x, axis=(2, 3))


def _tree(block) -> str:
    """Gluon's Block.__repr__ lists only children set as attributes; ours are registered
    by name, so print them from ``_children``."""
    lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ")
             for name, child in block._children.items()]
    return f"{type(block).__name__}(\n" + "\n".join(lines) + "\n)"


class SequentialLayers(gluon.HybridBlock):
    """Children in order, each registered under its spec name (HybridSequential would
    name them 0, 1, 2 ...)."""

    __repr__ = _tree

    def hybrid_forward(self, F, x):
        for child in self._children.values():
            x = child(x)
        return x


class ResidualLayers(SequentialLayers):
    """``relu(x + body(x))``; the body's layers are this block's children."""

    def hybrid_forward(self, F, x):
        return F.relu(x + super().hybrid_forward(F, x))


class ConcatBranches(gluon.HybridBlock):
    """Parallel branches (Inception) over one input, concatenated along channels."""

    __repr__ = _tree

    def hybrid_forward(self, F, x):
        return F.concat(*[branch(x) for branch in self._children.values()], dim=1)


def build_layer(layer: specs.Layer, in_shape: Tuple[int, ...]) -> gluon.HybridBlock:
    """The block for one spec layer on input ``in_shape`` (C, H, W) or (F,).  Call it inside
    the parent's ``name_scope()`` so parameter names nest (``net0_b1_conv_weight``)."""
    prefix = f"{layer.name}_"
    if isinstance(layer, specs.Conv):
        return ConvLayer(in_shape[0], layer, prefix=prefix)
    if isinstance(layer, specs.Dense):
        n_in = 1
        for s in in_shape:
            n_in *= s
        return DenseLayer(n_in, layer, prefix=prefix)
    if isinstance(layer, specs.Pool):
        # Verified equal to torch: max pooling pads with -inf, average pooling counts the
        # padded zeros (count_include_pad=True), floor output size ('valid' convention).
        if layer.kind == "max":
            return nn.MaxPool2D(layer.kernel, layer.stride, layer.padding, prefix=prefix)
        return nn.AvgPool2D(layer.kernel, layer.stride, layer.padding,
                            count_include_pad=True, prefix=prefix)
    if isinstance(layer, specs.LRN):
        return LRNLayer(layer, prefix=prefix)
    if isinstance(layer, specs.GlobalAvgPool):
        return GlobalAvgPool(prefix=prefix)
    if isinstance(layer, specs.Dropout):
        return nn.Dropout(layer.rate, prefix=prefix)
    if isinstance(layer, specs.Sequential):
        return _fill(SequentialLayers(prefix=prefix), layer.layers, in_shape)
    if isinstance(layer, specs.Residual):
        return _fill(ResidualLayers(prefix=prefix), layer.body, in_shape)
    if isinstance(layer, specs.Concat):
        block = ConcatBranches(prefix=prefix)
        with block.name_scope():
            for branch in layer.branches:
                block.register_child(build_layer(branch, in_shape), branch.name)
        return block
    raise TypeError(f"unknown layer kind {type(layer).__name__}")


def _fill(block: gluon.HybridBlock, layers: Sequence[specs.Layer], shape) -> gluon.HybridBlock:
    with block.name_scope():
        for layer in layers:
            block.register_child(build_layer(layer, shape), layer.name)
            shape = specs.output_shape(layer, shape)
    return block


def canonical_params(block: gluon.Block) -> "OrderedDict[str, gluon.Parameter]":
    """Canonical weight key -> Parameter.  Gluon's structural path already is the spec path;
    only BatchNorm's gamma/beta become torch's weight/bias."""
    rename = {"gamma": "weight", "beta": "bias"}     # only BatchNorm has these names
    out = OrderedDict()
    for path, param in block._collect_params_with_prefix().items():
        head, _, leaf = path.rpartition(".")
        out[f"{head}.{rename.get(leaf, leaf)}"] = param
    return out


class Net(gluon.Block):
    """A network (or a single block) built from a :class:`specs.NetSpec`, initialised on
    the CPU (Xavier-uniform kernels, zero biases; seed with ``mx.random.seed``).

    Children are the spec's top-level blocks, in order, then the auxiliary heads.  In
    training mode (``autograd.record()``) a net with auxiliary heads returns
    ``AuxOutputs(logits, (aux1, aux2))``; otherwise only the logits.
    """

    def __init__(self, spec: specs.NetSpec, ctx=None, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self._checked = set()
        self._taps = dict(spec.taps)
        rows = {r.name: r.out_shape for r in specs.infer(spec)}
        shape = tuple(spec.input_shape)
        with self.name_scope():
            for block in spec.blocks:
                self.register_child(build_layer(block, shape), block.name)
                shape = rows[block.name]
            for tap, head in spec.taps:
                self.register_child(build_layer(head, rows[tap]), head.name)
        self.initialize(XAVIER, ctx=ctx or mx.cpu())

    __repr__ = _tree

    @property
    def block_names(self) -> List[str]:
        return self.spec.block_names

    def block(self, name: str) -> gluon.HybridBlock:
        """The top-level block (or auxiliary head) called ``name``."""
        return self._children[name]

    def check_input(self, x) -> None:
        """InputShapeError naming the size the network takes; in Python, before any graph
        (a traced graph would fail deep inside with an operator's shape message)."""
        key = tuple(x.shape[1:])
        if key not in self._checked:
            check_input_shape(self.spec, tuple(x.shape))
            self._checked.add(key)

    def forward(self, x):
        self.check_input(x)
        training = autograd.is_training()
        aux = []
        for name in self.spec.block_names:
            x = self._children[name](x)
            if training and name in self._taps:
                aux.append(self._children[self._taps[name].name](x))
        return AuxOutputs(x, tuple(aux)) if aux else x

    def forward_blocks(self, x, include_aux: bool = True) -> "OrderedDict[str, mx.nd.NDArray]":
        """Every block's output (and the auxiliary heads' when ``include_aux``), in the
        current autograd mode; for summaries and per-block comparisons."""
        self.check_input(x)
        outs: "OrderedDict[str, mx.nd.NDArray]" = OrderedDict()
        for name in self.spec.block_names:
            x = self._children[name](x)
            outs[name] = x
            if include_aux and name in self._taps:
                head = self._taps[name].name
                outs[head] = self._children[head](x)
        return outs


# --------------------------------------------------------------------------- named classes
def build(spec: specs.NetSpec, hybridize: bool = True, ctx=None) -> Net:
    """An initialised Net for ``spec``; hybridized with static memory and shapes by default
    (each top-level block becomes one cached graph)."""
    net = Net(spec, ctx=ctx)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


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


def _standalone(layer: specs.Layer, in_shape: Tuple[int, ...]) -> gluon.HybridBlock:
    """A single block outside a Net, initialised like one (D2L builds blocks on their own)."""
    block = build_layer(layer, in_shape)
    block.initialize(XAVIER)
    return block


def Inception(in_channels: int, c1: int, c2: Sequence[int], c3: Sequence[int], c4: int,
              image_size: int = 28) -> ConcatBranches:
    """One Inception block, D2L style: ``Inception(192, 64, (96, 128), (16, 32), 32)``."""
    return _standalone(specs.inception("inception", c1, tuple(c2), tuple(c3), c4),
                       (in_channels, image_size, image_size))


def InceptionA(in_channels: int) -> ConcatBranches:
    """The lecture's InceptionA block: ``in_channels`` -> 88 channels."""
    return _standalone(specs.inception_a(), (in_channels, 1, 1))


def ResidualBlock(channels: int) -> ResidualLayers:
    """The lecture's residual block: ``relu(x + conv2(relu(conv1(x))))``."""
    return _standalone(specs.residual("residual", channels), (channels, 1, 1))


def vgg_block(num_convs: int, in_channels: int, out_channels: int,
              batch_norm: bool = False) -> SequentialLayers:
    """D2L's ``vgg_block``: ``num_convs`` 3x3 convs (padding 1) + ReLU, then a 2x2 max-pool."""
    layers = tuple(specs.Conv(f"conv{i + 1}", out_channels, 3, padding=1, bn=batch_norm)
                   for i in range(num_convs)) + (specs.Pool("pool", "max", 2, 2),)
    return _standalone(specs.Sequential("block", layers), (in_channels, 2, 2))

