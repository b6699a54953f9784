"""`d2lport compare` / `export` / `import`: the frameworks side by side.

This test process imports no framework: every framework runs in its own worker process
(d2lport.worker), so these tests can run beside any one framework's tests.  Tests that need
two frameworks skip when fewer are installed.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lport import cli, registry, weights, worker
from d2lport import compare as cmp
from d2lport.compare.workers import available

pytestmark = [pytest.mark.core, pytest.mark.parity]

ROOT = Path(__file__).resolve().parent.parent
# what a worker can run: each framework in its worker's Python (MXNet: .venv-mxnet)
INSTALLED = available(registry.FRAMEWORKS)[0]
OTHERS = [fw for fw in INSTALLED if fw != "torch"]
VGG_SMALL = dict(width_ratio=8, image_size=32)   # FC layers stay 4096 wide
needs_two = pytest.mark.skipif(len(INSTALLED) < 2 or "torch" not in INSTALLED,
                               reason="needs torch and another framework")
MODELS = registry.list_models()


def _data_available() -> bool:
    from d2lport import data
    try:
        data.locate()
        return True
    except Exception:
        return False


needs_data = pytest.mark.skipif(not _data_available(), reason="Fashion-MNIST not found "
                                "(make data)")


# --------------------------------------------------------------------------- every network
@pytest.fixture(scope="module")
def every_network():
    """All registered models in one worker per framework (~13 models, 3 imports)."""
    cases = [(name, dict(VGG_SMALL) if name.startswith("vgg") else {}) for name in MODELS]
    return dict(zip(MODELS, cmp.compare_many(cases, INSTALLED)))


@needs_two
@pytest.mark.parametrize("model", MODELS)
def test_every_registered_network_agrees(every_network, model):
    result = every_network[model]
    assert result.frameworks == INSTALLED, str(result)
    assert result.verdict == "agree", str(result)
    block, fw, rel = result.worst()
    assert rel < 1e-4
    # the worst difference and the output's are in the verdict a reader sees
    assert f"{rel:.1e}" in result.verdict_line() and result.rows[-1].name in result.verdict_line()


@needs_two
def test_rows_render_as_text_html_records_and_pandas(every_network):
    result = every_network["googlenet"]
    text = str(result)
    assert [r.name for r in result.rows] == ["b1", "b2", "b3", "b4", "b5", "fc"]
    assert "64 x 24 x 24" in text and "5,977,530" in text and "verdict: agree" in text
    for fw in OTHERS:
        assert f"{fw} max rel" in text
    html = result._repr_html_()
    assert html.startswith("<div>") and "<table>" in html and "verdict: agree" in html
    records = result.to_records()
    assert records[0]["block"] == "b1" and records[0]["shape[torch]"] == (64, 24, 24)
    assert records[-1]["params[torch]"] == 10250 and all(r["agree"] for r in records)
    pd = pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == [r.name for r in result.rows]


# --------------------------------------------------------------------------- it can fail
@needs_two
def test_a_perturbed_weight_differs_at_its_block():
    target = "tensorflow" if "tensorflow" in OTHERS else OTHERS[0]
    result = cmp.compare("googlenet", frameworks=("torch", target), perturb={
        "framework": target, "key": "b3.inception3a.branch2.conv2.weight"})
    assert result.verdict == "differ" and not result.ok
    assert result.first_difference == "b3"
    assert all(not r.problems(result.rtol) for r in result.rows[:2])      # b1, b2 agree
    text = str(result)
    assert "verdict: DIFFER, first at block b3" in text and "<- first difference" in text
    assert f"{target} differs by" in text


def test_shape_or_parameter_mismatch_is_a_difference():
    row = cmp.BlockRow("b1", (64, 24, 24), 3200, shapes={"torch": (64, 24, 24),
                                                         "tensorflow": (64, 23, 23)},
                       params={"torch": 3200, "tensorflow": 3200})
    assert row.problems(1e-4) == ["output shape torch 64 x 24 x 24, tensorflow 64 x 23 x 23, "
                                  "spec 64 x 24 x 24"]
    row = cmp.BlockRow("fc", (10,), 10, shapes={"torch": (10,)}, params={"torch": 11},
                       max_abs={"mxnet": float("nan")}, max_rel={"mxnet": float("nan")})
    assert len(row.problems(1e-4)) == 2          # parameters, and NaN is never "agree"


# --------------------------------------------------------------------------- missing frameworks
def test_a_framework_missing_from_its_interpreter_is_skipped(monkeypatch):
    monkeypatch.setenv("D2LPORT_PYTHON_MXNET", "/nonexistent/bin/python")
    monkeypatch.setattr(registry, "framework_available",
                        lambda fw: fw != "tensorflow")       # "not installed here"
    result = cmp.compare("residual_net", frameworks=("torch", "tensorflow", "mxnet"))
    assert set(result.skipped) == {"tensorflow", "mxnet"}
    text = str(result)
    assert "skipped tensorflow: not installed in " in text and "d2lport[tensorflow]" in text
    assert "skipped mxnet: cannot start the interpreter /nonexistent/bin/python" in text
    assert "D2LPORT_PYTHON_MXNET" in text
    if "torch" in INSTALLED:
        assert result.frameworks == ["torch"] and result.verdict == "alone"


def _python_without(module: str):
    for name in ("python3", "python"):
        path = shutil.which(name)
        if path and os.path.realpath(path) != os.path.realpath(sys.executable):
            proc = subprocess.run([path, "-c", f"import importlib.util as u, numpy; "
                                   f"print(u.find_spec({module!r}) is None)"],
                                  capture_output=True, text=True)
            if proc.stdout.strip() == "True":
                return path
    return None


def test_an_interpreter_without_the_framework_is_skipped(monkeypatch):
    python = _python_without("mxnet")
    if python is None:
        pytest.skip("no other Python (with numpy, without mxnet) on PATH")
    monkeypatch.setenv("D2LPORT_PYTHON_MXNET", python)
    ready, skipped = cmp.available(["mxnet"])
    assert ready == [] and skipped["mxnet"].startswith(f"not installed in {python}")


def test_a_framework_that_fails_to_import_in_its_worker_is_skipped(monkeypatch, tmp_path):
    # A package that shadows mxnet and raises on import, as a broken install would: the
    # probe finds it, the worker cannot import it.
    (tmp_path / "mxnet").mkdir()
    (tmp_path / "mxnet" / "__init__.py").write_text(
        "raise ImportError('simulated broken MXNet install')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(registry, "framework_available", lambda fw: True)
    result = cmp.compare("residual_block", frameworks=("mxnet",))
    assert "simulated broken MXNet install" in result.skipped["mxnet"]
    assert result.verdict == "incomplete" and "no framework ran" in str(result)


# --------------------------------------------------------------------------- training, speed
@needs_two
@needs_data
@pytest.mark.slow
def test_twenty_sgd_steps_give_the_same_loss_curves(tmp_path):
    result = cmp.compare("residual_net", frameworks=INSTALLED, train=20, batch_size=32,
                         lr=0.01, speed=True)
    curves = result.train
    assert list(curves.losses) == INSTALLED and all(len(v) == 20 for v in curves.losses.values())
    worst = curves.worst_per_step()
    assert worst[:5].max() < 1e-3, str(curves)
    ref = curves.losses["torch"]
    assert ref[-5:].mean() < ref[:3].mean()                    # it learns, in every framework
    assert "SGD steps" in str(result) and "max |diff|" in str(curves)
    assert curves.to_records()[0]["step"] == 1
    # speed: every framework measured, ratios to the fastest
    speed = result.speed
    assert set(speed.rows) == set(INSTALLED)
    assert max(speed.ratios("inference").values()) == pytest.approx(1.0)
    assert "vs fastest" in str(speed) and "1.00x" in str(speed)
    pytest.importorskip("matplotlib")
    curves.plot(tmp_path / "curves.png")
    curves.plot(tmp_path / "curves.svg")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()[:400]


def test_dropout_is_switched_off_for_training_and_said_so():
    kwargs, note = cmp.dropout_off("googlenet_v1", {})
    assert kwargs == {"dropout": 0.0, "aux_dropout": 0.0} and "dropout=0" in note
    assert cmp.dropout_off("googlenet", {}) == ({}, None)
    with pytest.raises(ValueError, match="class scores"):
        cmp.compare("inception", frameworks=(), train=2)


def test_numpy_resize_is_bilinear_at_half_pixel_centres():
    m = cmp._bilinear_matrix(2, 4)       # torch: interpolate([a, b], 4) = a, .75a+.25b, ...
    np.testing.assert_allclose(m, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    x = cmp.images_to_input(np.full((2, 28, 28), 255, np.uint8), (3, 32, 32))
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0, rtol=1e-6)


# --------------------------------------------------------------------------- weight files
@pytest.fixture(scope="module")
def trained_in_torch(tmp_path_factory):
    """residual_net trained one epoch in PyTorch on 4000 real Fashion-MNIST images, saved
    by `d2lport train --save` (a subprocess: this process imports no framework)."""
    path = tmp_path_factory.mktemp("weights") / "residual_net.npz"
    env = dict(os.environ, D2LPORT_PROGRESS="0",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([worker.python_for("torch"), "-m", "d2lport.cli", "train",
                           "residual_net", "-f", "torch", "--epochs", "1", "--limit", "4000",
                           "--batch-size", "64", "--lr", "0.05", "--momentum", "0.9",
                           "--save", str(path)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


@needs_two
@needs_data
@pytest.mark.slow
def test_trained_in_torch_then_imported_gives_the_same_test_accuracy(trained_in_torch):
    results = {fw: cmp.import_weights(trained_in_torch, fw, evaluate=True, limit=4000)
               for fw in INSTALLED}
    acc = {fw: r["test_acc"] for fw, r in results.items()}
    assert acc["torch"] > 0.6, acc                       # it did learn
    for fw in OTHERS:
        assert abs(acc[fw] - acc["torch"]) <= 0.002, acc
        np.testing.assert_allclose(results[fw]["logits"], results["torch"]["logits"],
                                   rtol=1e-4, atol=1e-4)
        assert results[fw]["params"] == results["torch"]["params"] == 41514
    assert all(r["test_examples"] == 4000 for r in results.values())


@needs_two
def test_export_then_import_cli_round_trip(tmp_path, capsys):
    source = OTHERS[-1]               # mxnet where installed: the quickest worker to start
    out = tmp_path / "w.npz"
    assert cli.main(["export", "vgg_d2l", "-f", source, "--out", str(out), "--seed", "3",
                     "-k", "image_size=32"]) == 0
    assert "-> " + str(out) in capsys.readouterr().out
    arrays, meta = weights.load(out)
    assert meta["model"] == "vgg11" and meta["framework"] == source
    assert meta["kwargs"]["width_ratio"] == 4 and meta["kwargs"]["image_size"] == 32
    assert cli.main(["import", str(out), "-f", "torch"]) == 0
    text = capsys.readouterr().out
    assert f"weights from {source}" in text and "output checksum" in text
    # the checksum agrees with the exporting framework's own
    mine = cmp.import_weights(out, source)
    theirs = cmp.import_weights(out, "torch")
    np.testing.assert_allclose(mine["checksum"], theirs["checksum"], rtol=1e-5)


def test_import_refuses_weights_of_another_model(tmp_path):
    spec = registry.get_spec("residual_net")
    path = weights.save(tmp_path / "w.npz", weights.random_weights(spec),
                        {"model": "inception_a_net", "kwargs": {}})
    with pytest.raises(weights.WeightsError, match="do not fit inception_a_net"):
        cmp.import_weights(path, "torch")


# --------------------------------------------------------------------------- plumbing
def test_the_comparing_process_imports_no_framework():
    code = ("import sys, d2lport, d2lport.cli\n"
            "assert callable(d2lport.compare)\n"
            "import d2lport.compare as m\n"
            "assert m.Comparison and d2lport.compare is m\n"
            "bad = [f for f in ('torch', 'tensorflow', 'mxnet', 'keras') if f in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr


def test_compare_cli_exit_status_and_errors(capsys):
    with pytest.raises(SystemExit, match="--train"):
        cli.main(["compare", "googlenet", "--plot", "x.png"])
    assert cli.main(["compare", "nosuchnet"]) == 2
    assert "unknown model" in capsys.readouterr().err
    # a wrong input fails in this process, by name, before any worker starts
    assert cli.main(["compare", "googlenet", "--input", "2x1x96x96", "-k", "in_channels=3"]) == 2
    assert "takes 3-channel input, got 1 channels" in capsys.readouterr().err
