"""VGG in Keras: D2L's ``vgg_block`` (8.2) and the paper's configurations (Simonyan &
Zisserman 2015, Table 1: ``specs.VGG_CONFIGS``) built by a loop, as torchvision's
``make_layers`` does.  Shapes in comments are NHWC (Keras' layout)."""
import keras

from .. import specs
from .layers import LRN, Conv, Dense, MaxPool2D, Net


def vgg_block(num_convs, in_channels, out_channels, batch_norm=False, name=None):
    """``num_convs`` 3x3 convs (padding 1) with ReLU, then a 2x2 max-pool halving H and W."""
    layers = [Conv(out_channels, 3, padding=1, batch_norm=batch_norm, name=f"conv{i + 1}")
              for i in range(num_convs)]
    block = keras.Sequential(layers + [MaxPool2D(2, 2, name="pool")], name=name)
    block.build((None, None, None, in_channels))       # weights exist before the first call
    return block


class VGG(Net):
    """Five blocks of 3x3 convs, each ending in a max-pool, then FC 4096-4096-classes.

    ``width_ratio`` divides every conv width (D2L's narrow VGG-11 uses 4); ``batch_norm``
    puts BatchNorm between each conv and its ReLU (torchvision's ``vgg*_bn``).
    """

    def __init__(self, config, num_classes=1000, in_channels=3, image_size=224,
                 batch_norm=False, width_ratio=1, dropout=specs.VGG_DROPOUT, name=None):
        super().__init__(specs.vgg(config, num_classes, in_channels, image_size, batch_norm,
                                   width_ratio, dropout, name))
        self.blocks, layers = [], []
        for v in specs.VGG_CONFIGS[config]:
            if v == "M":                                          # a block ends: halve H, W
                layers.append(MaxPool2D(2, 2, name="pool"))
                self.blocks.append(keras.Sequential(layers, name=f"block{len(self.blocks) + 1}"))
                layers = []
            elif v == "LRN":
                layers.append(LRN(**specs.VGG_LRN, name="lrn"))
            else:                                                 # 64 (3x3) or "1x1-256"
                kernel, width = (1, int(v[4:])) if isinstance(v, str) else (3, v)
                convs = sum(isinstance(layer, Conv) for layer in layers)
                layers.append(Conv(max(1, width // width_ratio), kernel, padding=kernel // 2,
                                   batch_norm=batch_norm, name=f"conv{convs + 1}"))
        self.fc1 = Dense(specs.VGG_FC, relu=True, flatten=True, dropout=dropout, name="fc1")
        self.fc2 = Dense(specs.VGG_FC, relu=True, dropout=dropout, name="fc2")
        self.fc3 = Dense(num_classes, name="fc3")
        self.build((None, image_size, image_size, in_channels))

    def call(self, x, training=None):
        for block in self.blocks:   # N x 112 x 112 x 64 ... N x 7 x 7 x 512 at 224 px
            x = block(x)
        x = self.fc1(x)             # N x 4096 (flattens the last block's map)
        x = self.fc2(x)             # N x 4096
        return self.fc3(x)          # N x num_classes
