"""GoogLeNet in Flax linen: D2L's (8.4) and the 2014 paper's, with its auxiliary heads.

Channel tables come from ``d2lport.specs``; shapes in comments are NHWC (Flax's layout).
"""
from typing import Dict, Sequence

import jax.numpy as jnp
from flax import linen as nn

from .. import specs
from .layers import (LRN, AuxOutputs, AvgPool, Conv, Dense, Dropout, GlobalAvgPool, MaxPool,
                     Net, sequential)


class Inception(nn.Module):
    """Four parallel branches concatenated along channels (the last axis in Flax):
    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1."""
    in_channels: int
    c1: int
    c2: Sequence[int]
    c3: Sequence[int]
    c4: int
    batch_norm: bool = False

    def setup(self):
        conv = dict(batch_norm=self.batch_norm, use_bias=not self.batch_norm)
        self.branch1 = sequential(conv=Conv(self.c1, (1, 1), **conv))
        self.branch2 = sequential(conv1=Conv(self.c2[0], (1, 1), **conv),
                                  conv2=Conv(self.c2[1], (3, 3), padding=1, **conv))
        self.branch3 = sequential(conv1=Conv(self.c3[0], (1, 1), **conv),
                                  conv2=Conv(self.c3[1], (5, 5), padding=2, **conv))
        self.branch4 = sequential(pool=MaxPool(3, 1, padding=1),
                                  conv=Conv(self.c4, (1, 1), **conv))

    @property
    def out_channels(self) -> int:
        return self.c1 + self.c2[1] + self.c3[1] + self.c4

    def __call__(self, x, training: bool = False):
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return jnp.concatenate([b(x, training=training) for b in branches], axis=-1)


def inceptions(names, in_channels, batch_norm=False) -> Dict[str, Inception]:
    """The named blocks of ``specs.INCEPTION_CHANNELS``, each fed by the one before."""
    blocks = {}
    for name in names:
        blocks[name] = Inception(in_channels, *specs.INCEPTION_CHANNELS[name], batch_norm)
        in_channels = blocks[name].out_channels
    return blocks


class GoogLeNet(Net):
    """D2L's GoogLeNet: stages b1..b5 and a linear classifier (1 x 96 x 96 Fashion-MNIST)."""
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 96

    @property
    def spec(self):
        return specs.googlenet(self.num_classes, self.in_channels, self.image_size)

    def setup(self):
        self.b1 = sequential(conv=Conv(64, (7, 7), strides=2, padding=3),
                             pool=MaxPool(3, 2, padding=1))
        self.b2 = sequential(conv1=Conv(64, (1, 1)),
                             conv2=Conv(192, (3, 3), padding=1),
                             pool=MaxPool(3, 2, padding=1))
        stage3 = inceptions(specs.STAGE3, 192)
        stage4 = inceptions(specs.STAGE4, stage3["inception3b"].out_channels)
        stage5 = inceptions(specs.STAGE5, stage4["inception4e"].out_channels)
        self.b3 = sequential(**stage3, pool=MaxPool(3, 2, padding=1))
        self.b4 = sequential(**stage4, pool=MaxPool(3, 2, padding=1))
        self.b5 = sequential(**stage5, gap=GlobalAvgPool())
        self.fc = Dense(self.num_classes)

    def __call__(self, x, training: bool = False):
        x = self.b1(x, training=training)   # N x 24 x 24 x 64
        x = self.b2(x, training=training)   # N x 12 x 12 x 192
        x = self.b3(x, training=training)   # N x 6 x 6 x 480
        x = self.b4(x, training=training)   # N x 3 x 3 x 832
        x = self.b5(x, training=training)   # N x 1024
        return self.fc(x)                   # N x num_classes


class InceptionAux(nn.Module):
    """An auxiliary classifier (paper, section 5): 5x5/3 average pool, 1x1 conv, FC 1024
    with dropout, linear classifier; trained with weight ``specs.AUX_LOSS_WEIGHT``."""
    num_classes: int
    dropout: float
    batch_norm: bool = False

    def setup(self):
        self.pool = AvgPool(5, 3)
        self.conv = Conv(128, (1, 1), batch_norm=self.batch_norm, use_bias=not self.batch_norm)
        self.fc1 = Dense(1024, relu=True, flatten=True, dropout=self.dropout)
        self.fc2 = Dense(self.num_classes)

    def __call__(self, x, training: bool = False):
        x = self.conv(self.pool(x), training=training)      # N x 4 x 4 x 128
        return self.fc2(self.fc1(x, training=training))     # N x num_classes


class GoogLeNetV1(Net):
    """The 2014 paper's GoogLeNet (Table 1): LRN in the stem, dropout before the classifier,
    auxiliary heads after inception4a and inception4d, run in training only."""
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    aux_logits: bool = True
    batch_norm: bool = False
    lrn: bool = True
    dropout: float = 0.4
    aux_dropout: float = 0.7

    @property
    def spec(self):
        return specs.googlenet_v1(self.num_classes, self.in_channels, self.image_size,
                                  self.aux_logits, self.batch_norm, self.lrn, self.dropout,
                                  self.aux_dropout)

    def setup(self):
        conv = dict(batch_norm=self.batch_norm, use_bias=not self.batch_norm)
        norm = lambda: dict(lrn=LRN(**specs.GOOGLENET_LRN)) if self.lrn else {}  # noqa: E731
        self.b1 = sequential(conv=Conv(64, (7, 7), strides=2, padding=3, **conv),
                             pool=MaxPool(3, 2, padding=1), **norm())
        self.b2 = sequential(conv1=Conv(64, (1, 1), **conv),
                             conv2=Conv(192, (3, 3), padding=1, **conv), **norm(),
                             pool=MaxPool(3, 2, padding=1))
        blocks = inceptions(specs.STAGE3 + specs.STAGE4 + specs.STAGE5, 192, self.batch_norm)
        for name, block in blocks.items():
            setattr(self, name, block)                          # inception3a ... inception5b
        self.pool3 = MaxPool(3, 2, padding=1)
        self.pool4 = MaxPool(3, 2, padding=1)
        self.pool5 = sequential(gap=GlobalAvgPool(), dropout=Dropout(self.dropout))
        self.fc = Dense(self.num_classes)
        if self.aux_logits:
            self.aux1 = InceptionAux(self.num_classes, self.aux_dropout, self.batch_norm)
            self.aux2 = InceptionAux(self.num_classes, self.aux_dropout, self.batch_norm)

    def __call__(self, x, training: bool = False):
        t = dict(training=training)
        x = self.b2(self.b1(x, **t), **t)                               # N x 28 x 28 x 192
        x = self.pool3(self.inception3b(self.inception3a(x, **t), **t))  # N x 14 x 14 x 480
        x = self.inception4a(x, **t)                                     # N x 14 x 14 x 512
        aux1 = self.aux1(x, **t) if training and self.aux_logits else None
        x = self.inception4d(self.inception4c(self.inception4b(x, **t), **t), **t)
        aux2 = self.aux2(x, **t) if training and self.aux_logits else None  # (528 channels)
        x = self.pool4(self.inception4e(x, **t))                         # N x 7 x 7 x 832
        x = self.inception5b(self.inception5a(x, **t), **t)              # N x 7 x 7 x 1024
        x = self.fc(self.pool5(x, **t))                                  # N x num_classes
        return x if aux1 is None else AuxOutputs(x, (aux1, aux2))
