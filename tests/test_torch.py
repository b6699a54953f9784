"""The PyTorch backend: every model, the shared interface, real training."""
import io
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

from d2lport import cli, registry, specs, weights
from d2lport import torch as d2p

pytestmark = pytest.mark.torch


def _net(name, **kw):
    if name.startswith("vgg"):          # the full-width VGGs are covered by the count test
        kw.setdefault("width_ratio", 8)
        kw.setdefault("image_size", 32)
    return d2p.create_model(name, seed=0, **kw)


@pytest.mark.parametrize("name", registry.list_models())
def test_every_model_matches_its_spec(name):
    net = _net(name)
    spec = net.spec
    x = torch.randn((2,) + spec.input_shape)
    net.eval()
    with torch.no_grad():
        out = net(x)
    expected = specs.infer(spec, x.shape, include_aux=False)
    assert tuple(out.shape) == (2,) + expected[-1].out_shape
    rows = d2p.layer_shapes(net, tuple(x.shape))
    assert [r.as_tuple() for r in rows] == [(r.name, r.out_shape, r.params)
                                            for r in specs.infer(spec, x.shape)]
    assert d2p.count_params(net) == specs.count_params(spec)
    assert set(d2p.get_weights(net)) == set(specs.canonical_shapes(spec))


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn"])
def test_full_vgg_parameter_counts_match_torchvision(name):
    from test_spec import TORCHVISION_VGG
    assert d2p.count_params(d2p.create_model(name)) == TORCHVISION_VGG[name]


def test_d2l_googlenet_summary_prints_the_book_table():
    buf = io.StringIO()
    rows = d2p.summary(d2p.create_model("googlenet"), (1, 1, 96, 96), print_fn=buf.write)
    assert [r.shape for r in rows] == [(64, 24, 24), (192, 12, 12), (480, 6, 6), (832, 3, 3),
                                       (1024,), (10,)]
    text = buf.getvalue()
    for line in ("64 x 24 x 24", "192 x 12 x 12", "480 x 6 x 6", "832 x 3 x 3", "1024", "5,977,530"):
        assert line in text


def test_googlenet_v1_aux_heads_only_in_training_and_combined_loss():
    net = d2p.create_model("googlenet_v1", seed=0, num_classes=5, image_size=224)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([0, 3])
    net.train()
    out = net(x)
    assert isinstance(out, d2p.AuxOutputs) and len(out.aux) == 2
    assert all(tuple(o.shape) == (2, 5) for o in (out.logits,) + out.aux)
    ce = torch.nn.functional.cross_entropy
    expected = ce(out.logits, y) + 0.3 * (ce(out.aux[0], y) + ce(out.aux[1], y))
    assert torch.allclose(d2p.loss_fn(out, y), expected)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert isinstance(a, torch.Tensor) and torch.equal(a, b)   # no dropout, no aux
    no_aux = d2p.create_model("googlenet_v1", aux_logits=False, num_classes=5).train()
    assert isinstance(no_aux(x[:1]), torch.Tensor)


def test_dropout_only_in_training():
    net = d2p.create_model("vgg11", width_ratio=16, image_size=32, num_classes=10, seed=1)
    x = torch.randn(4, 3, 32, 32)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_too_small_and_wrong_inputs_get_clear_errors():
    with pytest.raises(specs.InputShapeError, match="at least 16x16"):
        d2p.create_model("inception_a_net", image_size=10)
    net = d2p.create_model("vgg11", width_ratio=8)
    with pytest.raises(specs.InputShapeError, match="pass image_size=96"):
        net(torch.zeros(1, 3, 96, 96))
    with pytest.raises(specs.InputShapeError, match="in_channels=3"):
        d2p.create_model("googlenet")(torch.zeros(1, 3, 96, 96))


def test_named_building_blocks():
    x = torch.randn(2, 192, 28, 28)
    assert d2p.Inception(192, 64, (96, 128), (16, 32), 32)(x).shape == (2, 256, 28, 28)
    assert d2p.InceptionA(10)(torch.randn(2, 10, 12, 12)).shape == (2, 88, 12, 12)
    assert d2p.ResidualBlock(16)(torch.randn(2, 16, 12, 12)).shape == (2, 16, 12, 12)
    blk = d2p.vgg_block(2, 3, 64)
    assert blk(torch.randn(1, 3, 32, 32)).shape == (1, 64, 16, 16)
    assert sum(p.numel() for p in blk.parameters()) == 3 * 64 * 9 + 64 + 64 * 64 * 9 + 64
    assert d2p.GoogLeNet()(torch.zeros(1, 1, 96, 96)).shape == (1, 10)
    assert d2p.VGG("A", width_ratio=8, image_size=32, num_classes=7)(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_residual_block_computes_relu_x_plus_f_x():
    blk = d2p.ResidualBlock(4)
    x = torch.randn(1, 4, 6, 6)
    f = blk.conv2(torch.relu(blk.conv1(x)))
    assert torch.allclose(blk(x), torch.relu(x + f))


def test_hand_written_names_are_the_canonical_keys():
    net = d2p.GoogLeNetV1(batch_norm=True)
    keys = net.state_dict()
    for key in ("b1.conv.weight", "b1.conv.bn.running_var", "inception3a.branch2.conv2.weight",
                "aux1.conv.bn.weight", "aux1.fc1.weight", "aux2.fc2.bias", "fc.weight"):
        assert key in keys, key
    assert "b3.inception3a.branch4.conv.bias" in d2p.GoogLeNet().state_dict()
    assert [n for n, _ in d2p.VGG("C", width_ratio=8, image_size=32).block3.named_children()] \
        == ["conv1", "conv2", "conv3", "pool"]
    assert list(d2p.vgg_block(2, 3, 8).state_dict())[:2] == ["conv1.weight", "conv1.bias"]


@pytest.mark.parametrize("name,kw", [("googlenet_v1", dict(batch_norm=True)),
                                     ("inception_a_net", {})])
def test_channels_last_computes_the_same_and_steps(name, kw):
    """train()/StepKit(fast=True) run the nets in channels_last memory format."""
    net = d2p.create_model(name, seed=0, **kw)
    x = torch.randn((2,) + net.spec.input_shape)
    want = d2p.logits(net, x)
    net.to(memory_format=torch.channels_last)
    got = d2p.logits(net, x.contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    kit = d2p.StepKit(net, lr=0.01, fast=True)
    X, Y = kit.inputs(x.numpy(), np.array([1, 2]))
    assert np.isfinite(kit.train_step(X, Y)) and np.isfinite(kit.infer(X))


def test_weights_round_trip_and_validation(tmp_path):
    net = d2p.create_model("googlenet_v1", batch_norm=True, seed=0)
    spec = net.spec
    w = weights.random_weights(spec, seed=5)
    d2p.set_weights(net, w)
    back = d2p.get_weights(net)
    assert all(np.array_equal(back[k], w[k]) for k in w)
    path = d2p.save_weights(net, tmp_path / "v1.npz")
    other = d2p.create_model("googlenet_v1", batch_norm=True, seed=1)
    d2p.set_weights(other, path)
    net.eval(), other.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(net(x), other(x))
    with pytest.raises(weights.WeightsError, match="missing"):
        d2p.set_weights(d2p.create_model("googlenet_v1", seed=0), w)   # BN keys unexpected


def test_loader_reshuffles_samples_each_epoch_and_resizes():
    train_iter, test_iter = d2p.load_data_fashion_mnist(64, resize=48, limit=256, seed=3)
    assert train_iter.num_examples == 256 and len(train_iter) == 4
    batches = list(train_iter)                                   # epoch 0
    X, y = batches[0]
    assert X.shape == (64, 1, 48, 48) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(X.min()) and float(X.max()) <= 1.0
    first = torch.cat([y for _, y in batches])
    second = torch.cat([y for _, y in train_iter])               # epoch 1
    assert not torch.equal(first, second)                        # reshuffled
    assert torch.equal(torch.sort(first).values, torch.sort(second).values)  # same samples
    again, _ = d2p.load_data_fashion_mnist(64, resize=48, limit=256, seed=3)
    assert torch.equal(torch.cat([y for _, y in again]), first)  # seeded
    assert torch.equal(torch.cat([y for _, y in test_iter]), torch.cat([y for _, y in test_iter]))
    assert d2p.get_fashion_mnist_labels([0, 9]) == ["t-shirt", "ankle boot"]


def _short_run(seed):
    net = d2p.create_model("residual_net", seed=seed)
    train_iter, test_iter = d2p.load_data_fashion_mnist(128, limit=10000, seed=seed)
    return d2p.train(net, train_iter, test_iter, num_epochs=3, lr=0.02, momentum=0.9,
                     seed=seed, device="cpu")


@pytest.mark.slow
def test_training_on_real_fashion_mnist_learns_and_is_repeatable():
    h = _short_run(0)
    assert h.test_acc[-1] > 0.7, str(h)         # chance is 0.1
    assert h.loss[2] < h.loss[1] < h.loss[0] and h.test_acc[-1] > h.test_acc[0]
    assert h.examples_per_sec[0] > 0 and h.device == "cpu"
    again = _short_run(0)
    assert again.loss == h.loss and again.test_acc == h.test_acc


@pytest.mark.slow
def test_googlenet_v1_trains_with_aux_heads():
    net = d2p.create_model("googlenet_v1", num_classes=10, in_channels=1, image_size=224,
                           seed=0)
    train_iter, test_iter = d2p.load_data_fashion_mnist(8, resize=224, limit=16, seed=0)
    h = d2p.train(net, train_iter, test_iter, num_epochs=1, lr=0.01, device="cpu",
                  max_steps=1)
    assert np.isfinite(h.loss[0]) and len(h.epochs) == 1


def test_cli_shapes_prints_the_d2l_table():
    proc = subprocess.run([sys.executable, "-m", "d2lport.cli", "shapes", "googlenet",
                           "--input", "1x1x96x96"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for line in ("64 x 24 x 24", "192 x 12 x 12", "480 x 6 x 6", "832 x 3 x 3"):
        assert line in proc.stdout
    assert "\n b5" not in proc.stdout and "b5     1024" in proc.stdout


def test_cli_errors_are_one_clear_line(capsys):
    assert cli.main(["shapes", "googlenett"]) == 2
    assert "Did you mean 'googlenet'" in capsys.readouterr().err
    assert cli.main(["shapes", "vgg11", "--input", "1x3x96x96", "-k", "image_size=224"]) == 2
    assert "pass image_size=96" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_runs_on_real_data(tmp_path):
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli.main(["train", "residual_net", "--epochs", "1", "--limit", "600",
                       "--save", str(tmp_path / "w.npz"), "--plot", str(tmp_path / "h.png")])
    assert rc == 0
    assert "residual_net on torch/cpu" in buf.getvalue()
    assert (tmp_path / "w.npz").exists() and (tmp_path / "h.png").stat().st_size > 1000
    w, meta = weights.load(tmp_path / "w.npz")
    assert meta["model"] == "residual_net" and "fc.weight" in w


def test_notebook_check_that_a_typed_class_is_the_package_model(capsys):
    """nb.same_as_package: the chapters' proof that the reader's class is create_model's."""
    from torch import nn
    from d2lport import notebook as nb
    nb.same_as_package(d2p, d2p.ResidualNet(), "residual_net")
    assert "the same output for the same weights" in capsys.readouterr().out

    class Renamed(d2p.ResidualNet):
        def __init__(self):
            super().__init__()
            self.fc2 = nn.Identity()
            self.add_module("fc2", self.fc)
            del self.fc
    with pytest.raises(AssertionError, match="parameter names differ"):
        nb.same_as_package(d2p, Renamed(), "residual_net")

    class NoResidual(d2p.ResidualNet):
        def forward(self, x):
            return self.fc(self.b2(self.b1(x)).flatten(1) * 0 + 1)
    with pytest.raises(AssertionError, match="outputs differ"):
        nb.same_as_package(d2p, NoResidual(), "residual_net")


def test_the_learning_rate_a_divergence_suggests_trains(capsys):
    """DivergenceError proposes a smaller learning rate: that rate then trains."""
    from d2lport import checkpoint
    train_iter, test_iter = d2p.load_data_fashion_mnist(32, limit=128, seed=0)
    with pytest.raises(checkpoint.DivergenceError) as err:
        d2p.train(d2p.create_model("residual_net", seed=0), train_iter, test_iter,
                  num_epochs=1, lr=1e30, seed=0)
    assert f"--lr {err.value.suggested_lr:g}" in str(err.value)
    history = d2p.train(d2p.create_model("residual_net", seed=0), train_iter, test_iter,
                        num_epochs=1, lr=err.value.suggested_lr, seed=0)
    assert np.isfinite(history.loss[0]) and history.loss[0] < 10
