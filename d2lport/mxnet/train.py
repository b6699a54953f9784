"""Training and evaluation for the MXNet backend (D2L's ``train_ch6`` with gluon.Trainer).

Works on ``mx.nd`` batches and, after ``npx.set_np()``, on ``mxnet.np`` batches: only
methods both array types have (``argmax``, ``astype``, ``asnumpy``), and :func:`to_ctx`.

Checkpoints (``train(..., checkpoint_dir=..., resume=True)``) hold Gluon's own files
(``save_parameters`` + ``Trainer.save_states``) inside :class:`d2lport.checkpoint.Checkpointer`'s
atomic directories; MXNet 1.x cannot save its RNG state, so ``mx.random`` is reseeded from
the step number before every step instead."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .. import checkpoint
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


def context(device) -> mx.Context:
    """``device`` as MXNet takes it: a Context, or a string like the other backends take
    (``"cpu"``, ``"gpu:1"``, ``"cuda:1"``)."""
    if device is None or isinstance(device, mx.Context):
        return device
    kind, _, index = str(device).strip().lower().partition(":")
    if kind == "cpu":
        return mx.cpu()
    if kind in ("gpu", "cuda") and (index or "0").isdigit():
        return mx.gpu(int(index or 0))
    raise ValueError(f"device {device!r}: use 'cpu' or 'gpu:N' ('cuda:N'), or an mx.Context")


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
    ctx = context(device) or _model_ctx(net)
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
          max_steps: Optional[int] = None, checkpoint_dir=None, resume: bool = False,
          checkpoint_every=None, keep: int = 3, settings: Optional[dict] = None) -> History:
    """Train with SGD (D2L's default) or Adam; returns a per-epoch :class:`History`.

    ``device``: default :func:`try_gpu`; the parameters move there.  ``seed`` fixes dropout
    (``mx.random``, reseeded from ``seed`` and the step number before every step) and numpy
    randomness; build the model and the loader with seeds too for a repeatable run.
    ``max_steps`` stops each epoch early (smoke runs).  Weight decay is L2 on every
    parameter, like torch's ``weight_decay``.

    ``checkpoint_dir``: save a checkpoint (Gluon parameters, Trainer states, position,
    history) at the end of every epoch and every ``checkpoint_every`` (steps ``200``, time
    ``"5m"``/``"90s"``; default 5 minutes) within one, keeping the last ``keep``.
    ``resume=True`` continues from the newest intact checkpoint there (or starts afresh if
    there is none).  Ctrl-C saves one and re-raises :class:`KeyboardInterrupt`; a NaN or
    infinite loss raises :class:`~d2lport.checkpoint.DivergenceError`.
    """
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    if seed is not None:
        mx.random.seed(seed)
        np.random.seed(seed)
    ctx = context(device) if device is not None else try_gpu()
    progress = progress_default() if progress is None else progress
    net.collect_params().reset_ctx(ctx)
    # A list in the network's own order, not the ParameterDict: Trainer sorts a dict by
    # MXNet's global names (conv6_weight, conv12_weight: counters that depend on what else
    # the process built), and Trainer.save_states keys the optimizer state by that index,
    # so a resumed run in another process would give momentum to the wrong parameters.
    trainer = gluon.Trainer(list(net.collect_params().values()),
                            *_optimizer(optimizer, lr, momentum, weight_decay))
    model_name = getattr(getattr(net, "spec", None), "name", type(net).__name__)
    history = History(framework="mxnet", device=str(ctx), model=model_name)

    ck = checkpoint.open_run(checkpoint_dir, resume, "mxnet", model_name, train_iter,
                             optimizer, lr, momentum, weight_decay, seed, settings, keep,
                             checkpoint_every)

    # Where the run is; only changed inside `guard.hold()`, so a Ctrl-C always finds a
    # consistent position (after a finished step) to save.
    pos = checkpoint.Position(_scalar)
    skip = 0                    # batches to skip by hand (a loader without resume_at)
    if resume:
        found = ck.latest()
        if found is None:
            print(f"no checkpoint in {ck.directory} yet: starting from scratch")
        else:
            path, state = found
            _load_payload(path, net, trainer, ctx, lr, momentum, weight_decay)
            history.epochs = [dict(e) for e in state.history]
            pos.epoch, pos.batch, pos.step = state.epoch, state.batch, state.step
            pos.set_partial(state.partial)
            skip = checkpoint.resume_position(ck, path, state, train_iter)

    def save() -> Path:
        state = checkpoint.TrainState(
            epoch=pos.epoch, batch=pos.batch, step=pos.step, history=history.to_records(),
            rng={"mxnet": "no RNG-state API in MXNet 1.x: mx.random.seed(seed + step) "
                          "before every step", "seed": seed},
            partial=pos.partial(time.perf_counter()))
        return ck.save(state, lambda tmp: _write_payload(tmp, net, trainer))

    try:
        n_batches = len(train_iter)
    except TypeError:
        n_batches = None
    guard = checkpoint.InterruptGuard()
    pending = None              # (loss sum, batch size, step, epoch) of the last step
    try:
        with guard.installed():
            while pos.epoch < num_epochs:
                epoch = pos.epoch + 1
                bar = Progress(progress, n_batches, f"epoch {epoch}/{num_epochs}")
                bar.update(pos.batch)
                mx.nd.waitall()
                pos.start = time.perf_counter()
                for X, y in train_iter:
                    if skip:
                        skip -= 1
                        continue
                    if max_steps is not None and pos.batch >= max_steps:
                        break
                    if seed is not None:
                        # MXNet 1.x has no API to read or restore its RNG state, so the
                        # randomness (dropout) is replayed by reseeding from the step number,
                        # here, before every step: a resumed run draws what an
                        # uninterrupted one draws.
                        mx.random.seed(seed + pos.step, ctx=ctx)
                    X, y = to_ctx(X, ctx), to_ctx(y, ctx)
                    with autograd.record():
                        outputs = net(X)
                        loss = loss_fn(outputs, y)
                    loss.backward()
                    n = y.shape[0]
                    # oneDNN's ReLU maps NaN to 0, so NaN in a batch would never reach the
                    # loss: 0 * X.sum() (NaN for any NaN or inf in X) carries it there,
                    # without waiting for anything.
                    batch_loss = loss.sum() + 0 * X.sum()
                    hits = _correct(_logits(outputs), y)
                    with guard.hold():          # the update and its bookkeeping, or neither
                        trainer.step(n)
                        pos.step += 1
                        pos.batch += 1
                        pos.loss_sum = pos.loss_sum + batch_loss   # arrays: no sync here
                        pos.correct = pos.correct + hits
                        pos.seen += n
                    # MXNet runs asynchronously: check (and so wait for) the previous
                    # step's loss, not this one's, so the next batch is prepared while this
                    # one computes.  Every save checks the step it saves first, so no
                    # checkpoint ever holds the weights of a diverged step.
                    _check_loss(pending, lr, ck)
                    pending = (batch_loss, n, pos.step, epoch)
                    checkpoint.after_step(pos.step)
                    if progress:
                        bar.update(1, loss=_scalar(pos.loss_sum) / pos.seen)
                    last = ((max_steps is not None and pos.batch >= max_steps)
                            or (n_batches is not None and pos.batch >= n_batches))
                    # (the last batch's checkpoint is the end-of-epoch one, just below)
                    if ck is not None and not last and ck.due(pos.step):
                        _check_loss(pending, lr, ck)
                        pending = None
                        save()
                _check_loss(pending, lr, ck)
                pending = None
                mx.nd.waitall()
                elapsed = pos.seconds + time.perf_counter() - pos.start
                bar.close()
                loss_sum, correct = pos.sums()
                test_acc = evaluate(net, test_iter, ctx)
                with guard.hold():
                    history.append(epoch=epoch, loss=loss_sum / max(pos.seen, 1),
                                   train_acc=correct / max(pos.seen, 1), test_acc=test_acc,
                                   examples_per_sec=pos.seen / max(elapsed, 1e-9),
                                   seconds=elapsed)
                    pos.next_epoch()
                if ck is not None:
                    save()
    except KeyboardInterrupt:
        _check_loss(pending, lr, ck)        # never save the weights of a diverged step
        if ck is not None:
            path = save()
            print(checkpoint.interrupted_message(path, pos.step, pos.epoch + 1))
        raise
    return history


def _check_loss(pending, lr, ck) -> None:
    """:func:`checkpoint.check_loss` on a step's mean loss (waits for that step)."""
    if pending is not None:
        batch_loss, n, step, epoch = pending
        checkpoint.check_loss(_scalar(batch_loss) / max(n, 1), step, epoch, lr, ck)


# The payload is Gluon's own format: `save_parameters` (every parameter by its structural
# name, BatchNorm running statistics included) and `Trainer.save_states` (momentum / Adam
# moments, and the optimizer object with its update counts, which Adam's bias correction
# needs).  The states file is a pickle, read back only after the checkpoint's MANIFEST.json
# has matched its size and SHA-256, so a truncated or corrupt file never reaches pickle.
_PARAMS, _STATES = "model.params", "trainer.states"


def _write_payload(tmp: Path, net, trainer) -> None:
    net.save_parameters(str(tmp / _PARAMS))
    trainer.save_states(str(tmp / _STATES))


def _load_payload(path: Path, net, trainer, ctx, lr, momentum, weight_decay) -> None:
    _check_fits(path, net)
    net.load_parameters(str(path / _PARAMS), ctx=ctx)
    file = path / _STATES
    try:
        trainer.load_states(str(file))
    except Exception as err:        # noqa: BLE001 - any unreadable file gets one message
        raise checkpoint.CheckpointError(
            f"{file} cannot be read by Trainer.load_states ({err.__class__.__name__}): "
            "start afresh without --resume, or with another --checkpoint-dir") from None
    # The arguments of this call rule (a resumed run may lower the learning rate); the
    # checkpoint keeps the update counts and the momentum / moment buffers.
    opt = trainer.optimizer
    trainer.set_learning_rate(lr)
    opt.wd = weight_decay
    if hasattr(opt, "momentum"):
        opt.momentum = momentum


def _check_fits(path: Path, net) -> None:
    """Refuse parameters of another model, naming the layer and the shapes (MXNet's own
    message names its internal parameter names, e.g. ``basicdense1_weight``)."""
    file = path / _PARAMS
    try:
        saved = {k: tuple(v.shape) for k, v in mx.nd.load(str(file)).items()}
    except mx.MXNetError as err:
        raise checkpoint.CheckpointError(
            f"{file} cannot be read by MXNet ({str(err).splitlines()[0]}): start afresh "
            "without --resume, or with another --checkpoint-dir") from None
    # The structural names save_parameters writes (Block's own helper for them).
    own = {k: tuple(p.shape) for k, p in net._collect_params_with_prefix().items()}
    fix = ("(other model keyword arguments?): resume with the same model, or use another "
           "--checkpoint-dir")
    for key, shape in own.items():
        if key in saved and saved[key] != shape and 0 not in shape:
            raise checkpoint.CheckpointError(
                f"checkpoint {path} does not fit this model: layer {key} has shape "
                f"{saved[key]} there, {shape} here {fix}")
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or extra:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} does not fit this model: "
            + "; ".join(part for part in (
                f"missing layers {', '.join(missing[:5])}" if missing else "",
                f"unexpected layers {', '.join(extra[:5])}" if extra else "") if part)
            + f" {fix}")


def _optimizer(name: str, lr: float, momentum: float, weight_decay: float):
    name = name.lower()
    if name == "sgd":
        # MXNet's SGD applies momentum as mom = m*mom - lr*(g + wd*w): with a constant lr
        # the same trajectory as torch's buf = m*buf + (g + wd*w); w -= lr*buf.
        return "sgd", {"learning_rate": lr, "momentum": momentum, "wd": weight_decay}
    if name == "adam":
        return "adam", {"learning_rate": lr, "wd": weight_decay}
    raise ValueError(f"unknown optimizer {name!r}: use 'sgd' or 'adam'")
