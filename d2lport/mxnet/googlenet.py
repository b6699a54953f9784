"""GoogLeNet in Gluon: D2L 1.0's version (8.4) and the 2014 paper's, with auxiliary heads."""
from mxnet import autograd, gluon
from mxnet.gluon import nn

from .. import specs
from ..common import AuxOutputs
from ..specs import GOOGLENET_LRN, INCEPTION_CHANNELS, STAGE3, STAGE4, STAGE5
from .layers import (BasicConv2D, BasicDense, GlobalAvgPool, LRN, Net, Sequential, concat,
                     spec_args)


class Inception(gluon.HybridBlock):
    """Four parallel branches concatenated on channels: 1x1 | 1x1, 3x3 | 1x1, 5x5 |
    3x3 max-pool, 1x1; c1 + c2[1] + c3[1] + c4 output channels."""

    def __init__(self, in_channels, c1, c2, c3, c4, batch_norm=False):
        super().__init__()
        conv = lambda c, k, cin: BasicConv2D(c, k, padding=k // 2, in_channels=cin,  # noqa
                                             batch_norm=batch_norm, use_bias=not batch_norm)
        self.branch1 = Sequential(conv=conv(c1, 1, in_channels))
        self.branch2 = Sequential(conv1=conv(c2[0], 1, in_channels), conv2=conv(c2[1], 3, c2[0]))
        self.branch3 = Sequential(conv1=conv(c3[0], 1, in_channels), conv2=conv(c3[1], 5, c3[0]))
        self.branch4 = Sequential(pool=nn.MaxPool2D(3, 1, 1), conv=conv(c4, 1, in_channels))
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def hybrid_forward(self, F, x):
        return concat(F, self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))


def inception(name, in_channels, batch_norm=False):
    """The module ``name`` of GoogLeNet (its channels from the paper's Table 1)."""
    return Inception(in_channels, *INCEPTION_CHANNELS[name], batch_norm=batch_norm)


def stage(names, in_channels, **last):
    """Inception modules ``names`` in a row (each fed the previous one's output), then
    ``last`` (the stage's pooling)."""
    blocks = {}
    for name in names:
        blocks[name] = inception(name, in_channels)
        in_channels = blocks[name].out_channels
    return Sequential(**blocks, **last)


class GoogLeNet(Net):
    """D2L's GoogLeNet (8.4): b1..b5, global average pooling, one Dense layer."""

    def __init__(self, num_classes=10, in_channels=1, image_size=96):
        super().__init__(specs.googlenet(num_classes, in_channels, image_size))
        self.b1 = Sequential(conv=BasicConv2D(64, 7, 2, 3, in_channels=in_channels),
                             pool=nn.MaxPool2D(3, 2, 1))
        self.b2 = Sequential(conv1=BasicConv2D(64, 1, in_channels=64),
                             conv2=BasicConv2D(192, 3, padding=1, in_channels=64),
                             pool=nn.MaxPool2D(3, 2, 1))
        self.b3 = stage(STAGE3, 192, pool=nn.MaxPool2D(3, 2, 1))
        self.b4 = stage(STAGE4, 480, pool=nn.MaxPool2D(3, 2, 1))
        self.b5 = stage(STAGE5, 832, gap=GlobalAvgPool())
        self.fc = BasicDense(num_classes, in_units=1024)
        self.finish()

    def hybrid_forward(self, F, x):  # N x 1 x 96 x 96
        x = self.b1(x)          # N x 64 x 24 x 24
        x = self.b2(x)          # N x 192 x 12 x 12
        x = self.b3(x)          # N x 480 x 6 x 6
        x = self.b4(x)          # N x 832 x 3 x 3
        x = self.b5(x)          # N x 1024
        return self.fc(x)       # N x num_classes


class InceptionAux(gluon.HybridBlock):
    """Auxiliary classifier (paper, section 5): 5x5/3 average pool, 1x1 conv (128), FC 1024
    + ReLU + dropout, linear classifier."""

    def __init__(self, in_channels, side, num_classes, dropout, batch_norm=False):
        super().__init__()
        self.pool = nn.AvgPool2D(5, 3)
        self.conv = BasicConv2D(128, 1, in_channels=in_channels, batch_norm=batch_norm,
                                use_bias=not batch_norm)
        side = (side - 5) // 3 + 1                                  # 4 x 4 at 224 px
        self.fc1 = BasicDense(1024, in_units=128 * side * side, relu=True, dropout=dropout)
        self.fc2 = BasicDense(num_classes, in_units=1024)

    def hybrid_forward(self, F, x):
        return self.fc2(self.fc1(self.conv(self.pool(x))))


class GoogLeNetV1(Net):
    """GoogLeNet as in Szegedy et al. 2014: LRN in the stem, 40% dropout, and (training
    only) the auxiliary heads aux1/aux2 after inception4a/4d."""

    def __init__(self, num_classes=1000, in_channels=3, image_size=224, aux_logits=True,
                 batch_norm=False, lrn=True, dropout=0.4, aux_dropout=0.7):
        super().__init__(specs.googlenet_v1(num_classes, in_channels, image_size, aux_logits,
                                            batch_norm, lrn, dropout, aux_dropout))
        bn = dict(batch_norm=batch_norm, use_bias=not batch_norm)
        norm = lambda: dict(lrn=LRN(**GOOGLENET_LRN)) if lrn else {}  # noqa: E731
        self.b1 = Sequential(conv=BasicConv2D(64, 7, 2, 3, in_channels=in_channels, **bn),
                             pool=nn.MaxPool2D(3, 2, 1), **norm())
        self.b2 = Sequential(conv1=BasicConv2D(64, 1, in_channels=64, **bn),
                             conv2=BasicConv2D(192, 3, padding=1, in_channels=64, **bn),
                             **norm(), pool=nn.MaxPool2D(3, 2, 1))
        channels = 192
        for name in STAGE3 + ("pool3",) + STAGE4 + ("pool4",) + STAGE5:
            if name.startswith("pool"):
                setattr(self, name, nn.MaxPool2D(3, 2, 1))
            else:
                setattr(self, name, inception(name, channels, batch_norm))
                channels = getattr(self, name).out_channels
        self.pool5 = Sequential(gap=GlobalAvgPool(), dropout=nn.Dropout(dropout))
        self.fc = BasicDense(num_classes, in_units=1024)
        self.aux1 = self.aux2 = None
        if aux_logits:
            side = image_size
            for _ in range(4):          # 7x7/2 conv and three 3x3/2 pools, padded
                side = (side - 1) // 2 + 1
            self.aux1 = InceptionAux(512, side, num_classes, aux_dropout, batch_norm)
            self.aux2 = InceptionAux(528, side, num_classes, aux_dropout, batch_norm)
        self.finish()

    def hybridize(self, active=True, **kwargs):
        # One graph per child, not one for the whole net: a traced graph freezes its
        # outputs, and this net returns AuxOutputs in training only (so `forward` below).
        for child in self._children.values():
            child.hybridize(active, **kwargs)

    def forward(self, x):                               # N x 3 x 224 x 224
        x = self.b2(self.b1(x))                         # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))       # N x 480 x 28 x 28
        x = self.inception4a(self.pool3(x))             # N x 512 x 14 x 14
        heads = self.aux1 is not None and autograd.is_training()
        aux1 = self.aux1(x) if heads else None          # N x num_classes
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if heads else None          # N x num_classes
        x = self.pool4(self.inception4e(x))             # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))       # N x 1024 x 7 x 7
        x = self.fc(self.pool5(x))                      # N x num_classes
        return AuxOutputs(x, (aux1, aux2)) if heads else x


class InceptionBlock(Net):
    """The registered model "inception": one Inception block on its own
    (``specs.inception_block``'s keywords; default GoogLeNet's 3a on 192 x 28 x 28)."""

    def __init__(self, **kwargs):
        args = spec_args(specs.inception_block, kwargs)
        super().__init__(specs.inception_block(**args))
        self.inception = Inception(args["in_channels"], args["c1"], args["c2"], args["c3"],
                                   args["c4"])
        self.finish()

    def hybrid_forward(self, F, x):
        return self.inception(x)
