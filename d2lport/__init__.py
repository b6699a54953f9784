"""d2lport: the modern-CNN chapters of D2L in PyTorch, TensorFlow/Keras and MXNet Gluon.

``from d2lport import torch as d2p`` (or ``tensorflow``, ``mxnet``) gives one framework's
backend; this top-level package imports no framework.
"""
from .registry import (FRAMEWORKS, FrameworkNotInstalledError, UnknownModelError,  # noqa: F401
                       create_model, get_spec, list_models)
from .specs import InputShapeError  # noqa: F401

__version__ = "0.1.0"
