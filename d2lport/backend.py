"""The backend contract: what a framework package (``d2lport.torch``, ``d2lport.tensorflow``,
``d2lport.mxnet``, ``d2lport.jax``, and the next one) provides, written down once.

Adding a framework means writing ``d2lport/<framework>/`` with these names and passing the one
conformance suite (``tests/test_conformance.py``), which runs every check below for every
backend in that backend's own pytest process.  :class:`Backend` is the same list as a
``typing.Protocol`` for type checkers; :data:`REQUIRED` is what the suite checks by name.

Conventions every backend keeps:

* **What a net is**: the object ``create_model`` returns and every function below takes.
  In the stateful frameworks (PyTorch, Keras, Gluon) it is the hand-written network object
  itself, which holds its weights.  In JAX (Flax linen) the hand-written network is a
  module that holds none, so the net is a small mutable pair, ``d2lport.jax.Model``
  (``.module``: the linen network; ``.variables``: its ``params`` and BatchNorm
  ``batch_stats``), with the same ``.spec``, ``.block_names``, ``.forward_blocks``,
  ``.block`` and ``net(x, training=...)``; ``set_weights`` and ``train`` replace its
  variables in place and return what they return elsewhere.  The optional
  :data:`OPTIONAL` ``network(net)`` gives the hand-written network object of a net (the
  linen module in JAX); for a backend without it, the network is the net.
* **Networks are hand-written** in ``googlenet.py`` (``Inception``, ``GoogLeNet``,
  ``GoogLeNetV1``), ``vgg.py`` (``vgg_block``, ``VGG``) and ``lecture.py`` (``InceptionA``,
  ``ResidualBlock``, ``InceptionANet``, ``ResidualNet``), with their numbers imported from
  :mod:`d2lport.specs`.  Each network class takes the keyword arguments of its spec factory
  (``GoogLeNet(num_classes=10, in_channels=1, image_size=96)``) and keeps that spec as
  ``net.spec`` (input checks, summaries, weight checks).
* **Canonical names**: every weight maps by name to the spec's canonical key
  (``b3.inception3a.branch2.conv2.weight``, torch layouts: conv OIHW, dense (out, in)).
* ``net.forward_blocks(x, include_aux)`` returns every top-level block's output in the
  backend's native layout; ``forward`` / ``call`` returns the last of them (the logits), and
  ``AuxOutputs(logits, (aux1, aux2))`` in training for a net with auxiliary heads.
* Shapes that people or comparisons read are (N, C, H, W), whatever the native layout.
* A backend imports no other framework; :mod:`d2lport.specs` imports none.

This module imports no framework.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence

# name -> what it is and how it is called.  The conformance suite checks that each exists.
REQUIRED: Dict[str, str] = {
    # identity and models
    "FRAMEWORK": "str: the registry's framework name ('torch', 'tensorflow', 'mxnet', 'jax')",
    "MODELS": "dict: every registered model name -> its constructor, called with the keyword "
              "arguments of the spec factory (registry aliases add their fixed keywords); "
              "it returns the hand-written network (JAX: the linen module, unpaired)",
    "create_model": "create_model(name, seed=None, **kwargs) -> net: a registered name or "
                    "alias; seed fixes the initialisation",
    "list_models": "list_models(kind=None) -> [str]: the registry's names",
    "Net": "the base class of every network: .spec, .block_names, .forward_blocks(x, "
           "include_aux=True), .block(name) (JAX: of the linen modules, bound to their "
           "variables; the net, a Model, has the same members)",
    # the hand-written networks
    "Inception": "Inception(in_channels, c1, c2, c3, c4): GoogLeNet's block, four branches "
                 "concatenated (keys branch1.conv, branch2.conv1, ...)",
    "GoogLeNet": "D2L's GoogLeNet, b1..b5 + fc (specs.googlenet's keywords)",
    "GoogLeNetV1": "the 2014 paper's GoogLeNet with aux1/aux2 (specs.googlenet_v1's keywords)",
    "vgg_block": "vgg_block(num_convs, in_channels, out_channels, batch_norm=False): D2L's "
                 "VGG block (keys conv1, conv2, ..., pool)",
    "VGG": "VGG(config, **specs.vgg keywords): a configuration of specs.VGG_CONFIGS",
    "InceptionA": "InceptionA(in_channels): the lecture's block, 88 output channels",
    "ResidualBlock": "ResidualBlock(channels): relu(x + conv2(relu(conv1(x))))",
    "InceptionANet": "the lecture's net of two InceptionA blocks (28 px)",
    "ResidualNet": "the lecture's net of two residual blocks (28 px)",
    # shapes and weights
    "summary": "summary(net, input_shape=None, print_fn=print) -> [Row]: prints the block "
               "table (rows (C, H, W), trainable parameters)",
    "layer_shapes": "layer_shapes(net, input_shape=None) -> [Row], measured by running a "
                    "zero batch",
    "block_outputs": "block_outputs(net, x_nchw, include_aux=True) -> OrderedDict of numpy "
                     "arrays in canonical layout, inference mode",
    "logits": "logits(net, x_nchw) -> numpy (N, classes): the network's own forward "
              "(forward/call) in inference mode on a canonical NCHW numpy batch",
    "count_params": "count_params(net_or_block) -> int: trainable parameters only",
    "get_weights": "get_weights(net) -> {canonical key: numpy array in torch layout}",
    "set_weights": "set_weights(net, weights_or_npz_path, strict=True) -> net",
    "save_weights": "save_weights(net, path, **meta): the canonical .npz",
    # data and training
    "load_data_fashion_mnist": "load_data_fashion_mnist(batch_size, resize=None, limit=None, "
                               "seed=0, ...) -> (train_iter, test_iter) of native batches",
    "to_tensor": "to_tensor(images_uint8_or_float, resize=None) -> a native NCHW/NHWC batch",
    "get_fashion_mnist_labels": "get_fashion_mnist_labels(labels) -> [str]",
    "LABELS": "the ten Fashion-MNIST class names",
    "try_gpu": "try_gpu(i=0) -> the framework's device: GPU i if there is one, else CPU",
    "loss_fn": "loss_fn(outputs, y) -> mean cross-entropy (0.3-weighted aux losses added)",
    "train": "train(net, train_iter, test_iter, num_epochs, lr, ...) -> History",
    "evaluate": "evaluate(net, data_iter) -> accuracy in [0, 1]",
    "predict": "predict(net, X) -> predicted class indices (inference mode)",
    "History": "the per-epoch record train returns (d2lport.common.History)",
    "AuxOutputs": "(logits, aux) in training for nets with auxiliary heads",
    "plot_history": "plot_history(history) -> matplotlib figure",
    # the side-by-side comparison
    "StepKit": "StepKit(net, lr, device=None, fast=False): inputs(x, y), train_step(X, Y) -> "
               "loss, infer(X), describe()",
    "cpu_scope": "cpu_scope() -> a context in which comparisons run on the CPU in float32",
}

# Names a backend may provide; the conformance suite uses them where they exist.
OPTIONAL: Dict[str, str] = {
    "network": "network(net) -> the hand-written network object of a net: the linen module "
               "of a JAX Model; for stateful frameworks the net itself (the default)",
}

# The hand-written modules each backend has, one network family each.
MODULES = ("googlenet", "vgg", "lecture")


class Backend(Protocol):
    """The same contract for type checkers (``d2lport.torch`` etc. satisfy it)."""
    FRAMEWORK: str
    MODELS: Mapping[str, Any]
    LABELS: Sequence[str]

    def create_model(self, name: str, seed: Optional[int] = None, **kwargs) -> Any: ...
    def list_models(self, kind: Optional[str] = None) -> List[str]: ...
    def summary(self, net, input_shape=None, print_fn=print) -> list: ...
    def layer_shapes(self, net, input_shape=None) -> list: ...
    def block_outputs(self, net, x, include_aux: bool = True) -> Mapping[str, Any]: ...
    def logits(self, net, x) -> Any: ...
    def count_params(self, module) -> int: ...
    def get_weights(self, net) -> Dict[str, Any]: ...
    def set_weights(self, net, weights, strict: bool = True) -> Any: ...
    def save_weights(self, net, path, **meta) -> Any: ...
    def load_data_fashion_mnist(self, batch_size: int, resize=None, limit=None,
                                seed: int = 0, **kwargs) -> tuple: ...
    def to_tensor(self, images, resize=None) -> Any: ...
    def get_fashion_mnist_labels(self, labels: Iterable[int]) -> List[str]: ...
    def try_gpu(self, i: int = 0) -> Any: ...
    def loss_fn(self, outputs, y) -> Any: ...
    def train(self, net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
              **kwargs) -> Any: ...
    def evaluate(self, net, data_iter, **kwargs) -> float: ...
    def predict(self, net, X) -> Any: ...


def missing(module) -> List[str]:
    """The names of :data:`REQUIRED` that ``module`` lacks."""
    return [name for name in REQUIRED if not hasattr(module, name)]
