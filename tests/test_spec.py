"""The framework-neutral spec and registry: shapes, parameter counts, errors."""
import importlib.util
import sys

import numpy as np
import pytest

from d2lport import registry, specs, weights

pytestmark = pytest.mark.core

# torchvision's published trainable parameter counts (224 px, 1000 classes), DESIGN.md.
TORCHVISION_VGG = {
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}


@pytest.mark.parametrize("name,count", sorted(TORCHVISION_VGG.items()))
def test_vgg_parameter_counts_match_torchvision(name, count):
    assert specs.count_params(registry.get_spec(name)) == count


def test_d2l_googlenet_block_shapes():
    rows = specs.infer(registry.get_spec("googlenet"), (1, 1, 96, 96))
    assert [(r.name, r.out_shape) for r in rows] == [
        ("b1", (64, 24, 24)), ("b2", (192, 12, 12)), ("b3", (480, 6, 6)),
        ("b4", (832, 3, 3)), ("b5", (1024,)), ("fc", (10,))]


@pytest.mark.parametrize("name", registry.list_models())
def test_every_model_infers_its_default_input(name):
    spec = registry.get_spec(name)
    rows = specs.infer(spec)
    assert rows and all(r.params >= 0 for r in rows)
    if registry.describe(name).kind == "network":
        assert rows[-1].out_shape == (getattr(spec.blocks[-1], "out_features", None),)
    # canonical keys cover exactly the trainable parameters (BN statistics aside)
    shapes = specs.canonical_shapes(spec)
    trainable = sum(int(np.prod(s)) for k, s in shapes.items() if "running_" not in k)
    assert trainable == specs.count_params(spec)


def test_block_channel_counts():
    assert specs.infer(registry.get_spec("inception"))[-1].out_shape == (256, 28, 28)
    assert specs.infer(registry.get_spec("inception_a"))[-1].out_shape == (88, 12, 12)
    net = specs.infer(registry.get_spec("inception_a_net"))
    assert [r.out_shape for r in net] == [(10, 12, 12), (88, 12, 12), (20, 4, 4), (88, 4, 4), (10,)]
    res = specs.infer(registry.get_spec("residual_net"))
    assert [r.out_shape for r in res] == [(16, 12, 12), (16, 12, 12), (32, 4, 4), (32, 4, 4), (10,)]


def test_googlenet_v1_follows_the_paper():
    spec = registry.get_spec("googlenet_v1")
    rows = {r.name: r for r in specs.infer(spec)}
    # Table 1 of Szegedy et al. 2014: output sizes per stage at 224 px.
    assert rows["b1"].out_shape == (64, 56, 56) and rows["b2"].out_shape == (192, 28, 28)
    assert rows["inception3b"].out_shape == (480, 28, 28)
    assert rows["inception4e"].out_shape == (832, 14, 14)
    assert rows["inception5b"].out_shape == (1024, 7, 7)
    # aux heads: 5x5/3 avg pool -> 4x4, 128 1x1 filters, FC 1024, FC classes
    assert rows["aux1"].params == (512 * 128 + 128) + (2048 * 1024 + 1024) + (1024 * 1000 + 1000)
    assert rows["aux2"].params == (528 * 128 + 128) + (2048 * 1024 + 1024) + (1024 * 1000 + 1000)
    # the real 5x5 branch (torchvision uses 3x3 there)
    branch3 = spec.blocks[2].branches[2].layers[1]
    assert branch3.kernel == 5
    no_aux = registry.get_spec("googlenet_v1", aux_logits=False)
    assert specs.count_params(spec) - specs.count_params(no_aux) == rows["aux1"].params + rows["aux2"].params
    lrns = [l for l in specs.iter_leaves(spec) if isinstance(l.layer, specs.LRN)]
    assert len(lrns) == 2
    assert not [l for l in specs.iter_leaves(registry.get_spec("googlenet_v1", lrn=False))
                if isinstance(l.layer, specs.LRN)]


def test_vgg_width_ratio_and_configuration_c():
    narrow = specs.infer(registry.get_spec("vgg_d2l"), (1, 1, 224, 224))
    assert [r.out_shape for r in narrow][:5] == [(16, 112, 112), (32, 56, 56), (64, 28, 28),
                                                  (128, 14, 14), (128, 7, 7)]
    assert narrow[5].out_shape == (4096,) and narrow[-1].out_shape == (10,)
    c = registry.get_spec("vgg16_conv1")
    kernels = [l.layer.kernel for l in specs.iter_leaves(c) if isinstance(l.layer, specs.Conv)]
    assert kernels.count(1) == 3 and kernels.count(3) == 10   # 16 weight layers with the FCs


def test_unknown_model_suggests_the_closest():
    with pytest.raises(registry.UnknownModelError, match="Did you mean 'googlenet'"):
        registry.get_spec("googlenett")
    with pytest.raises(registry.UnknownModelError, match="d2lport models"):
        registry.create_model("resnet50")


def test_unknown_keyword_names_the_model():
    with pytest.raises(TypeError, match="googlenet"):
        registry.get_spec("googlenet", widht_ratio=2)


def test_create_model_is_the_backends_own(monkeypatch):
    calls = []

    class Backend:
        @staticmethod
        def create_model(name, **kwargs):
            calls.append((name, kwargs))
            return "net"
    monkeypatch.setattr(registry, "backend", lambda framework: Backend)
    assert registry.create_model("vgg_d2l", "mxnet", seed=3, image_size=32) == "net"
    assert calls == [("vgg_d2l", {"seed": 3, "image_size": 32})]


def test_model_kwargs_are_fitted_to_an_input_and_to_fashion_mnist():
    # channels always; the size only where the classifier depends on it; given keywords win
    assert registry.fit_kwargs("googlenet", (2, 3, 64, 64)) == {"in_channels": 3}
    assert registry.fit_kwargs("vgg11", (1, 1, 64, 64), width_ratio=8) == {
        "width_ratio": 8, "in_channels": 1, "image_size": 64}
    assert registry.fit_kwargs("vgg11", (1, 1, 64, 64), in_channels=3)["in_channels"] == 3
    assert registry.fit_kwargs("vgg11", None, width_ratio=8) == {"width_ratio": 8}
    with pytest.raises(specs.InputShapeError, match=r"\(N, C, H, W\)"):
        registry.fit_kwargs("vgg11", (1, 64, 64))
    # training data: one channel, ten classes, the model's own size unless resized
    assert registry.kwargs_for_data("vgg_d2l") == (
        {"num_classes": 10, "in_channels": 1, "image_size": 224}, 224)
    assert registry.kwargs_for_data("googlenet", 64) == ({"num_classes": 10, "in_channels": 1}, 64)
    assert registry.kwargs_for_data("residual_net")[1] == 28
    assert registry.expand("vgg_d2l", {"image_size": 32}) == ("vgg11", {
        "width_ratio": 4, "in_channels": 1, "num_classes": 10, "image_size": 32})
    # the narrow net is labelled as such (summaries, plots, diagrams), not as vgg11
    assert registry.get_spec("vgg_d2l").name == "vgg_d2l"


def test_uninstalled_framework_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mxnet" else real(name, *a))
    with pytest.raises(registry.FrameworkNotInstalledError, match=r"pip install 'd2lport\[mxnet\]'"):
        registry.create_model("googlenet", framework="mxnet")
    with pytest.raises(ValueError, match="choose one of"):
        registry.create_model("googlenet", framework="caffe")
    assert "mxnet" not in sys.modules or True  # the failed lookup imported nothing new


@pytest.mark.parametrize("name,shape,match", [
    ("vgg11", (1, 3, 96, 96), r"built for 224x224 .* pass image_size=96"),
    ("inception_a_net", (1, 1, 20, 20), r"built for 28x28"),
    ("googlenet", (1, 3, 96, 96), r"1-channel input, got 3 channels: pass in_channels=3"),
    ("googlenet", (1, 96, 96), r"\(N, C, H, W\)"),
])
def test_bad_input_shapes_are_explained(name, shape, match):
    with pytest.raises(specs.InputShapeError, match=match):
        specs.infer(registry.get_spec(name), shape if len(shape) != 3 else (1, 2))


def test_too_small_input_names_the_minimum():
    # conv 5x5 -> pool 2 -> conv 5x5 -> pool 2 needs 16 px: (16 - 4) // 2 - 4 = 2
    assert specs.min_input_size(registry.get_spec("inception_a_net")) == 16
    assert specs.min_input_size(registry.get_spec("vgg11")) == 32
    specs.infer(registry.get_spec("inception_a_net", image_size=16))
    with pytest.raises(specs.InputShapeError, match="at least 16x16 pixels, got 8x8"):
        specs.infer(registry.get_spec("inception_a_net", image_size=8))


def test_weight_files_round_trip_and_refuse_bad_input(tmp_path, monkeypatch):
    spec = registry.get_spec("residual_net")
    w = weights.random_weights(spec, seed=3)
    weights.check(spec, w)
    path = weights.save(tmp_path / "w.npz", w, {"model": "residual_net"})
    back, meta = weights.load(path)
    assert meta == {"model": "residual_net"}
    assert all(np.array_equal(back[k], w[k]) for k in w)
    with pytest.raises(weights.WeightsError, match="missing 1 keys"):
        weights.check(spec, {k: v for k, v in w.items() if k != "fc.bias"})
    bad = dict(w, **{"fc.weight": np.zeros((10, 3), np.float32)})
    with pytest.raises(weights.WeightsError, match="wrong shapes: fc.weight"):
        weights.check(spec, bad)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(weights.WeightsError, match="not a readable"):
        weights.load(tmp_path / "broken.npz")
    with pytest.raises(weights.WeightsError, match=".npz"):
        weights.save(tmp_path / "w.txt", w)
    # a failing save leaves the previous file intact
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError):
        weights.save(path, w)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.npz", "w.npz"]
    assert weights.load(path)[0].keys() == w.keys()


def test_flops_count_the_multiply_adds_of_convolutions_and_dense_layers():
    # GoogLeNet at 96 px: 0.552 GFLOP forward per example (issue 10's figure)
    assert specs.flops(registry.get_spec("googlenet")) == 552_132_608
    # one 3x3 conv 1 -> 16 on 224 px, then the head: every term written out
    spec = registry.get_spec("vgg_d2l")
    first = 2 * 1 * 9 * 16 * 224 * 224
    head = 2 * (128 * 7 * 7 * 4096 + 4096 * 4096 + 4096 * 10)
    assert specs.flops(spec) > first + head
    convs = sum(2 * leaf.in_shape[0] * 9 * leaf.out_shape[0] * leaf.out_shape[1] ** 2
                for leaf in specs.iter_leaves(spec) if isinstance(leaf.layer, specs.Conv))
    assert specs.flops(spec) == convs + head


def test_vgg_arch_is_the_books_conv_arch():
    assert specs.vgg_arch("A", 4) == ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))
    assert specs.vgg_arch("D") == ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
    with pytest.raises(ValueError, match="3x3-convolution configurations only"):
        specs.vgg_arch("C")
