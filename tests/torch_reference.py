"""Shared by the TensorFlow and MXNet parity tests: the cases, their seeded inputs, and
PyTorch reference outputs computed in ONE child process (the test process never imports
torch; a process per case would spend most of its time importing torch).  Weights and
inputs are rebuilt from seeds on both sides, so nothing large travels between processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lport import registry, weights, worker

ROOT = Path(__file__).resolve().parent.parent
BATCH = 2
VGG_SMALL = dict(width_ratio=8, image_size=32)   # cheap VGG; the FC layers stay 4096 wide


def cases():
    """(id, model, kwargs): every registered model at its default input shape (VGG narrow,
    32 px), plus the BatchNorm variants and one VGG at 224 px (a 7x7 flatten)."""
    out = [(n, n, dict(VGG_SMALL) if n.startswith("vgg") else {})
           for n in registry.list_models()]
    out += [("googlenet_v1_bn", "googlenet_v1", dict(batch_norm=True)),
            ("vgg11_bn", "vgg11", dict(VGG_SMALL, batch_norm=True)),
            ("vgg11_224", "vgg11", dict(width_ratio=8))]
    return out


CASES = cases()
CASE_IDS = [c[0] for c in CASES]


def inputs(model, kwargs, seed=1):
    """Seeded canonical weights and NCHW input; the script below repeats these lines."""
    spec = registry.get_spec(model, **kwargs)
    x = np.random.default_rng(seed).standard_normal((BATCH,) + spec.input_shape)
    return weights.random_weights(spec, seed=seed), x.astype(np.float32)


_SCRIPT = """
import json, sys
import numpy as np
import d2lport.torch as d2p
from d2lport import registry, weights
cases, resizes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out, rows = {{}}, {{}}
for case, model, kwargs in cases:
    spec = registry.get_spec(model, **kwargs)
    x = np.random.default_rng(1).standard_normal(({batch},) + spec.input_shape)
    w, x = weights.random_weights(spec, seed=1), x.astype(np.float32)
    net = d2p.set_weights(d2p.create_model(model, **kwargs), w)
    for name, value in d2p.block_outputs(net, x, include_aux=True).items():
        out[case + "/" + name] = value
    rows[case] = [r.as_tuple() for r in d2p.layer_shapes(net, x.shape)]
images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
for size in resizes:
    out["resize/%d" % size] = d2p.to_tensor(images, size).numpy()
out["rows"] = np.frombuffer(json.dumps(rows).encode(), np.uint8)
np.savez(sys.argv[3], **out)
"""


def torch_reference(directory: Path, resizes=()) -> dict:
    """``{"<case>/<block>": output, "resize/<size>": batch, "rows": {case: rows}}``."""
    # torch may live in another environment (from .venv-mxnet: the main .venv)
    why = (None if registry.framework_available("torch") else "not installed here") \
        if worker.python_for("torch") == sys.executable else worker.probe("torch")
    if why:
        pytest.skip(f"PyTorch is not installed: no reference outputs ({why})")
    path = Path(directory) / "ref.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([worker.python_for("torch"), "-c", _SCRIPT.format(batch=BATCH),
                           json.dumps(CASES), json.dumps(list(resizes)), str(path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(path) as z:
        ref = {k: z[k] for k in z.files}
    ref["rows"] = json.loads(bytes(ref["rows"]).decode())
    return ref


def assert_close(case, out, ref):
    """Every block within 1e-4 of the reference's output scale (max(1, max|ref|))."""
    for name, got in out.items():
        want = ref[f"{case}/{name}"]
        assert got.shape == want.shape, name
        scale = max(1.0, float(np.abs(want).max()))
        diff = float(np.abs(got - want).max())
        assert diff <= 1e-4 * scale, f"{case}.{name}: max abs diff {diff:.3g} (scale {scale:.3g})"
