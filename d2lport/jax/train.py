"""Training and evaluation for the JAX backend: optax and one ``jax.jit``-compiled step, the
same algorithm and the same :class:`History` as the other backends, with checkpoints (the
variables and the optimizer state as one ``.npz``) that a killed or Ctrl-C'd run resumes
from.

The step is a pure function ``(state, X, y, key, step) -> (state, loss, correct)``: the
training state is replaced as a whole after each step, so an interrupt never sees half an
update, and dropout draws from ``fold_in(key, step)``, so a resumed run needs only the key.
"""
from __future__ import annotations

import functools
import itertools
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import checkpoint
from ..common import AuxOutputs, History, Progress, combined_loss_weights, progress_default
from .layers import Model, check_input


def try_gpu(i: int = 0) -> jax.Device:
    """JAX device of GPU ``i`` if JAX sees one, else the CPU."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:           # no GPU backend (jaxlib without CUDA)
        gpus = []
    return gpus[i] if len(gpus) > i else jax.devices("cpu")[0]


def as_device(device=None) -> jax.Device:
    """A JAX device from ``None`` (:func:`try_gpu`), a device, or a name: "cpu", "gpu",
    "gpu:1", "cuda:0", "/GPU:0"."""
    if device is None:
        return try_gpu()
    if isinstance(device, jax.Device):
        return device
    text = str(device).strip().lstrip("/").lower()
    kind, _, index = text.partition(":")
    kind = {"cuda": "gpu"}.get(kind, kind)
    if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'gpu' or 'gpu:N'")
    try:
        devices = jax.devices(kind)
    except RuntimeError:
        raise ValueError(f"device {device!r}: JAX sees no {kind.upper()} here") from None
    i = int(index or 0)
    if i >= len(devices):
        raise ValueError(f"device {device!r}: JAX sees {len(devices)} {kind.upper()}(s)")
    return devices[i]


def device_name(device: jax.Device) -> str:
    return f"{device.platform}:{device.id}"


def _ce(logits, y):
    # Logits in float32 even under mixed precision (the softmax's exp/log want the range).
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           y).mean()


def loss_fn(outputs, y):
    """Cross-entropy; with auxiliary heads ``main + 0.3 * (aux1 + aux2)`` (GoogLeNet v1)."""
    if isinstance(outputs, AuxOutputs):
        heads = (outputs.logits,) + tuple(outputs.aux)
        weights = combined_loss_weights(len(outputs.aux))
        return sum(w * _ce(o, y) for w, o in zip(weights, heads))
    return _ce(outputs, y)


def _logits(outputs):
    return outputs.logits if isinstance(outputs, AuxOutputs) else outputs


def _correct(outputs, y):
    return jnp.sum(jnp.argmax(_logits(outputs), axis=1) == y)


@partial(jax.jit, static_argnames="module")
def _count_correct(module, variables, X, y):
    """Correct predictions of a batch in inference mode, compiled once per module and
    batch shape."""
    return _correct(module.apply(variables, X, training=False), y)


def evaluate(net: Model, data_iter, device=None) -> float:
    """Accuracy of ``net`` over ``data_iter`` (NHWC batches) in inference mode."""
    device = as_device(device)
    variables = jax.device_put(net.variables, device)
    correct = total = 0
    checked = set()
    for X, y in data_iter:
        if X.shape[1:] not in checked:
            check_input(net.spec, X.shape)
            checked.add(X.shape[1:])
        X, y = jax.device_put((X, jnp.asarray(y, jnp.int32)), device)
        correct += int(_count_correct(net.module, variables, X, y))
        total += int(y.shape[0])
    return correct / max(total, 1)


def predict(net: Model, X) -> jax.Array:
    """Class indices for an NHWC batch, in inference mode."""
    return jnp.argmax(_logits(net(jnp.asarray(X), training=False)), axis=1)


def make_optimizer(name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    """The optax transformation of PyTorch's ``SGD``/``Adam`` with these arguments."""
    name = name.lower()
    if name == "sgd":
        # optax's trace: t = mu*t + g; w -= lr*t: PyTorch's momentum (no dampening).
        tx = optax.sgd(lr, momentum=momentum or None)
    elif name == "adam":
        tx = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)      # PyTorch's defaults
    else:
        raise ValueError(f"unknown optimizer {name!r}: use 'sgd' or 'adam'")
    if weight_decay:
        # L2 added to the gradient, PyTorch's weight_decay; optax.adamw's is decoupled and
        # would train a different model under momentum/Adam.
        tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
    return tx


def _half(tree):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), tree)


def train_step(module, tx, amp: bool = False):
    """The step function (to compile): ``(state, X, y, key, step) -> (state, loss,
    correct)``, ``state = {"variables": ..., "opt_state": ...}``; the loss is the one before
    the update.  ``amp`` computes in bfloat16 with float32 variables and optimizer."""

    def loss_of(params, others, X, y, key):
        variables = {"params": _half(params) if amp else params, **others}
        outputs, updates = module.apply(variables, X.astype(jnp.bfloat16) if amp else X,
                                        training=True, rngs={"dropout": key},
                                        mutable=["batch_stats"])
        return loss_fn(outputs, y), (outputs, updates)

    def step(state, X, y, key, step):
        variables, opt_state = state["variables"], state["opt_state"]
        params = variables["params"]
        others = {k: v for k, v in variables.items() if k != "params"}
        (loss, (outputs, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            params, others, X, y, jax.random.fold_in(key, step))
        changes, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, changes)
        updates = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), updates,
                                         {k: others[k] for k in updates})
        return ({"variables": {**variables, "params": params, **updates},
                 "opt_state": opt_state}, loss, _correct(outputs, y))

    return step


@functools.lru_cache(maxsize=16)
def jitted_step(module, config) -> Callable:
    """The compiled step of ``module`` for ``config`` = (optimizer, lr, momentum,
    weight_decay, amp): one per architecture and setting, however many Models use it."""
    name, lr, momentum, weight_decay, amp = config
    return jax.jit(train_step(module, make_optimizer(name, lr, momentum, weight_decay), amp))


_EXECUTABLES: "OrderedDict[tuple, Any]" = OrderedDict()     # the last few, newest last


def _executable(module, config, device, state, X, y, key, step):
    """(the step compiled ahead of time for this batch shape and device, seconds spent
    compiling it now: 0 when an earlier train() call of the same architecture did)."""
    cache_key = (module, config, device, X.shape, str(X.dtype), y.shape, str(y.dtype))
    if cache_key in _EXECUTABLES:
        _EXECUTABLES.move_to_end(cache_key)
        return _EXECUTABLES[cache_key], 0.0
    started = time.perf_counter()
    _EXECUTABLES[cache_key] = jitted_step(module, config).lower(state, X, y, key, step).compile()
    while len(_EXECUTABLES) > 8:
        _EXECUTABLES.popitem(last=False)
    return _EXECUTABLES[cache_key], time.perf_counter() - started


# --------------------------------------------------------------------------- checkpoints
def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def _write(state, directory: Path) -> None:
    """The training state (variables, optimizer state) as one .npz, keyed by tree path."""
    (directory / "jax").mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(directory / "jax" / "state.npz", **{_name(p): np.asarray(v) for p, v in leaves})


def _read(state, directory: Path):
    """``state`` with every array from the checkpoint (same tree, shapes, dtypes), or
    CheckpointError naming the first difference."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    try:
        with np.load(directory / "jax" / "state.npz") as z:
            saved = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{directory}: unreadable JAX checkpoint ({err})") \
            from None
    names = [_name(p) for p, _ in leaves]
    problem = next((f"{n} is missing" for n in names if n not in saved), None)
    problem = problem or next((f"{n} is not in this model" for n in saved if n not in names),
                              None)
    problem = problem or next((f"{n} has shape {saved[n].shape}, expected {tuple(v.shape)}"
                               for n, (_, v) in zip(names, leaves)
                               if saved[n].shape != tuple(v.shape)), None)
    if problem:
        raise checkpoint.CheckpointError(
            f"{directory}: the JAX checkpoint does not fit this model/optimizer ({problem}). "
            "Resume with the same model and settings, or use another --checkpoint-dir")
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(saved[n], v.dtype) for n, (_, v) in zip(names, leaves)])


# --------------------------------------------------------------------------- train
def train(net: Model, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
          device=None, seed: Optional[int] = None, amp: Optional[bool] = None,
          progress: Optional[bool] = None, max_steps: Optional[int] = None,
          checkpoint_dir=None, resume: bool = False, checkpoint_every=None, keep: int = 3,
          settings: Optional[dict] = None) -> History:
    """Train with SGD (D2L's default) or Adam; returns a per-epoch :class:`History`.
    ``net.variables`` hold the trained weights afterwards (also after an interrupt).

    ``device``: default :func:`try_gpu`.  ``amp`` (default: on GPU) computes in bfloat16
    with float32 variables and optimizer state (no loss scaling needed).  ``seed`` fixes
    dropout (default: the net's own key, from create_model's seed).  ``max_steps`` stops
    each epoch early.  ``seconds``/``examples_per_sec`` exclude the one-off compilation of
    the step (once per batch shape).

    ``checkpoint_dir``: save a checkpoint (variables, optimizer state, dropout key,
    position, history) at the end of every epoch and every ``checkpoint_every`` (steps
    ``200`` or time ``"5m"``; default 5 minutes) within one, keeping the last ``keep``;
    Ctrl-C saves too.  ``resume=True`` continues from the newest intact one.  A non-finite
    loss raises :class:`d2lport.checkpoint.DivergenceError` at that step.
    """
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    model_name = net.spec.name
    ck = checkpoint.open_run(checkpoint_dir, resume, "jax", model_name, train_iter,
                             optimizer, lr, momentum, weight_decay, seed, settings, keep,
                             checkpoint_every)
    device = as_device(device)
    amp = (device.platform == "gpu") if amp is None else amp
    config = (optimizer.lower(), float(lr), float(momentum), float(weight_decay), bool(amp))
    tx = make_optimizer(*config[:4])
    progress = progress_default() if progress is None else progress
    history = History(framework="jax", device=device_name(device), model=model_name)
    if seed is not None:
        key = jax.random.PRNGKey(seed)
    else:
        net.rng, key = jax.random.split(net.rng)
    state = {"variables": net.variables, "opt_state": tx.init(net.variables["params"])}
    pos, skip, saved = checkpoint.TrainState(), 0, None
    if resume:
        found = ck.latest()
        if found is None:
            print(f"no checkpoint in {ck.directory} yet: starting from scratch")
        else:
            path, pos = found
            state = _read(state, path)
            key = jnp.asarray(pos.rng.get("dropout_key", np.asarray(key).tolist()), jnp.uint32)
            skip = checkpoint.resume_position(ck, path, pos, train_iter)
            history.epochs = [dict(e) for e in pos.history]
            saved = (path, (pos.epoch, pos.batch, pos.step))
    loop = _Loop(net, config, jax.device_put(state, device), jax.device_put(key, device),
                 device, ck, history, lr)
    return loop.run(train_iter, test_iter, num_epochs, progress, max_steps, pos, skip, saved)


class _Loop:
    """The epochs of one ``train`` call; ``state`` is the whole training state, replaced
    after every step together with the counters."""

    def __init__(self, net, config, state, key, device, ck, history, lr):
        self.net, self.config, self.state, self.key = net, config, state, key
        self.device, self.ck, self.history, self.lr = device, ck, history, lr
        self.compiled = {}
        self.saved = None

    def compile(self, X, y, step) -> float:
        """The step for this batch shape, compiled (once); returns the seconds it took."""
        shape = (X.shape, y.shape)
        if shape in self.compiled:
            return 0.0
        check_input(self.net.spec, X.shape)
        self.compiled[shape], seconds = _executable(self.net.module, self.config, self.device,
                                                    self.state, X, y, self.key, step)
        return seconds

    def save(self, epoch, batch, step, partial):
        if self.saved is not None and self.saved[1] == (epoch, batch, step):
            return self.saved[0]                   # nothing new since the last save
        state = checkpoint.TrainState(epoch=epoch, batch=batch, step=step,
                                      history=self.history.to_records(),
                                      rng={"dropout_key": np.asarray(self.key).tolist()},
                                      partial=partial)
        snapshot = self.state
        path = self.ck.save(state, lambda tmp: _write(snapshot, Path(tmp)))
        self.saved = (path, (epoch, batch, step))
        return path

    def run(self, train_iter, test_iter, num_epochs, progress, max_steps, pos, skip, saved):
        self.saved = saved
        ck, history = self.ck, self.history
        step, batch, sums = pos.step, pos.batch, pos.partial or {}
        loss_sum, correct = sums.get("loss_sum", 0.0), sums.get("correct", 0)
        seen, seconds = sums.get("seen", 0), sums.get("seconds", 0.0)
        stepping = False
        per_epoch = len(train_iter) if max_steps is None else min(len(train_iter), max_steps)

        def partial():
            return dict(loss_sum=loss_sum, correct=correct, seen=seen,
                        seconds=time.perf_counter() - start if stepping else seconds)

        epoch, start = pos.epoch, time.perf_counter() - seconds
        try:
            for epoch in range(pos.epoch, num_epochs):
                bar = Progress(progress, len(train_iter), f"epoch {epoch + 1}/{num_epochs}")
                bar.update(batch)
                start, stepping = time.perf_counter() - seconds, True
                batches = iter(train_iter)
                if skip:
                    batches, skip = itertools.islice(batches, skip, None), 0
                for i, (X, y) in enumerate(batches, start=batch):
                    if max_steps is not None and i >= max_steps:
                        break
                    X, y = jax.device_put((X, jnp.asarray(y, jnp.int32)), self.device)
                    count = jnp.asarray(step, jnp.int32)
                    start += self.compile(X, y, count)             # not training time
                    new, loss, right = self.compiled[(X.shape, y.shape)](
                        self.state, X, y, self.key, count)
                    value, right, n = float(loss), int(right), int(y.shape[0])
                    # One statement (no call inside): a Ctrl-C never sees it half-updated.
                    self.state, step, batch, loss_sum, correct, seen = (
                        new, step + 1, i + 1, loss_sum + value * n, correct + right, seen + n)
                    checkpoint.check_loss(value, step, epoch + 1, self.lr, ck)
                    checkpoint.after_step(step)
                    bar.update(1, loss=loss_sum / seen)
                    if ck is not None and batch < per_epoch and ck.due(step):
                        saving = time.perf_counter()
                        self.save(epoch, batch, step, partial())
                        start += time.perf_counter() - saving      # not training time
                seconds, stepping = time.perf_counter() - start, False
                bar.close()
                self.net.variables = self.state["variables"]
                test_acc = evaluate(self.net, test_iter, self.device)
                history.append(epoch=epoch + 1, loss=loss_sum / max(seen, 1),
                               train_acc=correct / max(seen, 1), test_acc=test_acc,
                               examples_per_sec=seen / max(seconds, 1e-9), seconds=seconds)
                batch, loss_sum, correct, seen, seconds = 0, 0.0, 0, 0, 0.0
                if ck is not None:
                    self.save(epoch + 1, 0, step, {})
        except KeyboardInterrupt:
            if ck is None:
                raise
            done = len(history.epochs)            # epochs whose history entry exists
            path = (self.save(done, 0, step, {}) if done > epoch
                    else self.save(epoch, batch, step, partial()))
            print(checkpoint.interrupted_message(path, step, epoch + 1))
            raise
        finally:
            self.net.variables = self.state["variables"]
        return history
