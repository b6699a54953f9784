"""PyTorch modules built from the framework-neutral spec (``d2lport.specs``).

Module names follow the spec tree, so ``state_dict()`` keys *are* the canonical weight keys
(``b3.inception3a.branch2.conv2.weight``, ``block1.conv1.bn.running_var``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .. import specs
from ..common import AuxOutputs, check_input_shape


class ConvLayer(nn.Conv2d):
    """Conv2d, then (optionally) BatchNorm as child ``bn``, then (optionally) ReLU."""

    def __init__(self, in_channels: int, layer: specs.Conv):
        super().__init__(in_channels, layer.out_channels, layer.kernel, layer.stride,
                         layer.padding, bias=layer.bias)
        self.relu = layer.relu
        if layer.bn:
            self.bn = nn.BatchNorm2d(layer.out_channels, eps=specs.BN_EPS,
                                     momentum=specs.BN_MOMENTUM)
        else:
            self.bn = None

    def forward(self, x):
        x = self._conv_forward(x, self.weight, self.bias)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x


class DenseLayer(nn.Linear):
    """Linear with the spec's optional flatten (C, H, W order), ReLU and dropout."""

    def __init__(self, in_features: int, layer: specs.Dense):
        super().__init__(in_features, layer.out_features)
        self.flatten, self.relu, self.p = layer.flatten, layer.relu, layer.dropout

    def forward(self, x):
        if self.flatten:
            x = torch.flatten(x, 1)
        x = F.linear(x, self.weight, self.bias)
        if self.relu:
            x = F.relu(x, inplace=True)
        return F.dropout(x, self.p, self.training) if self.p else x


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class ConcatBranches(nn.Module):
    """Parallel branches (Inception), concatenated along channels."""

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.children()], dim=1)


class ResidualLayers(nn.Sequential):
    """``relu(x + body(x))``; the body's layers are this module's children."""

    def forward(self, x):
        return F.relu(x + super().forward(x))


def build_layer(layer: specs.Layer, in_shape: Tuple[int, ...]) -> nn.Module:
    """The module for one spec layer on input ``in_shape`` (C, H, W) or (F,)."""
    if isinstance(layer, specs.Conv):
        return ConvLayer(in_shape[0], layer)
    if isinstance(layer, specs.Dense):
        n_in = 1
        for s in in_shape:
            n_in *= s
        return DenseLayer(n_in, layer)
    if isinstance(layer, specs.Pool):
        if layer.kind == "max":
            return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
        return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, specs.LRN):
        return nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
    if isinstance(layer, specs.GlobalAvgPool):
        return GlobalAvgPool()
    if isinstance(layer, specs.Dropout):
        return nn.Dropout(layer.rate)
    if isinstance(layer, specs.Sequential):
        return _sequential(nn.Sequential(), layer.layers, in_shape)
    if isinstance(layer, specs.Residual):
        return _sequential(ResidualLayers(), layer.body, in_shape)
    if isinstance(layer, specs.Concat):
        module = ConcatBranches()
        for branch in layer.branches:
            module.add_module(branch.name, build_layer(branch, in_shape))
        return module
    raise TypeError(f"unknown layer kind {type(layer).__name__}")


def _sequential(module: nn.Sequential, layers: Sequence[specs.Layer], shape) -> nn.Sequential:
    for layer in layers:
        module.add_module(layer.name, build_layer(layer, shape))
        shape = specs.output_shape(layer, shape)
    return module


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform kernels and zero biases (D2L's ``init_cnn``; Keras' default kernel
    initialiser), so the three frameworks start from the same distribution."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Net(nn.Module):
    """A network (or a single block) built from a :class:`specs.NetSpec`.

    Children are the spec's top-level blocks, in order, then the auxiliary heads.  In
    training mode a net with auxiliary heads returns ``AuxOutputs(logits, (aux1, aux2))``;
    in evaluation mode only the logits.
    """

    def __init__(self, spec: specs.NetSpec):
        super().__init__()
        self.spec = spec
        self._checked = set()
        rows = specs.infer(spec)
        in_shape = tuple(spec.input_shape)
        shapes: Dict[str, Tuple[int, ...]] = {}
        for block in spec.blocks:
            self.add_module(block.name, build_layer(block, in_shape))
            in_shape = specs.output_shape(block, in_shape)
            shapes[block.name] = in_shape
        self._taps = dict(spec.taps)
        for tap, head in spec.taps:
            self.add_module(head.name, build_layer(head, shapes[tap]))
        assert [r.out_shape for r in rows if r.name in shapes] == list(shapes.values())
        init_weights(self)

    @property
    def block_names(self) -> List[str]:
        return self.spec.block_names

    def check_input(self, x: torch.Tensor) -> None:
        key = tuple(x.shape[1:])
        if key not in self._checked:
            check_input_shape(self.spec, tuple(x.shape))
            self._checked.add(key)

    def forward(self, x):
        self.check_input(x)
        aux = []
        for name in self.spec.block_names:
            x = getattr(self, name)(x)
            if self.training and name in self._taps:
                aux.append(getattr(self, self._taps[name].name)(x))
        return AuxOutputs(x, tuple(aux)) if aux else x

    def forward_blocks(self, x, include_aux: bool = True) -> "OrderedDict[str, torch.Tensor]":
        """Every block's output (and auxiliary heads' outputs when ``include_aux``), for
        summaries and per-block comparisons; runs in the module's current mode."""
        self.check_input(x)
        outs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name in self.spec.block_names:
            x = getattr(self, name)(x)
            outs[name] = x
            if include_aux and name in self._taps:
                head = self._taps[name].name
                outs[head] = getattr(self, head)(x)
        return outs

    def extra_repr(self):
        return f"spec={self.spec.name!r}, input_shape={self.spec.input_shape}"


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


def Inception(in_channels: int, c1: int, c2: Sequence[int], c3: Sequence[int], c4: int,
              image_size: int = 28) -> ConcatBranches:
    """One Inception block, D2L style: ``Inception(192, 64, (96, 128), (16, 32), 32)``."""
    return build_layer(specs.inception("inception", c1, tuple(c2), tuple(c3), c4),
                       (in_channels, image_size, image_size))


def InceptionA(in_channels: int) -> ConcatBranches:
    """The lecture's InceptionA block: ``in_channels`` -> 88 channels."""
    return build_layer(specs.inception_a(), (in_channels, 1, 1))


def ResidualBlock(channels: int) -> ResidualLayers:
    """The lecture's residual block: ``relu(x + conv2(relu(conv1(x))))``."""
    return build_layer(specs.residual("residual", channels), (channels, 1, 1))


def vgg_block(num_convs: int, in_channels: int, out_channels: int,
              batch_norm: bool = False) -> nn.Sequential:
    """D2L's ``vgg_block``: ``num_convs`` 3x3 convs (padding 1) + ReLU, then a 2x2 max-pool."""
    layers = tuple(specs.Conv(f"conv{i + 1}", out_channels, 3, padding=1, bn=batch_norm)
                   for i in range(num_convs)) + (specs.Pool("pool", "max", 2, 2),)
    return build_layer(specs.Sequential("block", layers), (in_channels, 2, 2))
