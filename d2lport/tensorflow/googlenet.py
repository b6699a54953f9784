"""GoogLeNet in Keras: D2L's (8.4) and the 2014 paper's, with its auxiliary heads.

Channel tables come from ``d2lport.specs``; shapes in comments are NHWC (Keras' layout).
"""
import keras
import tensorflow as tf

from .. import specs
from .layers import LRN, AuxOutputs, AvgPool2D, Conv, Dense, MaxPool2D, Net


class Inception(keras.layers.Layer):
    """Four parallel branches concatenated along channels (the last axis in Keras):
    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1."""

    def __init__(self, in_channels, c1, c2, c3, c4, batch_norm=False, name=None):
        super().__init__(name=name)
        conv = dict(batch_norm=batch_norm, use_bias=not batch_norm)
        self.branch1 = keras.Sequential([Conv(c1, 1, name="conv", **conv)], name="branch1")
        self.branch2 = keras.Sequential([Conv(c2[0], 1, name="conv1", **conv),
                                         Conv(c2[1], 3, padding=1, name="conv2", **conv)],
                                        name="branch2")
        self.branch3 = keras.Sequential([Conv(c3[0], 1, name="conv1", **conv),
                                         Conv(c3[1], 5, padding=2, name="conv2", **conv)],
                                        name="branch3")
        self.branch4 = keras.Sequential([MaxPool2D(3, 1, padding=1, name="pool"),
                                         Conv(c4, 1, name="conv", **conv)], name="branch4")
        self.out_channels = c1 + c2[1] + c3[1] + c4
        self.build((None, None, None, in_channels))    # weights exist before the first call

    def build(self, input_shape):
        for branch in (self.branch1, self.branch2, self.branch3, self.branch4):
            branch.build(input_shape)

    def call(self, x):
        return tf.concat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)],
                         axis=-1)


def inceptions(names, in_channels, batch_norm=False):
    """The named blocks of ``specs.INCEPTION_CHANNELS``, each fed by the one before."""
    blocks = []
    for name in names:
        blocks.append(Inception(in_channels, *specs.INCEPTION_CHANNELS[name], batch_norm,
                                name=name))
        in_channels = blocks[-1].out_channels
    return blocks


class GoogLeNet(Net):
    """D2L's GoogLeNet: stages b1..b5 and a linear classifier (1 x 96 x 96 Fashion-MNIST)."""

    def __init__(self, num_classes=10, in_channels=1, image_size=96):
        super().__init__(specs.googlenet(num_classes, in_channels, image_size))
        self.b1 = keras.Sequential([Conv(64, 7, strides=2, padding=3, name="conv"),
                                    MaxPool2D(3, 2, padding=1, name="pool")], name="b1")
        self.b2 = keras.Sequential([Conv(64, 1, name="conv1"),
                                    Conv(192, 3, padding=1, name="conv2"),
                                    MaxPool2D(3, 2, padding=1, name="pool")], name="b2")
        stage3 = inceptions(specs.STAGE3, 192)
        stage4 = inceptions(specs.STAGE4, stage3[-1].out_channels)
        stage5 = inceptions(specs.STAGE5, stage4[-1].out_channels)
        self.b3 = keras.Sequential(stage3 + [MaxPool2D(3, 2, padding=1, name="pool")], name="b3")
        self.b4 = keras.Sequential(stage4 + [MaxPool2D(3, 2, padding=1, name="pool")], name="b4")
        self.b5 = keras.Sequential(stage5 + [keras.layers.GlobalAveragePooling2D(name="gap")],
                                   name="b5")
        self.fc = Dense(num_classes, name="fc")
        self.build((None, image_size, image_size, in_channels))

    def call(self, x, training=None):
        x = self.b1(x)      # N x 24 x 24 x 64
        x = self.b2(x)      # N x 12 x 12 x 192
        x = self.b3(x)      # N x 6 x 6 x 480
        x = self.b4(x)      # N x 3 x 3 x 832
        x = self.b5(x)      # N x 1024
        return self.fc(x)   # N x num_classes


class InceptionAux(keras.layers.Layer):
    """An auxiliary classifier (paper, section 5): 5x5/3 average pool, 1x1 conv, FC 1024
    with dropout, linear classifier; trained with weight ``specs.AUX_LOSS_WEIGHT``."""

    def __init__(self, num_classes, dropout, batch_norm=False, name=None):
        super().__init__(name=name)
        self.pool = AvgPool2D(5, 3, name="pool")
        self.conv = Conv(128, 1, batch_norm=batch_norm, use_bias=not batch_norm, name="conv")
        self.fc1 = Dense(1024, relu=True, flatten=True, dropout=dropout, name="fc1")
        self.fc2 = Dense(num_classes, name="fc2")

    def call(self, x):
        x = self.conv(self.pool(x))     # N x 4 x 4 x 128
        return self.fc2(self.fc1(x))    # N x num_classes


class GoogLeNetV1(Net):
    """The 2014 paper's GoogLeNet (Table 1): LRN in the stem, dropout before the classifier,
    auxiliary heads after inception4a and inception4d, run in training only."""

    def __init__(self, num_classes=1000, in_channels=3, image_size=224, aux_logits=True,
                 batch_norm=False, lrn=True, dropout=0.4, aux_dropout=0.7):
        super().__init__(specs.googlenet_v1(num_classes, in_channels, image_size, aux_logits,
                                            batch_norm, lrn, dropout, aux_dropout))
        conv = dict(batch_norm=batch_norm, use_bias=not batch_norm)
        norm = lambda: [LRN(**specs.GOOGLENET_LRN, name="lrn")] if lrn else []  # noqa: E731
        self.b1 = keras.Sequential([Conv(64, 7, strides=2, padding=3, name="conv", **conv),
                                    MaxPool2D(3, 2, padding=1, name="pool")] + norm(),
                                   name="b1")
        self.b2 = keras.Sequential([Conv(64, 1, name="conv1", **conv),
                                    Conv(192, 3, padding=1, name="conv2", **conv)] + norm()
                                   + [MaxPool2D(3, 2, padding=1, name="pool")], name="b2")
        for block in inceptions(specs.STAGE3 + specs.STAGE4 + specs.STAGE5, 192, batch_norm):
            setattr(self, block.name, block)                   # inception3a ... inception5b
        self.pool3 = MaxPool2D(3, 2, padding=1, name="pool3")
        self.pool4 = MaxPool2D(3, 2, padding=1, name="pool4")
        self.pool5 = keras.Sequential([keras.layers.GlobalAveragePooling2D(name="gap"),
                                       keras.layers.Dropout(dropout, name="dropout")],
                                      name="pool5")
        self.fc = Dense(num_classes, name="fc")
        self.aux1 = InceptionAux(num_classes, aux_dropout, batch_norm, name="aux1") \
            if aux_logits else None
        self.aux2 = InceptionAux(num_classes, aux_dropout, batch_norm, name="aux2") \
            if aux_logits else None
        self.build((None, image_size, image_size, in_channels))

    def call(self, x, training=None):
        x = self.b2(self.b1(x))                                # N x 28 x 28 x 192
        x = self.pool3(self.inception3b(self.inception3a(x)))  # N x 14 x 14 x 480
        x = self.inception4a(x)                                # N x 14 x 14 x 512
        aux1 = self.aux1(x) if training and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 14 x 14 x 528
        aux2 = self.aux2(x) if training and self.aux2 is not None else None
        x = self.pool4(self.inception4e(x))                    # N x 7 x 7 x 832
        x = self.inception5b(self.inception5a(x))              # N x 7 x 7 x 1024
        x = self.fc(self.pool5(x))                             # N x num_classes
        return x if aux1 is None else AuxOutputs(x, (aux1, aux2))
