"""One conformance suite for every backend (the contract of ``d2lport/backend.py``).

Each test runs once per framework, marked with that framework, so ``make test-torch`` /
``test-tf`` / ``test-mxnet`` each run it in their own process for their own backend and no
process imports two frameworks.  A new backend passes this file and is done.

The spec is the oracle: for every registered model and every framework, the hand-written
network has the spec's canonical weight keys with the spec's shapes, the spec's per-block
output shapes and parameter counts, and its own forward computes its last block's output.
"""
import ast
from pathlib import Path

import numpy as np
import pytest

from d2lport import backend, registry, specs, weights
from d2lport.notebook import to_numpy
from d2lport.registry import UnknownModelError

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = registry.FRAMEWORKS


def _per_framework():
    """One parameter per framework, carrying that framework's marker."""
    return pytest.mark.parametrize(
        "fw", [pytest.param(fw, marks=getattr(pytest.mark, fw), id=fw) for fw in FRAMEWORKS])


_BACKENDS = {}


def load(fw):
    if fw not in _BACKENDS:
        _BACKENDS[fw] = pytest.importorskip(f"d2lport.{fw}")
    return _BACKENDS[fw]


def network(d2p, net):
    """The hand-written network of a net: ``d2p.network(net)`` where the backend has it
    (JAX: the linen module of the (module, variables) pair), else the net itself."""
    return d2p.network(net) if hasattr(d2p, "network") else net


# Every registered model, VGG at 32 px to stay cheap (the FC layers keep 4096 units), plus
# the variants whose structure differs: BatchNorm, no aux heads/LRN, D2L's narrow VGG at 224.
SMALL_VGG = dict(image_size=32)
MODEL_CASES = ([(n, dict(SMALL_VGG) if n.startswith("vgg") else {})
                for n in registry.list_models()]
               + [("googlenet_v1", dict(batch_norm=True)),
                  ("googlenet_v1", dict(aux_logits=False, lrn=False, num_classes=10,
                                        in_channels=1, image_size=96)),
                  ("vgg11_bn", dict(SMALL_VGG)),
                  ("vgg11_lrn", dict(SMALL_VGG, batch_norm=True)),
                  ("vgg_d2l", {}),
                  ("googlenet", dict(num_classes=7, in_channels=3, image_size=64))])


def _case_id(case):
    name, kw = case
    return name + "".join(f"-{k}={v}" for k, v in kw.items())


def _params(cases):
    return [pytest.param(fw, name, kw, marks=getattr(pytest.mark, fw),
                         id=f"{fw}-{_case_id((name, kw))}")
            for fw in FRAMEWORKS for name, kw in cases]


# --------------------------------------------------------------------------- the contract
@_per_framework()
def test_backend_provides_the_contract(fw):
    d2p = load(fw)
    assert backend.missing(d2p) == []
    assert d2p.FRAMEWORK == fw
    assert set(d2p.MODELS) == set(registry.list_models())
    assert d2p.list_models() == registry.list_models()


@_per_framework()
def test_networks_are_hand_written_in_their_family_modules(fw):
    d2p = load(fw)
    homes = {"Inception": "googlenet", "GoogLeNet": "googlenet", "GoogLeNetV1": "googlenet",
             "vgg_block": "vgg", "VGG": "vgg", "InceptionA": "lecture",
             "ResidualBlock": "lecture", "InceptionANet": "lecture", "ResidualNet": "lecture"}
    for name, module in homes.items():
        assert getattr(d2p, name).__module__ == f"d2lport.{fw}.{module}", name
    # No interpreter of the spec tree: the networks never read a spec's layer objects.
    for path in sorted((ROOT / "d2lport" / fw).glob("*.py")):
        source = path.read_text()
        assert "build_layer" not in source, path
        for kind in ("Conv", "Pool", "LRN", "Dense", "Concat", "Residual", "Sequential",
                     "GlobalAvgPool", "Dropout"):
            assert f"specs.{kind}" not in source, f"{path.name} reads specs.{kind}"


# Libraries that belong to a framework (a backend may import its own).
_OWN = {"tensorflow": {"keras"}, "jax": {"flax", "optax"}}


@_per_framework()
def test_backend_imports_no_other_framework(fw):
    others = {f for f in ("torch", "tensorflow", "keras", "mxnet", "jax", "flax", "optax")
              if f != fw and f not in _OWN.get(fw, ())}
    for path in sorted((ROOT / "d2lport" / fw).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in others, f"{path.name} imports {name}"


# --------------------------------------------------------------------------- spec as oracle
@pytest.mark.parametrize("fw,name,kw", _params(MODEL_CASES))
def test_model_equals_the_spec(fw, name, kw):
    d2p = load(fw)
    spec = registry.get_spec(name, **kw)
    net = d2p.create_model(name, seed=0, **kw)
    assert type(net).__module__.startswith(f"d2lport.{fw}.")
    assert type(network(d2p, net)).__module__.startswith(f"d2lport.{fw}.")
    # same canonical weight keys with the same (torch-layout) shapes
    got = {k: tuple(v.shape) for k, v in d2p.get_weights(net).items()}
    assert got == specs.canonical_shapes(spec)
    # same per-block output shapes and parameter counts (aux heads included)
    rows = [(r.name, tuple(r.shape), r.params) for r in d2p.layer_shapes(net)]
    assert rows == [(r.name, r.out_shape, r.params) for r in specs.infer(spec)]
    assert d2p.count_params(net) == specs.count_params(spec)


FORWARD_CASES = [(n, dict(SMALL_VGG, width_ratio=8) if n.startswith("vgg") else {})
                 for n in registry.list_models() if n not in ("vgg13", "vgg16", "vgg16_conv1",
                                                               "vgg19")]


@pytest.mark.parametrize("fw,name,kw", _params(FORWARD_CASES))
def test_forward_computes_the_last_block_output(fw, name, kw):
    """The hand-written forward and the block walk compute the same function."""
    d2p = load(fw)
    spec = registry.get_spec(name, **kw)
    net = d2p.set_weights(d2p.create_model(name, **kw), weights.random_weights(spec, seed=3))
    x = np.random.default_rng(4).standard_normal((2,) + spec.input_shape).astype(np.float32)
    blocks = d2p.block_outputs(net, x, include_aux=True)
    heads = [head.name for _, head in spec.taps]
    assert list(blocks) == [r.name for r in specs.infer(spec)]
    for r in specs.infer(spec):
        assert blocks[r.name].shape == (2,) + r.out_shape, r.name
    last = blocks[[n for n in blocks if n not in heads][-1]]
    out = np.asarray(d2p.logits(net, x))
    scale = max(1.0, float(np.abs(last).max()))
    np.testing.assert_allclose(out, last, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("fw,name,kw", _params([("residual_net", {}), ("googlenet_v1",
                                                 dict(batch_norm=True, image_size=224))]))
def test_weights_round_trip(fw, name, kw, tmp_path):
    d2p = load(fw)
    spec = registry.get_spec(name, **kw)
    w = weights.random_weights(spec, seed=5)
    net = d2p.set_weights(d2p.create_model(name, **kw), w)
    back = d2p.get_weights(net)
    assert set(back) == set(w)
    for key in w:
        np.testing.assert_array_equal(back[key], w[key], err_msg=key)
    path = d2p.save_weights(net, tmp_path / "w.npz")
    other = d2p.set_weights(d2p.create_model(name, **kw), path or tmp_path / "w.npz")
    for key, value in d2p.get_weights(other).items():
        np.testing.assert_array_equal(value, w[key], err_msg=key)
    w.pop(next(iter(w)))
    with pytest.raises(weights.WeightsError, match="missing"):
        d2p.set_weights(net, w)


@_per_framework()
def test_standalone_blocks_match_the_spec(fw):
    d2p = load(fw)
    cases = [(d2p.Inception(192, 64, (96, 128), (16, 32), 32), specs.inception_block()),
             (d2p.Inception(480, 192, (96, 208), (16, 48), 64),
              specs.inception_block(480, 192, (96, 208), (16, 48), 64, image_size=14)),
             (d2p.InceptionA(10), specs.inception_a_block(10)),
             (d2p.ResidualBlock(16), specs.residual_block_spec(16))]
    for block, spec in cases:
        assert d2p.count_params(block) == specs.count_params(spec), spec.name
    assert d2p.count_params(d2p.vgg_block(2, 3, 64)) == 3 * 64 * 9 + 64 + 64 * 64 * 9 + 64
    assert (d2p.count_params(d2p.vgg_block(1, 3, 8, batch_norm=True))
            == 3 * 8 * 9 + 8 + 2 * 8)


@_per_framework()
def test_create_model_names_and_errors(fw):
    d2p = load(fw)
    with pytest.raises(UnknownModelError, match="Did you mean 'googlenet'"):
        d2p.create_model("googlenett")
    with pytest.raises(TypeError, match="googlenet"):
        d2p.create_model("googlenet", no_such_option=1)
    # aliases carry their fixed keywords (torchvision's vgg16_bn, D2L's narrow VGG)
    net = d2p.create_model("vgg_d2l")
    assert net.spec == registry.get_spec("vgg_d2l")
    assert isinstance(network(d2p, net), d2p.VGG)
    assert isinstance(network(d2p, d2p.create_model("googlenet")), d2p.GoogLeNet)
    assert isinstance(network(d2p, d2p.create_model("residual_net")), d2p.ResidualNet)


@_per_framework()
def test_wrong_input_size_is_named(fw):
    d2p = load(fw)
    net = d2p.create_model("googlenet")
    with pytest.raises(specs.InputShapeError, match="1-channel input.*in_channels=3"):
        d2p.block_outputs(net, np.zeros((1, 3, 96, 96), np.float32))
    net = d2p.create_model("residual_net")
    with pytest.raises(specs.InputShapeError, match="built for 28x28.*image_size=32"):
        d2p.block_outputs(net, np.zeros((1, 1, 32, 32), np.float32))


# --------------------------------------------------------------------------- data and training
@_per_framework()
def test_trains_on_real_fashion_mnist(fw):
    """A few hundred real examples: loss finite and falling, predictions are class indices."""
    d2p = load(fw)
    train_iter, test_iter = d2p.load_data_fashion_mnist(32, limit=512, seed=0)
    net = d2p.create_model("residual_net", seed=0)
    history = d2p.train(net, train_iter, test_iter, num_epochs=2, lr=0.05, momentum=0.9,
                        seed=0)
    assert len(history.epochs) == 2
    assert np.isfinite(history.loss).all() and history.loss[1] < history.loss[0]
    assert 0.0 <= history.test_acc[-1] <= 1.0 and history.train_acc[1] > 0.3
    assert d2p.evaluate(net, test_iter) == pytest.approx(history.test_acc[-1], abs=1e-6)
    X, y = next(iter(test_iter))
    pred = to_numpy(d2p.predict(net, X))
    assert pred.shape == (32,) and set(pred.tolist()) <= set(range(10))
    assert d2p.get_fashion_mnist_labels([0, 9]) == [d2p.LABELS[0], d2p.LABELS[9]]
