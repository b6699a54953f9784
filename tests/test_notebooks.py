"""Chapters, notebooks and pictures: in sync with each other and with the spec.

Framework-free (marker ``core``): the notebooks themselves run under nbval in
``make test-notebooks`` (scripts/notebooks.sh test); these tests check, in seconds, that the
committed notebooks are what their chapters generate, that they were executed, that every
chapter code block reaches a notebook, that the chapters render as Markdown, and that the
architecture pictures follow the spec.
"""
import json
import re
import shutil

import numpy as np
import pytest

from d2lport import notebook as nb
from d2lport import specs

pytestmark = pytest.mark.core

jupytext = pytest.importorskip("jupytext")
graphviz = pytest.importorskip("graphviz")
import d2lport.draw  # noqa: E402  (needs the graphviz package)

draw = d2lport.draw.draw
CHAPTERS = nb.chapter_files()


# --------------------------------------------------------------------------- the chapters
def test_the_five_chapters_exist():
    assert [c.stem for c in CHAPTERS] == ["1_vgg", "2_googlenet", "3_advanced_cnn",
                                          "4_frameworks", "5_devices"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_renders_as_markdown(chapter):
    text = chapter.read_text(encoding="utf-8")
    assert text.startswith("# "), "a chapter starts with its title"
    assert nb.markdown_problems(text) == []
    assert "$" in text, "the chapters explain with math"
    blocks = nb.code_blocks(text, chapter.name)
    assert blocks
    # one setup block per framework (the #@tab convention), the rest shared or tabbed
    for fw in nb.FRAMEWORKS:
        assert any(b["tabs"] == (fw,) and "d2lport import" in b["code"] for b in blocks), fw


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_html_has_its_headings_tables_figures_and_code(chapter):
    """Rendered like a code host does (CommonMark + tables): every heading, table, static
    figure and code block survives as such."""
    markdown_it = pytest.importorskip("markdown_it")
    text = chapter.read_text(encoding="utf-8")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    prose = [l for l in text.split("```")[::2] for l in l.splitlines()]
    assert html.count("<h2>") == sum(l.startswith("## ") for l in prose)
    assert html.count("<table>") == sum(1 for i, l in enumerate(prose)
                                        if l.startswith("|---") or l.startswith("|:-"))
    assert html.count("<img ") == text.count("](../notebooks/img/")
    assert html.count('<code class="language-python') == len(nb.code_blocks(text))


def test_every_chapter_code_block_reaches_a_notebook_and_all_notebooks_are_current():
    """The out-of-date test: committed notebooks == what the chapters generate now, executed
    top to bottom without errors; static tables and figures == what the spec gives now."""
    problems = nb.check()
    assert problems == [], "\n".join(problems)


def test_committed_notebooks_hold_outputs_of_a_run():
    for chapter in CHAPTERS:
        for fw in nb.FRAMEWORKS:
            data = json.loads(nb.notebook_path(chapter, fw).read_text(encoding="utf-8"))
            outputs = [o for c in data["cells"] if c["cell_type"] == "code"
                       for o in c.get("outputs", [])]
            text = "".join("".join(o.get("text", "")) for o in outputs)
            assert "mode" in text.lower(), "the parameters cell prints its mode"
            assert "test accuracy" in text and "examples/s" in text
            if "show_confusion_matrix" in chapter.read_text(encoding="utf-8"):
                pictures = sum("image/png" in o.get("data", {}) for o in outputs)
                assert pictures >= 3, "training curves, prediction grid, confusion matrix"


def test_training_cells_skip_output_comparison_and_shape_cells_do_not():
    for chapter in CHAPTERS:
        for cell in nb.chapter_notebook(chapter, "torch").cells:
            if cell.cell_type != "code":
                continue
            tags = cell.metadata.get("tags", [])
            if "d2p.train(" in cell.source or "d2lport.compare(" in cell.source:
                assert "nbval-ignore-output" in tags, cell.source[:80]
            if "d2p.summary(" in cell.source:
                assert "nbval-ignore-output" not in tags, cell.source[:80]


# --------------------------------------------------------------------------- the filter
CHAPTER = """# Title

See [the next chapter](2_next.md) and ![fig](../notebooks/img/x.svg).

```python
#@tab torch
import torch
```

```python
#@tab tensorflow, mxnet
import other
```

```python tags=["nbval-ignore-output"]
shared = 1
```

<!-- static: vgg_configurations -->
| a | b |
<!-- /static -->

## Exercises
"""


def test_filter_keeps_one_frameworks_blocks_and_rewrites_links():
    md = nb.notebook_markdown(CHAPTER, "torch", "1_title")
    assert "import torch" in md and "import other" not in md and "#@tab" not in md
    assert "shared = 1" in md and "| a | b |" not in md
    assert "[the next chapter](2_next.ipynb)" in md
    assert "![fig](../img/x.svg)" in md
    cells = jupytext.reads(md, fmt="md").cells
    code = [c for c in cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["import torch", "shared = 1"]
    assert code[1].metadata["tags"] == ["nbval-ignore-output"]
    md_tf = nb.notebook_markdown(CHAPTER, "tf", "1_title")
    assert "import other" in md_tf and "import torch" not in md_tf


def test_filter_refuses_unknown_frameworks_and_shell_blocks():
    with pytest.raises(nb.ChapterError, match="pytroch"):
        nb.notebook_markdown("```python\n#@tab pytroch\nx = 1\n```\n", "torch", "x")
    with pytest.raises(nb.ChapterError, match="bash"):
        nb.code_blocks("```bash\nmake\n```\n", "x")


# What each chapter teaches, shown in every framework's tab as the package's own code.
TAUGHT = {"1_vgg": {"vgg_block", "VGG"},
          "2_googlenet": {"Inception", "GoogLeNet"},
          "3_advanced_cnn": {"InceptionA", "ResidualBlock"}}


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if c.stem in TAUGHT],
                         ids=lambda p: p.stem)
def test_every_framework_tab_shows_the_package_class_code(chapter):
    shown = {fw: set() for fw in nb.FRAMEWORKS}
    for block in nb.code_blocks(chapter.read_text(encoding="utf-8")):
        first = block["code"].splitlines()[0] if block["code"] else ""
        m = nb.SOURCE.match(first)
        if not m:
            continue
        path, names = m.group(1), m.group(2).split()
        for fw in block["tabs"]:
            assert path.startswith(f"d2lport/{fw}/"), (chapter.name, fw, path)
            shown[fw] |= set(names)
            # the block holds exactly the package's current code, and it defines the names
            assert block["code"].split("\n", 1)[1] == nb.package_source(path, names)
            for name in names:
                if name != "imports":          # the module's imports, made absolute
                    assert f"class {name}(" in block["code"] or f"def {name}(" in block["code"]
    for fw, names in shown.items():
        assert TAUGHT[chapter.stem] <= names, (chapter.name, fw, TAUGHT[chapter.stem] - names)


def test_source_blocks_are_copied_from_the_package_and_drift_is_caught(tmp_path, monkeypatch):
    pkg = tmp_path / "d2lport" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("import x\n\n\n@dec\nclass A(B):\n    pass\n\n\n"
                              "def f(y):\n    return y\n")
    monkeypatch.setattr(nb, "ROOT", tmp_path)
    text = "```python\n#@tab torch\n#@source d2lport/torch/m.py A f\nstale\n```\n"
    synced = nb.sync_sources(text)
    assert synced == ("```python\n#@tab torch\n#@source d2lport/torch/m.py A f\n@dec\n"
                      "class A(B):\n    pass\n\n\ndef f(y):\n    return y\n```\n")
    assert nb.sync_sources(synced) == synced
    with pytest.raises(nb.ChapterError, match="no top-level class or function 'C'"):
        nb.sync_sources(text.replace(" A f", " C"))
    with pytest.raises(nb.ChapterError, match="no file"):
        nb.sync_sources(text.replace("m.py", "n.py"))


def test_static_regions_are_recomputed_from_the_spec(monkeypatch):
    text = "<!-- static: vgg_configurations -->\nold\n<!-- /static -->\n"
    synced = nb.sync_static(text)
    assert "old" not in synced and "132,863,336" in synced      # torchvision's vgg11
    monkeypatch.setitem(specs.VGG_CONFIGS, "A", [64, "M", 128, "M", 256, "M", 512, "M",
                                                 512, "M"])
    assert nb.sync_static(text) != synced


def test_vgg_table_matches_torchvision_counts():
    table = nb.vgg_configurations().text
    for count in ("132,863,336", "133,047,848", "138,357,544", "143,667,240"):
        assert count in table
    assert table.count("\n") == 1 + len(specs.VGG_CONFIGS)


# --------------------------------------------------------------------------- pictures
def test_inception_picture_shows_the_branches_and_channel_counts():
    src = draw("inception").source
    for text in ("192 × 28 × 28", "64 + 128 + 32 + 32 = 256 × 28 × 28", "5 × 5 conv, 32",
                 "3 × 3 max-pool"):
        assert text in src, text
    assert draw("inception", c1=65).source != src
    assert "65 + 128 + 32 + 32 = 257" in draw("inception", c1=65).source


def test_pictures_change_when_the_spec_changes(monkeypatch):
    before = {w: draw(w).source for w in ("googlenet", "vgg", "inception_a", "residual_net")}
    monkeypatch.setitem(specs.INCEPTION_CHANNELS, "inception3a", (60, (96, 128), (16, 32), 32))
    monkeypatch.setitem(specs.VGG_CONFIGS, "A", [64, 64, "M", 128, "M", 256, 256, "M",
                                                 512, 512, "M", 512, 512, "M"])
    assert draw("googlenet").source != before["googlenet"]
    assert "60 | 128 | 32 | 32 → 252" in draw("googlenet").source
    assert draw("vgg").source != before["vgg"]
    monkeypatch.setattr(specs, "inception_a", _wider_inception_a(specs.inception_a))
    assert draw("inception_a").source != before["inception_a"]
    assert draw("residual_net").source == before["residual_net"]


def _wider_inception_a(original):
    def wider(name="inception_a"):
        block = original(name)
        first = block.branches[0]
        conv = first.layers[0]
        branch = specs.Sequential(first.name, (specs.Conv(conv.name, 32, 1, relu=False),))
        return specs.Concat(block.name, (branch,) + block.branches[1:])
    return wider


def test_networks_and_aux_heads_are_drawn():
    src = draw("googlenet_v1", num_classes=10, in_channels=1, image_size=96).source
    assert "aux1 (training only)" in src and "aux2" in src and "1024 × 3 × 3" in src
    assert "relu(x + f(x))" in draw("residual_net").source
    assert "input\n1 × 224 × 224" in draw("vgg_d2l").source.replace("\\n", "\n")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz' dot is not installed")
def test_pictures_render_to_svg(tmp_path):
    d = draw("inception")
    svg = d._repr_svg_()
    assert "<svg" in svg and "concatenate" in svg
    assert d.save(tmp_path / "x.svg").read_text() == svg
    assert d.save(tmp_path / "x.gv").read_text() == d.source
    assert "Diagram" in repr(d)


# --------------------------------------------------------------------------- helpers
def test_settings_follow_the_smoke_variable(monkeypatch, capsys):
    monkeypatch.setenv("D2LPORT_SMOKE", "1")
    p = nb.settings(full=dict(epochs=10, limit=None), smoke=dict(epochs=1, limit=256))
    assert (p.mode, p.epochs, p.limit) == ("smoke", 1, 256)
    assert "SMOKE" in capsys.readouterr().out
    monkeypatch.setenv("D2LPORT_SMOKE", "0")
    p = nb.settings(full=dict(epochs=10, limit=None), smoke=dict(epochs=1))
    assert (p.mode, p.epochs, p.limit) == ("full", 10, None)
    assert "FULL" in capsys.readouterr().out


class _FakeBackend:
    @staticmethod
    def predict(net, X):
        return X.reshape(len(X), -1).sum(axis=1).astype(int) % 10


def test_predictions_confusion_matrix_and_plots():
    batches = [(np.full((4, 1, 3, 3), i, np.float32), np.arange(4)) for i in range(3)]
    images, y, y_hat = nb.predictions(_FakeBackend, None, batches, max_examples=10)
    assert images.shape == (10, 3, 3) and len(y) == len(y_hat) == 10
    m = nb.confusion_matrix(y, y_hat)
    assert m.sum() == 10 and m.shape == (10, 10)
    assert np.trace(m) == int((y == y_hat).sum())
    fig = nb.show_predictions(images, y, y_hat, n=6, cols=3)
    assert len(fig.axes) == 6
    assert nb.show_confusion_matrix(y, y_hat).axes
    # channels-last batches (TensorFlow) come out as (N, H, W) too
    images, _, _ = nb.predictions(_FakeBackend, None, [(np.zeros((2, 5, 5, 1)), np.zeros(2))])
    assert images.shape == (2, 5, 5)


# --------------------------------------------------------------------------- recorded runs
# The networks each chapter trains: its training section shows their committed records.
RECORDED = {"1_vgg": ("vgg_d2l", "vgg_d2l_bn"), "2_googlenet": ("googlenet", "googlenet_v1"),
            "3_advanced_cnn": ("inception_a_net", "residual_net")}
PAPERS = {"1_vgg": ("1409.1556", "1502.03167"),
          "2_googlenet": ("1409.4842", "1312.4400"),
          "3_advanced_cnn": ("1512.03385",)}


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if c.stem in RECORDED],
                         ids=lambda p: p.stem)
def test_training_sections_show_the_records_and_the_live_run_says_which_it_was(chapter):
    text = chapter.read_text(encoding="utf-8")
    blocks = nb.code_blocks(text, chapter.name)
    shared = [b for b in blocks if b["tabs"] == nb.FRAMEWORKS]
    for name in RECORDED[chapter.stem]:
        calls = [f'show.{f}("{name}")' for f in ("recipe_notes", "table", "confusion",
                                                  "prediction_grid")]
        cell = [b for b in shared if all(c in b["code"] for c in calls)]
        assert cell, f"{chapter.name}: no shared cell shows the records of {name}"
        assert f'"{name}"' in cell[0]["code"].split("show.curves(", 1)[1].split(")")[0]
        assert "nbval-ignore-output" in cell[0]["info"], "records change: output ignored"
    params = [b for b in blocks if '"parameters"' in b["info"]]
    assert len(params) == 1 and "show.live_settings(" in params[0]["code"]
    for b in blocks:
        if "d2p.train(" in b["code"]:
            code = b["code"]
            assert "initial_weights(" in code, "the live run starts where the records did"
            assert "optimizer=P" in code and "lr=P" in code and "momentum=P" in code
            assert re.search(r"nb\.report\([^)]*, P", code), "the report says which run"
    assert "lr=0.05" not in text and "learning rate 0.05" not in text


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_cite_their_sources_with_links(chapter):
    text = chapter.read_text(encoding="utf-8")
    assert re.search(r"^## References\s*$", text, re.M)
    refs = text.split("## References", 1)[1].split("## Exercises", 1)[0]
    assert "https://d2l.ai" in refs
    for paper in PAPERS.get(chapter.stem, ()):
        assert f"https://arxiv.org/abs/{paper}" in refs, paper


def test_googlenet_chapter_says_where_1x1_and_global_pooling_come_from():
    text = (nb.CHAPTERS / "2_googlenet.md").read_text(encoding="utf-8")
    section = text.split("### Where", 1)[1].split("\n## ", 1)[0]
    assert "Network in Network" in section and "1312.4400" in section
    assert "global average pooling" in section and "1\\times1" in section


def test_frameworks_chapter_shows_the_overview_of_the_records():
    text = (nb.CHAPTERS / "4_frameworks.md").read_text(encoding="utf-8")
    assert any("show.overview()" in b["code"] for b in nb.code_blocks(text))


# ----------------------------------------------------------------- native log lines
TF_IMPORT_LOG = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1795578779.120134    7809 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors "
    "from different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.\n"]


def test_strip_native_logs_removes_only_the_frameworks_own_log_lines():
    notebook = {"cells": [
        {"cell_type": "code", "source": "import tensorflow as tf", "outputs": [
            {"output_type": "stream", "name": "stderr", "text": list(TF_IMPORT_LOG)},
            {"output_type": "stream", "name": "stderr",
             "text": TF_IMPORT_LOG[1] + "UserWarning: a real warning\n"},
            {"output_type": "stream", "name": "stdout", "text": [TF_IMPORT_LOG[1]]}]},
        {"cell_type": "markdown", "source": TF_IMPORT_LOG[1]}]}
    assert nb.strip_native_logs(notebook) == 3
    outputs = notebook["cells"][0]["outputs"]
    assert [o["name"] for o in outputs] == ["stderr", "stdout"]        # the empty one went
    assert outputs[0]["text"] == "UserWarning: a real warning\n"       # a real line stays
    assert outputs[1]["text"] == [TF_IMPORT_LOG[1]]                    # stdout untouched
    assert nb.strip_native_logs(notebook) == 0


def test_committed_notebooks_hold_no_native_log_lines():
    """nbval's kernel drops them, so a stored one fails `make test-notebooks`: the build
    strips them (scripts/notebooks.sh, `python -m d2lport.notebook strip-logs`)."""
    for path in sorted(nb.NOTEBOOKS.glob("*/*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        assert nb.strip_native_logs(notebook) == 0, f"{path}: run `make notebooks`"
