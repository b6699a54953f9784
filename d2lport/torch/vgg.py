"""VGG in PyTorch: D2L 8.2's ``vgg_block`` and the paper's configurations (Simonyan &
Zisserman 2015, Table 1), built from ``specs.VGG_CONFIGS`` like torchvision's ``make_layers``."""
from collections import OrderedDict

from torch import nn

from .. import specs
from .layers import BasicConv2d, BasicLinear, Net


def vgg_block(num_convs, in_channels, out_channels, batch_norm=False):
    """``num_convs`` 3x3 convolutions (padding 1) with ReLU, then a 2x2 max-pool."""
    layers = OrderedDict()
    for i in range(num_convs):
        layers[f"conv{i + 1}"] = BasicConv2d(in_channels, out_channels, 3, padding=1,
                                             batch_norm=batch_norm)
        in_channels = out_channels
    layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Sequential(layers)


class VGG(Net):
    """Five blocks of convolutions, each ending in a max-pool that halves H and W, then
    fc1 and fc2 (4096 units, ReLU, dropout) and the classifier fc3."""

    def __init__(self, config, num_classes=1000, in_channels=3, image_size=224,
                 batch_norm=False, width_ratio=1, dropout=specs.VGG_DROPOUT, name=None):
        super().__init__(specs.vgg(config, num_classes, in_channels, image_size, batch_norm,
                                   width_ratio, dropout, name))
        layers, blocks, convs = OrderedDict(), 0, 0
        for v in specs.VGG_CONFIGS[config]:
            if v == "M":                       # a max-pool ends the block
                layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2)
                blocks += 1
                self.add_module(f"block{blocks}", nn.Sequential(layers))
                layers, convs = OrderedDict(), 0
            elif v == "LRN":                   # configuration A-LRN
                layers["lrn"] = nn.LocalResponseNorm(**specs.VGG_LRN)
            else:                              # 3x3 conv, or "1x1-N" (configuration C)
                kernel, width = (1, int(v[4:])) if isinstance(v, str) else (3, v)
                width = max(1, width // int(width_ratio))  # D2L's narrow VGG: 4
                convs += 1
                layers[f"conv{convs}"] = BasicConv2d(in_channels, width, kernel,
                                                     padding=kernel // 2,
                                                     batch_norm=batch_norm)
                in_channels = width
        side = image_size // 2 ** blocks        # 7 at 224 px
        self.fc1 = BasicLinear(in_channels * side * side, specs.VGG_FC, relu=True,
                               dropout=dropout, flatten=True)
        self.fc2 = BasicLinear(specs.VGG_FC, specs.VGG_FC, relu=True, dropout=dropout)
        self.fc3 = BasicLinear(specs.VGG_FC, num_classes)

    def forward(self, x):                      # N x 3 x 224 x 224 (width_ratio=1)
        self.check_input(x)
        x = self.block1(x)                     # N x 64 x 112 x 112
        x = self.block2(x)                     # N x 128 x 56 x 56
        x = self.block3(x)                     # N x 256 x 28 x 28
        x = self.block4(x)                     # N x 512 x 14 x 14
        x = self.block5(x)                     # N x 512 x 7 x 7
        x = self.fc1(x)                        # N x 4096 (flattened first)
        x = self.fc2(x)                        # N x 4096
        return self.fc3(x)                     # N x num_classes
