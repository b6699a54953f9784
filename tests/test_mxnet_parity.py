"""MXNet Gluon vs PyTorch: the same canonical weights and input give the same per-block
outputs (inference mode), and canonical weights round-trip torch -> MXNet -> torch exactly.

PyTorch runs only in child processes: this test process imports MXNet and never torch or
TensorFlow (d2lport.worker, or the one-process reference script below).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lport import registry, specs, weights, worker

pytestmark = [pytest.mark.mxnet, pytest.mark.parity]

d2p = pytest.importorskip("d2lport.mxnet")
ROOT = Path(__file__).resolve().parent.parent
BATCH = 2
VGG_SMALL = dict(width_ratio=8, image_size=32)   # keeps VGG cheap; FC layers stay 4096 wide


def _cases():
    """(id, model, kwargs): every registered model at its default input shape (VGG narrow
    and at 32 px), plus BatchNorm variants and a VGG at its full 224 px."""
    cases = [(n, n, dict(VGG_SMALL) if n.startswith("vgg") else {})
             for n in registry.list_models()]
    cases += [("googlenet_v1_bn", "googlenet_v1", dict(batch_norm=True)),
              ("vgg11_bn", "vgg11", dict(VGG_SMALL, batch_norm=True)),
              ("vgg11_224", "vgg11", dict(width_ratio=8))]
    return cases


CASES = _cases()


def _inputs(model, kwargs, seed=1):
    """Weights and input from seeds; the torch script below repeats these two lines, so
    nothing large travels between the processes."""
    spec = registry.get_spec(model, **kwargs)
    x = np.random.default_rng(seed).standard_normal((BATCH,) + spec.input_shape)
    return weights.random_weights(spec, seed=seed), x.astype(np.float32)


# Reference outputs for every case from ONE torch process (a process per case would spend
# most of the test's time importing torch).  The net is put in eval mode explicitly:
# d2lport.torch.block_outputs runs in the module's current mode and a new module trains.
_TORCH_SCRIPT = """
import json, sys
import numpy as np
import d2lport.torch as d2p
from d2lport import registry, weights
out = {{}}
for case, model, kwargs in json.loads(sys.argv[1]):
    spec = registry.get_spec(model, **kwargs)
    x = np.random.default_rng(1).standard_normal(({batch},) + spec.input_shape)
    w, x = weights.random_weights(spec, seed=1), x.astype(np.float32)
    net = d2p.set_weights(d2p.create_model(model, **kwargs), w).eval()
    for name, value in d2p.block_outputs(net, x, include_aux=True).items():
        out[case + "/" + name] = value
np.savez(sys.argv[2], **out)
"""


@pytest.fixture(scope="module")
def torch_outputs(tmp_path_factory):
    if not registry.framework_available("torch"):
        pytest.skip("PyTorch is not installed: no reference outputs")
    path = tmp_path_factory.mktemp("torch") / "ref.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([worker.python_for("torch"), "-c",
                           _TORCH_SCRIPT.format(batch=BATCH),
                           json.dumps(CASES), str(path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case,model,kwargs", CASES, ids=[c[0] for c in CASES])
def test_block_outputs_match_torch(torch_outputs, case, model, kwargs):
    w, x = _inputs(model, kwargs)
    net = d2p.set_weights(d2p.create_model(model, **kwargs), w)
    out = d2p.block_outputs(net, x, include_aux=True)
    expected_names = [r.name for r in specs.infer(net.spec)]
    assert list(out) == expected_names            # blocks in order, aux heads after taps
    for name, got in out.items():
        ref = torch_outputs[f"{case}/{name}"]
        assert got.shape == ref.shape, name
        scale = max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(got - ref).max())
        assert diff <= 1e-4 * scale, f"{case}.{name}: max abs diff {diff:.3g} (scale {scale:.3g})"


def test_imperative_matches_hybridized():
    """hybridize=False runs the same operators one by one: the same numbers."""
    w, x = _inputs("googlenet", {})
    hybrid = d2p.block_outputs(d2p.set_weights(d2p.create_model("googlenet"), w), x)
    plain = d2p.block_outputs(d2p.set_weights(
        d2p.create_model("googlenet", hybridize=False), w), x)
    for name in hybrid:
        np.testing.assert_allclose(plain[name], hybrid[name], rtol=1e-5, atol=1e-5)


def test_weight_round_trip_torch_mxnet_torch():
    """Canonical weights exported by torch load into MXNet and come back bit for bit,
    BatchNorm statistics and auxiliary heads included."""
    kwargs = dict(batch_norm=True)
    from_torch, _ = worker.run("torch", "weights", model="googlenet_v1", kwargs=kwargs, seed=3)
    net = d2p.set_weights(d2p.create_model("googlenet_v1", **kwargs), dict(from_torch))
    from_mx = d2p.get_weights(net)
    assert sorted(from_mx) == sorted(from_torch)
    back, _ = worker.run("torch", "weights", {f"w:{k}": v for k, v in from_mx.items()},
                         model="googlenet_v1", kwargs=kwargs, seed=4)
    for key, value in from_torch.items():
        assert from_mx[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value, err_msg=key)
