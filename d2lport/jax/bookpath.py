"""The book's way with JAX for `d2lport bench` (issue 10): D2L 1.0's GoogLeNet (8.4) and
narrow VGG-11 (8.2) written as the book's JAX tab writes them (Flax linen with its defaults:
'same' padding, LeCun-normal kernels, zero biases; ``nn.Sequential`` of layers and lambdas),
and the two ways the bench trains them as reference points for d2lport:

* ``book``: ``d2l.Trainer``'s loop: a ``jax.jit``-compiled loss differentiated by
  ``jax.value_and_grad`` at every step, and flax's ``TrainState.apply_gradients`` (optax
  SGD) run op by op, outside any compiled function;
* ``fast``: what a practitioner does without d2lport: the whole step (gradient and optax
  update) in one ``jax.jit``, inference compiled too.

``import d2l.jax`` does not work in this environment (it needs ``tensorflow_datasets``, and
it imports TensorFlow, which a JAX process here must not), so the book's pieces are written
out: a linen model and a plain optax loop.  Nothing here uses d2lport's networks or training
code; only the numbers come from ``specs``.  Shapes are NHWC, as the JAX loader yields them.
"""
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state

from .. import registry, specs

BOOK_MODELS = registry.BOOK_MODELS


class Inception(nn.Module):
    """The book's block: four branches, ReLU after every conv, concatenated on channels."""
    c1: int
    c2: tuple
    c3: tuple
    c4: int

    def setup(self):
        self.p1 = nn.Conv(self.c1, kernel_size=(1, 1))
        self.p2_reduce = nn.Conv(self.c2[0], kernel_size=(1, 1))
        self.p2 = nn.Conv(self.c2[1], kernel_size=(3, 3), padding='same')
        self.p3_reduce = nn.Conv(self.c3[0], kernel_size=(1, 1))
        self.p3 = nn.Conv(self.c3[1], kernel_size=(5, 5), padding='same')
        self.p4 = nn.Conv(self.c4, kernel_size=(1, 1))

    def __call__(self, x):
        p1 = nn.relu(self.p1(x))
        p2 = nn.relu(self.p2(nn.relu(self.p2_reduce(x))))
        p3 = nn.relu(self.p3(nn.relu(self.p3_reduce(x))))
        p4 = nn.relu(self.p4(nn.max_pool(x, (3, 3), strides=(1, 1), padding='same')))
        return jnp.concatenate((p1, p2, p3, p4), axis=-1)


def _pool(x):          # 3x3/2 max-pool, 'same': Flax pads (0, 1) at stride 2; d2lport (1, 1)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding='same')


class GoogLeNet(nn.Module):
    num_classes: int = 10

    def setup(self):
        def inceptions(names):         # D2L's channel tables: specs.INCEPTION_CHANNELS
            return [Inception(*specs.INCEPTION_CHANNELS[name]) for name in names]
        self.net = nn.Sequential([
            # b1: Flax's 'same' pads a 7x7/2 conv on 96 px (2, 3); d2lport (3, 3) as PyTorch
            nn.Conv(64, kernel_size=(7, 7), strides=(2, 2), padding='same'), nn.relu, _pool,
            # b2
            nn.Conv(64, kernel_size=(1, 1)), nn.relu,
            nn.Conv(192, kernel_size=(3, 3), padding='same'), nn.relu, _pool,
            # b3, b4, b5
            *inceptions(specs.STAGE3), _pool,
            *inceptions(specs.STAGE4), _pool,
            *inceptions(specs.STAGE5), lambda x: jnp.mean(x, axis=(1, 2)),
            nn.Dense(self.num_classes)])

    def __call__(self, x):
        return self.net(x)


def vgg_block(num_convs, out_channels):
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv(out_channels, kernel_size=(3, 3), padding=(1, 1)), nn.relu]
    layers.append(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
    return nn.Sequential(layers)


class VGG(nn.Module):
    arch: tuple
    num_classes: int = 10
    training: bool = True              # the book's VGG switches dropout by this field

    def setup(self):
        # Flatten reads NHWC, d2lport's fc1 the canonical CHW order: the same weights, permuted.
        self.net = nn.Sequential([
            *(vgg_block(*block) for block in self.arch),
            lambda x: x.reshape((x.shape[0], -1)),
            nn.Dense(specs.VGG_FC), nn.relu,
            nn.Dropout(specs.VGG_DROPOUT, deterministic=not self.training),
            nn.Dense(specs.VGG_FC), nn.relu,
            nn.Dropout(specs.VGG_DROPOUT, deterministic=not self.training),
            nn.Dense(self.num_classes)])

    def __call__(self, x):
        return self.net(x)


def book_model(name: str, training: bool = True):
    """The book's network ``name`` (a linen module; its variables come from ``init``)."""
    num_classes, arch = registry.book_args(name)
    return GoogLeNet(num_classes) if arch is None else VGG(arch, num_classes, training)


class TrainState(train_state.TrainState):
    dropout_rng: jax.Array = None      # d2l's TrainState carries the dropout key too


def _loss(params, state, X, y):
    logits = state.apply_fn({'params': params}, X, rngs={'dropout': state.dropout_rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def _fast_step(state, X, y):
    loss, grads = jax.value_and_grad(_loss)(state.params, state, X, y)
    state = state.apply_gradients(grads=grads)
    return state.replace(dropout_rng=jax.random.split(state.dropout_rng)[0]), loss


class Runner:
    """One way of training and running a book model (``path`` "book" or "fast", above)."""

    def __init__(self, path: str, model: str, lr: float = 0.01, device=None, seed: int = 0):
        if path not in ("book", "fast"):
            raise ValueError(f"unknown path {path!r}: 'book' or 'fast'")
        self.path, self.model = path, model
        self.device = device if device is not None else jax.devices("cpu")[0]
        if isinstance(self.device, str):
            from .train import as_device
            self.device = as_device(self.device)
        self.net = book_model(model)
        channels, height, width = registry.get_spec(model).input_shape
        params_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        with jax.default_device(self.device):
            params = self.net.init(params_key, jnp.zeros((1, height, width, channels)))
            self.state = TrainState.create(apply_fn=self.net.apply, params=params['params'],
                                           tx=optax.sgd(lr),        # d2l.Module's optimizer
                                           dropout_rng=dropout_key)
        infer_net = book_model(model, training=False)
        self._infer = jax.jit(lambda params, X: jnp.sum(infer_net.apply({'params': params}, X)))
        # The book compiles its loss (d2l.Classifier.loss is jax.jit-ed), not the update.
        self._book_grad = jax.value_and_grad(jax.jit(_loss))

    def _put(self, X, y):
        return jax.device_put((jnp.asarray(X), jnp.asarray(y, jnp.int32)), self.device)

    def train_step(self, X, y) -> float:
        X, y = self._put(X, y)
        if self.path == "fast":
            self.state, loss = _fast_step(self.state, X, y)
            return float(loss)
        loss, grads = self._book_grad(self.state.params, self.state, X, y)
        self.state = self.state.apply_gradients(grads=grads)      # op by op, uncompiled
        self.state = self.state.replace(dropout_rng=jax.random.split(self.state.dropout_rng)[0])
        return float(loss)

    def infer(self, X) -> float:
        X, _ = self._put(X, jnp.zeros((0,), jnp.int32))
        return float(self._infer(self.state.params, X))

    def describe(self) -> str:
        if self.path == "book":
            return ("book: jax.jit-ed loss, jax.value_and_grad per step, flax TrainState "
                    "apply_gradients (optax SGD) uncompiled")
        return "fast: one jax.jit step (value_and_grad + optax SGD), jax.jit inference"
