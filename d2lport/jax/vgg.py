"""VGG in Flax linen: D2L's ``vgg_block`` (8.2) and the paper's configurations (Simonyan &
Zisserman 2015, Table 1: ``specs.VGG_CONFIGS``) built by a loop, as torchvision's
``make_layers`` does.  Shapes in comments are NHWC (Flax's layout)."""
from .. import specs
from .layers import LRN, Conv, Dense, MaxPool, Net, Sequential, sequential


def vgg_block(num_convs, in_channels, out_channels, batch_norm=False) -> Sequential:
    """``num_convs`` 3x3 convs (padding 1) with ReLU, then a 2x2 max-pool halving H and W."""
    convs = {f"conv{i + 1}": Conv(out_channels, (3, 3), padding=1, batch_norm=batch_norm)
             for i in range(num_convs)}
    return sequential(**convs, pool=MaxPool(2, 2), in_channels=in_channels)


class VGG(Net):
    """Five blocks of 3x3 convs, each ending in a max-pool, then FC 4096-4096-classes.

    ``width_ratio`` divides every conv width (D2L's narrow VGG-11 uses 4); ``batch_norm``
    puts BatchNorm between each conv and its ReLU (torchvision's ``vgg*_bn``).  Linen's
    ``name`` is the spec's (``vgg_d2l``; by default the configuration's model name).
    """
    config: str = "A"
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    batch_norm: bool = False
    width_ratio: int = 1
    dropout: float = specs.VGG_DROPOUT

    @property
    def spec(self):
        return specs.vgg(self.config, self.num_classes, self.in_channels, self.image_size,
                         self.batch_norm, self.width_ratio, self.dropout, self.name)

    def setup(self):
        blocks, layers = [], {}
        for v in specs.VGG_CONFIGS[self.config]:
            if v == "M":                                          # a block ends: halve H, W
                layers["pool"] = MaxPool(2, 2)
                blocks.append(sequential(**layers))
                layers = {}
            elif v == "LRN":
                layers["lrn"] = LRN(**specs.VGG_LRN)
            else:                                                 # 64 (3x3) or "1x1-256"
                kernel, width = (1, int(v[4:])) if isinstance(v, str) else (3, v)
                convs = sum(isinstance(layer, Conv) for layer in layers.values())
                layers[f"conv{convs + 1}"] = Conv(max(1, width // self.width_ratio),
                                                  (kernel, kernel), padding=kernel // 2,
                                                  batch_norm=self.batch_norm)
        for i, block in enumerate(blocks):
            setattr(self, f"block{i + 1}", block)                 # block1 ... block5
        self.blocks = blocks
        self.fc1 = Dense(specs.VGG_FC, relu=True, flatten=True, dropout=self.dropout)
        self.fc2 = Dense(specs.VGG_FC, relu=True, dropout=self.dropout)
        self.fc3 = Dense(self.num_classes)

    def __call__(self, x, training: bool = False):
        for block in self.blocks:   # N x 112 x 112 x 64 ... N x 7 x 7 x 512 at 224 px
            x = block(x, training=training)
        x = self.fc1(x, training=training)  # N x 4096 (flattens the last block's map)
        x = self.fc2(x, training=training)  # N x 4096
        return self.fc3(x)                  # N x num_classes
