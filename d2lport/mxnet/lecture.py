"""The lecture's blocks and nets in Gluon ("PyTorch Zero to All", lecture 11): InceptionA
(no ReLU inside its branches) and a residual block, each in a small 28-px net."""
from mxnet import gluon
from mxnet.gluon import nn

from .. import specs
from .layers import BasicConv2D, BasicDense, Net, Sequential, concat, relu, spec_args


class InceptionA(gluon.HybridBlock):
    """16 (1x1) | 16 -> 24 (5x5) | 16 -> 24 -> 24 (3x3, 3x3) | 3x3 avg-pool -> 24 (1x1):
    88 output channels, linear branches."""

    def __init__(self, in_channels):
        super().__init__()
        conv = lambda c, k, cin: BasicConv2D(c, k, padding=k // 2, in_channels=cin,  # noqa
                                             relu=False)
        self.branch1 = Sequential(conv=conv(16, 1, in_channels))
        self.branch2 = Sequential(conv1=conv(16, 1, in_channels), conv2=conv(24, 5, 16))
        self.branch3 = Sequential(conv1=conv(16, 1, in_channels), conv2=conv(24, 3, 16),
                                  conv3=conv(24, 3, 24))
        # count_include_pad=True averages the padded zeros too, as torch's default does.
        self.branch4 = Sequential(pool=nn.AvgPool2D(3, 1, 1, count_include_pad=True),
                                  conv=conv(24, 1, in_channels))

    def hybrid_forward(self, F, x):
        return concat(F, self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x))


class ResidualBlock(gluon.HybridBlock):
    """``relu(x + conv2(relu(conv1(x))))``, two 3x3 convs keeping ``channels``."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = BasicConv2D(channels, 3, padding=1, in_channels=channels)
        self.conv2 = BasicConv2D(channels, 3, padding=1, in_channels=channels, relu=False)

    def hybrid_forward(self, F, x):
        return relu(F, x + self.conv2(self.conv1(x)))


def _side(image_size):
    """H = W after two (5x5 conv, 2x2 max-pool) stages: 4 at 28 px."""
    return ((image_size - 4) // 2 - 4) // 2


class InceptionANet(Net):
    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__(specs.inception_a_net(num_classes, in_channels, image_size))
        self.b1 = Sequential(conv=BasicConv2D(10, 5, in_channels=in_channels),
                             pool=nn.MaxPool2D(2, 2))
        self.inception1 = InceptionA(10)
        self.b2 = Sequential(conv=BasicConv2D(20, 5, in_channels=88), pool=nn.MaxPool2D(2, 2))
        self.inception2 = InceptionA(20)
        self.fc = BasicDense(num_classes, in_units=88 * _side(image_size) ** 2)
        self.finish()

    def hybrid_forward(self, F, x):     # N x 1 x 28 x 28
        x = self.b1(x)                  # N x 10 x 12 x 12
        x = self.inception1(x)          # N x 88 x 12 x 12
        x = self.b2(x)                  # N x 20 x 4 x 4
        x = self.inception2(x)          # N x 88 x 4 x 4
        return self.fc(x)               # N x num_classes


class ResidualNet(Net):
    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__(specs.residual_net(num_classes, in_channels, image_size))
        self.b1 = Sequential(conv=BasicConv2D(16, 5, in_channels=in_channels),
                             pool=nn.MaxPool2D(2, 2))
        self.residual1 = ResidualBlock(16)
        self.b2 = Sequential(conv=BasicConv2D(32, 5, in_channels=16), pool=nn.MaxPool2D(2, 2))
        self.residual2 = ResidualBlock(32)
        self.fc = BasicDense(num_classes, in_units=32 * _side(image_size) ** 2)
        self.finish()

    def hybrid_forward(self, F, x):     # N x 1 x 28 x 28
        x = self.b1(x)                  # N x 16 x 12 x 12
        x = self.residual1(x)           # N x 16 x 12 x 12
        x = self.b2(x)                  # N x 32 x 4 x 4
        x = self.residual2(x)           # N x 32 x 4 x 4
        return self.fc(x)               # N x num_classes


class InceptionABlock(Net):
    """The registered model "inception_a": one InceptionA block (``specs.inception_a_block``)."""

    def __init__(self, **kwargs):
        args = spec_args(specs.inception_a_block, kwargs)
        super().__init__(specs.inception_a_block(**args))
        self.inception_a = InceptionA(args["in_channels"])
        self.finish()

    def hybrid_forward(self, F, x):
        return self.inception_a(x)


class ResidualBlockNet(Net):
    """The registered model "residual_block": one ResidualBlock (``specs.residual_block_spec``)."""

    def __init__(self, **kwargs):
        args = spec_args(specs.residual_block_spec, kwargs)
        super().__init__(specs.residual_block_spec(**args))
        self.residual = ResidualBlock(args["channels"])
        self.finish()

    def hybrid_forward(self, F, x):
        return self.residual(x)
