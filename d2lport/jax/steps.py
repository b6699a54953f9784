"""The few native calls a cross-framework comparison needs (``d2lport compare --train``
and ``--speed``): inputs from numpy (NCHW in, NHWC for the model), one plain-SGD step
compiled with ``jax.jit`` (the step ``train`` runs), one compiled inference call.  Every call
waits for its result."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .train import as_device, device_name, jitted_step, make_optimizer


def cpu_scope():
    """Comparisons run on the CPU in float32: a GPU's TF32 convolutions differ by ~1e-3,
    and JAX would otherwise place new arrays on its default device."""
    return jax.default_device(jax.devices("cpu")[0])


class StepKit:
    def __init__(self, net, lr: float, device=None, fast: bool = False):
        self.net = net
        self.device = as_device(device or "cpu")
        config = ("sgd", float(lr), 0.0, 0.0, False)
        tx = make_optimizer(*config[:4])
        self.state = jax.device_put({"variables": net.variables,
                                     "opt_state": tx.init(net.variables["params"])},
                                    self.device)
        self.key = jax.device_put(net.rng, self.device)
        self.steps = 0
        module = net.module
        # Compiled, as the backend's train() runs it; traced on the first call.
        self._step = jitted_step(module, config)
        self._infer = jax.jit(lambda v, X: jnp.sum(module.apply(v, X, training=False)))

    def inputs(self, x, y):
        X = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))
        return jax.device_put((X, np.asarray(y, np.int32)), self.device)

    def train_step(self, X, Y) -> float:
        self.state, loss, _ = self._step(self.state, X, Y, self.key,
                                         jnp.asarray(self.steps, jnp.int32))
        self.steps += 1
        self.net.variables = self.state["variables"]
        return float(loss)

    def infer(self, X) -> float:
        return float(self._infer(self.state["variables"], X))

    def describe(self) -> str:
        return f"{device_name(self.device)}, jax.jit (XLA)"
