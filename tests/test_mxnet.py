"""The MXNet Gluon backend: shapes, parameter counts, modes, weights, data, training, D2L
1.0's numpy mode (``npx.set_np()``), and the import rules (TensorFlow-then-MXNet crash,
numpy pin).  Parity with PyTorch lives in
test_mxnet_parity.py.  Imports neither torch nor TensorFlow in this process."""
import ast
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lport import registry, specs, weights
from d2lport.data import DataError

pytestmark = pytest.mark.mxnet

d2p = pytest.importorskip("d2lport.mxnet")
mx = pytest.importorskip("mxnet")
ROOT = Path(__file__).resolve().parent.parent
VGG_SMALL = dict(width_ratio=8, image_size=32)


def _kwargs(name):
    return dict(VGG_SMALL) if name.startswith("vgg") else {}


def _python(code, timeout=120):
    """Run ``code`` in a fresh interpreter with this checkout on the path."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------- interface
def test_public_names_mirror_torch_backend():
    """Every public name of d2lport.torch exists here (read from its source, not imported)."""
    tree = ast.parse((ROOT / "d2lport" / "torch" / "__init__.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    public = {n for n in names if not n.startswith("_")}
    assert public and not [n for n in sorted(public) if not hasattr(d2p, n)]
    assert d2p.FRAMEWORK == "mxnet" and d2p.list_models() == registry.list_models()


@pytest.mark.parametrize("name", registry.list_models())
def test_rows_and_trainable_counts_match_spec(name):
    """layer_shapes rows (measured by running the net) equal the spec's inferred rows, and
    the trainable count leaves out BatchNorm running statistics."""
    kwargs = _kwargs(name)
    net = d2p.create_model(name, **kwargs)
    rows = [r.as_tuple() for r in d2p.layer_shapes(net)]
    assert rows == [(r.name, r.out_shape, r.params) for r in specs.infer(net.spec)]
    assert d2p.count_params(net) == specs.count_params(net.spec)
    assert set(d2p.get_weights(net)) == set(specs.canonical_shapes(net.spec))


@pytest.mark.parametrize("name,published", [("vgg11", 132_863_336), ("vgg11_bn", 132_868_840)])
def test_full_vgg_counts_match_torchvision(name, published):
    """torchvision's published trainable counts (224 px, 1000 classes)."""
    net = d2p.create_model(name)
    assert d2p.count_params(net) == published
    mx.nd.waitall()                  # let the asynchronous initialisation finish here


def test_batchnorm_counts_and_keys():
    net = d2p.create_model("vgg11_bn", **VGG_SMALL)
    assert d2p.count_params(net) == specs.count_params(net.spec)
    held = sum(int(np.prod(p.shape)) for p in net.collect_params().values())
    bn_stats = sum(v.size for k, v in d2p.get_weights(net).items() if "running" in k)
    assert bn_stats > 0 and held == d2p.count_params(net) + bn_stats
    w = d2p.get_weights(net)
    assert w["block1.conv1.bn.weight"].shape == (8,)            # Gluon's gamma
    np.testing.assert_array_equal(w["block1.conv1.bn.running_var"], np.ones(8, np.float32))


def test_googlenet_summary_at_96_px():
    lines = []
    rows = d2p.summary(d2p.create_model("googlenet"), (1, 1, 96, 96), print_fn=lines.append)
    assert [r.shape for r in rows] == [(64, 24, 24), (192, 12, 12), (480, 6, 6), (832, 3, 3),
                                       (1024,), (10,)]
    assert "googlenet (mxnet), input (1, 1, 96, 96)" in lines[0]


def _ready(block):
    """Standalone blocks are plain Gluon blocks: initialise them before use, as in D2L."""
    block.initialize(mx.init.Xavier())
    return block


def test_standalone_blocks():
    x = mx.nd.ones((2, 192, 28, 28))
    block = _ready(d2p.Inception(192, 64, (96, 128), (16, 32), 32))
    assert block(x).shape == (2, 256, 28, 28)
    assert "(branch4): Sequential(\n    (pool): MaxPool2D" in repr(block)   # layer tree
    assert sorted(block._collect_params_with_prefix())[:3] == [
        "branch1.conv.bias", "branch1.conv.weight", "branch2.conv1.bias"]
    assert _ready(d2p.InceptionA(10))(mx.nd.ones((1, 10, 12, 12))).shape == (1, 88, 12, 12)
    assert _ready(d2p.ResidualBlock(16))(mx.nd.ones((1, 16, 12, 12))).shape == (1, 16, 12, 12)
    vgg = _ready(d2p.vgg_block(2, 3, 8, batch_norm=True))
    assert vgg(mx.nd.ones((1, 3, 32, 32))).shape == (1, 8, 16, 16)
    assert list(vgg._children) == ["conv1", "conv2", "pool"]
    assert "conv1.bn.gamma" in vgg._collect_params_with_prefix()


def test_networks_are_the_hand_written_classes():
    """create_model returns the classes of googlenet.py / vgg.py / lecture.py, with the
    spec's block names as attributes, each a hybridizable block."""
    net = d2p.create_model("googlenet_v1")
    assert type(net) is d2p.GoogLeNetV1 and isinstance(net.inception4a, d2p.Inception)
    assert isinstance(net.aux1, d2p.InceptionAux) and net.block("aux2") is net.aux2
    assert all(isinstance(net.block(n), mx.gluon.HybridBlock) for n in net.block_names)
    vgg = d2p.create_model("vgg16_conv1", **VGG_SMALL)
    assert type(vgg) is d2p.VGG and list(vgg.block3._children) == ["conv1", "conv2", "conv3",
                                                                     "pool"]
    assert vgg.block3.conv3._kwargs["kernel"] == (1, 1)          # configuration C's 1x1
    assert "lrn" in d2p.create_model("vgg11_lrn", **VGG_SMALL).block1._children
    assert list(d2p.create_model("inception")._children) == ["inception"]


def test_seeded_init_is_repeatable_and_xavier():
    a = d2p.get_weights(d2p.create_model("residual_net", seed=5))
    b = d2p.get_weights(d2p.create_model("residual_net", seed=5))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    w = a["residual1.conv1.weight"]                      # (16, 16, 3, 3)
    limit = np.sqrt(6.0 / (16 * 9 + 16 * 9))             # Glorot uniform
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit
    assert not a["residual1.conv1.bias"].any()


# --------------------------------------------------------------------------- modes
def test_training_mode_returns_aux_outputs_hybridized():
    """The outer Net is a plain Block: hybridized inner blocks keep one output structure,
    while the net returns AuxOutputs in training and bare logits in inference, in any
    order of calls."""
    net = d2p.create_model("googlenet_v1", num_classes=7)
    x = mx.nd.random.uniform(shape=(2, 3, 224, 224))
    before = net(x)
    with mx.autograd.record():
        out = net(x)
        loss = d2p.loss_fn(out, d2p.as_nd([1, 2]))
    assert isinstance(out, d2p.AuxOutputs) and len(out.aux) == 2
    assert out.logits.shape == (2, 7) and all(a.shape == (2, 7) for a in out.aux)
    parts = [d2p.loss_fn(o, d2p.as_nd([1, 2])) for o in (out.logits,) + out.aux]
    np.testing.assert_allclose(loss.asnumpy(), (parts[0] + 0.3 * (parts[1] + parts[2])).asnumpy(),
                               rtol=1e-6)
    after = net(x)
    assert isinstance(after, mx.nd.NDArray)
    np.testing.assert_array_equal(before.asnumpy(), after.asnumpy())


def test_dropout_only_in_training():
    net = d2p.create_model("vgg11", **VGG_SMALL)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    first, second = d2p.block_outputs(net, x), d2p.block_outputs(net, x)
    np.testing.assert_array_equal(first["fc3"], second["fc3"])
    np.testing.assert_array_equal(first["fc3"], net(d2p.as_nd(x)).asnumpy())
    with mx.autograd.train_mode():
        trained = net(d2p.as_nd(x)).asnumpy()
    assert np.abs(trained - first["fc3"]).max() > 1e-3


def test_wrong_input_size_raises_input_shape_error():
    """Checked in Python before any graph runs, naming the size the network takes."""
    net = d2p.create_model("residual_net")
    with pytest.raises(specs.InputShapeError, match="built for 28x28"):
        net(mx.nd.zeros((1, 1, 8, 8)))
    vgg = d2p.create_model("vgg11", **VGG_SMALL)
    with pytest.raises(specs.InputShapeError, match="built for 32x32"):
        d2p.block_outputs(vgg, np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(specs.InputShapeError, match="in_channels=3"):
        d2p.create_model("googlenet")(mx.nd.zeros((1, 3, 96, 96)))
    with pytest.raises(specs.InputShapeError, match=r"\(N, C, H, W\)"):
        net(mx.nd.zeros((1, 28, 28)))


# --------------------------------------------------------------------------- weights
def test_set_weights_checks_and_file_round_trip(tmp_path):
    net = d2p.create_model("inception_a_net", seed=1)
    w = weights.random_weights(net.spec, seed=2)
    path = d2p.save_weights(d2p.set_weights(net, w), tmp_path / "w.npz")
    other = d2p.set_weights(d2p.create_model("inception_a_net", seed=3), path)
    for k, v in d2p.get_weights(other).items():
        np.testing.assert_array_equal(v, w[k])
    bad = dict(w, **{"fc.weight": np.zeros((10, 5), np.float32)})
    with pytest.raises(weights.WeightsError, match="fc.weight"):
        d2p.set_weights(other, bad)


# --------------------------------------------------------------------------- data
def _bilinear_half_pixel(img, out_h, out_w):
    """numpy reference: bilinear, half-pixel centres, edge clamp (torch align_corners=False)."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    (r0, r1, fr), (c0, c1, fc) = axis(img.shape[-2], out_h), axis(img.shape[-1], out_w)
    rows = img[..., r0, :] * (1 - fr)[:, None] + img[..., r1, :] * fr[:, None]
    return rows[..., c0] * (1 - fc) + rows[..., c1] * fc


def test_resize_matches_torch_bilinear():
    img = np.array([[[0, 64, 255], [32, 128, 16], [200, 8, 96]]], np.uint8)
    # torch 2.13: F.interpolate(img / 255, size, mode="bilinear", align_corners=False)
    torch_5x5 = [[0.0, 0.10039217, 0.2509804, 0.70039225, 1.0],
                 [0.050196085, 0.1706667, 0.35137257, 0.51560783, 0.625098],
                 [0.1254902, 0.27607846, 0.5019608, 0.23843132, 0.0627451],
                 [0.52078444, 0.40031376, 0.21960779, 0.23843138, 0.25098044],
                 [0.78431374, 0.48313722, 0.03137255, 0.23843142, 0.3764706]]
    torch_2x2 = [[0.10196079, 0.6526961], [0.5019608, 0.26078433]]
    np.testing.assert_allclose(d2p.to_tensor(img, 5).asnumpy()[0, 0], torch_5x5, atol=1e-6)
    np.testing.assert_allclose(d2p.to_tensor(img, 2).asnumpy()[0, 0], torch_2x2, atol=1e-6)
    batch = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    for size in (96, (14, 40)):
        got = d2p.to_tensor(batch, size).asnumpy()
        h, w = (size, size) if isinstance(size, int) else size
        assert got.shape == (4, 1, h, w) and got.dtype == np.float32
        ref = _bilinear_half_pixel(batch[:, None].astype(np.float64) / 255, h, w)
        np.testing.assert_allclose(got, ref, atol=3e-6)       # float32 vs float64 rounding
    np.testing.assert_array_equal(d2p.to_tensor(batch).asnumpy(), batch[:, None] / np.float32(255))


def _small_data():
    """Fresh loaders (each counts its epochs to draw the next shuffle)."""
    try:
        return d2p.load_data_fashion_mnist(32, limit=3000, seed=0)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed here: {err}")


def test_loader_batches():
    train_iter, test_iter = _small_data()
    X, y = next(iter(train_iter))
    assert X.shape == (32, 1, 28, 28) and X.dtype == np.float32 and y.dtype == np.int32
    assert len(train_iter) == 94 and test_iter.num_examples == 3000
    assert d2p.get_fashion_mnist_labels(y[:2]) == [d2p.LABELS[int(i)] for i in y[:2].asnumpy()]


# --------------------------------------------------------------------------- training
@pytest.mark.slow
def test_short_fashion_mnist_run_learns_and_repeats():
    """residual_net, 3000 real examples, 2 epochs of SGD: far above chance (0.1), and the
    same seeds give the same history."""
    def run():
        net = d2p.create_model("residual_net", seed=0)
        return d2p.train(net, *_small_data(), num_epochs=2, lr=0.1, seed=0, progress=False)
    first, second = run(), run()
    assert first.framework == "mxnet" and first.device == "cpu(0)"
    assert set(first.epochs[0]) == {"epoch", "loss", "train_acc", "test_acc",
                                    "examples_per_sec", "seconds"}
    assert first.test_acc[-1] > 0.6 and first.loss[1] < first.loss[0]
    for key in ("loss", "train_acc", "test_acc"):
        assert getattr(first, key) == getattr(second, key)


def test_train_with_aux_heads_adam_and_predict():
    """A step on GoogLeNet v1 (auxiliary losses) with Adam and max_steps; evaluate/predict."""
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    batches = [(d2p.as_nd(x), d2p.as_nd([0, 1, 2, 3], dtype="int32"))]
    net = d2p.create_model("googlenet_v1", num_classes=4, seed=0)
    hist = d2p.train(net, batches, batches, num_epochs=1, lr=1e-3, optimizer="adam",
                     max_steps=1, progress=False)
    assert hist.epochs[0]["epoch"] == 1 and np.isfinite(hist.loss[0])
    assert 0.0 <= d2p.evaluate(net, batches) <= 1.0
    assert d2p.predict(net, x).shape == (4,)
    with pytest.raises(ValueError, match="unknown optimizer"):
        d2p.train(net, batches, batches, num_epochs=1, optimizer="rmsprop", progress=False)


# --------------------------------------------------------------------------- numpy mode
@contextlib.contextmanager
def numpy_mode():
    """D2L 1.0's convention (``from mxnet import np, npx; npx.set_np()``) for a block of a
    test; the mode is process-global, so legacy mode comes back whatever happens."""
    mx.npx.set_np()
    try:
        yield
    finally:
        mx.npx.reset_np()


@pytest.mark.parametrize("name,kwargs", [
    ("googlenet_v1", {}),                                   # LRN, aux heads, dropout
    ("googlenet_v1", dict(batch_norm=True, lrn=False)),     # BatchNorm in every conv
    ("vgg11_lrn", dict(VGG_SMALL, batch_norm=True)),
    ("inception_a_net", {}), ("residual_net", {}), ("inception", {})])
def test_numpy_mode_block_outputs_equal_legacy(name, kwargs):
    """The same weights and input give the same per-block outputs with mx.nd arrays and,
    after npx.set_np(), with mxnet.np arrays (hybridized and not)."""
    spec = registry.get_spec(name, **kwargs)
    w = weights.random_weights(spec, seed=1)
    x = np.random.default_rng(2).standard_normal((2,) + spec.input_shape).astype(np.float32)
    legacy = d2p.block_outputs(d2p.set_weights(d2p.create_model(name, **kwargs), w), x)
    with numpy_mode():
        for hybridize in (True, False):
            net = d2p.set_weights(d2p.create_model(name, hybridize=hybridize, **kwargs), w)
            assert all(isinstance(p.data(), mx.np.ndarray)
                       for p in net.collect_params().values())
            outs = net.forward_blocks(d2p.as_array(x))       # inference mode
            assert all(isinstance(v, mx.np.ndarray) for v in outs.values())
            got = d2p.block_outputs(net, x)
            assert list(got) == list(legacy)
            for key in legacy:      # float32 rounding: imperative and cached graphs differ
                scale = max(1.0, float(np.abs(legacy[key]).max()))
                np.testing.assert_allclose(got[key], legacy[key], rtol=1e-5, atol=1e-5 * scale,
                                           err_msg=f"{key} hybridize={hybridize}")
            rows = [r.as_tuple() for r in d2p.layer_shapes(net)]
            assert rows == [(r.name, r.out_shape, r.params) for r in specs.infer(spec)]
            assert d2p.count_params(net) == specs.count_params(spec)
            back = d2p.get_weights(net)
            assert all(np.array_equal(back[k], w[k]) for k in w)


def _train_few_steps(batches, w):
    net = d2p.set_weights(d2p.create_model("residual_net"), w)
    hist = d2p.train(net, batches, batches, num_epochs=2, lr=0.1, momentum=0.9,
                     max_steps=3, seed=0, progress=False)
    return net, hist


def test_numpy_mode_trains_like_legacy_mode():
    """A few SGD steps in numpy mode (mxnet.np batches) and in legacy mode (mx.nd batches)
    from the same weights and data: the same losses and accuracies; evaluate and predict
    work on both kinds of array."""
    spec = registry.get_spec("residual_net")
    w = weights.random_weights(spec, seed=0)
    rng = np.random.default_rng(0)
    xs = rng.random((3, 16, 1, 28, 28)).astype(np.float32)
    ys = rng.integers(0, 10, (3, 16))
    batches = [(d2p.as_array(x), d2p.as_array(y, dtype="int32")) for x, y in zip(xs, ys)]
    net, legacy = _train_few_steps(batches, w)
    legacy_pred = d2p.predict(net, xs[0])
    assert isinstance(legacy_pred, mx.nd.NDArray)
    with numpy_mode():
        batches = [(d2p.as_array(x), d2p.as_array(y, dtype="int32")) for x, y in zip(xs, ys)]
        assert isinstance(batches[0][0], mx.np.ndarray)
        net, numpy_hist = _train_few_steps(batches, w)
        pred = d2p.predict(net, batches[0][0])
        assert isinstance(pred, mx.np.ndarray) and pred.dtype == np.int32
        np.testing.assert_array_equal(pred.asnumpy(), legacy_pred.asnumpy())
        assert d2p.evaluate(net, batches) == pytest.approx(numpy_hist.test_acc[-1])
    assert np.isfinite(legacy.loss).all() and legacy.loss[1] < legacy.loss[0]
    np.testing.assert_allclose(numpy_hist.loss, legacy.loss, rtol=1e-5)
    assert numpy_hist.train_acc == legacy.train_acc and numpy_hist.test_acc == legacy.test_acc


def test_numpy_mode_aux_heads_train_step():
    """GoogLeNet v1 in numpy mode: AuxOutputs of mxnet.np arrays in training, the weighted
    loss, a Gluon Trainer step, logits outside training; and StepKit."""
    with numpy_mode():
        net = d2p.create_model("googlenet_v1", num_classes=4, seed=0)
        x = mx.np.random.uniform(size=(2, 3, 224, 224))
        y = d2p.as_array([1, 3], dtype="int32")
        with mx.autograd.record():
            out = net(x)
            loss = d2p.loss_fn(out, y)
        assert isinstance(out, d2p.AuxOutputs) and isinstance(out.aux[0], mx.np.ndarray)
        loss.backward()
        before = d2p.get_weights(net)["aux1.fc2.weight"]
        mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1}).step(2)
        assert not np.array_equal(d2p.get_weights(net)["aux1.fc2.weight"], before)
        assert isinstance(net(x), mx.np.ndarray)
        kit = d2p.StepKit(d2p.create_model("residual_net", seed=0), lr=0.1)
        X, Y = kit.inputs(np.zeros((2, 1, 28, 28), np.float32), np.array([0, 1]))
        assert isinstance(X, mx.np.ndarray) and np.isfinite(kit.train_step(X, Y))


def test_numpy_mode_loaders_and_to_tensor():
    """to_tensor and the loaders give mxnet.np arrays in numpy mode, mx.nd otherwise, with
    the same values."""
    batch = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    legacy = d2p.to_tensor(batch, 40)
    with numpy_mode():
        got = d2p.to_tensor(batch, 40)
        assert isinstance(got, mx.np.ndarray) and got.shape == (3, 1, 40, 40)
        np.testing.assert_array_equal(got.asnumpy(), legacy.asnumpy())
        train_iter, _ = _small_data()
        X, y = next(iter(train_iter))
        assert isinstance(X, mx.np.ndarray) and isinstance(y, mx.np.ndarray)
        assert X.dtype == np.float32 and y.dtype == np.int32 and X.shape == (32, 1, 28, 28)
        assert d2p.get_fashion_mnist_labels(y[:2]) == [d2p.LABELS[int(i)]
                                                       for i in y[:2].asnumpy()]
    assert isinstance(next(iter(train_iter))[0], mx.nd.NDArray)   # the mode, per batch


def test_array_mode_mismatch_is_a_clear_error():
    """A net holds arrays of the mode it was built in; fed the other kind it says so."""
    net = d2p.create_model("residual_net")
    with numpy_mode():
        with pytest.raises(TypeError, match=r"built in legacy mode.*npx.set_np\(\)"):
            net(mx.np.zeros((1, 1, 28, 28)))
        np_net = d2p.create_model("residual_net")
    with pytest.raises(TypeError, match="built in numpy mode"):
        np_net(mx.nd.zeros((1, 1, 28, 28)))
    assert not mx.util.is_np_array()


# --------------------------------------------------------------------------- imports
def test_import_loads_neither_torch_nor_tensorflow():
    proc = _python("import sys, d2lport.mxnet\n"
                   "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_import_order_tensorflow_first_fails_cleanly_mxnet_first_works():
    """TensorFlow then MXNet crashes MXNet 1.9.1's import (exit 255 or a signal): d2lport
    raises an ImportError that names the fix.  MXNet first, then TensorFlow, works."""
    if not registry.framework_available("tensorflow"):
        pytest.skip("TensorFlow is not installed")
    tf_first = subprocess.Popen(
        [sys.executable, "-c", "import tensorflow\nimport d2lport.mxnet"],
        env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mx_first = _python("import d2lport.mxnet, mxnet as mx\nimport tensorflow as tf\n"
                       "print(float(mx.nd.ones(3).sum().asscalar()),"
                       " float(tf.reduce_sum(tf.ones(3))))")
    _, err = tf_first.communicate(timeout=120)
    assert tf_first.returncode == 1, f"exit {tf_first.returncode}: {err[-2000:]}"
    assert "MXNetImportOrderError" in err and "before tensorflow" in err
    assert "separate processes" in err
    assert mx_first.returncode == 0, mx_first.stderr[-2000:]
    assert mx_first.stdout.split() == ["3.0", "3.0"]


def test_numpy_too_new_is_a_clear_import_error():
    """MXNet 1.9.1 reads numpy.bool (removed in numpy 1.24) at import; d2lport says so
    before MXNet gets there.  Simulated by reporting a newer version."""
    proc = _python("import sys, numpy\nnumpy.__version__ = '1.26.4'\n"
                   "try:\n    import d2lport.mxnet\n"
                   "except ImportError as err:\n    print('mxnet' in sys.modules, err)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("False ")                 # stopped before MXNet's import
    assert "numpy < 1.24" in proc.stdout and "1.26.4" in proc.stdout


def test_try_gpu_falls_back_to_cpu():
    expected = mx.gpu(0) if mx.context.num_gpus() else mx.cpu()
    assert d2p.try_gpu() == expected


def test_device_strings_like_the_other_backends():
    """train/evaluate take "cpu" / "gpu:N" as torch and TensorFlow do (the CLI passes them)."""
    from d2lport.mxnet.train import context
    assert context("cpu") == mx.cpu() and context("cuda:1") == mx.gpu(1)
    assert context(mx.cpu()) == mx.cpu() and context(None) is None
    with pytest.raises(ValueError, match="device 'tpu': use 'cpu' or 'gpu:N'"):
        context("tpu")
    train_iter, test_iter = d2p.load_data_fashion_mnist(32, limit=64, seed=0)
    history = d2p.train(d2p.create_model("residual_net", seed=0), train_iter, test_iter,
                        num_epochs=1, lr=0.05, device="cpu", progress=False)
    assert history.device == str(mx.cpu())


@pytest.mark.mxnet
def test_set_weights_after_a_forward_pass_writes_onednn_laid_out_weights():
    """oneDNN keeps a weight in its own layout once the net has run; loading canonical
    weights then must still work (it failed with "can't generate TBlob for MKLDNN data")."""
    import numpy as onp
    from d2lport import mxnet as d2p
    from d2lport.results.init import initial_weights
    net = d2p.create_model("residual_net", seed=0)
    x = onp.random.default_rng(0).random((2, 1, 28, 28), dtype=onp.float32)
    d2p.logits(net, x)
    w = initial_weights(net.spec, 0)
    d2p.set_weights(net, w)
    got = d2p.get_weights(net)
    assert all(onp.array_equal(got[k], w[k]) for k in w)
    fresh = d2p.set_weights(d2p.create_model("residual_net", seed=1), w)
    onp.testing.assert_allclose(d2p.to_numpy(d2p.logits(net, x)) if hasattr(d2p, "to_numpy")
                                else onp.asarray(d2p.logits(net, x)),
                                onp.asarray(d2p.logits(fresh, x)), rtol=1e-5, atol=1e-6)
