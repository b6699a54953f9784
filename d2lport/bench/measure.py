"""What one benchmark worker process measures (``d2lport bench`` runs each in a fresh
process, so its peak memory is its own): the float32 matrix-multiply rate of a framework,
or one network trained and run by one *path*:

* ``d2lport``: the package end to end: its loader, ``create_model``, ``train`` and
  ``evaluate``, exactly what a reader calls;
* ``book``: D2L's chapter model trained the way the ``d2l`` package trains it in that
  framework (``<framework>/bookpath.py``), fed by the same loader;
* ``fast``: the same book model on the framework's own fast path (channels-last torch,
  Keras ``compile`` + ``train_on_batch``, hybridized Gluon).

A rate is examples per second over one pass of ``steps`` batches of real Fashion-MNIST;
``warmup`` passes run first untimed (tracing, graph building, allocator warm-up), then
``repeats`` timed ones.  Every step waits for its result, so the clock sees finished work.

Every path of a framework, and its matrix product, runs on one device: the one asked for,
else the framework's ``try_gpu()`` (its first GPU where it sees one, else the CPU).  The
book's own loops default to the CPU; left so, on a GPU machine the d2lport path would race
a GPU against a book path on the CPU.
"""
from __future__ import annotations

import importlib
import statistics
import time
from typing import Callable, List

from .. import registry

PATHS = ("d2lport", "book", "fast")


def peak_rss_gb() -> float:
    """The process's peak resident memory so far (Linux ``VmHWM``), in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def summary(rates: List[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "all": list(rates)}


def _passes(run_pass: Callable[[], int], warmup: int, repeats: int) -> List[float]:
    """Examples/s of ``repeats`` timed calls of ``run_pass`` (which returns how many
    examples it went through), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run_pass()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = run_pass()
        rates.append(n / max(time.perf_counter() - start, 1e-9))
    return rates


def _loaders(backend, model: str, batch_size: int, steps: int, seed: int):
    spec = registry.get_spec(model)
    return backend.load_data_fashion_mnist(batch_size, resize=spec.input_shape[1],
                                           limit=batch_size * steps, seed=seed)


def _count(y) -> int:
    return int(y.shape[0])


def run_device(backend, device=None):
    """The device every path of ``backend`` runs on: ``device``, else ``try_gpu()``."""
    return device if device is not None else backend.try_gpu()


def device_report(framework: str, device) -> dict:
    """Where a worker ran: ``device`` (the framework's own name for it), ``accelerator``
    (the GPU's name; None on the CPU) and ``device_peak_gb`` (the accelerator memory the
    framework allocated at most; None on the CPU or where the framework does not say)."""
    name, peak = None, None
    if framework == "torch":
        import torch
        device = torch.device(device)
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = torch.cuda.max_memory_allocated(device) / 1e9
    elif framework == "jax":
        from ..jax.train import as_device
        device = as_device(device)
        if device.platform != "cpu":
            name = device.device_kind
            peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
            peak = None if peak is None else peak / 1e9
    elif framework == "tensorflow":
        import tensorflow as tf
        if "GPU" in str(device).upper():
            index = int(str(device).rsplit(":", 1)[-1])
            gpu = tf.config.list_physical_devices("GPU")[index]
            name = tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            peak = tf.config.experimental.get_memory_info(f"GPU:{index}")["peak"] / 1e9
    elif framework == "mxnet":
        from ..mxnet.train import context
        device = context(device)
        if device.device_type == "gpu":
            name = f"GPU {device.device_id}"        # MXNet 1.9 names no model
    return {"device": str(device), "accelerator": name, "device_peak_gb": peak}


def bench_path(backend, arrays, model: str, path: str, batch_size: int = 128, steps: int = 3,
               repeats: int = 3, warmup: int = 1, lr: float = 0.01, seed: int = 0,
               device: str = None):
    """Training, then inference, examples/s of ``model`` on ``path`` (see the module
    docstring); the process's peak memory at the end."""
    started = time.perf_counter()
    device = run_device(backend, device)
    if path == "d2lport":
        net = backend.create_model(model, seed=seed)
        train_iter, test_iter = _loaders(backend, model, batch_size, steps, seed)
        # One train() call whose epochs are the passes: epoch rates exclude its evaluation
        # (and TensorFlow's one-off tracing); the first `warmup` epochs are not counted.
        history = backend.train(net, train_iter, test_iter, num_epochs=warmup + repeats,
                                lr=lr, progress=False, device=device, seed=seed)
        training = [e["examples_per_sec"] for e in history.epochs[warmup:]]
        describe = f"d2lport {backend.FRAMEWORK}: create_model + train + evaluate"

        def inference_pass():
            backend.evaluate(net, test_iter, device)
            return test_iter.num_examples
    elif path in ("book", "fast"):
        bookpath = importlib.import_module(f"d2lport.{backend.FRAMEWORK}.bookpath")
        if model not in bookpath.BOOK_MODELS:
            raise ValueError(f"no book model for {model!r}; the book path has "
                             f"{', '.join(bookpath.BOOK_MODELS)}")
        runner = bookpath.Runner(path, model, lr=lr, device=device)
        # After the runner: MXNet's book path switches to numpy mode, and the loader makes
        # arrays of the current mode.
        train_iter, test_iter = _loaders(backend, model, batch_size, steps, seed)

        def training_pass():
            n = 0
            for X, y in train_iter:
                runner.train_step(X, y)
                n += _count(y)
            return n

        training = _passes(training_pass, warmup, repeats)
        describe = runner.describe()

        def inference_pass():
            n = 0
            for X, y in test_iter:
                runner.infer(X)
                n += _count(y)
            return n
    else:
        raise ValueError(f"unknown path {path!r}: one of {', '.join(PATHS)}")
    inference = _passes(inference_pass, warmup, repeats)
    return {}, {"model": model, "path": path, "framework": backend.FRAMEWORK,
                "training": summary(training), "inference": summary(inference),
                "peak_gb": peak_rss_gb(), "describe": describe,
                "seconds": time.perf_counter() - started,
                **device_report(backend.FRAMEWORK, device)}


def _matmul(framework: str, n: int, device) -> Callable[[], None]:
    """A function multiplying two float32 n x n matrices on ``device`` (the framework's
    default precision) and waiting for the product."""
    import numpy as np
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    if framework == "torch":
        import torch
        x = torch.from_numpy(a).to(device)
        if x.is_cuda:
            return lambda: (torch.mm(x, x), torch.cuda.synchronize(x.device))
        return lambda: torch.mm(x, x)
    if framework == "tensorflow":
        import tensorflow as tf
        with tf.device(device):
            x = tf.constant(a)
        mm = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(x, x)))

        def run():
            with tf.device(device):
                return mm().numpy()
        return run
    if framework == "mxnet":
        import mxnet as mx
        from ..mxnet.train import context
        x = mx.nd.array(a, ctx=context(device))
        # FullyConnected (x times w transposed) is what Gluon's Dense runs: oneDNN's inner
        # product.  mx.nd.dot goes to the wheel's OpenBLAS, 7x slower here (18 vs 137 GFLOP/s).
        return lambda: mx.nd.FullyConnected(x, x, no_bias=True, num_hidden=n).wait_to_read()
    if framework == "jax":
        import jax
        from ..jax.train import as_device
        x = jax.device_put(a, as_device(device))
        mm = jax.jit(lambda x: x @ x)         # compiled once, by the warm-up call
        return lambda: mm(x).block_until_ready()
    raise ValueError(f"no matrix multiply for framework {framework!r}")


def bench_matmul(backend, arrays, n: int = 2048, repeats: int = 5, warmup: int = 2,
                 device: str = None):
    """GFLOP/s of a float32 n x n matrix product (2 n^3 operations) on the device the
    paths run on, median of ``repeats``."""
    device = run_device(backend, device)
    mm = _matmul(backend.FRAMEWORK, n, device)
    rates = [r * 2 * n ** 3 / 1e9 for r in _passes(lambda: (mm(), 1)[1], warmup, repeats)]
    return {}, {"framework": backend.FRAMEWORK, "n": n, "gflops": summary(rates),
                **device_report(backend.FRAMEWORK, device)}


# Run by d2lport.worker (python -m d2lport.worker): task name -> function(backend, arrays, ...).
TASKS = {"bench_path": bench_path, "bench_matmul": bench_matmul}
