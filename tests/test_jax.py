"""JAX/Flax backend: every network computes what the PyTorch one computes, and the places
where Flax's defaults differ from PyTorch's are fixed.

PyTorch runs only in a child process (one for all reference outputs, plus the workers for
the weight round trip and the SGD steps); this process imports JAX and never torch,
TensorFlow or MXNet.
"""
import ast
import subprocess
import sys

import numpy as np
import pytest

from d2lport import checkpoint, specs, worker
from d2lport.specs import InputShapeError
from torch_reference import CASE_IDS, CASES, ROOT, assert_close, inputs, torch_reference

pytestmark = pytest.mark.jax

d2p = pytest.importorskip("d2lport.jax")
jax = pytest.importorskip("jax")
jnp = jax.numpy
nn = pytest.importorskip("flax.linen")
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


def _apply(module, x, training=False, **kwargs):
    """Initialise an unbound module on ``x`` and run it (BatchNorm statistics updated in
    training): (output, variables before, variables after)."""
    variables = module.init(jax.random.PRNGKey(0), x)
    if not training:
        return module.apply(variables, x), variables, variables
    out, stats = module.apply(variables, x, training=True, mutable=["batch_stats"], **kwargs)
    return out, variables, {**variables, **stats}


# --------------------------------------------------------------------------- parity
@pytest.mark.parity
@pytest.mark.parametrize("case,model,kwargs", CASES, ids=CASE_IDS)
def test_block_outputs_match_torch(torch_ref, nets, case, model, kwargs):
    w, x = inputs(model, kwargs)
    net = nets(case, model, kwargs)
    out = d2p.block_outputs(net, x, include_aux=True)
    assert list(out) == [r.name for r in specs.infer(net.spec)]   # aux heads after their taps
    assert_close(case, out, torch_ref)
    # the network's own __call__ computes its last block's output
    last = [k for k in out if not k.startswith("aux")][-1]
    scale = max(1.0, float(np.abs(out[last]).max()))
    np.testing.assert_allclose(d2p.logits(net, x), out[last], rtol=1e-5, atol=1e-5 * scale)


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


def test_weight_round_trip_torch_jax_torch():
    """Weights exported by torch load into Flax and come back bit for bit (BatchNorm
    statistics into ``batch_stats``, auxiliary heads and their 4x4 flatten included), and
    torch takes them."""
    kwargs = dict(batch_norm=True, num_classes=10)
    from_torch, _ = worker.run("torch", "weights", model="googlenet_v1", kwargs=kwargs, seed=3)
    net = d2p.set_weights(d2p.create_model("googlenet_v1", **kwargs), dict(from_torch))
    stats = net.variables["batch_stats"]["b1"]["conv"]["bn"]
    np.testing.assert_array_equal(stats["var"], from_torch["b1.conv.bn.running_var"])
    from_jax = d2p.get_weights(net)
    assert sorted(from_jax) == sorted(from_torch)        # torch lists the heads last
    assert all(np.array_equal(from_jax[k], from_torch[k]) for k in from_torch)
    back, _ = worker.run("torch", "weights", {f"w:{k}": v for k, v in from_jax.items()},
                         model="googlenet_v1", kwargs=kwargs, seed=4)
    assert all(np.array_equal(back[k], from_torch[k]) for k in from_torch)


def test_flatten_permutation_and_file_round_trip(tmp_path):
    """The first dense layer after a flatten sees H, W, C order in Flax: a canonical
    weight that reads one (c, h, w) cell gives that cell's value."""
    net = d2p.create_model("residual_net", seed=0)     # fc: 32 x 4 x 4 -> 10
    w = d2p.get_weights(net)
    w["fc.weight"] = np.zeros_like(w["fc.weight"])
    w["fc.bias"] = np.zeros_like(w["fc.bias"])
    w["fc.weight"][3, np.ravel_multi_index((5, 2, 1), (32, 4, 4))] = 1.0
    assert d2p.set_weights(net, w) is net                # in place, the same pair back
    x = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    out = d2p.block_outputs(net, x)
    assert out["fc"][0, 3] == out["residual2"][0, 5, 2, 1]
    path = d2p.save_weights(net, tmp_path / "w.npz")
    other = d2p.set_weights(d2p.create_model("residual_net", seed=1), path)
    assert all(np.array_equal(v, w[k]) for k, v in d2p.get_weights(other).items())


def test_sgd_steps_match_torch():
    """Plain SGD from the same weights on the same batches: the losses of torch's steps
    (a worker process) and of the compiled JAX step (StepKit, what train() runs) agree."""
    spec = specs.residual_net()
    rng = np.random.default_rng(0)
    w = {k: v.astype(np.float32) for k, v in d2p.get_weights(
        d2p.create_model("residual_net", seed=2)).items()}
    xs = rng.random((3, 8) + spec.input_shape, np.float32)
    ys = rng.integers(0, 10, (3, 8))
    ref, _ = worker.run("torch", "sgd_train", {"train_x": xs, "train_y": ys,
                                               **{f"w:{k}": v for k, v in w.items()}},
                        model="residual_net", lr=0.1)
    net = d2p.set_weights(d2p.create_model("residual_net"), w)
    kit = d2p.StepKit(net, 0.1)
    losses = [kit.train_step(*kit.inputs(x, y)) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(losses, ref["loss"], rtol=1e-4)
    assert isinstance(kit.infer(kit.inputs(xs[0], ys[0])[0]), float)
    assert kit.describe().startswith("cpu:0")


# --------------------------------------------------------------------------- Flax's defaults
def test_conv_padding_is_pytorch_symmetric_not_flax_same():
    """A 7x7/2 conv on 96 px: Flax's 'SAME' pads (2, 3), PyTorch (3, 3); the Conv here
    computes PyTorch's numbers (the same 48 x 48 shape either way)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 96, 96, 1))
    conv = d2p.layers.Conv(4, (7, 7), strides=2, padding=3, relu=False)
    out, variables, _ = _apply(conv, x)
    kernel = variables["params"]["kernel"]
    dn = ("NHWC", "HWIO", "NHWC")
    torch_like = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((3, 3), (3, 3)),
                                              dimension_numbers=dn)
    same = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=dn)
    assert out.shape == same.shape == (1, 48, 48, 4)
    np.testing.assert_allclose(out, torch_like, atol=1e-6)
    assert not np.allclose(out, same, atol=1e-3)
    assert nn.Conv(4, (3, 3)).padding == "SAME" and d2p.layers.Conv(4, (3, 3)).padding == 0


def test_pool_padding_like_pytorch():
    """Max-pool padding never wins (all-negative input); average-pool padding counts as
    zeros in the mean (count_include_pad)."""
    x = -1.0 - jax.random.uniform(jax.random.PRNGKey(1), (1, 6, 6, 2))
    out = d2p.layers.MaxPool(3, 2, padding=1).apply({}, x)
    np.testing.assert_array_equal(out[0, 0, 0], jnp.max(x[0, :2, :2], axis=(0, 1)))
    assert float(out.max()) < -1.0
    ones = jnp.ones((1, 4, 4, 1))
    avg = d2p.layers.AvgPool(3, 1, padding=1).apply({}, ones)
    assert float(avg[0, 0, 0, 0]) == pytest.approx(4 / 9)     # 4 real cells of 9
    assert float(avg[0, 1, 1, 0]) == pytest.approx(1.0)


def test_lrn_is_pytorchs_formula():
    """b_c = a_c / (k + alpha / n * sum of a^2 over channels c - n//2 .. c + (n-1)//2)^beta."""
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 7)).astype(np.float32)
    for size in (5, 4):
        lrn = d2p.layers.LRN(size=size, alpha=1e-2, beta=0.75, k=2.0)
        got = np.asarray(lrn.apply({}, jnp.asarray(x)))
        sq = np.pad(x ** 2, ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
        window = np.stack([sq[..., c:c + size].sum(-1) for c in range(7)], axis=-1)
        np.testing.assert_allclose(got, x / (2.0 + 1e-2 / size * window) ** 0.75, rtol=1e-5)


def test_batchnorm_constants_like_torch():
    """Training-mode BatchNorm: eps 1e-5 on the batch statistics, running mean updated
    with PyTorch's momentum 0.1; inference uses the running statistics."""
    block = d2p.vgg_block(1, 2, 3, batch_norm=True)
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 6, 6, 2)) + 2.0
    out, before, after = _apply(block, x, training=True)
    params = before["params"]["conv1"]
    y = jax.lax.conv_general_dilated(x, params["kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y + params["bias"]
    mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    expected = nn.max_pool(nn.relu((y - mean) / jnp.sqrt(var + specs.BN_EPS)), (2, 2), (2, 2))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    stats = after["batch_stats"]["conv1"]["bn"]
    np.testing.assert_allclose(stats["mean"], specs.BN_MOMENTUM * mean, rtol=1e-5)
    # Flax, like Keras, moves the running variance toward the biased batch variance
    np.testing.assert_allclose(stats["var"], 0.9 + specs.BN_MOMENTUM * var, rtol=1e-5)
    assert block.apply(after, x).shape == (4, 3, 3, 3)


def test_init_is_xavier_uniform_with_zero_biases():
    net = d2p.create_model("googlenet", seed=0)
    w = d2p.get_weights(net)
    kernel = w["b2.conv2.weight"]                                 # 192 x 64 x 3 x 3
    bound = np.sqrt(6 / (64 * 9 + 192 * 9))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert not np.any(w["b2.conv2.bias"]) and not np.any(w["fc.bias"])
    seeded = [d2p.get_weights(d2p.create_model("residual_net", seed=s))["fc.weight"]
              for s in (0, 0, 1)]
    assert np.array_equal(seeded[0], seeded[1]) and not np.array_equal(seeded[0], seeded[2])
    bn = d2p.get_weights(d2p.create_model("vgg11", image_size=32, width_ratio=8,
                                          batch_norm=True))
    assert np.all(bn["block1.conv1.bn.weight"] == 1)
    assert np.all(bn["block1.conv1.bn.running_var"] == 1)


# --------------------------------------------------------------------------- behaviour
def test_the_pair():
    """A JAX net is (module, variables): the module is the hand-written linen network,
    bound to the variables it gives the blocks with their own variables."""
    net = d2p.create_model("googlenet_v1", batch_norm=True, num_classes=10)
    assert isinstance(d2p.network(net), d2p.GoogLeNetV1) and d2p.network(net) is net.module
    assert set(net.variables) == {"params", "batch_stats"}
    assert net.block_names == net.spec.block_names and net.spec.name == "googlenet_v1"
    block = net.block("inception4a")
    assert isinstance(block, d2p.Inception) and block.variables.keys() == net.variables.keys()
    rows = {r.name: r.params for r in specs.infer(net.spec)}
    for name in ("inception4a", "aux1", "pool3"):
        assert d2p.count_params(net.block(name)) == rows[name], name
    with pytest.raises(KeyError, match="no block 'b3'"):
        net.block("b3")
    assert "GoogLeNetV1" in repr(net)


def test_input_shape_errors():
    with pytest.raises(InputShapeError, match="32x32"):
        d2p.create_model("vgg11", width_ratio=8, image_size=16)
    net = d2p.create_model("residual_net")
    with pytest.raises(InputShapeError, match="28x28"):
        net(jnp.zeros((2, 20, 20, 1)))
    with pytest.raises(InputShapeError, match="NHWC"):
        net(jnp.zeros((2, 1, 28, 28)))                  # NCHW by mistake
    with pytest.raises(InputShapeError, match="28x28"):
        d2p.block_outputs(net, np.zeros((2, 1, 20, 20), np.float32))
    with pytest.raises(InputShapeError, match="channel"):
        d2p.layer_shapes(net, (1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        d2p.logits(net, np.zeros((1, 28, 28), np.float32))
    with pytest.raises(TypeError, match="input channels are unknown"):
        d2p.count_params(d2p.layers.Conv(4, (3, 3)))


def test_training_errors_are_named():
    net = d2p.create_model("residual_net")
    X, y = jnp.zeros((2, 28, 28, 1)), jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        d2p.train(net, [(X, y)], [(X, y)], num_epochs=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown device 'tpu:0'"):
        d2p.train(net, [(X, y)], [(X, y)], num_epochs=1, device="tpu:0")
    with pytest.raises(ValueError, match="learning rate"):
        d2p.train(net, [(X, y)], [(X, y)], num_epochs=1, lr=-1)
    with pytest.raises(checkpoint.DivergenceError, match="diverged"):
        d2p.train(net, [(X + 1e3, y)] * 4, [(X, y)], num_epochs=1, lr=1e12)


def test_aux_heads_and_dropout_only_in_training():
    net = d2p.create_model("googlenet_v1", num_classes=10, seed=0)
    x = jax.random.uniform(jax.random.PRNGKey(2), (2, 224, 224, 3))
    train_out = net(x, training=True)
    assert isinstance(train_out, d2p.AuxOutputs)
    assert [tuple(a.shape) for a in (train_out.logits,) + train_out.aux] == [(2, 10)] * 3
    first, second = net(x), net(x, training=False)       # inference: logits only, no dropout
    assert not isinstance(first, tuple) and first.shape == (2, 10)
    np.testing.assert_array_equal(first, second)
    again = net(x, training=True)                         # dropout 0.4/0.7 draws anew
    assert not np.array_equal(train_out.logits, again.logits)
    fixed = [net(x, training=True, rng=jax.random.PRNGKey(7)).logits for _ in range(2)]
    np.testing.assert_array_equal(*fixed)                 # ... unless given the same key


def test_summary_and_public_names():
    net = d2p.create_model("googlenet")
    lines = []
    rows = d2p.summary(net, (1, 1, 96, 96), print_fn=lines.append)
    assert [(r.name, r.shape) for r in rows] == [
        ("b1", (64, 24, 24)), ("b2", (192, 12, 12)), ("b3", (480, 6, 6)),
        ("b4", (832, 3, 3)), ("b5", (1024,)), ("fc", (10,))]   # DESIGN.md, D2L 8.4
    assert "b4     832 x 3 x 3" in lines[0] and "(jax)" in lines[0]
    # Every public name of the PyTorch backend exists here (read from its source: no torch).
    tree = ast.parse((ROOT / "d2lport" / "torch" / "__init__.py").read_text())
    names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             for a in n.names}
    names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    missing = sorted(n for n in names if not n.startswith("_") and not hasattr(d2p, n))
    assert not missing
    assert d2p.FRAMEWORK == "jax" and "googlenet" in d2p.list_models()
    assert d2p.try_gpu().platform in ("cpu", "gpu")


def test_import_isolation():
    code = ("import d2lport.jax, sys; "
            "assert not {'torch', 'tensorflow', 'keras', 'mxnet'} & set(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_worker_runs_the_jax_backend():
    """The side-by-side comparison's worker task, for JAX, in its own process."""
    spec = specs.residual_block_spec()
    x = np.random.default_rng(0).standard_normal((1,) + spec.input_shape).astype(np.float32)
    w, _ = worker.run("jax", "weights", model="residual_block", seed=1)
    arrays = {"x": x, **{f"w:{k}": v for k, v in w.items()}}
    outs, meta = worker.run("jax", "compare_blocks", arrays, model="residual_block")
    net = d2p.set_weights(d2p.create_model("residual_block"), dict(w))
    np.testing.assert_allclose(outs["residual"], d2p.block_outputs(net, x)["residual"],
                               rtol=1e-6, atol=1e-6)
    assert meta["params"] == specs.count_params(spec)


# --------------------------------------------------------------------------- data, training
@pytest.fixture(scope="module")
def fashion():
    try:
        return d2p.load_data_fashion_mnist(batch_size=64, limit=2048, seed=0)
    except Exception as err:  # DataError: the files are not installed here
        pytest.skip(f"Fashion-MNIST not available: {err}")


def test_data_pipeline(fashion, torch_ref):
    train_iter, test_iter = fashion
    X, y = next(iter(test_iter))
    assert X.shape == (64, 28, 28, 1) and X.dtype == jnp.float32 and y.dtype == jnp.int32
    assert 0.0 <= float(X.min()) and float(X.max()) <= 1.0
    # The same per-epoch sample order as every other backend (ArrayBatches.order).
    epoch = train_iter.batches.epoch
    labels = np.concatenate([np.asarray(b[1]) for b in train_iter])
    order = train_iter.batches.order(epoch)
    np.testing.assert_array_equal(labels, train_iter.batches.labels[order])
    assert not np.array_equal(order, train_iter.batches.order(epoch + 1))
    # Batch resize: the numbers PyTorch's bilinear interpolate gives (antialias off).
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for size in RESIZES:
        got = np.asarray(d2p.to_tensor(images, size)).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, torch_ref[f"resize/{size}"], atol=1e-6)


def test_fashion_mnist_training_is_learning_and_repeatable(fashion):
    """The lecture's residual net, 2 epochs of 2048 real images: accuracy rises well above
    chance, and a second run from the same seeds gives the very same numbers."""
    train_iter, test_iter = fashion

    def run():
        net = d2p.create_model("residual_net", seed=0)
        train_iter.batches.epoch = 0                       # the same sample order
        return net, d2p.train(net, train_iter, test_iter, num_epochs=2, lr=0.05,
                              momentum=0.9, seed=0, progress=False)

    (net, first), (_, second) = run(), run()
    assert first.test_acc[-1] > 0.6, str(first)            # chance is 0.1
    assert first.train_acc[1] > first.train_acc[0] and first.loss[1] < first.loss[0]
    assert set(first.epochs[0]) == {"epoch", "loss", "train_acc", "test_acc",
                                     "examples_per_sec", "seconds"}
    assert first.framework == "jax" and first.device == "cpu:0"
    assert first.loss == second.loss and first.test_acc == second.test_acc
    assert d2p.evaluate(net, test_iter) == pytest.approx(first.test_acc[-1], abs=1e-9)
    X, _ = next(iter(test_iter))
    pred = np.asarray(d2p.predict(net, X))
    assert pred.shape == (64,) and set(pred.tolist()) <= set(range(10))


def test_checkpoint_resume_continues_the_same_run(fashion, tmp_path):
    """One epoch with checkpoints, then a second train(..., resume=True) call: the very
    weights and history of one uninterrupted two-epoch run (XLA on the CPU is
    deterministic); a checkpoint of another model is refused."""
    train_iter, test_iter = fashion
    kw = dict(lr=0.05, momentum=0.9, seed=0, progress=False, max_steps=6)

    def fresh():
        train_iter.batches.epoch = 0
        return d2p.create_model("residual_net", seed=0)

    whole = fresh()
    ref = d2p.train(whole, train_iter, test_iter, num_epochs=2, **kw)
    net = fresh()
    d2p.train(net, train_iter, test_iter, num_epochs=1, checkpoint_dir=tmp_path / "ck",
              checkpoint_every=4, **kw)
    later = fresh()                                        # a new process would start so
    resumed = d2p.train(later, train_iter, test_iter, num_epochs=2, resume=True,
                        checkpoint_dir=tmp_path / "ck", **kw)
    assert [e["loss"] for e in resumed.epochs] == [e["loss"] for e in ref.epochs]
    assert resumed.test_acc == ref.test_acc
    for key, value in d2p.get_weights(whole).items():
        np.testing.assert_array_equal(d2p.get_weights(later)[key], value, err_msg=key)
    other = d2p.create_model("inception_a_net")
    with pytest.raises(checkpoint.CheckpointError, match="model='residual_net'"):
        d2p.train(other, train_iter, test_iter, num_epochs=3, resume=True,
                  checkpoint_dir=tmp_path / "ck", **kw)


def test_adam_weight_decay_and_mixed_precision_step():
    """Adam with L2 weight decay, and ``amp`` (default on GPU only) computing in bfloat16
    with float32 variables, forced here on the CPU as a smoke run of that path."""
    net = d2p.create_model("vgg11", batch_norm=True, width_ratio=8, image_size=32)
    X = jax.random.uniform(jax.random.PRNGKey(5), (2, 32, 32, 3))
    y = jnp.asarray([0, 1], jnp.int32)
    before = net.variables["batch_stats"]["block1"]["conv1"]["bn"]["mean"]
    history = d2p.train(net, [(X, y)] * 2, [(X, y)], num_epochs=1, lr=1e-3, optimizer="adam",
                        amp=True, weight_decay=1e-4, progress=False)
    assert np.isfinite(history.loss[0])
    leaves = jax.tree_util.tree_leaves(net.variables)
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype("float32")}
    assert not np.array_equal(net.variables["batch_stats"]["block1"]["conv1"]["bn"]["mean"],
                              before)
    assert net(X).dtype == jnp.float32


def test_plot_history():
    history = d2p.History(framework="jax", device="cpu:0", model="residual_net")
    history.append(epoch=1, loss=1.0, train_acc=0.5, test_acc=0.6, examples_per_sec=10.0,
                   seconds=1.0)
    assert d2p.plot_history(history) is not None
