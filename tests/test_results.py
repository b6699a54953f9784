"""The recorded runs: the committed records are there, current and whole; the record, the
recipes, the canonical initial weights and ``make results``' bookkeeping behave."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lport import registry, results, specs
from d2lport.data import load_arrays
from d2lport.results import init as rinit
from d2lport.results import record as rrecord
from d2lport.results import runner
from d2lport.results.recipes import CPU_RECIPES, BOOK_RECIPES, get, recipes

# Runs `make results` has not recorded yet.  A run listed here must have no record and a
# run not listed must have one, so the list only ever shrinks, with the records that make it
# shrink.  (Empty: every recipe is recorded in every framework.  A new recipe or framework
# lists its runs here until their records land.)
PENDING: set = set()
ROOT = Path(__file__).resolve().parent.parent
RUNS = [(r, fw) for r in CPU_RECIPES for fw in registry.FRAMEWORKS]


@pytest.fixture(scope="module")
def test_labels():
    return load_arrays("test")[1]


# ----------------------------------------------------------------- the committed records
@pytest.mark.core
@pytest.mark.parametrize("recipe,fw", RUNS, ids=[r.run_name(fw) for r, fw in RUNS])
def test_committed_record_is_present_current_and_whole(recipe, fw, test_labels):
    path = rrecord.path_for(recipe.run_name(fw))
    if recipe.run_name(fw) in PENDING:
        assert not path.exists(), (f"{path.name} exists: take {recipe.run_name(fw)} out of "
                                   "PENDING in tests/test_results.py")
        pytest.skip(f"{recipe.run_name(fw)} not recorded yet (make results)")
    assert path.exists(), f"no record {path}: run `make results`"
    rec = rrecord.load(path)
    assert rrecord.staleness(rec, recipe) == [], f"{path.name} is stale: make results"
    assert rrecord.internal_problems(rec, test_labels) == []
    assert rec["framework"] == fw and rec["settings"] == recipe.settings()
    assert rec["params"] == rec["params_spec"]


# ------------------------------------------------------------ runs measured once on a GPU
@pytest.mark.core
def test_the_h100_records_are_whole_runs_at_the_books_settings(test_labels):
    """results/h100/: GoogLeNet at D2L 1.0's settings on one H100 (run once with the device
    tool, not by `make results`): each record agrees with itself and the test labels, ran on
    the GPU with the book profile's settings, and the README's GPU table states its numbers."""
    paths = sorted((ROOT / "results" / "h100").glob("*.json"))
    assert [p.name for p in paths] == ["googlenet-jax.json", "googlenet-torch.json"]
    readme = (ROOT / "README.md").read_text()
    chapter = (ROOT / "chapters" / "2_googlenet.md").read_text()
    book = get("googlenet", "book")
    for path in paths:
        rec = rrecord.load(path)
        assert rrecord.internal_problems(rec, test_labels) == [], path.name
        assert rec["model"] == book.model and rec["settings"] == book.settings()
        assert "H100" in rec["machine"]["gpu"] and "cpu" not in rec["machine"]["device"]
        h = rec["history"]
        assert f"| {rec['framework']} | {h[-1]['test_acc']:.4f} | " \
               f"{max(e['test_acc'] for e in h):.4f} |" in readme, path.name
        assert f"{h[-1]['test_acc']:.4f}" in chapter, path.name     # the GoogLeNet chapter


@pytest.mark.core
def test_pending_names_real_runs():
    assert PENDING <= {r.run_name(fw) for r, fw in RUNS}


@pytest.mark.core
def test_the_vgg_chapter_says_what_the_batchnorm_records_say():
    """chapters/1_vgg.md states BatchNorm's lead after epoch 1 and at the end in numbers:
    they must be the committed records' (re-recording changes them: edit the prose)."""
    if any(r.startswith("vgg_d2l") for r in PENDING):
        pytest.skip("the VGG records are not all there yet")
    recs = results.load_all()
    plain, bn = recs["vgg_d2l"], recs["vgg_d2l_bn"]
    fws = registry.FRAMEWORKS

    def diff(fw, epoch):
        return (bn[fw]["history"][epoch]["test_acc"] - plain[fw]["history"][epoch]["test_acc"])

    def signed(x):
        return f"{x:+.3f}".replace("-", "\u2212")

    text = (ROOT / "chapters" / "1_vgg.md").read_text(encoding="utf-8")
    text = " ".join(text.split())
    first = [diff(fw, 0) for fw in fws]
    assert f"({signed(min(first))} to {signed(max(first))})" in text
    prose = {"torch": "torch", "tensorflow": "TensorFlow", "mxnet": "MXNet",
             "jax": "JAX"}   # as written
    final = ", ".join(f"{signed(diff(fw, -1))} {prose[fw]}" for fw in fws)
    assert f"({final})" in text


@pytest.mark.core
def test_records_of_one_recipe_started_from_the_same_weights():
    for name, by_fw in results.load_all().items():
        digests = {rec["init_sha256"] for rec in by_fw.values()}
        assert len(digests) == 1, f"{name}: the frameworks started from different weights"
        r = get(name)
        spec = r.spec()
        assert digests == {rinit.digest(rinit.initial_weights(spec, r.seed))}


# ----------------------------------------------------------------- recipes and init
@pytest.mark.core
def test_every_recipe_builds_and_both_profiles_name_the_same_networks():
    assert [r.name for r in CPU_RECIPES] == [r.name for r in BOOK_RECIPES]
    for r in CPU_RECIPES + BOOK_RECIPES:
        spec = r.spec()
        assert r.resize >= specs.min_input_size(spec), r
        assert r.digest() == dataclasses.replace(r, why="other words").digest()
        assert r.digest() != dataclasses.replace(r, lr=r.lr * 2).digest()
    # the book profile is D2L 1.0's: SGD at lr 0.01 for its networks
    assert {(r.optimizer, r.lr) for r in BOOK_RECIPES if r.name.startswith(("vgg", "googlenet"))} \
        == {("sgd", 0.01)}


@pytest.mark.core
def test_profile_comes_from_the_environment_and_a_bad_one_says_which_exist(monkeypatch):
    monkeypatch.delenv("D2LPORT_PROFILE", raising=False)
    assert recipes()["vgg_d2l"].resize == 64
    monkeypatch.setenv("D2LPORT_PROFILE", "book")
    assert recipes()["vgg_d2l"].resize == 224
    monkeypatch.setenv("D2LPORT_PROFILE", "gpu")
    with pytest.raises(ValueError, match=r"D2LPORT_PROFILE='gpu' is not a profile: use cpu or book"):
        recipes()
    with pytest.raises(ValueError, match="no recipe named 'vgg'"):
        get("vgg")


@pytest.mark.core
def test_initial_weights_are_xavier_and_the_same_every_time():
    spec = registry.get_spec("vgg_d2l", batch_norm=True, image_size=64)
    a, b = rinit.initial_weights(spec, 0), rinit.initial_weights(spec, 0)
    assert rinit.digest(a) == rinit.digest(b) != rinit.digest(rinit.initial_weights(spec, 1))
    assert list(a) == list(specs.canonical_shapes(spec))
    w = a["block2.conv1.weight"]                        # (32, 16, 3, 3)
    bound = np.sqrt(6 / (16 * 9 + 32 * 9))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound
    assert not a["block2.conv1.bias"].any() and (a["block2.conv1.bn.weight"] == 1).all()
    assert (a["block2.conv1.bn.running_var"] == 1).all()
    with pytest.raises(ValueError, match="'xavier'"):
        rinit.initial_weights(spec, 0, "he")


# ----------------------------------------------------------------- the record file
def _fake_record(recipe, fw="torch", acc_of=None, labels=None, epochs=None):
    spec = recipe.spec()
    labels = np.arange(20) % 10 if labels is None else labels
    preds = labels.copy()
    preds[:5] = (preds[:5] + 1) % 10
    acc = float((preds == labels).mean())
    n = recipe.epochs if epochs is None else epochs
    hist = [dict(epoch=i, loss=1.0 / i, train_acc=0.5, test_acc=acc, examples_per_sec=100.0,
                 seconds=60.0) for i in range(1, n + 1)]
    return {"format": rrecord.FORMAT, "run": recipe.run_name(fw), "recipe": recipe.name,
            "recipe_sha256": recipe.digest(), "model": recipe.model, "framework": fw,
            "num_classes": 10, "settings": recipe.settings(), "init_sha256": "x",
            "spec_sha256": rrecord.spec_digest(spec), "params": specs.count_params(spec),
            "params_spec": specs.count_params(spec),
            "code": {"backend_sha256": rrecord.code_digest(fw)},
            "machine": {"cpu": "test", "logical_cpus": 2, "device": "cpu"}, "history": hist,
            "test": {"examples": len(labels), "labels_sha256": rrecord.labels_digest(labels),
                     "accuracy": acc, "predictions": preds.tolist()}}


@pytest.mark.core
def test_record_round_trip_and_what_makes_one_inconsistent(tmp_path):
    recipe = get("residual_net")
    labels = np.arange(20) % 10
    rec = _fake_record(recipe, labels=labels)
    path = rrecord.write(tmp_path / "r.json", rec)
    assert rrecord.load(path) == rec and list(tmp_path.iterdir()) == [path]
    assert rrecord.internal_problems(rec, labels) == []
    # one epoch per line, the predictions on one line: a short, diffable file
    assert len(path.read_text().splitlines()) < 40

    bad = json.loads(json.dumps(rec))
    bad["test"]["predictions"][10] = (bad["test"]["predictions"][10] + 1) % 10
    assert any("predictions give accuracy" in p for p in rrecord.internal_problems(bad, labels))
    bad = json.loads(json.dumps(rec))
    bad["history"].pop()
    assert any("epochs in the history" in p for p in rrecord.internal_problems(bad, labels))
    assert any("test labels" in p for p in rrecord.internal_problems(rec, labels[::-1].copy()))
    bad = json.loads(json.dumps(rec))
    bad["history"][0]["test_acc"] = 1.5
    assert any("not in [0, 1]" in p for p in rrecord.internal_problems(bad))


@pytest.mark.core
def test_stale_records_are_told_apart(tmp_path):
    recipe = get("residual_net")
    rec = _fake_record(recipe)
    assert rrecord.staleness(rec, recipe) == []
    assert "the recipe changed" in rrecord.staleness(rec, dataclasses.replace(recipe, lr=0.1))[0]
    other = dict(rec, spec_sha256="0" * 64, params=1)
    assert any("spec of residual_net changed" in p for p in rrecord.staleness(other, recipe))
    assert any("parameters recorded" in p for p in rrecord.staleness(other, recipe))
    assert rrecord.code_changed(rec) is False
    assert rrecord.code_changed(dict(rec, code={"backend_sha256": "0"})) is True


@pytest.mark.core
def test_runner_state_of_each_kind(tmp_path):
    recipe = get("residual_net")
    assert runner.state(recipe, "torch", tmp_path) == ("missing", [])
    labels = load_arrays("test")[1]
    rec = _fake_record(recipe, labels=labels)
    rrecord.write(rrecord.path_for(recipe.run_name("torch"), tmp_path), rec)
    assert runner.state(recipe, "torch", tmp_path) == ("current", [])
    rrecord.write(rrecord.path_for(recipe.run_name("torch"), tmp_path),
                  dict(rec, code={"backend_sha256": "0"}))
    assert runner.state(recipe, "torch", tmp_path)[0] == "code changed"
    rrecord.write(rrecord.path_for(recipe.run_name("torch"), tmp_path), dict(rec, recipe_sha256="0"))
    assert runner.state(recipe, "torch", tmp_path)[0] == "stale"
    rrecord.path_for(recipe.run_name("torch"), tmp_path).write_text("{")
    st, why = runner.state(recipe, "torch", tmp_path)
    assert st == "broken" and "not readable JSON" in why[0]
    with pytest.raises(ValueError, match="no recipe named resnet"):
        runner.plan(["resnet"])


# ----------------------------------------------------------------- the command line
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "d2lport.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.core
@pytest.mark.parametrize("args,message", [
    (("train", "--recipe", "googlenet", "--lr", "0.5"),
     "--recipe googlenet sets the model and every training setting: drop --lr"),
    (("train", "vgg11", "--recipe", "googlenet"),
     "recipe googlenet trains googlenet, not vgg11: drop the model name or the --recipe"),
    (("train", "--recipe", "lenet"), "no recipe named 'lenet'"),
    (("train",), "name the model to train"),
    (("train", "googlenet_v1", "-k", "image_size=96", "--resize", "128"),
     "-k image_size=96 and --resize 128 differ"),
    (("results", "run", "lenet"), "no recipe named lenet"),
])
def test_cli_refuses_a_bad_recipe_call_in_one_line(args, message):
    out = _cli(*args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr


@pytest.mark.core
def test_cli_results_status_and_dry_run_list_every_run():
    out = _cli("results", "run", "--dry-run")
    assert out.returncode == 0, out.stderr
    for r, fw in RUNS:
        assert r.run_name(fw) in out.stdout
    assert "googlenet_v1-mxnet" in _cli("results", "status").stdout


# ----------------------------------------------------------------- a real recorded run
def _record_one(fw, tmp_path, monkeypatch):
    """Two steps of residual_net from the canonical weights, recorded, in ``fw``."""
    path = tmp_path / f"rec-{fw}.json"
    net, history, rec = results.train("residual_net", fw, epochs=1, batch_size=64, limit=128,
                                      lr=0.001, optimizer="adam", init="xavier", record=path,
                                      verbose=False, progress=False)
    on_disk = rrecord.load(path)
    assert on_disk == json.loads(json.dumps(rec))
    assert rrecord.internal_problems(on_disk) == []
    assert on_disk["params"] == specs.count_params(registry.get_spec("residual_net"))
    assert on_disk["test"]["examples"] == 128 and len(on_disk["history"]) == 1
    assert on_disk["settings"]["init"] == "xavier" and fw in on_disk["versions"]
    assert "--init xavier" in on_disk["command"] and "--limit 128" in on_disk["command"]
    assert on_disk["init_sha256"] == rinit.digest(rinit.initial_weights(
        registry.get_spec("residual_net"), 0))


@pytest.mark.torch
def test_torch_run_is_recorded(tmp_path, monkeypatch):
    _record_one("torch", tmp_path, monkeypatch)


@pytest.mark.tensorflow
def test_tensorflow_run_is_recorded(tmp_path, monkeypatch):
    _record_one("tensorflow", tmp_path, monkeypatch)


@pytest.mark.mxnet
def test_mxnet_run_is_recorded(tmp_path, monkeypatch):
    _record_one("mxnet", tmp_path, monkeypatch)
