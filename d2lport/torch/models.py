"""Every registered model name -> its PyTorch constructor, and ``create_model``.

The networks themselves are written out in ``googlenet.py``, ``vgg.py`` and ``lecture.py``;
each constructor takes the keyword arguments of the model's spec factory
(:mod:`d2lport.registry`).
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Dict, Optional

import torch

from .. import registry, specs
from .googlenet import GoogLeNet, GoogLeNetV1, Inception
from .layers import Net, SingleBlock
from .lecture import InceptionA, InceptionANet, ResidualBlock, ResidualNet
from .vgg import VGG


def _single_block(factory: Callable[..., specs.NetSpec], block: Callable) -> Callable:
    """The constructor of a registered single-block model: the factory's keywords (less
    ``image_size``) are the block's own (``Inception(in_channels, c1, c2, c3, c4)``)."""
    def make(**kwargs) -> SingleBlock:
        args = inspect.signature(factory).bind(**kwargs)
        args.apply_defaults()
        own = {k: v for k, v in args.arguments.items() if k != "image_size"}
        return SingleBlock(factory(**kwargs), block(**own))
    make.__name__ = make.__qualname__ = block.__name__
    return make


MODELS: Dict[str, Callable[..., Net]] = {
    "inception": _single_block(specs.inception_block, Inception),
    "googlenet": GoogLeNet,
    "googlenet_v1": GoogLeNetV1,
    **{name: partial(VGG, config, name=name) for name, config in specs.VGG_MODELS.items()},
    "inception_a": _single_block(specs.inception_a_block, InceptionA),
    "inception_a_net": InceptionANet,
    "residual_block": _single_block(specs.residual_block_spec, ResidualBlock),
    "residual_net": ResidualNet,
}


def create_model(name: str, seed: Optional[int] = None, **kwargs) -> Net:
    """Build a registered model (``d2lport models`` lists them); ``seed`` fixes the init."""
    registry.get_spec(name, **kwargs)      # unknown names and keywords: the registry's errors
    if seed is not None:
        torch.manual_seed(seed)
    key, fixed = registry.resolve(name)
    return MODELS[key](**{**fixed, **kwargs})
