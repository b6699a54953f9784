"""d2lport: the modern-CNN chapters of D2L in PyTorch, TensorFlow/Keras and MXNet Gluon.

``from d2lport import torch as d2p`` (or ``tensorflow``, ``mxnet``) gives one framework's
backend; this top-level package imports no framework.
"""
from .registry import (FRAMEWORKS, FrameworkNotInstalledError, UnknownModelError,  # noqa: F401
                       create_model, get_spec, list_models)
from .specs import InputShapeError  # noqa: F401

__version__ = "0.1.0"


def __getattr__(name):
    # ``d2lport.compare(...)`` is loaded on first use, so ``import d2lport`` stays light
    # (it imports no framework either way).  The subpackage is callable and calls
    # ``compare.compare``: one object whichever way it is imported (``import
    # d2lport.compare as m`` binds the package attribute, so it could not be a function).
    if name == "compare":
        import importlib
        return importlib.import_module(".compare", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
