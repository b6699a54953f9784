"""The "PyTorch Zero to All" lecture 11 networks (Sung Kim) in Flax linen: the InceptionA
block, a residual block, and their two small 28-px nets.  Shapes in comments are NHWC."""
import jax.numpy as jnp
from flax import linen as nn

from .. import specs
from .layers import AvgPool, Conv, Dense, MaxPool, Net, sequential


class InceptionA(nn.Module):
    """16 (1x1) | 16 -> 24 (5x5) | 16 -> 24 -> 24 (3x3, 3x3) | avg-pool -> 24 (1x1): 88
    channels.  As in the lecture, no ReLU inside the branches."""
    in_channels: int

    def setup(self):
        linear = dict(relu=False)
        self.branch1 = sequential(conv=Conv(16, (1, 1), **linear))
        self.branch2 = sequential(conv1=Conv(16, (1, 1), **linear),
                                  conv2=Conv(24, (5, 5), padding=2, **linear))
        self.branch3 = sequential(conv1=Conv(16, (1, 1), **linear),
                                  conv2=Conv(24, (3, 3), padding=1, **linear),
                                  conv3=Conv(24, (3, 3), padding=1, **linear))
        self.branch4 = sequential(pool=AvgPool(3, 1, padding=1),
                                  conv=Conv(24, (1, 1), **linear))

    def __call__(self, x, training: bool = False):
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return jnp.concatenate([b(x, training=training) for b in branches], axis=-1)


class ResidualBlock(nn.Module):
    """``relu(x + conv2(relu(conv1(x))))``, two 3x3 convs keeping the channels and size."""
    channels: int

    @property
    def in_channels(self) -> int:
        return self.channels

    def setup(self):
        self.conv1 = Conv(self.channels, (3, 3), padding=1)
        self.conv2 = Conv(self.channels, (3, 3), padding=1, relu=False)

    def __call__(self, x, training: bool = False):
        return nn.relu(x + self.conv2(self.conv1(x)))


class InceptionANet(Net):
    """conv 5x5, max-pool, InceptionA, conv 5x5, max-pool, InceptionA, FC."""
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28

    @property
    def spec(self):
        return specs.inception_a_net(self.num_classes, self.in_channels, self.image_size)

    def setup(self):
        # The lecture's ReLU follows the pool; ReLU and max commute, so the conv's does.
        self.b1 = sequential(conv=Conv(10, (5, 5)), pool=MaxPool(2, 2))
        self.inception1 = InceptionA(10)
        self.b2 = sequential(conv=Conv(20, (5, 5)), pool=MaxPool(2, 2))
        self.inception2 = InceptionA(20)
        self.fc = Dense(self.num_classes, flatten=True)

    def __call__(self, x, training: bool = False):
        x = self.inception1(self.b1(x))     # N x 12 x 12 x 88
        x = self.inception2(self.b2(x))     # N x 4 x 4 x 88
        return self.fc(x)                   # N x num_classes


class ResidualNet(Net):
    """conv 5x5, max-pool, residual block, conv 5x5, max-pool, residual block, FC."""
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28

    @property
    def spec(self):
        return specs.residual_net(self.num_classes, self.in_channels, self.image_size)

    def setup(self):
        self.b1 = sequential(conv=Conv(16, (5, 5)), pool=MaxPool(2, 2))
        self.residual1 = ResidualBlock(16)
        self.b2 = sequential(conv=Conv(32, (5, 5)), pool=MaxPool(2, 2))
        self.residual2 = ResidualBlock(32)
        self.fc = Dense(self.num_classes, flatten=True)

    def __call__(self, x, training: bool = False):
        x = self.residual1(self.b1(x))      # N x 12 x 12 x 16
        x = self.residual2(self.b2(x))      # N x 4 x 4 x 32
        return self.fc(x)                   # N x num_classes
