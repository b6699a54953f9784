"""The few Flax linen building blocks d2lport's networks share, the ``Net`` base class, and
``Model``, the (module, variables) pair a JAX net is.

Each layer is a linen module with PyTorch's *function*: wherever a Flax default computes
something else, the line that fixes it says why (DESIGN.md, "Numerical parity").  A module's
name is its attribute name in its parent's ``setup`` (``self.b1 = ...``) or the keyword it is
given in :func:`sequential`, so the path of names in the variables tree is the canonical
layer name (``b3.inception3a.branch2.conv2``) and weights map by name onto the PyTorch,
Keras and MXNet nets.  Kernels are Xavier (Glorot) uniform and biases zero, as in the other
backends.  Every layer's ``__call__`` takes ``training`` (BatchNorm statistics, dropout).
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict
from functools import partial
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from .. import specs
from ..common import AuxOutputs, check_input_shape

__all__ = ["AuxOutputs", "AvgPool", "Conv", "Dense", "Dropout", "GlobalAvgPool", "LRN",
           "MaxPool", "Model", "Net", "Sequential", "SingleBlock", "sequential"]

# D2L's init_cnn and the other backends' default; Flax's own default is LeCun normal.
xavier = nn.initializers.xavier_uniform()


# --------------------------------------------------------------------------- layers
class Conv(nn.Conv):
    """``nn.Conv``, optional BatchNorm (child ``bn``), optional ReLU: torchvision's
    BasicConv2d.  ``padding`` is PyTorch's (pixels per side); ``kernel_size`` a tuple, as
    ``nn.Conv`` takes it."""
    padding: Any = 0              # PyTorch's default; Flax's is 'SAME' (asymmetric at stride 2)
    kernel_init: Any = xavier     # Flax's default kernel init is LeCun normal
    relu: bool = True
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, training: bool = False):
        # An int padding p is ((p, p), (p, p)): Flax's 'SAME' would pad (2, 3) for a 7x7/2
        # conv on 96 px where PyTorch pads (3, 3): the same shape, shifted by one pixel.
        x = super().__call__(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not training,
                             momentum=1 - specs.BN_MOMENTUM,  # Flax weighs the old statistic
                             epsilon=specs.BN_EPS,            # the default 1e-5 is PyTorch's too
                             use_fast_variance=False,         # two-pass variance, as PyTorch
                             name="bn")(x)
            # (Flax, like Keras and Gluon, updates the running variance with the biased batch
            # variance; PyTorch with the unbiased one.  Inference normalises identically.)
        return nn.relu(x) if self.relu else x


class Dense(nn.Dense):
    """``nn.Dense`` with an optional flatten in front and ReLU + dropout (child ``dropout``)
    after.  A flatten reads NHWC in H, W, C order: :func:`torch_variables` permutes the rows
    of the canonical (C, H, W)-ordered weight."""
    kernel_init: Any = xavier     # Flax's default kernel init is LeCun normal
    relu: bool = False
    flatten: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, training: bool = False):
        if self.flatten:
            x = x.reshape((x.shape[0], -1))
        x = super().__call__(x)
        if self.relu:
            x = nn.relu(x)
        if self.dropout:
            x = Dropout(self.dropout, name="dropout")(x, training=training)
        return x


class Dropout(nn.Dropout):
    """``nn.Dropout`` switched by ``training`` like every layer here (Flax's takes
    ``deterministic``); its mask draws from the ``'dropout'`` rng stream of ``apply``."""

    def __call__(self, x, training: bool = False):
        # Flax's mask comes from an explicit key (apply's rngs={"dropout": key}); PyTorch's
        # from the global generator, drawn anew every call: Model.apply splits a fresh key.
        return super().__call__(x, deterministic=not training)


class MaxPool(nn.Module):
    """Max-pooling with PyTorch's ``padding``."""
    kernel_size: int
    strides: int
    padding: int = 0

    def __call__(self, x, training: bool = False):
        k, s, p = self.kernel_size, self.strides, self.padding
        # lax.reduce_window pads with the init value of max, -inf: padding never wins.
        return nn.max_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)))


class AvgPool(nn.Module):
    """Average pooling with PyTorch's ``padding`` (padded zeros count in the mean)."""
    kernel_size: int
    strides: int
    padding: int = 0

    def __call__(self, x, training: bool = False):
        k, s, p = self.kernel_size, self.strides, self.padding
        return nn.avg_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                           count_include_pad=True)   # PyTorch's default (TF 'same': False)


class GlobalAvgPool(nn.Module):
    """Average over H and W: (N, H, W, C) -> (N, C).  Flax has no layer for it."""

    def __call__(self, x, training: bool = False):
        return jnp.mean(x, axis=(1, 2))


class LRN(nn.Module):
    """Local response normalisation across channels, PyTorch's convention (``size``,
    ``alpha`` divided by the window, ``beta``, ``k``; ``specs.GOOGLENET_LRN``,
    ``specs.VGG_LRN``), written out: Flax has none."""
    size: int
    alpha: float
    beta: float
    k: float

    def __call__(self, x, training: bool = False):
        # float32 even under mixed precision: a sum of squares.
        sq = jnp.square(x.astype(jnp.float32))
        # Each channel's window: size // 2 channels before it, (size - 1) // 2 after it.
        window = jax.lax.reduce_window(
            sq, 0.0, jax.lax.add, (1, 1, 1, self.size), (1, 1, 1, 1),
            ((0, 0), (0, 0), (0, 0), (self.size // 2, (self.size - 1) // 2)))
        y = x / (self.k + self.alpha / self.size * window) ** self.beta
        return y.astype(x.dtype)


# --------------------------------------------------------------------------- containers
class _Layers:
    """The layers of a :class:`Sequential`, kept out of sight of Flax's adoption of module
    fields (which would name them ``layers_0``, ``layers_1``) until ``setup`` names them."""

    def __init__(self, layers):
        self.layers = tuple(layers)

    def __iter__(self):
        return iter(self.layers)


class Sequential(nn.Module):
    """Layers applied in order, each under its own name (``b1.conv``, ``b1.pool``); build
    one with :func:`sequential`.  Flax's ``nn.Sequential`` names its layers ``layers_0``...
    and hands keyword arguments to the first layer only: this one passes ``training`` to
    every layer (BatchNorm, dropout)."""
    names: Tuple[str, ...]
    layers: _Layers
    in_channels: Optional[int] = None      # for count_params of a block on its own

    def setup(self):
        for name, layer in zip(self.names, self.layers):
            setattr(self, name, layer)      # adopted as a child named `name`

    def __call__(self, x, training: bool = False):
        for name in self.names:
            x = getattr(self, name)(x, training=training)
        return x


def sequential(*, name: Optional[str] = None, in_channels: Optional[int] = None,
               **layers: nn.Module) -> Sequential:
    """``sequential(conv=Conv(...), pool=MaxPool(...))``: the layers in keyword order, each
    named by its keyword (PyTorch's ``nn.Sequential(OrderedDict(...))``)."""
    return Sequential(tuple(layers), _Layers(layers.values()), in_channels, name=name)


# --------------------------------------------------------------------------- the network base
def _nchw(shape):
    """Canonical (C, H, W) / (F,) of a per-example NHWC / (F,) shape."""
    shape = tuple(int(s) for s in shape)
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


def check_input(spec: specs.NetSpec, shape) -> None:
    """An NHWC batch shape the network cannot take raises InputShapeError naming what it
    takes (an NCHW batch by mistake is named as such)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[1] == spec.input_shape[0] != shape[3]:
        raise specs.InputShapeError(
            f"{spec.name} takes NHWC input (Flax's layout), got {shape}, which looks like "
            f"NCHW: pass x.transpose(0, 2, 3, 1)")
    check_input_shape(spec, (shape[0],) + _nchw(shape[1:]) if len(shape) == 4 else shape)


class Net(nn.Module):
    """A network (NHWC input) with its spec: ``spec``, ``block_names``, ``forward_blocks``.

    A subclass's fields are its spec factory's keywords, its ``spec`` property calls that
    factory, its ``setup`` names the blocks as the spec does, and its ``__call__`` is the
    hand-written forward.  Being linen, it holds no weights: :class:`Model` pairs it with
    its variables (``create_model`` returns that pair); ``forward_blocks`` and ``block`` work
    on a bound module (``module.bind(variables)``), or through the Model.
    """

    @property
    def spec(self) -> specs.NetSpec:
        raise NotImplementedError

    @property
    def block_names(self):
        return self.spec.block_names

    def block(self, name: str) -> nn.Module:
        """The module of a top-level block or auxiliary head, by canonical name."""
        known = self.block_names + [head.name for _, head in self.spec.taps]
        if name not in known:
            raise KeyError(f"{self.spec.name} has no block {name!r}; blocks: {self.block_names}")
        return getattr(self, name)

    def forward_blocks(self, x, include_aux: bool = True, training: bool = False):
        """Every block's output, NHWC (and each auxiliary head's after its tap when
        ``include_aux``); in inference unless ``training`` (the heads too, unlike
        ``__call__``)."""
        check_input(self.spec, x.shape)
        heads = {tap: head.name for tap, head in self.spec.taps}
        outs = OrderedDict()
        for name in self.block_names:
            x = outs[name] = self.block(name)(x, training=training)
            if include_aux and name in heads:
                outs[heads[name]] = self.block(heads[name])(x, training=training)
        return outs


class SingleBlock(Net):
    """A block registered on its own ("inception", "inception_a", "residual_block"): a net
    whose one child is that block, named as the spec's block."""
    spec: specs.NetSpec = None
    body: nn.Module = None
    preserve_adopted_names = True          # the child keeps its name ("inception")

    def __call__(self, x, training: bool = False):
        return self.body(x, training=training)

    def block(self, name: str) -> nn.Module:
        if name != self.body.name:
            raise KeyError(f"{self.spec.name} has no block {name!r}; blocks: {self.block_names}")
        return self.body


# --------------------------------------------------------------------------- the pair
class Model:
    """A JAX net: the hand-written linen ``module`` and its ``variables`` (``params``, and
    ``batch_stats`` for BatchNorm), which ``set_weights`` and ``train`` replace in place.

    ``net(x)`` / ``net.forward_blocks(x)`` take NHWC batches like the module; in training
    (``training=True``) BatchNorm statistics are updated in ``variables`` and dropout draws
    from ``rng`` (a fresh key every call unless one is given).  Calls are compiled
    (``jax.jit``) once per architecture, mode and input shape, for every Model alike.
    """

    def __init__(self, module: Net, variables: Dict[str, Any], rng=None):
        self.module = module
        self.variables = dict(variables)
        self.rng = jax.random.PRNGKey(0) if rng is None else rng

    # ---------------------------------------------------------------- what it is
    @property
    def spec(self) -> specs.NetSpec:
        return self.module.spec

    @property
    def block_names(self):
        return self.module.block_names

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self):
        return f"Model({type(self.module).__name__}: {self.spec.name})"

    def bound(self) -> Net:
        """The module bound to the variables (``module.bind``): its submodules and their
        ``variables`` can be read."""
        return self.module.bind(self.variables)

    def block(self, name: str) -> nn.Module:
        """The bound module of a block or auxiliary head (``count_params`` takes it)."""
        return self.bound().block(name)

    # ---------------------------------------------------------------- running it
    def apply(self, x, method: str = "__call__", training: bool = False, rng=None, **kwargs):
        """``module.apply`` compiled, on these variables; in training the BatchNorm
        statistics it computed replace the old ones."""
        check_input(self.spec, x.shape)
        if training and rng is None:
            self.rng, rng = jax.random.split(self.rng)
        out, stats = _apply(self.module, self.variables, jnp.asarray(x), rng, method, training,
                            tuple(sorted(kwargs.items())))
        if stats:
            self.variables = {**self.variables, **stats}
        return out

    def __call__(self, x, training: bool = False, rng=None):
        return self.apply(x, training=training, rng=rng)

    def forward_blocks(self, x, include_aux: bool = True, training: bool = False, rng=None):
        return self.apply(x, "forward_blocks", training, rng, include_aux=include_aux)


@partial(jax.jit, static_argnames=("module", "method", "training", "options"))
def _apply(module, variables, x, rng, method, training, options):
    """``module.apply`` compiled once per module (linen modules compare by their fields),
    method, mode and input shape, whichever Model calls it."""
    if not training:
        return module.apply(variables, x, training=False, method=method, **dict(options)), {}
    return module.apply(variables, x, training=True, method=method, rngs={"dropout": rng},
                        mutable=["batch_stats"], **dict(options))


def init_variables(module: Net, seed: Optional[int] = None) -> Dict[str, Any]:
    """``module``'s variables, every block and auxiliary head included: Xavier-uniform
    kernels, zero biases, BatchNorm at scale 1, bias 0, mean 0, variance 1 (what the
    layers' own initialisers draw, and the other backends), from ``PRNGKey(seed or 0)``.

    The shapes come from tracing ``init`` (nothing computed); the kernels from ONE uniform
    draw, cut and scaled: XLA compiles every ``jax.random`` call's generator on its own,
    which for GoogLeNet's 116 parameters takes half a minute of CPU; one draw takes a second.
    """
    specs.infer(module.spec)     # a spec too small for its own input fails here, by name
    c, h, w = module.spec.input_shape
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, c)),
                                                include_aux=True, method="forward_blocks"))
    paths = jax.tree_util.tree_flatten_with_path(shapes)[0]
    kernels = [leaf.shape for path, leaf in paths if path[-1].key == "kernel"]
    draws = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed or 0),
                                          (sum(map(math.prod, kernels)),), jnp.float32, -1.0, 1.0))
    filled, start = [], 0
    for path, leaf in paths:
        name = path[-1].key
        if name == "kernel":              # HWIO / (in, out): fans as PyTorch counts them
            receptive = math.prod(leaf.shape[:-2])
            fan_in, fan_out = leaf.shape[-2] * receptive, leaf.shape[-1] * receptive
            size = math.prod(leaf.shape)
            value = draws[start:start + size].reshape(leaf.shape) * math.sqrt(
                6.0 / (fan_in + fan_out))
            start += size
        elif name in ("scale", "var"):    # BatchNorm's gamma and running variance
            value = np.ones(leaf.shape)
        else:                             # biases, BatchNorm's beta and running mean
            value = np.zeros(leaf.shape)
        filled.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), filled)


def init_model(module: Net, seed: Optional[int] = None) -> Model:
    """The Model of ``module`` with :func:`init_variables`; its dropout key is drawn from
    the same seed."""
    return Model(module, init_variables(module, seed),
                 jax.random.fold_in(jax.random.PRNGKey(seed or 0), 1))


# --------------------------------------------------------------------------- canonical names
def _same(a):
    return a


def _hwio_to_oihw(k):
    return k.transpose(3, 2, 0, 1)


def _oihw_to_hwio(w):
    return w.transpose(2, 3, 1, 0)


@functools.lru_cache(maxsize=64)
def layout(module: Net) -> Tuple[tuple, ...]:
    """``(path, layer, input shape)`` of every Conv and Dense, in the order the network
    calls them (the canonical key order), found by tracing ``forward_blocks`` (nothing
    computed).  ``layer`` is the unbound layer (its fields: bias, BatchNorm, flatten)."""
    seen = OrderedDict()

    def record(next_fun, args, kwargs, context):
        layer = context.module
        if (context.method_name == "__call__" and isinstance(layer, (Conv, Dense))
                and layer.path not in seen):
            seen[layer.path] = (layer.clone(parent=None, name=None), tuple(args[0].shape))
        return next_fun(*args, **kwargs)

    c, h, w = module.spec.input_shape
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, method="forward_blocks",
                                             include_aux=True),
                       jax.ShapeDtypeStruct((1, h, w, c), jnp.float32))
    return tuple((path, layer, shape) for path, (layer, shape) in seen.items())


def torch_variables(model: Model) -> Iterator[tuple]:
    """(canonical key, collection, path in it, to PyTorch layout, from PyTorch layout) for
    every canonical weight, in canonical order."""
    for path, layer, in_shape in layout(model.module):
        name = ".".join(path)
        if isinstance(layer, Conv):
            yield f"{name}.weight", "params", path + ("kernel",), _hwio_to_oihw, _oihw_to_hwio
            if layer.use_bias:
                yield f"{name}.bias", "params", path + ("bias",), _same, _same
            if layer.batch_norm:
                for collection, flax_name, torch_name in (
                        ("params", "scale", "weight"), ("params", "bias", "bias"),
                        ("batch_stats", "mean", "running_mean"),
                        ("batch_stats", "var", "running_var")):
                    yield (f"{name}.bn.{torch_name}", collection, path + ("bn", flax_name),
                           _same, _same)
        else:
            if layer.flatten and len(in_shape) == 4:
                # Flax flattens NHWC in H, W, C order, PyTorch NCHW in C, H, W: permute rows.
                _, h, w, c = in_shape
                to = lambda k, h=h, w=w, c=c: (  # noqa: E731
                    k.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, h * w * c))
                back = lambda t, h=h, w=w, c=c: (  # noqa: E731
                    t.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1))
            else:                                   # Flax (in, out), PyTorch (out, in)
                to = back = np.transpose
            yield f"{name}.weight", "params", path + ("kernel",), to, back
            yield f"{name}.bias", "params", path + ("bias",), _same, _same


def get_path(tree, path):
    for name in path:
        tree = tree[name]
    return tree


def set_path(tree: dict, path, value) -> dict:
    """A copy of the nested dict ``tree`` with ``path`` set (the untouched parts shared)."""
    head, rest = path[0], path[1:]
    out = dict(tree)
    out[head] = set_path(tree[head], rest, value) if rest else value
    return out


def count_leaves(tree) -> int:
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def unbound_params(module: nn.Module):
    """The shapes of an unbound module's parameters (``jax.eval_shape`` of its init on a
    zero batch: nothing computed), for ``count_params`` of a block built on its own."""
    if isinstance(module, Net):
        c, h, w = module.spec.input_shape
        kwargs = dict(method="forward_blocks", include_aux=True)
    else:
        c = getattr(module, "in_channels", None)
        if c is None:
            raise TypeError(f"count_params: {type(module).__name__} is an unbound Flax module "
                            "whose input channels are unknown; pass a Model or a bound module")
        h = w = 32
        kwargs = {}
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, h, w, c)), **kwargs))
    return shapes.get("params", {})
