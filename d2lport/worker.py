"""Run one framework's work in its own Python process.

Frameworks never share a process here: MXNet 1.9.1 segfaults when TensorFlow was imported
first, and a test of one framework must not import another.  The parent writes a request
(JSON + an .npz of arrays) to a temporary directory, runs ``python -m d2lport.worker DIR``,
and reads the reply back.  ``D2LPORT_PYTHON_<FRAMEWORK>`` (e.g. ``D2LPORT_PYTHON_MXNET``)
names another interpreter for users who keep a framework in a separate environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict

import numpy as np

TASKS: Dict[str, Callable] = {}


class WorkerError(RuntimeError):
    pass


def task(fn):
    TASKS[fn.__name__] = fn
    return fn


def python_for(framework: str) -> str:
    return os.environ.get(f"D2LPORT_PYTHON_{framework.upper()}", sys.executable)


def run(framework: str, name: str, arrays: Dict[str, np.ndarray] = None, timeout: float = 1800,
        **params):
    """Run task ``name`` for ``framework`` in a fresh process; returns (arrays, meta)."""
    with tempfile.TemporaryDirectory(prefix="d2lport-worker-") as tmp:
        tmp = Path(tmp)
        (tmp / "request.json").write_text(json.dumps(
            {"framework": framework, "task": name, "params": params}))
        np.savez(tmp / "request.npz", **(arrays or {}))
        env = dict(os.environ)
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
            raise WorkerError(f"{framework} worker for {name!r} failed: {meta['error']}")
        with np.load(tmp / "reply.npz") as z:
            out = OrderedDict((k, z[k]) for k in meta.get("order", z.files))
        return out, meta


def _serve(directory: str) -> None:
    tmp = Path(directory)
    request = json.loads((tmp / "request.json").read_text())
    with np.load(tmp / "request.npz") as z:
        arrays = {k: z[k] for k in z.files}
    try:
        from . import registry
        backend = registry.backend(request["framework"])
        out, meta = TASKS[request["task"]](backend, arrays, **request["params"])
        meta = dict(meta, order=list(out))
    except Exception as err:  # reported to the parent, which raises it
        out, meta = {}, {"error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc()}
    np.savez(tmp / "reply.npz", **out)
    (tmp / "reply.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------- tasks
@task
def blocks(backend, arrays, model: str, kwargs: dict = None, include_aux: bool = False):
    """Load canonical weights ``arrays['w:<key>']``, run ``arrays['x']`` (NCHW) in inference
    mode, return every block's output and the trainable parameter count per block."""
    net = backend.create_model(model, **(kwargs or {}))
    weights = {k[2:]: v for k, v in arrays.items() if k.startswith("w:")}
    if weights:
        backend.set_weights(net, weights)
    outs = backend.block_outputs(net, arrays["x"], include_aux=include_aux)
    rows = [r.as_tuple() for r in backend.layer_shapes(net, arrays["x"].shape)]
    return outs, {"rows": rows, "params": backend.count_params(net)}


@task
def weights(backend, arrays, model: str, kwargs: dict = None, seed: int = 0):
    """The canonical weights of a freshly built model (or of ``arrays`` round-tripped)."""
    net = backend.create_model(model, seed=seed, **(kwargs or {}))
    given = {k[2:]: v for k, v in arrays.items() if k.startswith("w:")}
    if given:
        backend.set_weights(net, given)
    return backend.get_weights(net), {}


def run_blocks(framework: str, model: str, x: np.ndarray, weights: Dict[str, np.ndarray] = None,
               include_aux: bool = False, **kwargs):
    """Per-block outputs of ``model`` in ``framework`` for canonical ``weights`` and NCHW
    input ``x``: ``(OrderedDict name -> array, meta)``."""
    arrays = {"x": np.asarray(x, np.float32)}
    arrays.update({f"w:{k}": v for k, v in (weights or {}).items()})
    return run(framework, "blocks", arrays, model=model, kwargs=kwargs, include_aux=include_aux)


if __name__ == "__main__":
    _serve(sys.argv[1])
