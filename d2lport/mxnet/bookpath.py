"""The book's own MXNet code for `d2lport bench` (issue 10): D2L 1.0's GoogLeNet (8.4) and
narrow VGG-11 (8.2) written the way the chapters write them (Gluon in numpy mode,
``init.Xavier()`` as the book initializes them), and the two ways the bench trains them as
reference points for d2lport:

* ``book``: ``d2l.Trainer``'s loop on a plain ``nn.Block`` (not hybridized):
  ``autograd.record``, ``loss.backward()``, a ``gluon.Trainer`` 'sgd' step;
* ``fast``: what a practitioner does without d2lport: the same network of HybridBlocks,
  ``hybridize(static_alloc=True, static_shape=True)``, the same loop.

Nothing here uses d2lport's networks or training code; only the numbers come from ``specs``.
MXNet's default is half as many OpenMP threads as cores; importing d2lport.mxnet sets
``OMP_NUM_THREADS`` to all of them unless ``D2LPORT_MXNET_THREADS=mxnet`` (the bench's book path).
"""
import mxnet as mx
from mxnet import autograd, gluon, init, np, npx
from mxnet.gluon import nn

from .. import registry, specs
from .train import context

BOOK_MODELS = registry.BOOK_MODELS


class Inception(nn.Block):
    # c1--c4 are the number of output channels for each branch
    def __init__(self, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.b1_1 = nn.Conv2D(c1, kernel_size=1, activation='relu')
        self.b2_1 = nn.Conv2D(c2[0], kernel_size=1, activation='relu')
        self.b2_2 = nn.Conv2D(c2[1], kernel_size=3, padding=1, activation='relu')
        self.b3_1 = nn.Conv2D(c3[0], kernel_size=1, activation='relu')
        self.b3_2 = nn.Conv2D(c3[1], kernel_size=5, padding=2, activation='relu')
        self.b4_1 = nn.MaxPool2D(pool_size=3, strides=1, padding=1)
        self.b4_2 = nn.Conv2D(c4, kernel_size=1, activation='relu')

    def forward(self, x):
        b1 = self.b1_1(x)
        b2 = self.b2_2(self.b2_1(x))
        b3 = self.b3_2(self.b3_1(x))
        b4 = self.b4_2(self.b4_1(x))
        return np.concatenate((b1, b2, b3, b4), axis=1)


class HybridInception(Inception, nn.HybridBlock):
    """The same block as a HybridBlock (the fast path): ``hybridize`` makes it one graph."""
    forward = nn.HybridBlock.forward      # not Inception's: it dispatches to the cached graph

    def hybrid_forward(self, F, x):
        b1 = self.b1_1(x)
        b2 = self.b2_2(self.b2_1(x))
        b3 = self.b3_2(self.b3_1(x))
        b4 = self.b4_2(self.b4_1(x))
        return F.np.concatenate((b1, b2, b3, b4), axis=1)


def googlenet(num_classes=10, fast=False):
    Sequential = nn.HybridSequential if fast else nn.Sequential
    Block = HybridInception if fast else Inception

    def inceptions(names):             # D2L's channel tables: specs.INCEPTION_CHANNELS
        return [Block(*specs.INCEPTION_CHANNELS[name]) for name in names]
    b1, b2, b3, b4, b5, net = (Sequential() for _ in range(6))
    b1.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3, activation='relu'),
           nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b2.add(nn.Conv2D(64, kernel_size=1, activation='relu'),
           nn.Conv2D(192, kernel_size=3, padding=1, activation='relu'),
           nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b3.add(*inceptions(specs.STAGE3), nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b4.add(*inceptions(specs.STAGE4), nn.MaxPool2D(pool_size=3, strides=2, padding=1))
    b5.add(*inceptions(specs.STAGE5), nn.GlobalAvgPool2D())
    net.add(b1, b2, b3, b4, b5, nn.Dense(num_classes))     # Dense flattens its input
    return net


def vgg_block(num_convs, num_channels, fast=False):
    blk = nn.HybridSequential() if fast else nn.Sequential()
    for _ in range(num_convs):
        blk.add(nn.Conv2D(num_channels, kernel_size=3, padding=1, activation='relu'))
    blk.add(nn.MaxPool2D(pool_size=2, strides=2))
    return blk



def vgg(arch, num_classes=10, fast=False):
    net = nn.HybridSequential() if fast else nn.Sequential()
    for (num_convs, num_channels) in arch:
        net.add(vgg_block(num_convs, num_channels, fast))
    net.add(nn.Dense(specs.VGG_FC, activation='relu'), nn.Dropout(specs.VGG_DROPOUT),
            nn.Dense(specs.VGG_FC, activation='relu'), nn.Dropout(specs.VGG_DROPOUT),
            nn.Dense(num_classes))
    return net


def book_model(name: str, fast: bool = False):
    """The book's network ``name`` in numpy mode on the CPU, initialized (``init.Xavier()``)
    and built by one (1, 1, S, S) forward pass (S = 96 for googlenet, 224 for vgg_d2l);
    ``fast``: HybridBlocks, hybridized with static memory and shapes."""
    num_classes, arch = registry.book_args(name)
    npx.set_np()
    spec = registry.get_spec(name)
    net = googlenet(num_classes, fast) if arch is None else vgg(arch, num_classes, fast)
    net.initialize(init.Xavier())
    net(np.zeros((1,) + tuple(spec.input_shape)))      # deferred initialization: shapes now
    if fast:       # after the build, so the first real batch makes the one cached graph
        net.hybridize(static_alloc=True, static_shape=True)
    return net


class Runner:
    """One way of training and running a book model (``path`` "book" or "fast", above)."""

    def __init__(self, path: str, model: str, lr: float = 0.01, device=None):
        if path not in ("book", "fast"):
            raise ValueError(f"unknown path {path!r}: 'book' or 'fast'")
        npx.set_np()           # before the loader is made: its batches become mxnet.np arrays
        self.path, self.model = path, model
        self.ctx = context(device) or mx.cpu()
        self.net = book_model(model, fast=path == "fast")
        self.net.collect_params().reset_ctx(self.ctx)   # before any cached graph exists
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.trainer = gluon.Trainer(self.net.collect_params(), 'sgd', {'learning_rate': lr})

    def train_step(self, X, y) -> float:
        X, y = X.as_in_ctx(self.ctx), y.as_in_ctx(self.ctx)
        with autograd.record():
            loss = self.loss(self.net(X), y)            # per example: (batch,)
        loss.backward()
        self.trainer.step(X.shape[0])     # d2l 1.0 averages the loss and steps by 1: the same
        return float(loss.mean().item())

    def infer(self, X) -> float:
        return float(self.net(X.as_in_ctx(self.ctx)).sum().item())

    def describe(self) -> str:
        if self.path == "book":
            return "book: nn.Block in numpy mode, autograd.record + gluon.Trainer sgd"
        return "fast: HybridBlocks hybridized (static_alloc, static_shape), gluon.Trainer sgd"
