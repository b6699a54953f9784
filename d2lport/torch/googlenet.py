"""GoogLeNet in PyTorch: D2L 8.4's network and the 2014 paper's (Szegedy et al.)."""
from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from .. import specs
from ..common import AuxOutputs
from .layers import BasicConv2d, BasicLinear, Net


class Inception(nn.Module):
    """Four parallel branches concatenated along channels; c1..c4 are their widths."""

    def __init__(self, in_channels, c1, c2, c3, c4, batch_norm=False):
        super().__init__()
        conv = partial(BasicConv2d, batch_norm=batch_norm, bias=not batch_norm)
        # Branch 1: 1x1 convolution
        self.branch1 = nn.Sequential(OrderedDict(conv=conv(in_channels, c1, 1)))
        # Branch 2: 1x1 convolution to reduce channels, then 3x3 convolution
        self.branch2 = nn.Sequential(OrderedDict(
            conv1=conv(in_channels, c2[0], 1), conv2=conv(c2[0], c2[1], 3, padding=1)))
        # Branch 3: 1x1 convolution to reduce channels, then 5x5 convolution
        self.branch3 = nn.Sequential(OrderedDict(
            conv1=conv(in_channels, c3[0], 1), conv2=conv(c3[0], c3[1], 5, padding=2)))
        # Branch 4: 3x3 max-pooling, then 1x1 convolution
        self.branch4 = nn.Sequential(OrderedDict(
            pool=nn.MaxPool2d(3, stride=1, padding=1), conv=conv(in_channels, c4, 1)))
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x):
        b1, b2 = self.branch1(x), self.branch2(x)
        b3, b4 = self.branch3(x), self.branch4(x)
        return torch.cat((b1, b2, b3, b4), dim=1)


def inceptions(names, in_channels, batch_norm=False):
    """The Inception blocks ``names`` (channels from specs.INCEPTION_CHANNELS), chained."""
    blocks = OrderedDict()
    for name in names:
        blocks[name] = Inception(in_channels, *specs.INCEPTION_CHANNELS[name], batch_norm)
        in_channels = blocks[name].out_channels
    return blocks


class GoogLeNet(Net):
    """D2L's GoogLeNet: stages b1..b5, then one fully connected layer."""

    def __init__(self, num_classes=10, in_channels=1, image_size=96):
        super().__init__(specs.googlenet(num_classes, in_channels, image_size))
        self.b1 = nn.Sequential(OrderedDict(
            conv=BasicConv2d(in_channels, 64, 7, stride=2, padding=3),
            pool=nn.MaxPool2d(3, stride=2, padding=1)))
        self.b2 = nn.Sequential(OrderedDict(
            conv1=BasicConv2d(64, 64, 1),
            conv2=BasicConv2d(64, 192, 3, padding=1),
            pool=nn.MaxPool2d(3, stride=2, padding=1)))
        self.b3 = nn.Sequential(OrderedDict(
            **inceptions(specs.STAGE3, 192), pool=nn.MaxPool2d(3, stride=2, padding=1)))
        self.b4 = nn.Sequential(OrderedDict(
            **inceptions(specs.STAGE4, 480), pool=nn.MaxPool2d(3, stride=2, padding=1)))
        self.b5 = nn.Sequential(OrderedDict(
            **inceptions(specs.STAGE5, 832), gap=nn.AdaptiveAvgPool2d((1, 1)),
            flatten=nn.Flatten()))
        self.fc = BasicLinear(1024, num_classes)

    def forward(self, x):                      # N x 1 x 96 x 96 (D2L's Fashion-MNIST)
        self.check_input(x)
        x = self.b1(x)                         # N x 64 x 24 x 24
        x = self.b2(x)                         # N x 192 x 12 x 12
        x = self.b3(x)                         # N x 480 x 6 x 6
        x = self.b4(x)                         # N x 832 x 3 x 3
        x = self.b5(x)                         # N x 1024
        return self.fc(x)                      # N x num_classes


class InceptionAux(nn.Module):
    """Auxiliary classifier: 5x5/3 average pool, 1x1 conv (128), FC 1024 + dropout, FC."""

    def __init__(self, in_channels, num_classes, side, dropout=0.7, batch_norm=False):
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.conv = BasicConv2d(in_channels, 128, 1, batch_norm=batch_norm, bias=not batch_norm)
        side = (side - 5) // 3 + 1             # 4 x 4 after the pool at 224 px
        self.fc1 = BasicLinear(128 * side * side, 1024, relu=True, dropout=dropout,
                               flatten=True)
        self.fc2 = BasicLinear(1024, num_classes)

    def forward(self, x):                      # N x 512 x 14 x 14 (aux1), 528 (aux2)
        x = self.conv(self.pool(x))            # N x 128 x 4 x 4
        return self.fc2(self.fc1(x))           # N x 1024, then N x num_classes


class GoogLeNetV1(Net):
    """GoogLeNet as in the 2014 paper (Table 1): LRN, dropout, two auxiliary heads."""

    def __init__(self, num_classes=1000, in_channels=3, image_size=224, aux_logits=True,
                 batch_norm=False, lrn=True, dropout=0.4, aux_dropout=0.7):
        super().__init__(specs.googlenet_v1(num_classes, in_channels, image_size, aux_logits,
                                            batch_norm, lrn, dropout, aux_dropout))
        conv = partial(BasicConv2d, batch_norm=batch_norm, bias=not batch_norm)
        pool = partial(nn.MaxPool2d, 3, stride=2, padding=1)
        norm = partial(nn.LocalResponseNorm, **specs.GOOGLENET_LRN) if lrn else nn.Identity
        self.b1 = nn.Sequential(OrderedDict(
            conv=conv(in_channels, 64, 7, stride=2, padding=3), pool=pool(), lrn=norm()))
        self.b2 = nn.Sequential(OrderedDict(
            conv1=conv(64, 64, 1), conv2=conv(64, 192, 3, padding=1), lrn=norm(), pool=pool()))
        stages = (inceptions(specs.STAGE3, 192, batch_norm), {"pool3": pool()},
                  inceptions(specs.STAGE4, 480, batch_norm), {"pool4": pool()},
                  inceptions(specs.STAGE5, 832, batch_norm))
        for stage in stages:                   # inception3a, ..., pool3, ..., inception5b
            for name, module in stage.items():
                self.add_module(name, module)
        self.pool5 = nn.Sequential(OrderedDict(
            gap=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(), dropout=nn.Dropout(dropout)))
        self.fc = BasicLinear(1024, num_classes)
        self.aux_logits = aux_logits
        self.aux1 = self.aux2 = None
        if aux_logits:
            side = image_size
            for _ in range(4):                 # the stride-2 conv and 3 stride-2 pools
                side = (side - 1) // 2 + 1     # before inception4a: 224 -> 14
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, side,
                                     aux_dropout, batch_norm)
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, side,
                                     aux_dropout, batch_norm)

    def forward(self, x):                      # N x 3 x 224 x 224
        self.check_input(x)
        x = self.b1(x)                         # N x 64 x 56 x 56
        x = self.b2(x)                         # N x 192 x 28 x 28
        x = self.inception3a(x)                # N x 256 x 28 x 28
        x = self.inception3b(x)                # N x 480 x 28 x 28
        x = self.pool3(x)                      # N x 480 x 14 x 14
        x = self.inception4a(x)                # N x 512 x 14 x 14
        aux1 = self.aux1(x) if self.training and self.aux_logits else None
        x = self.inception4b(x)                # N x 512 x 14 x 14
        x = self.inception4c(x)                # N x 512 x 14 x 14
        x = self.inception4d(x)                # N x 528 x 14 x 14
        aux2 = self.aux2(x) if self.training and self.aux_logits else None
        x = self.inception4e(x)                # N x 832 x 14 x 14
        x = self.pool4(x)                      # N x 832 x 7 x 7
        x = self.inception5a(x)                # N x 832 x 7 x 7
        x = self.inception5b(x)                # N x 1024 x 7 x 7
        x = self.pool5(x)                      # N x 1024 (dropout 0.4 in training)
        x = self.fc(x)                         # N x num_classes
        return AuxOutputs(x, (aux1, aux2)) if aux1 is not None else x
