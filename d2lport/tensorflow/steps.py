"""The few native calls a cross-framework comparison needs (``d2lport compare --train``
and ``--speed``): inputs from numpy (NCHW in, NHWC for the model), one plain-SGD step in a
compiled ``tf.function``, one inference call.  Every call waits for its result."""
from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from .train import loss_fn


def cpu_scope():
    """Comparisons run on the CPU in float32: a GPU's TF32 convolutions differ by ~1e-3,
    and TensorFlow would place ops on a GPU by itself."""
    return tf.device("/CPU:0")


class StepKit:
    def __init__(self, net, lr: float, device=None, fast: bool = False):
        self.tf, self.net = tf, net
        self.device = device or "/CPU:0"
        self.opt = keras.optimizers.SGD(learning_rate=lr, momentum=0.0)
        with tf.device(self.device):
            self.opt.build(net.trainable_variables)   # variables outside the traced step
        # Compiled, as the backend's train() runs it; traced on the first call.
        self._step = tf.function(self._eager_step)
        self._infer = tf.function(lambda X: tf.reduce_sum(net(X, training=False)))

    def _eager_step(self, X, Y):
        variables = self.net.trainable_variables
        with self.tf.GradientTape() as tape:
            loss = loss_fn(self.net(X, training=True), Y)
        self.opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def inputs(self, x, y):
        with self.tf.device(self.device):     # the models run NHWC
            X = self.tf.constant(np.ascontiguousarray(np.asarray(x, np.float32)
                                                      .transpose(0, 2, 3, 1)))
            return X, self.tf.constant(np.asarray(y, np.int64))

    def train_step(self, X, Y) -> float:
        with self.tf.device(self.device):
            return float(self._step(X, Y))

    def infer(self, X) -> float:
        with self.tf.device(self.device):
            return float(self._infer(X))

    def describe(self) -> str:
        threads = (os.environ.get("TF_NUM_INTRAOP_THREADS")
                   or self.tf.config.threading.get_intra_op_parallelism_threads() or "all")
        return f"{self.device}, {threads} intra-op thread(s)"

