"""TensorFlow/Keras backend: every network computes what the PyTorch one computes.

PyTorch runs only in a child process (one for all reference outputs, plus the worker for
the weight round trip); this process imports TensorFlow and never torch or MXNet.
"""
import ast
import subprocess
import sys

import numpy as np
import pytest

from d2lport import specs, worker
from d2lport.specs import InputShapeError
from torch_reference import CASE_IDS, CASES, ROOT, assert_close, inputs, torch_reference

pytestmark = pytest.mark.tensorflow

d2p = pytest.importorskip("d2lport.tensorflow")
tf = pytest.importorskip("tensorflow")
RESIZES = (96, 20)     # Fashion-MNIST's 28 px up (GoogLeNet) and down


@pytest.fixture(scope="module")
def torch_ref(tmp_path_factory):
    return torch_reference(tmp_path_factory.mktemp("torch"), RESIZES)


@pytest.fixture(scope="module")
def nets():
    """Models with the cases' weights loaded, built once per module."""
    cache = {}

    def get(case, model, kwargs):
        if case not in cache:
            w, _ = inputs(model, kwargs)
            cache[case] = d2p.set_weights(d2p.create_model(model, **kwargs), w)
        return cache[case]
    yield get
    cache.clear()


# --------------------------------------------------------------------------- parity
@pytest.mark.parity
@pytest.mark.parametrize("case,model,kwargs", CASES, ids=CASE_IDS)
def test_block_outputs_match_torch(torch_ref, nets, case, model, kwargs):
    w, x = inputs(model, kwargs)
    net = nets(case, model, kwargs)
    out = d2p.block_outputs(net, x, include_aux=True)
    assert list(out) == [r.name for r in specs.infer(net.spec)]   # aux heads after their taps
    assert_close(case, out, torch_ref)


@pytest.mark.parametrize("case,model,kwargs", CASES, ids=CASE_IDS)
def test_params_rows_and_weights(torch_ref, nets, case, model, kwargs):
    w, x = inputs(model, kwargs)
    net = nets(case, model, kwargs)
    assert d2p.count_params(net) == specs.count_params(net.spec)
    rows = [r.as_tuple() for r in d2p.layer_shapes(net, x.shape)]
    assert rows == [(r.name, r.out_shape, r.params) for r in specs.infer(net.spec, x.shape)]
    assert rows == [(n, tuple(s), p) for n, s, p in torch_ref["rows"][case]]
    back = d2p.get_weights(net)                  # canonical keys, torch layouts, exact
    assert list(back) == list(specs.canonical_shapes(net.spec))
    assert all(np.array_equal(back[k], w[k]) for k in w)


def test_weight_round_trip_torch_tf_torch():
    """Weights exported by torch load into Keras and come back bit for bit (BatchNorm
    statistics, auxiliary heads and their 4x4 flatten included), and torch takes them."""
    kwargs = dict(batch_norm=True, num_classes=10)
    from_torch, _ = worker.run("torch", "weights", model="googlenet_v1", kwargs=kwargs, seed=3)
    net = d2p.set_weights(d2p.create_model("googlenet_v1", **kwargs), dict(from_torch))
    from_tf = d2p.get_weights(net)
    assert sorted(from_tf) == sorted(from_torch)        # torch lists the heads last
    assert all(np.array_equal(from_tf[k], from_torch[k]) for k in from_torch)
    back, _ = worker.run("torch", "weights", {f"w:{k}": v for k, v in from_tf.items()},
                         model="googlenet_v1", kwargs=kwargs, seed=4)
    assert all(np.array_equal(back[k], from_torch[k]) for k in from_torch)


def test_flatten_permutation_and_file_round_trip(tmp_path):
    """The first dense layer after a flatten sees H, W, C order in Keras: a canonical
    weight that reads one (c, h, w) cell gives that cell's value."""
    net = d2p.create_model("residual_net", seed=0)     # fc: 32 x 4 x 4 -> 10
    w = d2p.get_weights(net)
    w["fc.weight"] = np.zeros_like(w["fc.weight"])
    w["fc.bias"] = np.zeros_like(w["fc.bias"])
    w["fc.weight"][3, np.ravel_multi_index((5, 2, 1), (32, 4, 4))] = 1.0
    d2p.set_weights(net, w)
    x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    out = d2p.block_outputs(net, x)
    assert out["fc"][0, 3] == out["residual2"][0, 5, 2, 1]
    path = d2p.save_weights(net, tmp_path / "w.npz")
    other = d2p.set_weights(d2p.create_model("residual_net", seed=1), path)
    assert all(np.array_equal(v, w[k]) for k, v in d2p.get_weights(other).items())


# --------------------------------------------------------------------------- behaviour
def test_input_shape_errors():
    with pytest.raises(InputShapeError, match="32x32"):
        d2p.create_model("vgg11", width_ratio=8, image_size=16)
    net = d2p.create_model("residual_net")
    with pytest.raises(InputShapeError, match="28x28"):
        net(tf.zeros((2, 20, 20, 1)))
    with pytest.raises(InputShapeError, match="NHWC"):
        net(tf.zeros((2, 1, 28, 28)))                   # NCHW by mistake
    with pytest.raises(InputShapeError, match="28x28"):
        d2p.block_outputs(net, np.zeros((2, 1, 20, 20), np.float32))
    with pytest.raises(InputShapeError, match="channel"):
        d2p.layer_shapes(net, (1, 3, 28, 28))


def test_aux_heads_and_dropout_only_in_training():
    net = d2p.create_model("googlenet_v1", num_classes=10, seed=0)
    x = tf.random.stateless_uniform((2, 224, 224, 3), (1, 2))
    train_out = net(x, training=True)
    assert isinstance(train_out, d2p.AuxOutputs)
    assert [tuple(a.shape) for a in (train_out.logits,) + train_out.aux] == [(2, 10)] * 3
    first, second = net(x), net(x, training=False)       # inference: logits only, no dropout
    assert not isinstance(first, tuple) and first.shape == (2, 10)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    again = net(x, training=True)                         # dropout 0.4/0.7 draws anew
    assert not np.array_equal(train_out.logits.numpy(), again.logits.numpy())


def test_batchnorm_constants_like_torch():
    """Training-mode BatchNorm: eps 1e-5 on the batch statistics, running mean updated
    with PyTorch's momentum 0.1."""
    block = d2p.vgg_block(1, 2, 3, batch_norm=True)
    x = tf.random.stateless_normal((4, 6, 6, 2), (3, 4)) + 2.0
    conv = block.get_layer("conv1")                       # a d2p.Conv: Conv2D + child bn
    bn = conv.bn
    assert bn.epsilon == specs.BN_EPS and bn.momentum == pytest.approx(1 - specs.BN_MOMENTUM)
    y = conv.convolution_op(x, conv.kernel) + conv.bias
    mean, var = tf.nn.moments(y, axes=(0, 1, 2))
    out = block(x, training=True)
    expected = tf.nn.max_pool2d(tf.nn.relu((y - mean) / tf.sqrt(var + specs.BN_EPS)), 2, 2, "VALID")
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), specs.BN_MOMENTUM * mean.numpy(), rtol=1e-5)


def test_summary_and_public_names():
    net = d2p.create_model("googlenet")
    lines = []
    rows = d2p.summary(net, (1, 1, 96, 96), print_fn=lines.append)
    assert [(r.name, r.shape) for r in rows] == [
        ("b1", (64, 24, 24)), ("b2", (192, 12, 12)), ("b3", (480, 6, 6)),
        ("b4", (832, 3, 3)), ("b5", (1024,)), ("fc", (10,))]   # DESIGN.md, D2L 8.4
    assert "b4     832 x 3 x 3" in lines[0]
    # Every public name of the PyTorch backend exists here (read from its source: no torch).
    tree = ast.parse((ROOT / "d2lport" / "torch" / "__init__.py").read_text())
    names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             for a in n.names}
    names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    missing = sorted(n for n in names if not n.startswith("_") and not hasattr(d2p, n))
    assert not missing
    assert d2p.FRAMEWORK == "tensorflow" and "googlenet" in d2p.list_models()


def test_import_isolation():
    code = ("import d2lport.tensorflow, sys; "
            "assert 'torch' not in sys.modules and 'mxnet' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------- data, training
@pytest.fixture(scope="module")
def fashion():
    try:
        return d2p.load_data_fashion_mnist(batch_size=32, limit=3000, seed=0)
    except Exception as err:  # DataError: the files are not installed here
        pytest.skip(f"Fashion-MNIST not available: {err}")


def test_data_pipeline(fashion, torch_ref):
    train_iter, test_iter = fashion
    X, y = next(iter(test_iter))
    assert X.shape == (32, 28, 28, 1) and X.dtype == tf.float32 and y.dtype == tf.int64
    assert 0.0 <= float(tf.reduce_min(X)) and float(tf.reduce_max(X)) <= 1.0
    # The same per-epoch sample order as every other backend (ArrayBatches.order).
    epoch = train_iter.batches.epoch
    labels = np.concatenate([b[1].numpy() for b in train_iter])
    order = train_iter.batches.order(epoch)
    np.testing.assert_array_equal(labels, train_iter.batches.labels[order])
    assert not np.array_equal(order, train_iter.batches.order(epoch + 1))
    # Batch resize: the numbers PyTorch's bilinear interpolate gives.
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for size in RESIZES:
        got = d2p.to_tensor(images, size).numpy().transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, torch_ref[f"resize/{size}"], atol=1e-6)


@pytest.mark.slow
def test_fashion_mnist_training_is_learning_and_repeatable(fashion):
    train_iter, test_iter = fashion

    def run():
        net = d2p.create_model("residual_net", seed=0)
        train_iter.batches.epoch = 0                       # the same sample order
        return d2p.train(net, train_iter, test_iter, num_epochs=2, lr=0.05, momentum=0.9,
                         seed=0, progress=False)

    first, second = run(), run()
    assert first.test_acc[-1] > 0.6, str(first)            # chance is 0.1
    assert first.loss[-1] < first.loss[0]
    assert set(first.epochs[0]) == {"epoch", "loss", "train_acc", "test_acc",
                                     "examples_per_sec", "seconds"}
    assert first.loss == second.loss and first.test_acc == second.test_acc


def test_mixed_precision_step_restores_policy():
    """``amp`` (default on GPU only) computes in bfloat16 for the call, then float32 again;
    forced here on the CPU as a smoke run of that path."""
    net = d2p.create_model("residual_net", seed=0)
    X = tf.random.stateless_uniform((4, 28, 28, 1), (5, 6))
    y = tf.constant([0, 1, 2, 3], tf.int64)
    history = d2p.train(net, [(X, y)] * 2, [(X, y)], num_epochs=1, lr=0.01, amp=True,
                        weight_decay=1e-4, progress=False)
    assert np.isfinite(history.loss[0])
    assert {layer.dtype_policy.name for layer in net._flatten_layers()} == {"float32"}
    assert net(X).dtype == tf.float32
