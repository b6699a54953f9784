"""d2lport's MXNet Gluon backend: ``from d2lport import mxnet as d2p``.

Every registered network written out as Gluon blocks (``googlenet.py``, ``vgg.py``,
``lecture.py``; numbers from ``d2lport.specs``), plus data, training, summaries and
canonical weights.  Imports neither TensorFlow nor PyTorch.

Both of MXNet's array modes work: legacy ``mx.nd`` arrays, and D2L 1.0's numpy mode
(``from mxnet import np, npx; npx.set_np()``, ``mxnet.np`` arrays).  Build a network in the
mode you use it in; the loaders, ``to_tensor`` and ``block_outputs`` follow the current mode.

Two environment rules are enforced here, before MXNet is imported, because breaking either
kills the process or fails deep inside MXNet:

* TensorFlow imported first makes ``import mxnet`` crash (MXNet 1.9.1 with TF 2.17: MXNet's
  signal handler prints "Segmentation fault: 11" and exits 255).  MXNet imported first, then
  TensorFlow, works.  So importing this package while TensorFlow is loaded and MXNet is not
  raises :class:`MXNetImportOrderError` instead.
* MXNet 1.9.1, its last release, reads ``numpy.bool`` at import (``mxnet/numpy/utils.py``:
  ``bool = onp.bool``), an alias numpy 1.24 removed.  d2lport pins ``numpy<1.24`` rather
  than patching numpy; a newer numpy raises an ImportError that says so.  The main
  environment (numpy 2: TensorFlow >= 2.18, JAX) therefore has no MXNet: ``make setup``
  builds ``.venv-mxnet`` for it, and importing this package where MXNet is absent says, in
  one line, where it lives and how to use it.

One setting is made here too, for speed: MXNet starts half as many OpenMP threads as the
machine has cores unless ``OMP_NUM_THREADS`` says otherwise (it assumes two hyperthreads per
core), and reads the variable only when it is imported.  On this project's 2-core machine
that one thread trained GoogLeNet at 40 examples/s instead of 62.  So when MXNet is not yet
imported and ``OMP_NUM_THREADS`` is unset, it is set to the number of physical cores this
process may use (``D2LPORT_MXNET_THREADS=mxnet`` keeps MXNet's own default, e.g. for the
benchmark's book path).
"""
from __future__ import annotations

import sys as _sys


class MXNetImportOrderError(ImportError):
    """TensorFlow is loaded in this process and MXNet is not: importing MXNet would crash."""


class MXNetEnvironmentError(ImportError):
    """MXNet cannot run in this Python (not installed, or numpy >= 1.24); the message names
    the environment that has it (``.venv-mxnet``)."""


def _check_environment() -> None:
    if "tensorflow" in _sys.modules and "mxnet" not in _sys.modules:
        raise MXNetImportOrderError(
            "d2lport.mxnet: TensorFlow is already imported in this process, and importing "
            "MXNet 1.9.1 after TensorFlow crashes the interpreter (segmentation fault). "
            "Fix: import d2lport.mxnet (or mxnet) before tensorflow, or run the frameworks in "
            "separate processes (d2lport.compare / d2lport.worker do that for you).")
    import importlib.util
    import numpy
    major, minor = (int(v) for v in numpy.__version__.split(".")[:2])
    if importlib.util.find_spec("mxnet") is None:
        raise MXNetEnvironmentError(
            f"d2lport.mxnet: MXNet is not installed in this Python ({_sys.executable}, numpy "
            f"{numpy.__version__}); it lives in an environment of its own: {_where_mxnet_lives()}")
    if (major, minor) >= (1, 24):
        raise MXNetEnvironmentError(
            f"d2lport.mxnet: MXNet 1.9.1 needs numpy < 1.24 (it uses numpy.bool, removed in "
            f"1.24), found numpy {numpy.__version__} in {_sys.executable}. Fix: "
            f"{_where_mxnet_lives()}; or, in an environment without TensorFlow >= 2.18 or "
            "JAX, pip install 'numpy<1.24' (`pip install 'd2lport[mxnet]'` pins it).")


def _where_mxnet_lives() -> str:
    """How to reach MXNet from here, as the end of a one-line error message."""
    from ..worker import SEPARATE_ENVS, separate_env_python
    python = separate_env_python("mxnet")
    if python and python != _sys.executable:
        return (f"run it with {python} (e.g. `{python} -m d2lport.cli train residual_net -f "
                "mxnet`, `make test-mxnet`; in Jupyter the kernel \"d2lport-mxnet\"); "
                "`d2lport compare` and `d2lport bench` reach it from here")
    return (f"`make setup` in the d2lport checkout builds {SEPARATE_ENVS['mxnet']} (MXNet "
            f"1.9.1, numpy 1.23.5), then use {SEPARATE_ENVS['mxnet']}/bin/python or the "
            "Jupyter kernel \"d2lport-mxnet\"")


def _set_threads() -> None:
    import os
    import warnings
    from ..common import physical_cores
    if os.environ.get("D2LPORT_MXNET_THREADS", "").strip().lower() == "mxnet":
        return
    if "mxnet" in _sys.modules:
        if "OMP_NUM_THREADS" not in os.environ and physical_cores() > 1:
            warnings.warn("mxnet was imported before d2lport.mxnet with OMP_NUM_THREADS unset, "
                          "so it uses half the CPU cores; import d2lport.mxnet first or set "
                          f"OMP_NUM_THREADS={physical_cores()}", stacklevel=3)
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(physical_cores()))


_check_environment()
_set_threads()

from collections import OrderedDict  # noqa: E402
from typing import Dict, List, Sequence  # noqa: E402

import mxnet as _mx  # noqa: E402
import numpy as _np  # noqa: E402

from .. import registry as _registry  # noqa: E402
from .. import weights as _weights  # noqa: E402
from ..common import (AuxOutputs, History, Row, batch_shape,  # noqa: E402,F401
                      format_table, plot_history, print_summary)
from .data import (LABELS, FashionMNISTLoader, as_array, as_nd,  # noqa: E402,F401
                   get_fashion_mnist_labels, load_data_fashion_mnist, to_ctx,
                   to_tensor)
from .googlenet import (GoogLeNet, GoogLeNetV1, Inception, InceptionAux,  # noqa: E402,F401
                        InceptionBlock)
from .layers import Net, canonical_params  # noqa: E402,F401
from .lecture import (InceptionA, InceptionABlock, InceptionANet,  # noqa: E402,F401
                      ResidualBlock, ResidualBlockNet, ResidualNet)
from .models import MODELS, create_model  # noqa: E402,F401
from .train import evaluate, loss_fn, predict, train, try_gpu  # noqa: E402,F401
from .steps import StepKit, cpu_scope  # noqa: E402,F401
from .vgg import VGG, vgg_block  # noqa: E402,F401

FRAMEWORK = "mxnet"
list_models = _registry.list_models


def _ctx(net) -> _mx.Context:
    for param in net.collect_params().values():
        return param.list_ctx()[0]
    return _mx.cpu()


def _input(net: Net, x):
    """``x`` (NCHW numpy, ``mx.nd`` or ``mxnet.np``) on the net's device; numpy input
    becomes an array of the current mode (``npx.set_np()`` or not)."""
    if isinstance(x, (_mx.nd.NDArray, _mx.np.ndarray)):
        return to_ctx(x, _ctx(net))
    return as_array(_np.asarray(x, _np.float32), ctx=_ctx(net))


def block_outputs(net: Net, x, include_aux: bool = True) -> "OrderedDict[str, _np.ndarray]":
    """Every block's output for input ``x`` in inference mode (outside ``autograd.record``);
    numpy arrays in canonical layout (NCHW / (N, F))."""
    with _mx.autograd.pause(train_mode=False):
        outs = net.forward_blocks(_input(net, x), include_aux=include_aux)
    return OrderedDict((k, v.asnumpy()) for k, v in outs.items())


def logits(net: Net, x) -> _np.ndarray:
    """The network's own ``forward`` on ``x`` in inference mode, as numpy (N, classes)."""
    with _mx.autograd.pause(train_mode=False):
        return net(_input(net, x)).asnumpy()


def count_params(block) -> int:
    """Trainable parameters: those with a gradient (``collect_params`` also holds the
    BatchNorm running statistics, whose ``grad_req`` is 'null')."""
    return sum(int(_np.prod(p.shape)) for p in block.collect_params().values()
               if p.grad_req != "null")


def layer_shapes(net: Net, input_shape: Sequence[int] = None) -> List[Row]:
    """One row per block: name, per-example output shape (C, H, W) or (F,), parameters.
    Shapes are measured by running a zero batch through the network in inference mode."""
    shape = batch_shape(net.spec, input_shape)
    with _mx.autograd.pause(train_mode=False):
        zeros = as_array(_np.zeros(shape, _np.float32), ctx=_ctx(net))   # of the current mode
        outs = net.forward_blocks(zeros, include_aux=True)
    return [Row(name, tuple(out.shape[1:]), count_params(net.block(name)))
            for name, out in outs.items()]


def summary(net: Net, input_shape: Sequence[int] = None, print_fn=print) -> List[Row]:
    """Print the block table (D2L's layer-by-layer shapes) and return its rows."""
    return print_summary(net.spec, layer_shapes(net, input_shape), FRAMEWORK, input_shape,
                         print_fn)


def get_weights(net: Net) -> Dict[str, _np.ndarray]:
    """Canonical weights: numpy arrays keyed by structural layer name, torch layouts (Gluon's
    conv OIHW and dense (out, in) layouts already are torch's)."""
    return {k: p.data(p.list_ctx()[0]).asnumpy().copy()
            for k, p in canonical_params(net).items()}


def set_weights(net: Net, weights, strict: bool = True) -> Net:
    """Load canonical weights (a mapping, or the path of a ``.npz`` weight file)."""
    if not isinstance(weights, dict):
        weights, _ = _weights.load(weights)
    _weights.check(net.spec, weights, strict)
    params = canonical_params(net)
    for key, value in weights.items():
        # Written in place into the parameter's own arrays (mx.nd or mxnet.np alike).
        param, value = params[key], _np.asarray(value, dtype=params[key].dtype)
        try:
            param.set_data(value)
        except _mx.base.MXNetError:
            # After a forward pass oneDNN may keep a weight in its own layout, which a
            # numpy assignment cannot write ("can't generate TBlob for MKLDNN data"); the
            # engine's copy of an MXNet array can.
            for arr in param.list_data():
                make = _mx.np.array if isinstance(arr, _mx.np.ndarray) else _mx.nd.array
                make(value, ctx=arr.context, dtype=value.dtype).copyto(arr)
    return net


def save_weights(net: Net, path, **meta):
    return _weights.save(path, get_weights(net), {"model": net.spec.name, "framework": FRAMEWORK,
                                                  **meta})
