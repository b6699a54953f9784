"""The Advanced-CNN lecture's networks in PyTorch ("PyTorch Zero to All", lecture 11, Sung
Kim): the InceptionA block, a residual block, and their small nets for 28x28 images.
As in the lecture, InceptionA's branches have no ReLU; the nets return logits."""
from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from .. import specs
from .layers import BasicConv2d, BasicLinear, Net


class InceptionA(nn.Module):
    """1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | 3x3 avg-pool -> 1x1: 16 + 24 + 24 + 24 = 88."""

    def __init__(self, in_channels):
        super().__init__()
        conv = partial(BasicConv2d, relu=False)
        self.branch1 = nn.Sequential(OrderedDict(conv=conv(in_channels, 16, 1)))
        self.branch2 = nn.Sequential(OrderedDict(
            conv1=conv(in_channels, 16, 1), conv2=conv(16, 24, 5, padding=2)))
        self.branch3 = nn.Sequential(OrderedDict(
            conv1=conv(in_channels, 16, 1), conv2=conv(16, 24, 3, padding=1),
            conv3=conv(24, 24, 3, padding=1)))
        self.branch4 = nn.Sequential(OrderedDict(
            pool=nn.AvgPool2d(3, stride=1, padding=1), conv=conv(in_channels, 24, 1)))

    def forward(self, x):
        outputs = (self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))
        return torch.cat(outputs, dim=1)


class ResidualBlock(nn.Module):
    """``relu(x + conv2(relu(conv1(x))))``: two 3x3 convolutions keeping the shape."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = BasicConv2d(channels, channels, 3, padding=1, relu=False)
        self.conv2 = BasicConv2d(channels, channels, 3, padding=1, relu=False)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        return F.relu(x + y)


class InceptionANet(Net):
    """conv 5x5 -> pool -> InceptionA -> conv 5x5 -> pool -> InceptionA -> fc."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__(specs.inception_a_net(num_classes, in_channels, image_size))
        # The lecture applies ReLU after the max-pool; ReLU and max commute, so the conv's
        # own ReLU computes the same function.
        self.b1 = nn.Sequential(OrderedDict(conv=BasicConv2d(in_channels, 10, 5),
                                            pool=nn.MaxPool2d(2)))
        self.inception1 = InceptionA(10)
        self.b2 = nn.Sequential(OrderedDict(conv=BasicConv2d(88, 20, 5),
                                            pool=nn.MaxPool2d(2)))
        self.inception2 = InceptionA(20)
        side = ((image_size - 4) // 2 - 4) // 2     # 4 at 28 px
        self.fc = BasicLinear(88 * side * side, num_classes, flatten=True)

    def forward(self, x):                      # N x 1 x 28 x 28
        self.check_input(x)
        x = self.b1(x)                         # N x 10 x 12 x 12
        x = self.inception1(x)                 # N x 88 x 12 x 12
        x = self.b2(x)                         # N x 20 x 4 x 4
        x = self.inception2(x)                 # N x 88 x 4 x 4
        return self.fc(x)                      # N x num_classes


class ResidualNet(Net):
    """conv 5x5 -> pool -> residual block -> conv 5x5 -> pool -> residual block -> fc."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__(specs.residual_net(num_classes, in_channels, image_size))
        self.b1 = nn.Sequential(OrderedDict(conv=BasicConv2d(in_channels, 16, 5),
                                            pool=nn.MaxPool2d(2)))
        self.residual1 = ResidualBlock(16)
        self.b2 = nn.Sequential(OrderedDict(conv=BasicConv2d(16, 32, 5),
                                            pool=nn.MaxPool2d(2)))
        self.residual2 = ResidualBlock(32)
        side = ((image_size - 4) // 2 - 4) // 2     # 4 at 28 px
        self.fc = BasicLinear(32 * side * side, num_classes, flatten=True)

    def forward(self, x):                      # N x 1 x 28 x 28
        self.check_input(x)
        x = self.b1(x)                         # N x 16 x 12 x 12
        x = self.residual1(x)                  # N x 16 x 12 x 12
        x = self.b2(x)                         # N x 32 x 4 x 4
        x = self.residual2(x)                  # N x 32 x 4 x 4
        return self.fc(x)                      # N x num_classes
