"""Training and evaluation for the TensorFlow backend: a compiled (``tf.function``) step,
the same algorithm and the same :class:`History` as the PyTorch backend."""
from __future__ import annotations

import time
from typing import Optional

import keras
import tensorflow as tf

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
        cache[key] = tf.function(lambda X, y: _correct(net(X, training=False), y),
                                 reduce_retracing=True)
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


def train(net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
          device=None, seed: Optional[int] = None, amp: Optional[bool] = None,
          progress: Optional[bool] = None, max_steps: Optional[int] = None) -> History:
    """Train with SGD (D2L's default) or Adam; returns a per-epoch :class:`History`.

    ``device``: default :func:`try_gpu`.  ``amp`` (default: on GPU) computes in bfloat16
    with float32 variables (Keras' ``mixed_bfloat16``; no loss scaling needed), for this
    call only.  ``seed`` fixes dropout and other TF randomness (build the model and the
    loader with seeds too for a repeatable run).  ``max_steps`` stops each epoch early.
    ``seconds``/``examples_per_sec`` exclude the one-off tracing of the compiled step.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
        _reseed(net, seed)
    device = device or try_gpu()
    amp = ("GPU" in device.upper()) if amp is None else amp
    progress = progress_default() if progress is None else progress
    history = History(framework="tensorflow", device=device,
                      model=getattr(getattr(net, "spec", None), "name", net.name))
    policy = net.dtype_policy.name
    if amp:
        _set_policy(net, "mixed_bfloat16")
    try:
        with tf.device(device):
            opt = _optimizer(optimizer, lr, momentum)
            opt.build(net.trainable_variables)   # variables outside the traced step
            step_fn, compiled = _train_step(net, opt, weight_decay), None
            for epoch in range(1, num_epochs + 1):
                loss_sum = correct = seen = 0.0
                bar = Progress(progress, len(train_iter), f"epoch {epoch}/{num_epochs}")
                start = time.perf_counter()
                for step, (X, y) in enumerate(train_iter):
                    if max_steps is not None and step >= max_steps:
                        break
                    if compiled is None:
                        traced = time.perf_counter()
                        compiled = tf.function(step_fn, input_signature=[
                            tf.TensorSpec((None,) + tuple(X.shape[1:]), X.dtype),
                            tf.TensorSpec((None,), y.dtype)])
                        compiled.get_concrete_function()
                        start += time.perf_counter() - traced
                    loss, right = compiled(X, y)
                    n = int(y.shape[0])
                    loss_sum += float(loss) * n
                    correct += int(right)
                    seen += n
                    bar.update(1, loss=loss_sum / seen)
                elapsed = time.perf_counter() - start
                bar.close()
                test_acc = evaluate(net, test_iter, device)
                history.append(epoch=epoch, loss=loss_sum / max(seen, 1),
                               train_acc=correct / max(seen, 1), test_acc=test_acc,
                               examples_per_sec=seen / max(elapsed, 1e-9), seconds=elapsed)
    finally:
        if amp:
            _set_policy(net, policy)
    return history
