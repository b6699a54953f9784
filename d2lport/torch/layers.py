"""The building blocks d2lport's PyTorch networks share, and their base class :class:`Net`.

PyTorch's defaults are d2lport's canonical semantics (symmetric padding, max-pool padding as
-inf, average pools counting padded zeros, OIHW kernels, LRN's alpha divided by the window),
so nothing here corrects a default; the BatchNorm constants are passed from
:mod:`d2lport.specs` only so that every backend visibly uses the same ones.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from .. import specs
from ..common import check_input_shape

__all__ = ["BasicConv2d", "BasicLinear", "Net", "SingleBlock"]


class BasicConv2d(nn.Conv2d):
    """Conv2d, then BatchNorm (child ``bn``) when ``batch_norm``, then ReLU when ``relu``.

    Like torchvision's ``BasicConv2d``, except that the convolution's weight and bias are
    this module's own, so their keys are ``<path>.weight`` / ``<path>.bias`` (canonical).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, batch_norm: bool = False, relu: bool = True,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.bn = (nn.BatchNorm2d(out_channels, eps=specs.BN_EPS, momentum=specs.BN_MOMENTUM)
                   if batch_norm else None)
        self.relu = relu

    def reset_parameters(self):
        # Xavier-uniform kernels and zero biases (D2L's init_cnn; Keras' default), so the
        # three frameworks start from the same distribution.
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        x = super().forward(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.relu else x

    def extra_repr(self):
        return super().extra_repr() + ("" if self.relu else ", relu=False")


class BasicLinear(nn.Linear):
    """Linear with an optional flatten first ((C, H, W) order), then ReLU, then dropout."""

    def __init__(self, in_features: int, out_features: int, relu: bool = False,
                 dropout: float = 0.0, flatten: bool = False):
        super().__init__(in_features, out_features)
        self.relu, self.dropout, self.flatten = relu, dropout, flatten

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        if self.flatten:
            x = torch.flatten(x, 1)
        x = super().forward(x)
        if self.relu:
            x = F.relu(x, inplace=True)
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def extra_repr(self):
        return (super().extra_repr() + (", flatten" if self.flatten else "")
                + (", relu" if self.relu else "")
                + (f", dropout={self.dropout}" if self.dropout else ""))


class Net(nn.Module):
    """Base class of d2lport's networks: the spec they equal, and a walk over their blocks.

    A subclass builds its layers by hand as attributes named like the spec's blocks and
    writes ``forward``; ``forward_blocks`` calls the same attributes by name, for summaries
    and per-block comparisons across frameworks.
    """

    def __init__(self, spec: specs.NetSpec):
        super().__init__()
        self.spec = spec
        specs.infer(spec)      # a size the network cannot take fails here, with its reason
        self._checked = set()

    @property
    def block_names(self) -> List[str]:
        return self.spec.block_names

    def block(self, name: str) -> nn.Module:
        return getattr(self, name)

    def check_input(self, x: torch.Tensor) -> None:
        """InputShapeError naming the size the network takes (checked once per shape)."""
        key = tuple(x.shape[1:])
        if key not in self._checked:
            check_input_shape(self.spec, tuple(x.shape))
            self._checked.add(key)

    def forward_blocks(self, x, include_aux: bool = True) -> "OrderedDict[str, torch.Tensor]":
        """Every top-level block's output, in order, with each auxiliary head's output after
        the block it taps when ``include_aux``; runs in the module's current mode."""
        self.check_input(x)
        heads = {tap: head.name for tap, head in self.spec.taps}
        outs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name in self.block_names:
            x = outs[name] = self.block(name)(x)
            if include_aux and name in heads:
                outs[heads[name]] = self.block(heads[name])(x)
        return outs

    def extra_repr(self):
        return f"spec={self.spec.name!r}, input_shape={self.spec.input_shape}"


class SingleBlock(Net):
    """A block registered as a model of its own ("inception", "inception_a",
    "residual_block"): its one child is named like the spec's block, so keys are canonical."""

    def __init__(self, spec: specs.NetSpec, block: nn.Module):
        super().__init__(spec)
        self.add_module(spec.block_names[0], block)

    def forward(self, x):
        self.check_input(x)
        return self.block(self.block_names[0])(x)
