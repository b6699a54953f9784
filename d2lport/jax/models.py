"""Every registered model name -> its hand-written linen network (``MODELS``).

The constructors take the keyword arguments of the model's spec factory in
``d2lport.specs``; registry aliases (``vgg16_bn``, ``vgg_d2l``) add their fixed keywords.
They return the (unbound) module; ``create_model`` pairs it with its variables.
"""
from __future__ import annotations

import functools
import inspect

from .. import specs
from .googlenet import GoogLeNet, GoogLeNetV1, Inception
from .layers import SingleBlock
from .lecture import InceptionA, InceptionANet, ResidualBlock, ResidualNet
from .vgg import VGG


def _arguments(factory, kwargs) -> dict:
    """The spec factory's arguments, its defaults filled in (the numbers stay in specs)."""
    bound = inspect.signature(factory).bind(**kwargs)
    bound.apply_defaults()
    return bound.arguments


def inception_block(**kwargs) -> SingleBlock:
    """"inception": one Inception block, GoogLeNet's 3a by default."""
    a = _arguments(specs.inception_block, kwargs)
    return SingleBlock(specs.inception_block(**kwargs),
                       Inception(a["in_channels"], a["c1"], tuple(a["c2"]), tuple(a["c3"]),
                                 a["c4"], name="inception"))


def inception_a_block(**kwargs) -> SingleBlock:
    """"inception_a": the lecture's InceptionA block."""
    a = _arguments(specs.inception_a_block, kwargs)
    return SingleBlock(specs.inception_a_block(**kwargs),
                       InceptionA(a["in_channels"], name="inception_a"))


def residual_block(**kwargs) -> SingleBlock:
    """"residual_block": the lecture's residual block."""
    a = _arguments(specs.residual_block_spec, kwargs)
    return SingleBlock(specs.residual_block_spec(**kwargs),
                       ResidualBlock(a["channels"], name="residual"))


MODELS = {
    "inception": inception_block,
    "googlenet": GoogLeNet,
    "googlenet_v1": GoogLeNetV1,
    **{name: functools.partial(VGG, config, name=name)
       for name, config in specs.VGG_MODELS.items()},
    "inception_a": inception_a_block,
    "inception_a_net": InceptionANet,
    "residual_block": residual_block,
    "residual_net": ResidualNet,
}
