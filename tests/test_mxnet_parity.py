"""MXNet Gluon vs PyTorch: the same canonical weights and input give the same per-block
outputs (inference mode), and canonical weights round-trip torch -> MXNet -> torch exactly.

PyTorch runs only in child processes: this test process imports MXNet and never torch or
TensorFlow (d2lport.worker, and torch_reference's one-process reference script).
"""
import numpy as np
import pytest

from d2lport import specs, worker
from torch_reference import CASE_IDS, CASES, assert_close, inputs, torch_reference

pytestmark = [pytest.mark.mxnet, pytest.mark.parity]

d2p = pytest.importorskip("d2lport.mxnet")
mx = pytest.importorskip("mxnet")


@pytest.fixture(scope="module")
def torch_outputs(tmp_path_factory):
    return torch_reference(tmp_path_factory.mktemp("torch"))


@pytest.mark.parametrize("case,model,kwargs", CASES, ids=CASE_IDS)
def test_block_outputs_match_torch(torch_outputs, case, model, kwargs):
    w, x = inputs(model, kwargs)
    net = d2p.set_weights(d2p.create_model(model, **kwargs), w)
    out = d2p.block_outputs(net, x, include_aux=True)
    expected_names = [r.name for r in specs.infer(net.spec)]
    assert list(out) == expected_names            # blocks in order, aux heads after taps
    assert_close(case, out, torch_outputs)


NUMPY_MODE_CASES = [c for c in CASES if c[0] in ("googlenet", "googlenet_v1", "googlenet_v1_bn",
                                                  "vgg11_lrn", "inception_a_net")]


@pytest.mark.parametrize("case,model,kwargs", NUMPY_MODE_CASES,
                         ids=[c[0] for c in NUMPY_MODE_CASES])
def test_numpy_mode_block_outputs_match_torch(torch_outputs, case, model, kwargs):
    """D2L 1.0's numpy mode (npx.set_np(), mxnet.np arrays) against the same references."""
    w, x = inputs(model, kwargs)
    mx.npx.set_np()
    try:
        net = d2p.set_weights(d2p.create_model(model, **kwargs), w)
        out = d2p.block_outputs(net, mx.np.array(x), include_aux=True)
    finally:
        mx.npx.reset_np()
    assert_close(case, out, torch_outputs)


def test_imperative_matches_hybridized():
    """hybridize=False runs the same operators one by one: the same numbers."""
    w, x = inputs("googlenet", {})
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
