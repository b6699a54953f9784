"""Run one framework's work in its own Python process.

Frameworks never share a process here: MXNet 1.9.1 segfaults when TensorFlow was imported
first, and a test of one framework must not import another.  The parent writes a request
(JSON + an .npz of arrays) to a temporary directory, runs ``python -m d2lport.worker DIR``,
and reads the reply back.  ``D2LPORT_PYTHON_<FRAMEWORK>`` (e.g. ``D2LPORT_PYTHON_MXNET``)
names another interpreter for users who keep a framework in a separate environment.

MXNet has such an environment of its own: MXNet 1.9.1 needs numpy < 1.24, the main
environment (TensorFlow 2.21, JAX) numpy 2, so ``make setup`` builds ``.venv-mxnet`` beside
``.venv``, and MXNet's workers use its Python by default (:func:`python_for`).
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from . import specs

TASKS: Dict[str, Callable] = {}


class WorkerError(RuntimeError):
    pass


class WorkerImportError(WorkerError):
    """The worker ran but could not import the framework's backend (not installed, or an
    environment d2lport refuses, e.g. numpy >= 1.24 beside MXNet)."""


def task(fn):
    TASKS[fn.__name__] = fn
    return fn


# Frameworks that live in an environment of their own, beside the main one: the venv's
# folder name (``make setup`` builds it next to ``.venv``, the main environment's).
SEPARATE_ENVS = {"mxnet": ".venv-mxnet"}
MAIN_ENV = ".venv"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _env_python(name: str) -> Optional[str]:
    """The Python of the venv ``name`` beside this checkout (an editable install:
    ``<checkout>/<name>``) or beside the running venv (``<dir>/.venv`` ->
    ``<dir>/.venv-mxnet`` and back); this very interpreter when it runs there; else None."""
    root = Path(__file__).resolve().parent.parent
    for venv in (root / name, Path(sys.prefix).parent / name):
        if venv.resolve() == Path(sys.prefix).resolve():
            return sys.executable                 # running in that environment already
        if _venv_python(venv).exists():
            return str(_venv_python(venv))
    return None


def separate_env_python(framework: str) -> Optional[str]:
    """The Python of ``framework``'s own environment (``.venv-mxnet`` for MXNet) when it
    exists (see :func:`_env_python`); None for the frameworks of the main environment."""
    name = SEPARATE_ENVS.get(framework.lower())
    return _env_python(name) if name else None


def python_for(framework: str) -> str:
    """The interpreter that runs ``framework``'s workers: ``D2LPORT_PYTHON_<FRAMEWORK>``
    when set; else the framework's own environment when it has one (MXNet: ``.venv-mxnet``);
    else, from such a separate environment, the main one (``.venv``: torch for MXNet's parity
    tests); else this Python."""
    fw = framework.lower()
    python = os.environ.get(f"D2LPORT_PYTHON_{fw.upper()}") or separate_env_python(fw)
    if python:
        return python
    in_separate_env = Path(sys.prefix).name in SEPARATE_ENVS.values()
    return (in_separate_env and _env_python(MAIN_ENV)) or sys.executable


def run(framework: str, name: str, arrays: Dict[str, np.ndarray] = None, timeout: float = 1800,
        env: Optional[Dict[str, str]] = None, **params):
    """Run task ``name`` for ``framework`` in a fresh process; returns (arrays, meta).
    ``env``: variables added to the worker's environment."""
    with tempfile.TemporaryDirectory(prefix="d2lport-worker-") as tmp:
        tmp = Path(tmp)
        (tmp / "request.json").write_text(json.dumps(
            {"framework": framework, "task": name, "params": params}))
        np.savez(tmp / "request.npz", **(arrays or {}))
        env = dict(os.environ, **(env or {}))
        # The worker must import this very d2lport, even from another interpreter.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run([python_for(framework), "-m", "d2lport.worker", str(tmp)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        reply = tmp / "reply.json"
        if not reply.exists():
            raise WorkerError(f"{framework} worker for {name!r} died (exit {proc.returncode}):\n"
                              + proc.stderr[-3000:])
        meta = json.loads(reply.read_text())
        if "error" in meta:
            cls = WorkerImportError if meta.get("stage") == "import" else WorkerError
            raise cls(f"{framework} worker for {name!r} failed: {meta['error']}")
        with np.load(tmp / "reply.npz") as z:
            out = OrderedDict((k, z[k]) for k in meta.get("order", z.files))
        return out, meta


def _error(err: BaseException, stage: str = "task") -> dict:
    return {"error": f"{type(err).__name__}: {err}", "stage": stage,
            "traceback": traceback.format_exc()}


def _serve(directory: str) -> None:
    tmp = Path(directory)
    request = json.loads((tmp / "request.json").read_text())
    with np.load(tmp / "request.npz") as z:
        arrays = {k: z[k] for k in z.files}
    try:
        from . import registry
        backend = registry.backend(request["framework"])
    except Exception as err:  # ImportError and friends: the framework is not usable here
        backend, out, meta = None, {}, _error(err, stage="import")
    if backend is not None:
        try:
            from .bench.measure import TASKS as bench_tasks
            out, meta = {**TASKS, **bench_tasks}[request["task"]](backend, arrays, **request["params"])
            meta = dict(meta, order=list(out))
        except Exception as err:  # reported to the parent, which raises it
            out, meta = {}, _error(err)
    np.savez(tmp / "reply.npz", **out)
    (tmp / "reply.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------- tasks
@task
def weights(backend, arrays, model: str, kwargs: dict = None, seed: int = 0):
    """The canonical weights of a freshly built model (or of ``arrays`` round-tripped)."""
    net = backend.create_model(model, seed=seed, **(kwargs or {}))
    given = _canonical(arrays)
    if given:
        backend.set_weights(net, given)
    return backend.get_weights(net), {}


# --------------------------------------------------------------------------- availability
_PROBE = ("import importlib.util, sys\n"
          "import numpy\n"
          "sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)\n")


def probe(framework: str) -> Optional[str]:
    """Why ``framework`` cannot run in its worker interpreter, or None when it can.

    Costs one short process that imports numpy and asks importlib where the framework
    is; it imports no framework, so a comparison learns what is missing in milliseconds
    instead of paying for (or crashing in) a worker.
    """
    python = python_for(framework)
    fix = (f"install it (pip install 'd2lport[{framework}]') or point "
           f"D2LPORT_PYTHON_{framework.upper()} at a Python that has it")
    if framework.lower() in SEPARATE_ENVS:
        fix += f" (`make setup` builds {SEPARATE_ENVS[framework.lower()]} for it)"
    try:
        proc = subprocess.run([python, "-c", _PROBE, framework], capture_output=True,
                              text=True, timeout=120)
    except OSError as err:
        return f"cannot start the interpreter {python} ({err.strerror}): {fix}"
    if proc.returncode == 3:
        return f"not installed in {python}: {fix}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the interpreter {python} cannot run d2lport's worker ({last}): {fix}"
    return None


# --------------------------------------------------------------------------- many jobs, one process
def run_jobs(framework: str, jobs: List[dict], timeout: float = 3600):
    """Run several tasks in ONE worker process: importing a framework costs seconds (TF
    about ten here), so a table of thirteen models should pay it once, not thirteen times.

    Each job is ``{"task": name, "params": {...}, "data": [npz paths]}``; the arrays of
    the files (merged) are the task's ``arrays``.  Files, not the request, carry the
    arrays so that one weight file serves every framework.  Returns ``[(arrays, meta)]`` in
    job order; a job that failed has ``meta["error"]`` and the jobs after it still ran.
    """
    out, meta = run(framework, "multi", timeout=timeout, jobs=jobs)
    results = []
    for i, job_meta in enumerate(meta["jobs"]):
        prefix = f"{i}/"
        arrays = OrderedDict((k[len(prefix):], v) for k, v in out.items() if k.startswith(prefix))
        results.append((arrays, job_meta))
    return results


def _load_npz(paths) -> Dict[str, np.ndarray]:
    arrays: Dict[str, np.ndarray] = {}
    for path in paths or ():
        with np.load(path) as z:
            arrays.update((k, z[k]) for k in z.files)
    return arrays


@task
def multi(backend, arrays, jobs: List[dict]):
    """The worker side of :func:`run_jobs`."""
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    metas = []
    for i, job in enumerate(jobs):
        started = time.perf_counter()
        try:
            job_out, job_meta = TASKS[job["task"]](backend, _load_npz(job.get("data")),
                                                   **job.get("params", {}))
        except Exception as err:  # one failing job must not lose the others' results
            job_out, job_meta = {}, _error(err)
        out.update((f"{i}/{k}", v) for k, v in job_out.items())
        metas.append(dict(job_meta, seconds=time.perf_counter() - started))
        gc.collect()   # a VGG's 4096-wide layers should not pile up across jobs
    return out, {"jobs": metas}


# --------------------------------------------------------------------------- comparison tasks
def _canonical(arrays) -> Dict[str, np.ndarray]:
    return {k[2:]: v for k, v in arrays.items() if k.startswith("w:")}


def _perturbed(weights: Dict[str, np.ndarray], key: str, scale: float = 1.01,
               index: Optional[int] = None, delta: float = 0.0) -> Dict[str, np.ndarray]:
    """A copy of ``weights`` with tensor ``key`` scaled by ``scale`` (default +1%), or, with
    ``index``, only that flat element moved by ``delta``: the test hook that proves a
    comparison can fail at the right block.  The whole tensor by default, because one
    element may multiply a channel that the ReLU before it left all zero."""
    if key not in weights:
        raise KeyError(f"perturb: no weight {key!r}; e.g. {sorted(weights)[:3]}")
    weights = dict(weights)
    value = np.array(weights[key], np.float32)
    if index is None:
        value *= np.float32(scale)
    else:
        value.flat[index] += delta
    weights[key] = value
    return weights


@task
def compare_blocks(backend, arrays, model: str, kwargs: dict = None, include_aux: bool = True,
                   perturb: dict = None):
    """Per-block outputs in inference mode for canonical weights ``w:*`` and NCHW input
    ``x`` (``perturb``: see :func:`_perturbed`), and each block's trainable parameters."""
    net = backend.create_model(model, **(kwargs or {}))
    weights = _canonical(arrays)
    backend.set_weights(net, _perturbed(weights, **perturb) if perturb else weights)
    x = np.asarray(arrays["x"], np.float32)
    with backend.cpu_scope():
        outs = backend.block_outputs(net, x, include_aux=include_aux)
        rows = [r.as_tuple() for r in backend.layer_shapes(net, (1,) + x.shape[1:])]
    return outs, {"rows": rows, "params": backend.count_params(net)}


@task
def sgd_train(backend, arrays, model: str, kwargs: dict = None, lr: float = 0.01):
    """Plain SGD (no momentum, no weight decay) from canonical weights ``w:*`` over the
    batches ``train_x`` (S, B, C, H, W) / ``train_y`` (S, B): the loss of every step,
    computed before that step's update, in training mode (BatchNorm on batch statistics)."""
    net = backend.create_model(model, **(kwargs or {}))
    backend.set_weights(net, _canonical(arrays))
    kit = backend.StepKit(net, lr)
    losses = [kit.train_step(*kit.inputs(x, y))
              for x, y in zip(arrays["train_x"], arrays["train_y"])]
    return {"loss": np.asarray([float(v) for v in losses], np.float64)}, {}


@task
def speed(backend, arrays, model: str, kwargs: dict = None, batch_size: int = 64,
          warmup: int = 1, steps: int = 3, lr: float = 0.01, seed: int = 0, device: str = None):
    """Examples per second of inference and of SGD training steps on one random batch
    (``warmup`` untimed calls first: tracing, graph building, allocator warm-up), each
    framework in its fast path: torch channels-last (what its ``train`` uses), a compiled
    ``tf.function``, a hybridized Gluon net.  ``device``: default the backend's try_gpu()."""
    net = backend.create_model(model, seed=seed, **(kwargs or {}))
    spec = net.spec
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size,) + tuple(spec.input_shape), dtype=np.float32)
    out_shape = specs.infer(spec, include_aux=False)[-1].out_shape
    classes = out_shape[0] if len(out_shape) == 1 else 0
    kit = backend.StepKit(net, lr, device=device if device is not None else backend.try_gpu(),
                          fast=True)
    X, Y = kit.inputs(x, rng.integers(0, max(1, min(classes, 10)), batch_size))
    result = {"device": kit.describe(), "inference": batch_size * _rate(lambda: kit.infer(X),
                                                                       warmup, steps)}
    # A block without a classifier has no loss to train on.
    result["training"] = (batch_size * _rate(lambda: kit.train_step(X, Y), warmup, steps)
                          if classes else None)
    return {}, result


def _rate(fn, warmup: int, steps: int) -> float:
    """Calls per second of ``fn`` (which must wait for its result), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / max(time.perf_counter() - start, 1e-9)


# --------------------------------------------------------------------------- weight files
@task
def export_weights(backend, arrays, model: str, out: str, kwargs: dict = None, seed: int = 0):
    """Build ``model`` with the framework's own seeded initialisation and write its
    canonical weights to ``out`` (meta: model, kwargs, framework, seed)."""
    net = backend.create_model(model, seed=seed, **(kwargs or {}))
    path = backend.save_weights(net, out, kwargs=kwargs or {}, seed=seed)
    return {}, {"path": str(path), "params": backend.count_params(net),
                "tensors": len(backend.get_weights(net))}


@task
def import_weights(backend, arrays, path: str, evaluate: bool = False, limit: int = None,
                   batch_size: int = 256, seed: int = 0, root: str = None):
    """Load a weight file into the model its meta names; return the logits for the input
    ``x`` (a checksum that must agree across frameworks) and, with ``evaluate``, the test
    accuracy on real Fashion-MNIST (seeded subset of ``limit`` test images)."""
    from . import weights as weight_files
    weights, meta = weight_files.load(path)
    if "model" not in meta:
        raise weight_files.WeightsError(f"{path} names no model in its meta; it was not "
                                        "written by d2lport (save_weights / d2lport export)")
    net = backend.create_model(meta["model"], **meta.get("kwargs", {}))
    backend.set_weights(net, weights)
    with backend.cpu_scope():
        outs = backend.block_outputs(net, np.asarray(arrays["x"], np.float32),
                                     include_aux=False)
    result = {"model": meta["model"], "kwargs": meta.get("kwargs", {}),
              "source": meta.get("framework"), "params": backend.count_params(net),
              "tensors": len(weights)}
    if evaluate:
        result.update(_test_accuracy(backend, net, limit, batch_size, seed, root))
    return {"logits": list(outs.values())[-1]}, result


def _test_accuracy(backend, net, limit, batch_size, seed, root) -> dict:
    channels, size, _ = net.spec.input_shape
    if channels != 1:
        raise ValueError(f"{net.spec.name} takes {channels}-channel input; Fashion-MNIST is "
                         "grey (export a model built with in_channels=1)")
    _, test_iter = backend.load_data_fashion_mnist(
        batch_size, resize=None if size == 28 else size, limit=limit, seed=seed, root=root)
    return {"test_acc": backend.evaluate(net, test_iter), "test_examples": test_iter.num_examples}


if __name__ == "__main__":
    _serve(sys.argv[1])
