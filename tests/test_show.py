"""What the chapters show of the recorded runs (d2lport.results.show), on made-up records
written to a temporary directory: every view works with all, some and no records, a
one-epoch run is drawn as points with a note, and the recipe notes name the settings that
differ from the book's.  Framework-free (marker ``core``)."""
import subprocess
import sys

import numpy as np
import pytest

from d2lport import notebook as nb
from d2lport import registry
from d2lport.common import History, plot_history
from d2lport.results import record, show
from d2lport.results.recipes import recipes

pytestmark = pytest.mark.core

N_TEST = 200        # test examples in the made-up records
FWS = registry.FRAMEWORKS


def make_record(directory, name, framework, accs, seconds=60.0, seed=0):
    """Write a made-up but self-consistent record of recipe ``name`` in ``framework``:
    one epoch per entry of ``accs`` (the test accuracy after it)."""
    recipe = recipes("cpu")[name]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, N_TEST)
    right = int(round(accs[-1] * N_TEST))
    preds = labels.copy()
    preds[right:] = (labels[right:] + 1) % 10          # the rest wrong
    history = [dict(epoch=i + 1, loss=2.0 / (i + 1), train_acc=min(1.0, a + 0.01),
                    test_acc=a, examples_per_sec=1000.0 + 10 * i, seconds=seconds)
               for i, a in enumerate(accs[:-1])]
    history.append(dict(epoch=len(accs), loss=2.0 / len(accs), train_acc=accs[-1],
                        test_acc=right / N_TEST, examples_per_sec=1000.0, seconds=seconds))
    rec = {"format": record.FORMAT, "run": recipe.run_name(framework), "recipe": name,
           "model": recipe.model, "framework": framework, "num_classes": 10,
           "settings": {**recipe.settings(), "epochs": len(accs)}, "params": 1234,
           "machine": {"cpu": "made-up CPU", "logical_cpus": 2, "device": "cpu"},
           "history": history,
           "test": {"examples": N_TEST, "labels_sha256": record.labels_digest(labels),
                    "accuracy": right / N_TEST, "predictions": [int(p) for p in preds]}}
    assert record.internal_problems(rec, labels) == []
    record.write(record.path_for(recipe.run_name(framework), directory), rec)
    return labels


def test_the_made_up_records_are_found_where_the_recipes_name_them(tmp_path):
    make_record(tmp_path, "googlenet", "torch", [0.5, 0.8])
    assert (tmp_path / "googlenet-torch.json").exists()
    assert show.best("googlenet", tmp_path)["framework"] == "torch"
    assert show.best("googlenet", tmp_path / "empty") is None


# --------------------------------------------------------------------------- the table
def test_table_with_all_records_has_a_row_per_framework_and_the_spread(tmp_path):
    assert len(FWS) == 4
    for fw, acc in zip(FWS, (0.80, 0.82, 0.86, 0.85)):
        make_record(tmp_path, "residual_net", fw, [0.5, acc])
    text = show.table("residual_net", tmp_path)
    rows = [l for l in text.splitlines() if l.startswith("| ") and "framework" not in l]
    assert [r.split("|")[1].strip() for r in rows] == list(FWS)
    assert "| 0.8000 |" in rows[0] and "| 0.8600 |" in rows[2] and "| 0.8500 |" in rows[3]
    assert "Spread of the final test accuracies: 0.0600 (4 frameworks" in text
    assert "Not recorded yet" not in text
    assert nb.markdown_problems(text + "\n\n## Exercises\n") == []


def test_table_with_some_records_names_the_missing_frameworks(tmp_path):
    make_record(tmp_path, "residual_net", "torch", [0.8])
    make_record(tmp_path, "residual_net", "mxnet", [0.84])
    text = show.table("residual_net", tmp_path)
    assert "| torch |" in text and "| mxnet |" in text and "| tensorflow |" not in text
    assert "Spread of the final test accuracies: 0.0400 (2 frameworks" in text
    assert "Not recorded yet for tensorflow, jax: `make results`" in text


def test_table_without_records_says_how_to_make_them(tmp_path):
    text = show.table("vgg_d2l", tmp_path)
    assert "no record yet" in text
    assert "Not recorded yet for torch, tensorflow, mxnet, jax" in text
    assert "d2lport results run vgg_d2l" in text


# --------------------------------------------------------------------------- overview
def test_overview_with_all_some_and_no_records(tmp_path):
    for fw, acc in zip(FWS, (0.88, 0.87, 0.89, 0.875)):
        make_record(tmp_path, "residual_net", fw, [acc], seconds=120.0)
    make_record(tmp_path, "googlenet", "tensorflow", [0.83])
    text = show.overview(directory=tmp_path)
    lines = {l.split("|")[1].strip(): l for l in text.splitlines() if l.startswith("| ")}
    assert set(recipes("cpu")) <= set(lines)
    # all four: accuracy, minutes and examples/s per cell, and the spread
    assert lines["residual_net"].count("0.8") == 4 and "2 min" in lines["residual_net"]
    assert lines["residual_net"].rstrip(" |").endswith("0.0200")
    # one of four: no spread, the others named as missing
    assert lines["googlenet"].count("not recorded yet") == 3
    assert lines["googlenet"].rstrip(" |").endswith("–")
    # none
    assert lines["vgg_d2l"].count("not recorded yet") == 4
    assert nb.markdown_problems(text + "\n\n## Exercises\n") == []


def test_side_by_side_gives_the_difference_where_both_exist(tmp_path):
    make_record(tmp_path, "vgg_d2l", "torch", [0.80])
    make_record(tmp_path, "vgg_d2l_bn", "torch", [0.86])
    make_record(tmp_path, "vgg_d2l", "mxnet", [0.84])
    make_record(tmp_path, "vgg_d2l_bn", "mxnet", [0.82])
    make_record(tmp_path, "vgg_d2l", "tensorflow", [0.84])
    text = show.side_by_side(["vgg_d2l", "vgg_d2l_bn"], tmp_path)
    rows = {l.split("|")[1].strip(): l for l in text.splitlines() if l.startswith("| ")}
    assert rows["torch"].rstrip(" |").endswith("+0.0600")
    assert rows["mxnet"].rstrip(" |").endswith("-0.0200")
    assert "not recorded yet" in rows["tensorflow"] and rows["tensorflow"].rstrip(" |").endswith("–")



def test_side_by_side_after_a_given_epoch(tmp_path):
    make_record(tmp_path, "vgg_d2l", "torch", [0.80, 0.90])
    make_record(tmp_path, "vgg_d2l_bn", "torch", [0.85, 0.89])
    text = show.side_by_side(["vgg_d2l", "vgg_d2l_bn"], tmp_path, epoch=1)
    rows = {l.split("|")[1].strip(): l for l in text.splitlines() if l.startswith("| ")}
    assert rows["torch"].rstrip(" |").endswith("+0.0500")
    assert "after epoch 1" in text
    final = show.side_by_side(["vgg_d2l", "vgg_d2l_bn"], tmp_path)
    assert "-0.0100" in final and "Final test accuracy" in final
    late = show.side_by_side(["vgg_d2l", "vgg_d2l_bn"], tmp_path, epoch=3)
    assert [l for l in late.splitlines() if l.startswith("| torch")][0].rstrip(" |").endswith("–")

# --------------------------------------------------------------------------- figures
def _accuracy_lines(fig):
    return [l for l in fig.axes[0].lines if len(l.get_xdata())]


@pytest.mark.parametrize("present", [FWS, FWS[:1], ()], ids=["all", "some", "none"])
def test_curves_draw_one_line_per_recorded_framework(tmp_path, present):
    for fw in present:
        make_record(tmp_path, "googlenet", fw, [0.6, 0.8, 0.85])
    fig = show.curves("googlenet", tmp_path)
    assert len(_accuracy_lines(fig)) == len(present)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert ("no record yet: make results" in texts) == (not present)
    assert "one epoch" not in fig._suptitle.get_text()


def test_curves_of_one_epoch_are_points_with_a_note(tmp_path):
    make_record(tmp_path, "googlenet_v1", "torch", [0.81])
    fig = show.curves("googlenet_v1", tmp_path)
    (line,) = _accuracy_lines(fig)
    assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "", "None")
    assert "one epoch" in fig._suptitle.get_text()


def test_curves_of_two_networks_share_a_figure(tmp_path):
    for name in ("vgg_d2l", "vgg_d2l_bn"):
        for fw in FWS:
            make_record(tmp_path, name, fw, [0.7, 0.8])
    fig = show.curves(["vgg_d2l", "vgg_d2l_bn"], tmp_path)
    labels = [l.get_label() for l in _accuracy_lines(fig)]
    assert len(labels) == 2 * len(FWS) and "vgg_d2l_bn (jax)" in labels


def _history(epochs):
    h = History(framework="torch", device="cpu", model="vgg_d2l")
    for i in range(1, epochs + 1):
        h.append(epoch=i, loss=1.0 / i, train_acc=0.5, test_acc=0.5, examples_per_sec=10.0)
    return h


def test_plot_history_of_one_epoch_draws_points_and_says_so():
    fig = plot_history(_history(1))
    ax = fig.axes[0]
    assert "one epoch" in ax.get_title()
    assert all(l.get_marker() not in (None, "", "None") for l in ax.lines)
    lo, hi = ax.get_xlim()
    assert lo < 1 < hi and hi - lo >= 1            # the point sits inside a readable axis
    assert "one epoch" not in plot_history(_history(3)).axes[0].get_title()


def test_confusion_and_grid_come_from_the_best_run(tmp_path, monkeypatch, capsys):
    labels = make_record(tmp_path, "residual_net", "torch", [0.7])
    make_record(tmp_path, "residual_net", "tensorflow", [0.9])
    images = np.zeros((N_TEST, 28, 28), np.uint8)
    monkeypatch.setattr("d2lport.data.load_arrays", lambda split, root=None: (images, labels))
    fig = show.confusion("residual_net", tmp_path)
    assert "(tensorflow): accuracy 0.9000" in fig.axes[0].get_title()
    grid = show.prediction_grid("residual_net", n=8, directory=tmp_path)
    assert "(tensorflow)" in grid._suptitle.get_text()
    # no record: a note instead of a figure, and no data needed
    monkeypatch.setattr("d2lport.data.load_arrays", None)
    assert show.confusion("vgg_d2l", tmp_path) is None
    assert show.prediction_grid("vgg_d2l", directory=tmp_path) is None
    assert capsys.readouterr().out.count("no record yet") == 2


# --------------------------------------------------------------------------- recipes
def _rows(text):
    return {l.split("|")[1].strip(): l for l in text.splitlines() if l.startswith("| ")}


def test_recipe_notes_name_the_settings_that_differ_from_the_book():
    text = show.recipe_notes("googlenet")
    rows = _rows(text)
    for field in ("optimizer", "lr", "epochs"):
        assert rows[field].rstrip().endswith("differs |"), field
    for field in ("batch_size", "resize", "init", "parameters"):
        assert not rows[field].rstrip().endswith("differs |"), field
    assert "| lr | 0.001 | 0.01 |" in text                  # D2L 1.0's GoogLeNet: lr 0.01
    assert "Settings that differ from the book profile: optimizer, lr, epochs." in text
    vgg = show.recipe_notes("vgg_d2l")
    assert _rows(vgg)["resize"].rstrip().endswith("differs |")
    assert "| lr | 0.001 | 0.01 |" in vgg                     # D2L 1.0's VGG: lr 0.01
    assert "resize, parameters (" in vgg                       # the count that changes
    lecture = show.recipe_notes("residual_net")
    assert "momentum, epochs, batch_size." in lecture and "the lecture's settings" in lecture


def test_live_settings_follow_the_profile(monkeypatch):
    monkeypatch.delenv("D2LPORT_PROFILE", raising=False)
    cpu = show.live_settings("vgg_d2l")
    assert (cpu["profile"], cpu["optimizer"], cpu["resize"]) == ("cpu", "adam", 64)
    monkeypatch.setenv("D2LPORT_PROFILE", "book")
    book = show.live_settings("vgg_d2l")
    assert (book["profile"], book["optimizer"], book["lr"], book["resize"]) == \
        ("book", "sgd", 0.01, 224)
    monkeypatch.setenv("D2LPORT_PROFILE", "gpu")
    with pytest.raises(ValueError, match="not a profile"):
        show.live_settings("vgg_d2l")


def test_the_report_says_which_run_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS_DIR", tmp_path)
    monkeypatch.delenv("D2LPORT_PROFILE", raising=False)
    h = _history(2)
    monkeypatch.setenv("D2LPORT_SMOKE", "1")
    P = nb.settings(full=show.live_settings("vgg_d2l"), smoke=dict(epochs=1, limit=128),
                    quiet=True)
    assert "SMOKE run" in nb.report(h, P) and "not a result" in nb.report(h, P)
    monkeypatch.setenv("D2LPORT_SMOKE", "0")
    P = nb.settings(full=show.live_settings("vgg_d2l"), smoke=dict(epochs=1), quiet=True)
    assert "CPU recipe `vgg_d2l`" in nb.report(h, P)
    assert "not recorded yet" in nb.report(h, P)
    make_record(tmp_path, "vgg_d2l_bn", "torch", [0.5, 0.875])
    line = nb.report(h, P, recipe="vgg_d2l_bn")
    assert "CPU recipe `vgg_d2l_bn`" in line and "test accuracy 0.875 after 2 epoch(s)" in line
    monkeypatch.setenv("D2LPORT_PROFILE", "book")
    P = nb.settings(full=show.live_settings("vgg_d2l"), smoke=dict(epochs=1), quiet=True)
    assert "book profile's settings (D2LPORT_PROFILE=book)" in nb.report(h, P)
    assert "\n" not in nb.report(h)                        # without settings: one line


def test_show_imports_no_framework():
    code = ("import sys; from d2lport.results import show; show.table('residual_net'); "
            "show.recipe_notes('googlenet'); "
            "print(sorted(m for m in ('torch', 'tensorflow', 'mxnet') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("profile", ["cpu", "book"])
def test_recipes_a_chapter_trains_with_one_settings_cell_share_their_settings(profile):
    """1_vgg trains vgg_d2l and vgg_d2l_bn, 3_advanced_cnn both lecture nets, each pair with
    one parameters cell: their recipes may differ in the model only."""
    table = recipes(profile)
    for a, b in (("vgg_d2l", "vgg_d2l_bn"), ("inception_a_net", "residual_net")):
        assert table[a].settings() == table[b].settings(), (a, b)
