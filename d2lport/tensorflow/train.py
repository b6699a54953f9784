"""Training and evaluation for the TensorFlow backend: a compiled (``tf.function``) step,
the same algorithm and the same :class:`History` as the PyTorch backend, with checkpoints
(``tf.train.Checkpoint``) that a killed or Ctrl-C'd run resumes from."""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Optional

import keras
import tensorflow as tf

from .. import checkpoint
from ..common import AuxOutputs, History, Progress, combined_loss_weights, progress_default


def try_gpu(i: int = 0) -> str:
    """TF device string of GPU ``i`` if TensorFlow sees one, else the CPU."""
    return f"/GPU:{i}" if len(tf.config.list_physical_devices("GPU")) > i else "/CPU:0"


def _ce(logits, y):
    # Logits in float32 even under mixed precision (the softmax's exp/log want the range).
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=y, logits=tf.cast(logits, tf.float32)))


def loss_fn(outputs, y):
    """Cross-entropy; with auxiliary heads ``main + 0.3 * (aux1 + aux2)`` (GoogLeNet v1)."""
    if isinstance(outputs, AuxOutputs):
        heads = (outputs.logits,) + tuple(outputs.aux)
        weights = combined_loss_weights(len(outputs.aux))
        return tf.add_n([w * _ce(o, y) for w, o in zip(weights, heads)])
    return _ce(outputs, y)


def _logits(outputs):
    return outputs.logits if isinstance(outputs, AuxOutputs) else outputs


def _correct(outputs, y):
    pred = tf.argmax(_logits(outputs), axis=1, output_type=y.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int32))


def _eval_fn(net):
    """The net's compiled evaluation step, traced once per dtype policy (the last batch's
    smaller size does not retrace: ``reduce_retracing`` relaxes the batch dimension)."""
    cache = net.__dict__.setdefault("_d2lport_eval", {})
    key = net.dtype_policy.name
    if key not in cache:
        # autograph=False: no Python control flow to convert, and AutoGraph cannot read
        # closures like this one (it warned, then ran the function as written anyway)
        cache[key] = tf.function(lambda X, y: _correct(net(X, training=False), y),
                                 reduce_retracing=True, autograph=False)
    return cache[key]


def evaluate(net, data_iter, device=None) -> float:
    """Accuracy of ``net`` over ``data_iter`` (NHWC batches) in inference mode."""
    fn = _eval_fn(net)
    correct = total = 0
    with tf.device(device or try_gpu()):
        for X, y in data_iter:
            y = tf.convert_to_tensor(y)
            correct += int(fn(tf.convert_to_tensor(X), y))
            total += int(y.shape[0])
    return correct / max(total, 1)


def predict(net, X) -> tf.Tensor:
    """Class indices for an NHWC batch, in inference mode."""
    return tf.argmax(_logits(net(tf.convert_to_tensor(X), training=False)), axis=1)


def _set_policy(net, policy: str) -> None:
    # Keras fixes a layer's dtype policy at construction; setting it on every (built) layer
    # switches the compute dtype while the variables stay float32, like torch.autocast.
    for layer in net._flatten_layers(include_self=True, recursive=True):
        layer.dtype_policy = policy


def _reseed(net, seed: int) -> None:
    """Restart every dropout generator from ``seed`` (Keras draws the layers' generator
    seeds at construction, so a global seed set later would not reach them)."""
    for i, layer in enumerate(net._flatten_layers(include_self=False, recursive=True)):
        gen = getattr(layer, "seed_generator", None)
        if gen is not None:
            gen.state.assign(tf.constant([seed + i, 0], dtype=gen.state.dtype))


def _optimizer(name: str, lr: float, momentum: float):
    name = name.lower()
    if name == "sgd":
        # Keras: m = mu*m - lr*g; w += m.  PyTorch: b = mu*b + g; w -= lr*b: the same
        # trajectory for a constant learning rate (m = -lr*b).
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if name == "adam":
        # PyTorch's epsilon (Keras' default is 1e-7).
        return keras.optimizers.Adam(learning_rate=lr, epsilon=1e-8)
    raise ValueError(f"unknown optimizer {name!r}: use 'sgd' or 'adam'")


def _train_step(net, opt, weight_decay: float):
    variables = net.trainable_variables

    def step(X, y):
        with tf.GradientTape() as tape:
            outputs = net(X, training=True)
            loss = loss_fn(outputs, y)
        grads = tape.gradient(loss, variables)
        if weight_decay:
            # L2 added to the gradient, PyTorch's weight_decay; Keras' own weight_decay is
            # decoupled (AdamW-style) and would train a different model under momentum/Adam.
            grads = [g + weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]
        opt.apply_gradients(zip(grads, variables))
        return loss, _correct(outputs, y)

    return step


def _generators(net):
    """Every layer's dropout ``SeedGenerator`` (Keras draws from its state variable), keyed
    by the layer's index in the walk (auto-named layers get other names in another run)."""
    layers = net._flatten_layers(include_self=False, recursive=True)
    return [(str(i), layer.seed_generator)
            for i, layer in enumerate(layers) if getattr(layer, "seed_generator", None)]


def _payload(net, opt) -> tf.train.Checkpoint:
    # TensorFlow's own checkpoint format: weights, BatchNorm statistics and the optimizer's
    # slots and step counter, restored into the same variables (the traced step keeps them).
    # The dropout generators' states are Keras variables tf.train.Checkpoint does not track:
    # they go into TrainState.rng (two integers each), see _rng_state.
    return tf.train.Checkpoint(model=net, optimizer=opt)


def _rng_state(net) -> dict:
    return {"seed_generators": {k: [int(v) for v in g.state.numpy()]
                                for k, g in _generators(net)}}


def _set_rng_state(net, rng: dict) -> None:
    saved = rng.get("seed_generators", {})
    for key, gen in _generators(net):
        if key in saved:
            gen.state.assign(tf.constant(saved[key], dtype=gen.state.dtype))


def _restore(ck, found, payload, net, opt, lr, train_iter):
    """Load checkpoint ``found`` = (path, state) into ``net``/``opt``; position the loader.
    Returns how many batches of the resumed epoch train() must skip itself."""
    path, state = found
    try:
        payload.read(str(path / "tf" / "ckpt")).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise checkpoint.CheckpointError(
            f"{path}: the TensorFlow checkpoint does not fit this model/optimizer ({first}). "
            "Resume with the same model and settings, or use another --checkpoint-dir") from None
    # The restored optimizer carries the old learning rate: a resume after a divergence
    # with a smaller --lr must use the new one.
    opt.learning_rate = lr
    _set_rng_state(net, state.rng)
    return checkpoint.resume_position(ck, path, state, train_iter)


def train(net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
          device=None, seed: Optional[int] = None, amp: Optional[bool] = None,
          progress: Optional[bool] = None, max_steps: Optional[int] = None,
          checkpoint_dir=None, resume: bool = False, checkpoint_every=None, keep: int = 3,
          settings: Optional[dict] = None) -> History:
    """Train with SGD (D2L's default) or Adam; returns a per-epoch :class:`History`.

    ``device``: default :func:`try_gpu`.  ``amp`` (default: on GPU) computes in bfloat16
    with float32 variables (Keras' ``mixed_bfloat16``; no loss scaling needed), for this
    call only.  ``seed`` fixes dropout and other TF randomness (build the model and the
    loader with seeds too for a repeatable run).  ``max_steps`` stops each epoch early.
    ``seconds``/``examples_per_sec`` exclude the one-off tracing of the compiled step.

    ``checkpoint_dir``: save a checkpoint (weights, optimizer, dropout RNG, position,
    history) at the end of every epoch and every ``checkpoint_every`` (steps ``200`` or time
    ``"5m"``; default 5 minutes) within one, keeping the last ``keep``; Ctrl-C saves too.
    ``resume=True`` continues from the newest intact one.  A non-finite loss raises
    :class:`d2lport.checkpoint.DivergenceError` at that step.
    """
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    model_name = getattr(getattr(net, "spec", None), "name", net.name)
    ck = checkpoint.open_run(checkpoint_dir, resume, "tensorflow", model_name, train_iter,
                             optimizer, lr, momentum, weight_decay, seed, settings, keep,
                             checkpoint_every)
    if seed is not None:
        keras.utils.set_random_seed(seed)
        _reseed(net, seed)
    device = device or try_gpu()
    amp = ("GPU" in device.upper()) if amp is None else amp
    progress = progress_default() if progress is None else progress
    history = History(framework="tensorflow", device=device, model=model_name)
    policy = net.dtype_policy.name
    if amp:
        _set_policy(net, "mixed_bfloat16")
    try:
        with tf.device(device):
            opt = _optimizer(optimizer, lr, momentum)
            opt.build(net.trainable_variables)   # variables outside the traced step
            payload = _payload(net, opt)
            pos, skip, saved = checkpoint.TrainState(), 0, None
            if resume:
                found = ck.latest()
                if found is None:
                    print(f"no checkpoint in {ck.directory} yet: starting from scratch")
                else:
                    pos = found[1]
                    skip = _restore(ck, found, payload, net, opt, lr, train_iter)
                    history.epochs = [dict(e) for e in pos.history]
                    saved = (found[0], (pos.epoch, pos.batch, pos.step))
            return _loop(net, train_iter, test_iter, num_epochs, device, progress, max_steps,
                         lr, opt, _train_step(net, opt, weight_decay), payload, ck, pos,
                         skip, saved, history)
    finally:
        if amp:
            _set_policy(net, policy)


def _loop(net, train_iter, test_iter, num_epochs, device, progress, max_steps, lr, opt,
          step_fn, payload, ck, pos, skip, saved, history) -> History:
    """The epochs from position ``pos`` on (a fresh TrainState: the start); ``saved``: the
    checkpoint already holding this position, if any."""
    step, batch, sums = pos.step, pos.batch, pos.partial or {}
    loss_sum, correct, seen = sums.get("loss_sum", 0.0), sums.get("correct", 0), sums.get("seen", 0)
    seconds, stepping, compiled = sums.get("seconds", 0.0), False, None
    per_epoch = len(train_iter) if max_steps is None else min(len(train_iter), max_steps)

    def save(epoch, batch, partial):
        nonlocal saved
        if saved is not None and saved[1] == (epoch, batch, step):
            return saved[0]                   # nothing new since the last save
        state = checkpoint.TrainState(epoch=epoch, batch=batch, step=step,
                                      history=history.to_records(), rng=_rng_state(net),
                                      partial=partial)
        path = ck.save(state, lambda tmp: payload.write(str(Path(tmp) / "tf" / "ckpt")))
        saved = (path, (epoch, batch, step))
        return path

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
                if compiled is None:
                    traced = time.perf_counter()
                    compiled = tf.function(step_fn, autograph=False, input_signature=[
                        tf.TensorSpec((None,) + tuple(X.shape[1:]), X.dtype),
                        tf.TensorSpec((None,), y.dtype)])
                    compiled.get_concrete_function()
                    start += time.perf_counter() - traced
                loss, right = compiled(X, y)
                value, right, n = float(loss), int(right), int(y.shape[0])
                # One statement (no call inside): a Ctrl-C never sees the position half-updated.
                step, batch, loss_sum, correct, seen = (step + 1, i + 1, loss_sum + value * n,
                                                        correct + right, seen + n)
                checkpoint.check_loss(value, step, epoch + 1, lr, ck)
                checkpoint.after_step(step)
                bar.update(1, loss=loss_sum / seen)
                if ck is not None and batch < per_epoch and ck.due(step):
                    saving = time.perf_counter()
                    save(epoch, batch, partial())
                    start += time.perf_counter() - saving     # not training time
            seconds, stepping = time.perf_counter() - start, False
            bar.close()
            test_acc = evaluate(net, test_iter, device)
            history.append(epoch=epoch + 1, loss=loss_sum / max(seen, 1),
                           train_acc=correct / max(seen, 1), test_acc=test_acc,
                           examples_per_sec=seen / max(seconds, 1e-9), seconds=seconds)
            batch, loss_sum, correct, seen, seconds = 0, 0.0, 0, 0, 0.0
            if ck is not None:
                save(epoch + 1, 0, {})
    except KeyboardInterrupt:
        if ck is None:
            raise
        if int(opt.iterations.numpy()) != step:
            # Interrupted between the optimizer's update and the bookkeeping: the weights
            # are past the last counted step, so this state is not saved.
            print(f"interrupted during step {step + 1}: not saved; the last checkpoint is "
                  f"{ck.latest_path()} (resume with --checkpoint-dir {ck.directory} --resume)")
            raise
        done = len(history.epochs)            # epochs whose history entry exists
        path = save(done, 0, {}) if done > epoch else save(epoch, batch, partial())
        print(checkpoint.interrupted_message(path, step, epoch + 1))
        raise
    return history
