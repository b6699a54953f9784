"""Model registry: name -> spec factory; ``create_model`` asks a framework's backend for it.

Like timm's ``create_model``: one namespace of names for every framework, keyword arguments
passed to the spec factory (``num_classes``, ``in_channels``, ``image_size``, ...).
:func:`fit_kwargs` and :func:`kwargs_for_data` are the one place where a model's keyword
arguments are fitted to an input or a data set (``d2lport shapes --input``, ``d2lport
train``, ``d2lport compare --input``).
"""
from __future__ import annotations

import difflib
import functools
import inspect
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import specs

FRAMEWORKS: Tuple[str, ...] = ("torch", "tensorflow", "mxnet", "jax")
# The import name of each framework and how to get it (pip extra of this project).
_FRAMEWORK_MODULE = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet",
                     "jax": "jax"}
_FRAMEWORK_ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow",
                      "mx": "mxnet", "gluon": "mxnet", "flax": "jax"}


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., specs.NetSpec]
    kind: str            # "network" | "block"
    summary: str


_REGISTRY: Dict[str, Entry] = {}
# torchvision-style names that are a registered model with fixed keyword arguments.
ALIASES: Dict[str, Tuple[str, dict]] = {}


def register(name: str, factory: Callable[..., specs.NetSpec], kind: str, summary: str):
    _REGISTRY[name] = Entry(name, factory, kind, summary)


register("inception", specs.inception_block, "block",
         "Inception block (GoogLeNet 3a: 192 -> 256 channels)")
register("googlenet", specs.googlenet, "network", "D2L GoogLeNet, 1x96x96, 10 classes")
register("googlenet_v1", specs.googlenet_v1, "network",
         "GoogLeNet 2014 paper: LRN, dropout 0.4, two auxiliary heads, 3x224x224")
for _name, _cfg in specs.VGG_MODELS.items():
    register(_name, functools.partial(specs.vgg, _cfg, name=_name), "network", f"VGG configuration {_cfg}; batch_norm=, width_ratio=")
    ALIASES[f"{_name}_bn"] = (_name, {"batch_norm": True})
# D2L 8.2's narrow VGG-11: a quarter of the widths, Fashion-MNIST at 224 px.
# Its spec carries its own name, so summaries, plots and diagrams say vgg_d2l, not vgg11.
ALIASES["vgg_d2l"] = ("vgg11", {"width_ratio": 4, "in_channels": 1, "num_classes": 10,
                               "name": "vgg_d2l"})

# The networks each backend's bookpath.py writes out as the book does (d2lport bench).
BOOK_MODELS = ("googlenet", "vgg_d2l")


def book_args(name: str) -> Tuple[int, Optional[Tuple[Tuple[int, int], ...]]]:
    """(num_classes, D2L's VGG conv_arch or None for GoogLeNet) of a book model."""
    if name not in BOOK_MODELS:
        raise ValueError(f"no book model {name!r}; one of {', '.join(BOOK_MODELS)}")
    num_classes = get_spec(name).blocks[-1].out_features
    if name == "googlenet":
        return num_classes, None
    return num_classes, specs.vgg_arch("A", ALIASES[name][1]["width_ratio"])
register("inception_a", specs.inception_a_block, "block",
         "Lecture InceptionA block (88 output channels)")
register("inception_a_net", specs.inception_a_net, "network",
         "Lecture net: conv, InceptionA, conv, InceptionA, FC (1x28x28)")
register("residual_block", specs.residual_block_spec, "block", "Lecture residual block")
register("residual_net", specs.residual_net, "network",
         "Lecture net: conv, residual block, conv, residual block, FC (1x28x28)")


class UnknownModelError(KeyError):
    def __str__(self):                  # KeyError would print the message with quotes
        return str(self.args[0])


class FrameworkNotInstalledError(ImportError):
    pass


def list_models(kind: str = None) -> List[str]:
    """Registered names (``kind`` = "network" or "block" to filter), in registration order."""
    return [n for n, e in _REGISTRY.items() if kind is None or e.kind == kind]


def describe(name: str) -> Entry:
    return _REGISTRY[resolve(name)[0]]


def resolve(name: str) -> Tuple[str, dict]:
    """(registered name, fixed keyword arguments) for a name or an alias."""
    key = name.strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return key, {}
    if key in ALIASES:
        return ALIASES[key]
    known = list(_REGISTRY) + list(ALIASES)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}.{hint} Registered models: "
                            f"{', '.join(list_models())} (see `d2lport models`).")


def accepts(name: str, keyword: str) -> bool:
    """Whether the model's factory takes ``keyword`` (e.g. ``image_size``)."""
    factory = _REGISTRY[resolve(name)[0]].factory
    return keyword in inspect.signature(factory).parameters


def expand(name: str, kwargs: Optional[dict] = None) -> Tuple[str, dict]:
    """(registered name, keyword arguments) with an alias expanded (``vgg_d2l`` -> vgg11 with
    width_ratio=4, ...), so that a worker or a weight file's meta can rebuild the model."""
    key, fixed = resolve(name)
    # The alias's label (``name=``) is not a keyword to pass around: get_spec(name, **kw)
    # and create_model(name, **kw) take the model's name first.
    return key, {k: v for k, v in {**fixed, **(kwargs or {})}.items() if k != "name"}


def fit_kwargs(name: str, input_shape: Optional[Sequence[int]] = None, **kwargs) -> dict:
    """``kwargs`` completed to build ``name`` for an (N, C, H, W) input: its channels, and
    its size for a net whose classifier depends on it.  Keywords given win."""
    kwargs = dict(kwargs)
    if input_shape is None:
        return kwargs
    if len(input_shape) != 4:
        raise specs.InputShapeError(f"input_shape is (N, C, H, W), got {tuple(input_shape)}")
    if accepts(name, "in_channels"):
        kwargs.setdefault("in_channels", int(input_shape[1]))
    if accepts(name, "image_size") and not get_spec(name, **kwargs).any_size:
        kwargs.setdefault("image_size", int(input_shape[2]))
    return kwargs


def kwargs_for_data(name: str, image_size: Optional[int] = None, channels: int = 1,
                    num_classes: int = 10, **kwargs) -> Tuple[dict, int]:
    """``(kwargs, side)`` to train ``name`` on square ``channels``-channel images of
    ``num_classes`` classes (Fashion-MNIST by default) resized to ``image_size`` (default:
    the model's own input size, which is then ``side``).  Keywords given win."""
    side = image_size or get_spec(name, **{k: v for k, v in kwargs.items()
                                           if k not in ("num_classes", "in_channels")}
                                  ).input_shape[1]
    kwargs = dict(kwargs)
    if accepts(name, "num_classes"):
        kwargs.setdefault("num_classes", num_classes)
    return fit_kwargs(name, (1, channels, side, side), **kwargs), side


def get_spec(name: str, **kwargs) -> specs.NetSpec:
    """The framework-neutral spec of a registered model, with keyword arguments applied."""
    key, fixed = resolve(name)
    merged = {**fixed, **kwargs}
    try:
        return _REGISTRY[key].factory(**merged)
    except TypeError as err:
        factory = _REGISTRY[key].factory
        takes = ", ".join(n for n in inspect.signature(factory).parameters
                          if n not in getattr(factory, "keywords", {}))
        raise TypeError(f"{key}: {err}; it takes {takes}") from None


def normalize_framework(framework: str) -> str:
    fw = _FRAMEWORK_ALIASES.get(framework.lower(), framework.lower())
    if fw not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    return fw


def framework_available(framework: str) -> bool:
    return importlib.util.find_spec(_FRAMEWORK_MODULE[normalize_framework(framework)]) is not None


def require_framework(framework: str) -> str:
    fw = normalize_framework(framework)
    if not framework_available(fw):
        raise FrameworkNotInstalledError(
            f"{fw} is not installed in this Python ({_python()}): install it with "
            f"`pip install 'd2lport[{fw}]'` (or `make setup` for every framework)."
            + _separate_env_hint(fw))
    return fw


def _separate_env_hint(fw: str) -> str:
    """For a framework with an environment of its own (MXNet: .venv-mxnet), where it is."""
    from .worker import SEPARATE_ENVS, separate_env_python
    if fw not in SEPARATE_ENVS:
        return ""
    python = separate_env_python(fw)
    if python and python != _python():
        return f" It is in {python}: run d2lport there (`d2lport compare` reaches it from here)."
    return (f" `make setup` builds it apart, in {SEPARATE_ENVS[fw]} ({fw} needs numpy < 1.24, "
            "the other frameworks numpy 2).")


def _python() -> str:
    import sys
    return sys.executable


def backend(framework: str):
    """The d2lport package of a framework (``d2lport.torch`` ...), imported on demand."""
    fw = require_framework(framework)
    return importlib.import_module(f"d2lport.{fw}")


def create_model(name: str, framework: str = "torch", **kwargs):
    """A registered model as a native model of ``framework``: that backend's hand-written
    class, from ``d2lport.<framework>.create_model(name, **kwargs)`` (``seed=`` and the
    backend's own options pass through).  An unknown name fails before any framework import."""
    resolve(name)
    return backend(framework).create_model(name, **kwargs)
