"""The few native calls a cross-framework comparison needs (``d2lport compare --train``
and ``--speed``): inputs from numpy, one plain-SGD step, one inference call.  Every call
waits for its result, so timings measure finished work."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .train import loss_fn


def cpu_scope():
    """Comparisons run on the CPU in float32; torch models are built there already."""
    return contextlib.nullcontext()


class StepKit:
    def __init__(self, net, lr: float, device=None, fast: bool = False):
        self.torch, self.net = torch, net
        self.device = torch.device(device or "cpu")
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)   # as train() does: denormals are ~100x slower
        self.channels_last = fast      # about 2x faster for these convnets on CPU
        net.to(self.device)
        if fast:
            net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0)

    def inputs(self, x, y):
        X = self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
        if self.channels_last:
            X = X.contiguous(memory_format=self.torch.channels_last)
        return X, self.torch.from_numpy(np.asarray(y, np.int64)).to(self.device)

    def train_step(self, X, Y) -> float:
        self.net.train()
        loss = loss_fn(self.net(X), Y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def infer(self, X) -> float:
        self.net.eval()
        with self.torch.no_grad():
            return float(self.net(X).sum())

    def describe(self) -> str:
        return f"{self.device}, {self.torch.get_num_threads()} thread(s)"

