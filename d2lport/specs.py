"""Framework-neutral architecture data: every number of every d2lport network lives here.

A network is a :class:`NetSpec`: an ordered list of named top-level *blocks* (the rows of
``summary`` and the points where the frameworks are compared), built from a handful of layer
kinds (:class:`Conv`, :class:`Pool`, :class:`LRN`, :class:`GlobalAvgPool`, :class:`Dense`,
:class:`Dropout`) and two containers (:class:`Sequential`, :class:`Concat` for Inception's
parallel branches, :class:`Residual` for ``relu(x + f(x))``).  Each framework package only
interprets these kinds; none of them holds a channel count of its own.

Canonical layer names are the dotted paths of the tree (``b3.inception3a.branch2.conv2``);
a convolution's BatchNorm is ``<conv>.bn``.  Canonical weight keys add the torch parameter
name (``.weight``, ``.bias``, ``.running_mean``, ``.running_var``) and use torch layouts.

This module imports no framework.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

# BatchNorm constants shared by all backends, in torch's convention
# (running = (1 - momentum) * running + momentum * batch).  Keras and Gluon express the
# same update as momentum 0.9; their own defaults (Keras eps 1e-3, momentum 0.99) differ,
# so backends must pass these explicitly.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


# --------------------------------------------------------------------------- layer kinds
@dataclass(frozen=True)
class Conv:
    """2-D convolution, optionally followed by BatchNorm (``<name>.bn``) and ReLU."""
    name: str
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0          # symmetric zero padding, PyTorch/MXNet semantics
    relu: bool = True
    bn: bool = False
    bias: bool = True


@dataclass(frozen=True)
class Pool:
    """Max or average pooling.  Max-pool padding behaves like -inf; average-pool padding
    counts the padded zeros (PyTorch's ``count_include_pad=True`` default)."""
    name: str
    kind: str                 # "max" | "avg"
    kernel: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class LRN:
    """Local response normalisation across channels, in PyTorch's convention:
    ``b_c = a_c / (k + alpha / size * sum_{c' in window} a_c'^2) ** beta``."""
    name: str
    size: int
    alpha: float
    beta: float
    k: float


@dataclass(frozen=True)
class GlobalAvgPool:
    """Average over H and W; the output is a vector (C,)."""
    name: str = "gap"


@dataclass(frozen=True)
class Dense:
    """Fully connected layer.  ``flatten=True`` first flattens a (C, H, W) input in C, H, W
    order (the canonical order; NHWC backends permute the weight rows instead).
    ``dropout`` is applied after the activation, in training only."""
    name: str
    out_features: int
    relu: bool = False
    flatten: bool = False
    dropout: float = 0.0


@dataclass(frozen=True)
class Dropout:
    name: str
    rate: float


@dataclass(frozen=True)
class Sequential:
    name: str
    layers: Tuple["Layer", ...]


@dataclass(frozen=True)
class Concat:
    """Parallel branches over the same input, concatenated along channels."""
    name: str
    branches: Tuple[Sequential, ...]


@dataclass(frozen=True)
class Residual:
    """``relu(x + body(x))``; the body keeps the channel count and spatial size."""
    name: str
    body: Tuple["Layer", ...]


Layer = Union[Conv, Pool, LRN, GlobalAvgPool, Dense, Dropout, Sequential, Concat, Residual]


@dataclass(frozen=True)
class NetSpec:
    """A complete network (or a single block registered on its own)."""
    name: str
    input_shape: Tuple[int, int, int]                # (C, H, W) it is built for
    blocks: Tuple[Layer, ...]
    # Auxiliary heads: block name -> head applied to that block's output (training only).
    taps: Tuple[Tuple[str, Sequential], ...] = ()
    # True when any H, W >= the minimum works (global pooling, no Dense after a Flatten).
    any_size: bool = True
    description: str = ""

    @property
    def block_names(self) -> List[str]:
        return [b.name for b in self.blocks]

    @property
    def aux_heads(self) -> Dict[str, Sequential]:
        return dict(self.taps)


# --------------------------------------------------------------------------- errors
class InputShapeError(ValueError):
    """An input whose size the network cannot take; the message names what it can take."""


# --------------------------------------------------------------------------- shape inference
Shape = Tuple[int, ...]       # (C, H, W) or (F,)


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class LayerInfo:
    path: str
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    params: int


def _walk(layer: Layer, shape: Shape, prefix: str, out: List[LayerInfo]) -> Shape:
    """Infer the output shape of ``layer`` on ``shape`` (C,H,W)/(F,), appending leaf infos."""
    path = f"{prefix}{layer.name}"
    if isinstance(layer, Sequential):
        for sub in layer.layers:
            shape = _walk(sub, shape, path + ".", out)
        return shape
    if isinstance(layer, Concat):
        outs = [_walk(b, shape, path + ".", out) for b in layer.branches]
        hw = {o[1:] for o in outs}
        if len(hw) != 1:
            raise InputShapeError(f"{path}: branches disagree on spatial size {sorted(hw)}")
        return (sum(o[0] for o in outs),) + outs[0][1:]
    if isinstance(layer, Residual):
        body_out = shape
        for sub in layer.body:
            body_out = _walk(sub, body_out, path + ".", out)
        if body_out != shape:
            raise InputShapeError(f"{path}: body maps {shape} to {body_out}; a residual "
                                  "connection needs them equal")
        return shape
    if isinstance(layer, Conv):
        c, h, w = _need_image(shape, path)
        oh, ow = (_out(s, layer.kernel, layer.stride, layer.padding) for s in (h, w))
        _need_positive(path, (h, w), (oh, ow), layer.kernel, layer.padding)
        params = layer.kernel * layer.kernel * c * layer.out_channels
        params += layer.out_channels * (int(layer.bias) + 2 * int(layer.bn))
        o = (layer.out_channels, oh, ow)
        out.append(LayerInfo(path, layer, shape, o, params))
        return o
    if isinstance(layer, Pool):
        c, h, w = _need_image(shape, path)
        oh, ow = (_out(s, layer.kernel, layer.stride, layer.padding) for s in (h, w))
        _need_positive(path, (h, w), (oh, ow), layer.kernel, layer.padding)
        o = (c, oh, ow)
        out.append(LayerInfo(path, layer, shape, o, 0))
        return o
    if isinstance(layer, (LRN, Dropout)):
        out.append(LayerInfo(path, layer, shape, shape, 0))
        return shape
    if isinstance(layer, GlobalAvgPool):
        c, _, _ = _need_image(shape, path)
        out.append(LayerInfo(path, layer, shape, (c,), 0))
        return (c,)
    if isinstance(layer, Dense):
        if layer.flatten:
            n_in = 1
            for s in shape:
                n_in *= s
        else:
            if len(shape) != 1:
                raise InputShapeError(f"{path}: expects a vector, got {shape}")
            n_in = shape[0]
        o = (layer.out_features,)
        out.append(LayerInfo(path, layer, shape, o, n_in * layer.out_features + layer.out_features))
        return o
    raise TypeError(f"unknown layer kind {type(layer).__name__}")


def _need_image(shape: Shape, path: str) -> Tuple[int, int, int]:
    if len(shape) != 3:
        raise InputShapeError(f"{path}: expects a (C, H, W) input, got {shape}")
    return shape  # type: ignore[return-value]


class _TooSmall(InputShapeError):
    pass


def _need_positive(path, hw, ohw, kernel, padding):
    if min(ohw) < 1 or min(hw) + 2 * padding < kernel:
        raise _TooSmall(f"{path}: a {kernel}x{kernel} window does not fit a "
                        f"{hw[0]}x{hw[1]} input")


@dataclass
class BlockInfo:
    name: str
    out_shape: Shape
    params: int
    layers: List[LayerInfo] = field(default_factory=list)


def infer(spec: NetSpec, input_shape: Optional[Sequence[int]] = None,
          include_aux: bool = True) -> List[BlockInfo]:
    """Per-block output shapes and trainable parameter counts, from the spec alone.

    ``input_shape`` is (C, H, W) or (N, C, H, W); default: the shape the net is built for.
    Auxiliary heads appear as extra rows (``aux1``...) after the block they tap.
    Raises :class:`InputShapeError` with the smallest/expected size when the input cannot work.
    """
    shape = _chw(spec, input_shape)
    c, h, w = spec.input_shape
    if shape[0] != c:
        if shape[2] == c and shape[0] > 4:
            # (H, W, C) read as (C, H, W): a channels-last batch given to an NCHW network
            raise InputShapeError(
                f"{spec.name} takes NCHW input (N, {c}, H, W), got {tuple(input_shape)}, "
                f"which looks like NHWC (channels last): transpose it to NCHW first "
                f"(torch: x.permute(0, 3, 1, 2); numpy/MXNet: x.transpose(0, 3, 1, 2))")
        raise InputShapeError(f"{spec.name} takes {c}-channel input, "
                              f"got {shape[0]} channels: pass in_channels={shape[0]} to "
                              "create_model, or convert the images")
    if not spec.any_size and shape[1:] != spec.input_shape[1:]:
        m = min_input_size(spec)
        got = f"{shape[1]}x{shape[2]}"
        if min(shape[1:]) < m:
            # image_size=<too small> would fail in its turn: only a resize can help
            fix = (f"the network needs at least {m}x{m}, so resize the images to {h}x{w} "
                   f"(or build it with image_size={max(m, 1)} or more and resize to that)")
        elif shape[1] != shape[2]:
            fix = (f"resize the images to {h}x{w} (image_size= builds square inputs only)")
        else:
            fix = f"pass image_size={shape[1]} to create_model or resize the images to {h}x{w}"
        raise InputShapeError(
            f"{spec.name} is built for {h}x{w} input (its classifier's size depends on it), "
            f"got {got}: {fix}")
    try:
        return _infer(spec, shape, include_aux)
    except _TooSmall as err:
        m = min_input_size(spec)
        if input_shape is None or not spec.any_size:
            # the network itself is built too small (create_model(image_size=...))
            fix = (f"build it with image_size={m} or more (e.g. image_size={m}) and resize "
                   f"the images to that size")
        else:
            fix = f"resize the images to at least {m}x{m} (e.g. resize={m})"
        raise InputShapeError(f"{spec.name} needs input of at least {m}x{m} pixels, got "
                              f"{shape[1]}x{shape[2]} ({err}): {fix}") from None


def _infer(spec: NetSpec, shape: Shape, include_aux: bool) -> List[BlockInfo]:
    rows: List[BlockInfo] = []
    heads = spec.aux_heads
    for block in spec.blocks:
        leaves: List[LayerInfo] = []
        shape = _walk(block, shape, "", leaves)
        rows.append(BlockInfo(block.name, shape, sum(l.params for l in leaves), leaves))
        if include_aux and block.name in heads:
            head = heads[block.name]
            aux_leaves: List[LayerInfo] = []
            aux_shape = _walk(head, shape, "", aux_leaves)
            rows.append(BlockInfo(head.name, aux_shape, sum(l.params for l in aux_leaves),
                                  aux_leaves))
    return rows


def _chw(spec: NetSpec, input_shape) -> Tuple[int, int, int]:
    if input_shape is None:
        return tuple(spec.input_shape)  # type: ignore[return-value]
    s = tuple(int(v) for v in input_shape)
    if len(s) == 4:
        s = s[1:]
    if len(s) != 3:
        raise InputShapeError(f"input shape must be (N, C, H, W) or (C, H, W), got {input_shape}")
    return s  # type: ignore[return-value]


def min_input_size(spec: NetSpec) -> int:
    """Smallest square input side whose windows all fit (a fixed-size net must also be
    built for that size: ``image_size=``)."""
    c = spec.input_shape[0]
    for side in range(1, 1025):
        try:
            _infer(spec, (c, side, side), True)
            return side
        except _TooSmall:
            continue
    raise InputShapeError(f"{spec.name}: no input size up to 1024 works")


def count_params(spec: NetSpec, include_aux: bool = True) -> int:
    """Trainable parameters (BatchNorm running statistics excluded)."""
    return sum(r.params for r in infer(spec, include_aux=include_aux))


def flops(spec: NetSpec, input_shape: Optional[Sequence[int]] = None,
          include_aux: bool = False) -> int:
    """Floating-point operations of one example's forward pass, counting the convolutions'
    and dense layers' multiply-adds as two each (pooling, ReLU, BatchNorm and LRN are a few
    per activation and left out).  A training step costs about three times this: the
    backward pass computes a gradient for the inputs and one for the weights, each as large
    as the forward product."""
    total = 0
    for row in infer(spec, input_shape, include_aux=include_aux):
        for leaf in row.layers:
            layer = leaf.layer
            if isinstance(layer, Conv):
                c_out, h, w = leaf.out_shape
                total += 2 * leaf.in_shape[0] * layer.kernel ** 2 * c_out * h * w
            elif isinstance(layer, Dense):
                total += 2 * math.prod(leaf.in_shape) * layer.out_features
    return total


def iter_leaves(spec: NetSpec, include_aux: bool = True) -> Iterator[LayerInfo]:
    for row in infer(spec, include_aux=include_aux):
        yield from row.layers


def canonical_shapes(spec: NetSpec, include_aux: bool = True) -> Dict[str, Tuple[int, ...]]:
    """Canonical weight key -> array shape (torch layouts), BN running statistics included."""
    keys: Dict[str, Tuple[int, ...]] = {}
    for leaf in iter_leaves(spec, include_aux):
        layer = leaf.layer
        if isinstance(layer, Conv):
            cin = leaf.in_shape[0]
            keys[f"{leaf.path}.weight"] = (layer.out_channels, cin, layer.kernel, layer.kernel)
            if layer.bias:
                keys[f"{leaf.path}.bias"] = (layer.out_channels,)
            if layer.bn:
                for p in ("weight", "bias", "running_mean", "running_var"):
                    keys[f"{leaf.path}.bn.{p}"] = (layer.out_channels,)
        elif isinstance(layer, Dense):
            n_in = 1
            for s in leaf.in_shape:
                n_in *= s
            keys[f"{leaf.path}.weight"] = (layer.out_features, n_in)
            keys[f"{leaf.path}.bias"] = (layer.out_features,)
    return keys


# --------------------------------------------------------------------------- blocks
def inception(name: str, c1: int, c2: Sequence[int], c3: Sequence[int], c4: int,
              batch_norm: bool = False) -> Concat:
    """The Inception block (Szegedy et al. 2014, Fig. 2b): 1x1 | 1x1->3x3 | 1x1->5x5 |
    3x3 max-pool->1x1, every conv followed by ReLU; output channels c1 + c2[1] + c3[1] + c4."""
    bn = dict(bn=batch_norm, bias=not batch_norm)
    return Concat(name, (
        Sequential("branch1", (Conv("conv", c1, 1, **bn),)),
        Sequential("branch2", (Conv("conv1", c2[0], 1, **bn),
                               Conv("conv2", c2[1], 3, padding=1, **bn))),
        Sequential("branch3", (Conv("conv1", c3[0], 1, **bn),
                               Conv("conv2", c3[1], 5, padding=2, **bn))),
        Sequential("branch4", (Pool("pool", "max", 3, 1, 1),
                               Conv("conv", c4, 1, **bn))),
    ))


# Inception channel tuples (c1, (c2 reduce, c2), (c3 reduce, c3), pool proj) per module:
# Szegedy et al. 2014, Table 1; the same numbers as D2L 8.4.
INCEPTION_CHANNELS: Dict[str, Tuple[int, Tuple[int, int], Tuple[int, int], int]] = {
    "inception3a": (64, (96, 128), (16, 32), 32),
    "inception3b": (128, (128, 192), (32, 96), 64),
    "inception4a": (192, (96, 208), (16, 48), 64),
    "inception4b": (160, (112, 224), (24, 64), 64),
    "inception4c": (128, (128, 256), (24, 64), 64),
    "inception4d": (112, (144, 288), (32, 64), 64),
    "inception4e": (256, (160, 320), (32, 128), 128),
    "inception5a": (256, (160, 320), (32, 128), 128),
    "inception5b": (384, (192, 384), (48, 128), 128),
}
STAGE3 = ("inception3a", "inception3b")
STAGE4 = ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e")
STAGE5 = ("inception5a", "inception5b")


def _inc(name: str, batch_norm: bool = False) -> Concat:
    c1, c2, c3, c4 = INCEPTION_CHANNELS[name]
    return inception(name, c1, c2, c3, c4, batch_norm)


def inception_block(in_channels: int = 192, c1: int = 64, c2=(96, 128), c3=(16, 32),
                    c4: int = 32, image_size: int = 28) -> NetSpec:
    """A single Inception block (default: GoogLeNet's 3a on its 192x28x28 input)."""
    return NetSpec("inception", (in_channels, image_size, image_size),
                   (inception("inception", c1, tuple(c2), tuple(c3), c4),),
                   description="Inception block (GoogLeNet 3a by default)")


# --------------------------------------------------------------------------- GoogLeNet
def googlenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 96) -> NetSpec:
    """D2L's GoogLeNet (Dive into Deep Learning, 8.4): five stages, global average pooling,
    one Linear layer; trained on Fashion-MNIST at 96x96."""
    blocks = (
        Sequential("b1", (Conv("conv", 64, 7, stride=2, padding=3),
                          Pool("pool", "max", 3, 2, 1))),                   # 64 x 24 x 24
        Sequential("b2", (Conv("conv1", 64, 1),
                          Conv("conv2", 192, 3, padding=1),
                          Pool("pool", "max", 3, 2, 1))),                   # 192 x 12 x 12
        Sequential("b3", tuple(_inc(n) for n in STAGE3)
                   + (Pool("pool", "max", 3, 2, 1),)),                     # 480 x 6 x 6
        Sequential("b4", tuple(_inc(n) for n in STAGE4)
                   + (Pool("pool", "max", 3, 2, 1),)),                     # 832 x 3 x 3
        Sequential("b5", tuple(_inc(n) for n in STAGE5)
                   + (GlobalAvgPool("gap"),)),                             # 1024
        Dense("fc", num_classes),                                          # num_classes
    )
    return NetSpec("googlenet", (in_channels, image_size, image_size), blocks,
                   description="GoogLeNet as in D2L 8.4 (1 channel, 96 px)")


# LRN constants of the BVLC GoogLeNet Caffe model (local_size 5, alpha 1e-4, beta 0.75);
# Caffe divides alpha by the window size like PyTorch does, so they carry over unchanged.
GOOGLENET_LRN = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)


def googlenet_aux(name: str, num_classes: int, dropout: float, batch_norm: bool) -> Sequential:
    """Auxiliary classifier (Szegedy et al. 2014, section 5): 5x5/3 average pool, 1x1 conv
    with 128 filters, FC 1024 + ReLU, dropout 0.7, linear classifier."""
    return Sequential(name, (
        Pool("pool", "avg", 5, 3),
        Conv("conv", 128, 1, bn=batch_norm, bias=not batch_norm),
        Dense("fc1", 1024, relu=True, flatten=True, dropout=dropout),
        Dense("fc2", num_classes),
    ))


def googlenet_v1(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 aux_logits: bool = True, batch_norm: bool = False, lrn: bool = True,
                 dropout: float = 0.4, aux_dropout: float = 0.7) -> NetSpec:
    """GoogLeNet as in the 2014 paper (Table 1): LRN in the stem, real 5x5 branches, 40%
    dropout before the classifier, two auxiliary heads after 4a and 4d (training only).

    Deviations, on purpose: the stem max-pools pad by 1 instead of Caffe's ceil mode (the
    same 56/28/14/7 sizes at 224 px, and one rule all three frameworks share);
    ``batch_norm=True`` adds BN after every conv (bias-free convs), as later GoogLeNets do.
    """
    norm = lambda n: (LRN(n, **GOOGLENET_LRN),) if lrn else ()  # noqa: E731
    bn = dict(bn=batch_norm, bias=not batch_norm)
    blocks = (
        Sequential("b1", (Conv("conv", 64, 7, stride=2, padding=3, **bn),
                          Pool("pool", "max", 3, 2, 1)) + norm("lrn")),     # 64 x 56 x 56
        Sequential("b2", (Conv("conv1", 64, 1, **bn),
                          Conv("conv2", 192, 3, padding=1, **bn)) + norm("lrn")
                   + (Pool("pool", "max", 3, 2, 1),)),                      # 192 x 28 x 28
        *(_inc(n, batch_norm) for n in STAGE3),                            # 480 x 28 x 28
        Pool("pool3", "max", 3, 2, 1),                                     # 480 x 14 x 14
        *(_inc(n, batch_norm) for n in STAGE4),                            # 832 x 14 x 14
        Pool("pool4", "max", 3, 2, 1),                                     # 832 x 7 x 7
        *(_inc(n, batch_norm) for n in STAGE5),                            # 1024 x 7 x 7
        Sequential("pool5", (GlobalAvgPool("gap"), Dropout("dropout", dropout))),  # 1024
        Dense("fc", num_classes),
    )
    taps = ()
    if aux_logits:
        taps = (("inception4a", googlenet_aux("aux1", num_classes, aux_dropout, batch_norm)),
                ("inception4d", googlenet_aux("aux2", num_classes, aux_dropout, batch_norm)))
    # The auxiliary heads flatten a 4x4 map into FC 1024, which fixes the input size.
    return NetSpec("googlenet_v1", (in_channels, image_size, image_size), blocks, taps,
                   any_size=not aux_logits,
                   description="GoogLeNet, Szegedy et al. 2014 (aux heads, dropout, LRN)")


AUX_LOSS_WEIGHT = 0.3   # Szegedy et al. 2014, section 5: auxiliary losses weighted by 0.3


# --------------------------------------------------------------------------- VGG
# Simonyan & Zisserman 2015, Table 1.  Numbers are 3x3 conv widths, "M" a 2x2 max-pool,
# "1x1-N" a 1x1 conv (configuration C), "LRN" local response normalisation (A-LRN).
VGG_CONFIGS: Dict[str, List[Union[int, str]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "1x1-256", "M", 512, 512, "1x1-512", "M",
          512, 512, "1x1-512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}
VGG_MODELS = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_conv1": "C",
              "vgg16": "D", "vgg19": "E"}
# A-LRN uses AlexNet's normalisation (k=2, n=5, alpha=1e-4, beta=0.75, Krizhevsky et al.
# 2012, section 3.3).  AlexNet does not divide alpha by n; PyTorch's convention does.
VGG_LRN = dict(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)
VGG_FC = 4096
VGG_DROPOUT = 0.5


def vgg_arch(config: str = "A", width_ratio: int = 1) -> Tuple[Tuple[int, int], ...]:
    """A VGG configuration as D2L 8.2 writes it, ``((num_convs, out_channels), ...)`` per
    block; D2L's narrow VGG-11 is ``vgg_arch("A", 4)`` = ((1, 16), (1, 32), (2, 64),
    (2, 128), (2, 128)).  (3x3 convolutions only: configurations A, B, D, E.)"""
    arch, widths = [], []
    for item in VGG_CONFIGS[config]:
        if item == "M":
            arch.append((len(widths), widths[-1] // int(width_ratio)))
            widths = []
        elif isinstance(item, int):
            widths.append(item)
        else:
            raise ValueError(f"VGG configuration {config} has {item!r}: vgg_arch describes "
                             "3x3-convolution configurations only (A, B, D, E)")
    return tuple(arch)


def vgg(config: str, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
        batch_norm: bool = False, width_ratio: int = 1, dropout: float = VGG_DROPOUT,
        name: Optional[str] = None) -> NetSpec:
    """A VGG configuration as five blocks (convs + max-pool) and a 4096-4096-classes head.

    ``width_ratio`` divides every conv width (D2L 8.2's narrow VGG uses 4); the FC layers
    keep 4096 units as in the book.  ``batch_norm`` puts BN between each conv and its ReLU
    and keeps the conv bias, as torchvision's ``vgg*_bn`` do (so parameter counts match).
    """
    if config not in VGG_CONFIGS:
        raise KeyError(f"unknown VGG configuration {config!r}; known: {sorted(VGG_CONFIGS)}")
    if width_ratio < 1 or int(width_ratio) != width_ratio:
        raise ValueError(f"width_ratio must be a positive integer, got {width_ratio}")
    blocks: List[Layer] = []
    layers: List[Layer] = []
    n_conv = 0
    for item in VGG_CONFIGS[config]:
        if item == "M":
            layers.append(Pool("pool", "max", 2, 2))
            blocks.append(Sequential(f"block{len(blocks) + 1}", tuple(layers)))
            layers, n_conv = [], 0
        elif item == "LRN":
            layers.append(LRN("lrn", **VGG_LRN))
        else:
            kernel, width = (1, int(item[4:])) if isinstance(item, str) else (3, item)
            n_conv += 1
            layers.append(Conv(f"conv{n_conv}", max(1, width // int(width_ratio)), kernel,
                               padding=kernel // 2, bn=batch_norm))
    blocks += [Dense("fc1", VGG_FC, relu=True, flatten=True, dropout=dropout),
               Dense("fc2", VGG_FC, relu=True, dropout=dropout),
               Dense("fc3", num_classes)]
    model = name or next(k for k, v in VGG_MODELS.items() if v == config)
    return NetSpec(model, (in_channels, image_size, image_size), tuple(blocks), any_size=False,
                   description=f"VGG configuration {config} (Simonyan & Zisserman 2015)")


# --------------------------------------------------------------------------- lecture nets
# "PyTorch Zero to All", lecture 11 (Advanced CNN), Sung Kim: InceptionA and a residual
# block on MNIST-sized input.  The lecture's blocks have no ReLU inside the Inception
# branches; d2lport keeps that, and returns logits instead of log_softmax.
def inception_a(name: str = "inception_a") -> Concat:
    """16 (1x1) | 16 -> 24 (5x5) | 16 -> 24 -> 24 (3x3, 3x3) | avg-pool -> 24 (1x1): 88."""
    lin = dict(relu=False)
    return Concat(name, (
        Sequential("branch1", (Conv("conv", 16, 1, **lin),)),
        Sequential("branch2", (Conv("conv1", 16, 1, **lin),
                               Conv("conv2", 24, 5, padding=2, **lin))),
        Sequential("branch3", (Conv("conv1", 16, 1, **lin),
                               Conv("conv2", 24, 3, padding=1, **lin),
                               Conv("conv3", 24, 3, padding=1, **lin))),
        Sequential("branch4", (Pool("pool", "avg", 3, 1, 1),
                               Conv("conv", 24, 1, **lin))),
    ))


def inception_a_block(in_channels: int = 10, image_size: int = 12) -> NetSpec:
    return NetSpec("inception_a", (in_channels, image_size, image_size), (inception_a(),),
                   description="The lecture's InceptionA block (88 output channels)")


def inception_a_net(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> NetSpec:
    blocks = (
        # The lecture applies ReLU after the max-pool; ReLU and max commute, so the
        # conv's own ReLU computes the same function.
        Sequential("b1", (Conv("conv", 10, 5), Pool("pool", "max", 2, 2))),    # 10 x 12 x 12
        inception_a("inception1"),                                          # 88 x 12 x 12
        Sequential("b2", (Conv("conv", 20, 5), Pool("pool", "max", 2, 2))),    # 20 x 4 x 4
        inception_a("inception2"),                                          # 88 x 4 x 4
        Dense("fc", num_classes, flatten=True),                             # 1408 -> classes
    )
    return NetSpec("inception_a_net", (in_channels, image_size, image_size), blocks,
                   any_size=False, description="The lecture's net of two InceptionA blocks")


def residual(name: str, channels: int) -> Residual:
    """``relu(x + conv2(relu(conv1(x))))`` with two 3x3, padding-1 convs of equal width."""
    return Residual(name, (Conv("conv1", channels, 3, padding=1),
                           Conv("conv2", channels, 3, padding=1, relu=False)))


def residual_block_spec(channels: int = 16, image_size: int = 12) -> NetSpec:
    return NetSpec("residual_block", (channels, image_size, image_size),
                   (residual("residual", channels),),
                   description="The lecture's residual block")


def residual_net(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> NetSpec:
    blocks = (
        Sequential("b1", (Conv("conv", 16, 5), Pool("pool", "max", 2, 2))),  # 16 x 12 x 12
        residual("residual1", 16),
        Sequential("b2", (Conv("conv", 32, 5), Pool("pool", "max", 2, 2))),  # 32 x 4 x 4
        residual("residual2", 32),
        Dense("fc", num_classes, flatten=True),                              # 512 -> classes
    )
    return NetSpec("residual_net", (in_channels, image_size, image_size), blocks,
                   any_size=False, description="The lecture's net of two residual blocks")


def output_shape(layer: Layer, shape: Sequence[int]) -> Shape:
    """Output shape of one layer (or container) on a (C, H, W) / (F,) input."""
    return _walk(layer, tuple(shape), "", [])
