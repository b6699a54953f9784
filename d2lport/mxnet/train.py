"""Training and evaluation for the MXNet backend (D2L's ``train_ch6`` with gluon.Trainer)."""
from __future__ import annotations

import time
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ..common import AuxOutputs, History, Progress, combined_loss_weights, progress_default
from .data import as_nd

_CE = gluon.loss.SoftmaxCrossEntropyLoss()


def try_gpu(i: int = 0) -> mx.Context:
    """GPU ``i`` when this MXNet build sees one, else the CPU."""
    return mx.gpu(i) if mx.context.num_gpus() > i else mx.cpu()


def loss_fn(outputs, y: mx.nd.NDArray) -> mx.nd.NDArray:
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


def _correct(logits, y) -> mx.nd.NDArray:
    return (logits.argmax(axis=1) == y.astype("float32")).sum()


def evaluate(net, data_iter, device=None) -> float:
    """Accuracy of ``net`` over ``data_iter`` in inference mode (outside autograd.record)."""
    ctx = device or _model_ctx(net)
    correct, total = mx.nd.zeros(1, ctx=ctx), 0
    for X, y in data_iter:
        y = y.as_in_context(ctx)
        correct += _correct(_logits(net(X.as_in_context(ctx))), y)
        total += y.shape[0]
    return float(correct.asscalar()) / max(total, 1)


def predict(net, X) -> mx.nd.NDArray:
    """Class indices (int32, CPU) for a batch, in inference mode."""
    if not isinstance(X, mx.nd.NDArray):
        X = as_nd(np.asarray(X, np.float32))
    out = _logits(net(X.as_in_context(_model_ctx(net))))
    return out.argmax(axis=1).astype("int32").as_in_context(mx.cpu())


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
        sums = mx.nd.zeros(2, ctx=ctx)         # [loss sum, correct], kept on the device
        seen = 0
        pending = None
        for step, (X, y) in enumerate(train_iter):
            if max_steps is not None and step >= max_steps:
                break
            X, y = X.as_in_context(ctx), y.as_in_context(ctx)
            with autograd.record():
                outputs = net(X)
                loss = loss_fn(outputs, y)
            loss.backward()
            trainer.step(y.shape[0])
            sums += mx.nd.concat(loss.sum().reshape(1), _correct(_logits(outputs), y), dim=0)
            seen += y.shape[0]
            # MXNet runs asynchronously: wait for the previous step, not this one, so the
            # next batch is prepared while this one computes and the queue stays bounded.
            if pending is not None:
                pending.wait_to_read()
            pending = loss
            if progress:
                bar.update(1, loss=float(sums[0].asscalar()) / seen)
        mx.nd.waitall()
        elapsed = time.perf_counter() - start
        bar.close()
        loss_sum, correct = (float(v) for v in sums.asnumpy())
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
