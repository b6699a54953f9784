"""VGG in Gluon: D2L's ``vgg_block`` and the paper's configurations A-E, built from the
``specs.VGG_CONFIGS`` table with a loop like torchvision's ``make_layers``."""
from mxnet.gluon import nn

from .. import specs
from ..specs import VGG_CONFIGS, VGG_DROPOUT, VGG_FC, VGG_LRN
from .layers import LRN, BasicConv2D, BasicDense, Net, Sequential


def vgg_block(num_convs, in_channels, out_channels, batch_norm=False):
    """``num_convs`` 3x3 convs (padding 1) + ReLU, then a 2x2 max-pool halving H and W."""
    convs = {}
    for i in range(num_convs):
        convs[f"conv{i + 1}"] = BasicConv2D(out_channels, 3, padding=1, in_channels=in_channels,
                                            batch_norm=batch_norm)
        in_channels = out_channels
    return Sequential(**convs, pool=nn.MaxPool2D(2, 2))


class VGG(Net):
    """A VGG configuration ("A", "A-LRN", "B", "C", "D", "E"): five blocks, each ending in
    a 2x2 max-pool, then fc1, fc2 (4096, ReLU, dropout) and fc3.  ``width_ratio`` divides
    the conv widths (D2L's narrow VGG-11 uses 4)."""

    def __init__(self, config, num_classes=1000, in_channels=3, image_size=224,
                 batch_norm=False, width_ratio=1, dropout=VGG_DROPOUT, name=None):
        super().__init__(specs.vgg(config, num_classes, in_channels, image_size, batch_norm,
                                   width_ratio, dropout, name))
        blocks, layers = [], {}
        for item in VGG_CONFIGS[config]:
            if item == "M":
                blocks.append(Sequential(**layers, pool=nn.MaxPool2D(2, 2)))
                layers = {}
            elif item == "LRN":
                layers["lrn"] = LRN(**VGG_LRN)
            else:           # a 3x3 conv of that width, or "1x1-N": a 1x1 conv (config C)
                kernel, width = (1, int(item[4:])) if isinstance(item, str) else (3, item)
                width = max(1, width // width_ratio)
                n = sum(k.startswith("conv") for k in layers) + 1
                layers[f"conv{n}"] = BasicConv2D(width, kernel, padding=kernel // 2,
                                                 in_channels=in_channels, batch_norm=batch_norm)
                in_channels = width
        self.block1, self.block2, self.block3, self.block4, self.block5 = blocks
        side = image_size // 32                              # five 2x2 pools
        self.fc1 = BasicDense(VGG_FC, in_units=in_channels * side * side, relu=True,
                              dropout=dropout)
        self.fc2 = BasicDense(VGG_FC, in_units=VGG_FC, relu=True, dropout=dropout)
        self.fc3 = BasicDense(num_classes, in_units=VGG_FC)
        self.finish()

    def hybrid_forward(self, F, x):  # N x 3 x 224 x 224
        x = self.block1(x)      # N x 64 x 112 x 112
        x = self.block2(x)      # N x 128 x 56 x 56
        x = self.block3(x)      # N x 256 x 28 x 28
        x = self.block4(x)      # N x 512 x 14 x 14
        x = self.block5(x)      # N x 512 x 7 x 7
        x = self.fc2(self.fc1(x))   # N x 4096
        return self.fc3(x)      # N x num_classes
