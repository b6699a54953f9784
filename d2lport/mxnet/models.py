"""The registered models: name -> constructor (``MODELS``), and ``create_model``.

The networks are written out in ``googlenet.py``, ``vgg.py`` and ``lecture.py``; each
constructor takes the keyword arguments of its spec factory (``d2lport.registry``).
"""
from __future__ import annotations

import functools
from typing import Optional

import mxnet as mx
import numpy as np

from .. import registry, specs
from .googlenet import GoogLeNet, GoogLeNetV1, InceptionBlock
from .layers import Net
from .lecture import InceptionABlock, InceptionANet, ResidualBlockNet, ResidualNet
from .vgg import VGG

MODELS = {
    "inception": InceptionBlock,
    "googlenet": GoogLeNet,
    "googlenet_v1": GoogLeNetV1,
    **{name: functools.partial(VGG, config, name=name)
       for name, config in specs.VGG_MODELS.items()},
    "inception_a": InceptionABlock,
    "inception_a_net": InceptionANet,
    "residual_block": ResidualBlockNet,
    "residual_net": ResidualNet,
}


def create_model(name: str, seed: Optional[int] = None, hybridize: bool = True,
                 **kwargs) -> Net:
    """A registered model (``d2lport models`` lists them), initialised on the CPU and, by
    default, hybridized: one cached graph for the whole net (GoogLeNetV1: per block), with
    static memory and shapes (``static_alloc``/``static_shape``: GoogLeNet trains at 62
    instead of 44 examples/s, at about 0.3 GB more peak memory).
    ``seed`` fixes the initialisation.  Build it after ``npx.set_np()`` to feed it
    ``mxnet.np`` arrays (D2L 1.0's numpy mode)."""
    registry.get_spec(name, **kwargs)            # unknown names / keywords: the registry's errors
    if seed is not None:
        mx.random.seed(seed)
        np.random.seed(seed)
    key, fixed = registry.resolve(name)
    net = MODELS[key](**{**fixed, **kwargs})
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net
