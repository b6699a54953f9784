"""The "PyTorch Zero to All" lecture 11 networks (Sung Kim) in Keras: the InceptionA block,
a residual block, and their two small 28-px nets.  Shapes in comments are NHWC."""
import keras
import tensorflow as tf

from .. import specs
from .layers import AvgPool2D, Conv, Dense, MaxPool2D, Net


class InceptionA(keras.layers.Layer):
    """16 (1x1) | 16 -> 24 (5x5) | 16 -> 24 -> 24 (3x3, 3x3) | avg-pool -> 24 (1x1): 88
    channels.  As in the lecture, no ReLU inside the branches."""

    def __init__(self, in_channels, name=None):
        super().__init__(name=name)
        linear = dict(relu=False)
        self.branch1 = keras.Sequential([Conv(16, 1, name="conv", **linear)], name="branch1")
        self.branch2 = keras.Sequential([Conv(16, 1, name="conv1", **linear),
                                         Conv(24, 5, padding=2, name="conv2", **linear)],
                                        name="branch2")
        self.branch3 = keras.Sequential([Conv(16, 1, name="conv1", **linear),
                                         Conv(24, 3, padding=1, name="conv2", **linear),
                                         Conv(24, 3, padding=1, name="conv3", **linear)],
                                        name="branch3")
        self.branch4 = keras.Sequential([AvgPool2D(3, 1, padding=1, name="pool"),
                                         Conv(24, 1, name="conv", **linear)], name="branch4")
        self.build((None, None, None, in_channels))    # weights exist before the first call

    def build(self, input_shape):
        for branch in (self.branch1, self.branch2, self.branch3, self.branch4):
            branch.build(input_shape)

    def call(self, x):
        return tf.concat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)],
                         axis=-1)


class ResidualBlock(keras.layers.Layer):
    """``relu(x + conv2(relu(conv1(x))))``, two 3x3 convs keeping the channels and size."""

    def __init__(self, channels, name=None):
        super().__init__(name=name)
        self.conv1 = Conv(channels, 3, padding=1, name="conv1")
        self.conv2 = Conv(channels, 3, padding=1, relu=False, name="conv2")
        self.build((None, None, None, channels))       # weights exist before the first call

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.conv2.build(input_shape)

    def call(self, x):
        return tf.nn.relu(x + self.conv2(self.conv1(x)))


class InceptionANet(Net):
    """conv 5x5, max-pool, InceptionA, conv 5x5, max-pool, InceptionA, FC."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__(specs.inception_a_net(num_classes, in_channels, image_size))
        # The lecture's ReLU follows the pool; ReLU and max commute, so the conv's does.
        self.b1 = keras.Sequential([Conv(10, 5, name="conv"), MaxPool2D(2, 2, name="pool")],
                                   name="b1")
        self.inception1 = InceptionA(10, name="inception1")
        self.b2 = keras.Sequential([Conv(20, 5, name="conv"), MaxPool2D(2, 2, name="pool")],
                                   name="b2")
        self.inception2 = InceptionA(20, name="inception2")
        self.fc = Dense(num_classes, flatten=True, name="fc")
        self.build((None, image_size, image_size, in_channels))

    def call(self, x, training=None):
        x = self.inception1(self.b1(x))     # N x 12 x 12 x 88
        x = self.inception2(self.b2(x))     # N x 4 x 4 x 88
        return self.fc(x)                   # N x num_classes


class ResidualNet(Net):
    """conv 5x5, max-pool, residual block, conv 5x5, max-pool, residual block, FC."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28):
        super().__init__(specs.residual_net(num_classes, in_channels, image_size))
        self.b1 = keras.Sequential([Conv(16, 5, name="conv"), MaxPool2D(2, 2, name="pool")],
                                   name="b1")
        self.residual1 = ResidualBlock(16, name="residual1")
        self.b2 = keras.Sequential([Conv(32, 5, name="conv"), MaxPool2D(2, 2, name="pool")],
                                   name="b2")
        self.residual2 = ResidualBlock(32, name="residual2")
        self.fc = Dense(num_classes, flatten=True, name="fc")
        self.build((None, image_size, image_size, in_channels))

    def call(self, x, training=None):
        x = self.residual1(self.b1(x))      # N x 12 x 12 x 16
        x = self.residual2(self.b2(x))      # N x 4 x 4 x 32
        return self.fc(x)                   # N x num_classes
