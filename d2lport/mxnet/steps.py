"""The few native calls a cross-framework comparison needs (``d2lport compare --train``
and ``--speed``): inputs from numpy, one plain-SGD step with a Gluon Trainer, one inference
call.  Every call waits for its result."""
from __future__ import annotations

import contextlib
import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .data import as_array
from .train import loss_fn


def cpu_scope():
    """Comparisons run on the CPU in float32; Gluon models are built there already."""
    return contextlib.nullcontext()


class StepKit:
    def __init__(self, net, lr: float, device=None, fast: bool = False):
        self.mx, self.autograd, self.net = mx, autograd, net
        self.ctx = device or mx.cpu()
        net.collect_params().reset_ctx(self.ctx)
        self.trainer = gluon.Trainer(net.collect_params(), "sgd",
                                     {"learning_rate": lr, "momentum": 0.0, "wd": 0.0})

    def inputs(self, x, y):
        return (as_array(np.asarray(x, np.float32), ctx=self.ctx),
                as_array(np.asarray(y), ctx=self.ctx, dtype="int32"))

    def train_step(self, X, Y) -> float:
        with self.autograd.record():
            loss = loss_fn(self.net(X), Y)
        # backward() sums the per-example losses and step(batch) divides by the batch
        # size: the update of the mean loss, as in torch and Keras.
        loss.backward()
        self.trainer.step(X.shape[0])
        return float(loss.mean().asnumpy())

    def infer(self, X) -> float:
        return float(self.net(X).sum().asnumpy())

    def describe(self) -> str:
        return f"{self.ctx}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}"

