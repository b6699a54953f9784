"""Training and evaluation for the MXNet backend (D2L's ``train_ch6`` with gluon.Trainer).

Works on ``mx.nd`` batches and, after ``npx.set_np()``, on ``mxnet.np`` batches: only
methods both array types have (``argmax``, ``astype``, ``asnumpy``), and :func:`to_ctx`."""
from __future__ import annotations

import time
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ..common import AuxOutputs, History, Progress, combined_loss_weights, progress_default
from .data import as_array, to_ctx

_CE = gluon.loss.SoftmaxCrossEntropyLoss()


def try_gpu(i: int = 0) -> mx.Context:
    """GPU ``i`` when this MXNet build sees one, else the CPU."""
    return mx.gpu(i) if mx.context.num_gpus() > i else mx.cpu()


def loss_fn(outputs, y):
    """Per-example cross-entropy (Gluon's convention: ``backward()`` sums it and
    ``trainer.step(batch_size)`` divides, so the update is the mean's, as in torch).
    With auxiliary heads: ``main + 0.3 * (aux1 + aux2)`` (GoogLeNet v1)."""
    if isinstance(outputs, AuxOutputs):
        heads = (outputs.logits,) + tuple(outputs.aux)
        weights = combined_loss_weights(len(outputs.aux))
        return sum(w * _CE(o, y) for w, o in zip(weights, heads))
    return _CE(outputs, y)


def _logits(outputs):
    return outputs.logits if isinstance(outputs, AuxOutputs) else outputs


def _model_ctx(net) -> mx.Context:
    for param in net.collect_params().values():
        return param.list_ctx()[0]
    return mx.cpu()


def _correct(logits, y):
    """Number of right predictions, a float32 array of one element on the device."""
    return (logits.argmax(axis=1).astype("int32") == y.astype("int32")).astype("float32").sum()


def _scalar(array) -> float:
    return float(array.asnumpy().reshape(-1)[0])   # legacy NDArrays have no __float__


def evaluate(net, data_iter, device=None) -> float:
    """Accuracy of ``net`` over ``data_iter`` in inference mode (outside autograd.record)."""
    ctx = device or _model_ctx(net)
    correct, total = 0.0, 0         # correct: an array on the device after the first batch
    for X, y in data_iter:
        y = to_ctx(y, ctx)
        correct = correct + _correct(_logits(net(to_ctx(X, ctx))), y)
        total += y.shape[0]
    return (_scalar(correct) if total else 0.0) / max(total, 1)


def predict(net, X):
    """Class indices (int32, CPU) for a batch, in inference mode."""
    if not isinstance(X, (mx.nd.NDArray, mx.np.ndarray)):
        X = as_array(np.asarray(X, np.float32))
    out = _logits(net(to_ctx(X, _model_ctx(net))))
    return to_ctx(out.argmax(axis=1).astype("int32"), mx.cpu())


def train(net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
          device=None, seed: Optional[int] = None, progress: Optional[bool] = None,
          max_steps: Optional[int] = None) -> History:
    """Train with SGD (D2L's default) or Adam; returns a per-epoch :class:`History`.

    ``device``: default :func:`try_gpu`; the parameters move there.  ``seed`` fixes dropout
    (``mx.random``) and numpy randomness; build the model and the loader with seeds too for
    a repeatable run.  ``max_steps`` stops each epoch early (smoke runs).  Weight decay is
    L2 on every parameter, like torch's ``weight_decay``.
    """
    if seed is not None:
        mx.random.seed(seed)
        np.random.seed(seed)
    ctx = device if device is not None else try_gpu()
    progress = progress_default() if progress is None else progress
    net.collect_params().reset_ctx(ctx)
    trainer = gluon.Trainer(net.collect_params(), *_optimizer(optimizer, lr, momentum,
                                                              weight_decay))
    history = History(framework="mxnet", device=str(ctx),
                      model=getattr(getattr(net, "spec", None), "name", type(net).__name__))
    for epoch in range(1, num_epochs + 1):
        bar = Progress(progress, len(train_iter), f"epoch {epoch}/{num_epochs}")
        mx.nd.waitall()
        start = time.perf_counter()
        loss_sum = correct = 0.0       # become arrays kept on the device (no sync per step)
        seen = 0
        pending = None
        for step, (X, y) in enumerate(train_iter):
            if max_steps is not None and step >= max_steps:
                break
            X, y = to_ctx(X, ctx), to_ctx(y, ctx)
            with autograd.record():
                outputs = net(X)
                loss = loss_fn(outputs, y)
            loss.backward()
            trainer.step(y.shape[0])
            loss_sum = loss_sum + loss.sum()
            correct = correct + _correct(_logits(outputs), y)
            seen += y.shape[0]
            # MXNet runs asynchronously: wait for the previous step, not this one, so the
            # next batch is prepared while this one computes and the queue stays bounded.
            if pending is not None:
                pending.wait_to_read()
            pending = loss
            if progress:
                bar.update(1, loss=_scalar(loss_sum) / seen)
        mx.nd.waitall()
        elapsed = time.perf_counter() - start
        bar.close()
        if seen:
            loss_sum, correct = _scalar(loss_sum), _scalar(correct)
        test_acc = evaluate(net, test_iter, ctx)
        history.append(epoch=epoch, loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
                       test_acc=test_acc, examples_per_sec=seen / max(elapsed, 1e-9),
                       seconds=elapsed)
    return history


def _optimizer(name: str, lr: float, momentum: float, weight_decay: float):
    name = name.lower()
    if name == "sgd":
        # MXNet's SGD applies momentum as mom = m*mom - lr*(g + wd*w): with a constant lr
        # the same trajectory as torch's buf = m*buf + (g + wd*w); w -= lr*buf.
        return "sgd", {"learning_rate": lr, "momentum": momentum, "wd": weight_decay}
    if name == "adam":
        return "adam", {"learning_rate": lr, "wd": weight_decay}
    raise ValueError(f"unknown optimizer {name!r}: use 'sgd' or 'adam'")
