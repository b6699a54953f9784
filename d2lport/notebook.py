"""Notebook helpers, and the chapter -> notebook tooling behind ``scripts/notebooks.sh``.

In a notebook (framework-neutral: predictions come back as numpy arrays)::

    from d2lport import notebook as nb
    P = nb.settings(full=dict(epochs=10, limit=None), smoke=dict(epochs=1, limit=256))
    images, y, y_hat = nb.predictions(d2p, net, test_iter)
    nb.show_predictions(images, y, y_hat)
    nb.show_confusion_matrix(y, y_hat)

``D2LPORT_SMOKE=1`` in the environment selects the smoke settings (a small subset, one
epoch: every notebook runs on a CPU in seconds); without it the book's full settings run.

The chapter tooling (``python -m d2lport.notebook ...``; see ``chapters/README.md``):

* ``md CHAPTER FRAMEWORK``: the chapter's Markdown for one framework, ready for jupytext:
  code blocks whose first line is ``#@tab <frameworks>`` are kept only for those
  frameworks (the marker line is dropped; a block without a marker is for all of them),
  ``<!-- static: NAME -->`` regions (the chapter's printed copy of a computed table or
  figure, which the notebook computes live) are dropped, and relative links are rewritten
  for the notebook's folder;
* ``sync``: recomputes the static regions of every chapter and the figures under
  ``notebooks/img`` from the spec;
* ``check``: fails when a chapter's static regions or figures are stale, when a committed
  notebook's cells differ from what its chapter generates now, when a notebook was not
  executed, or when a chapter code block reaches no notebook.

This module imports no framework.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import registry, specs
from .data import LABELS

SMOKE_ENV = "D2LPORT_SMOKE"


# =========================================================================== parameters
def smoke_mode() -> bool:
    """True when ``D2LPORT_SMOKE`` is set to something other than 0/false/no/empty."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class Settings(SimpleNamespace):
    """The parameters of a notebook run: attributes (``P.epochs``) plus ``P.mode``
    (``smoke`` or ``full``) and, when the full settings are a recipe's
    (:func:`d2lport.results.show.live_settings`), ``P.recipe`` and ``P.profile``."""

    def __repr__(self):
        items = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "mode")
        return f"Settings({self.mode}: {items})"


# keys of the settings that say where they come from, not how to train
_LABELS = ("recipe", "profile")


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={'all' if v is None and k == 'limit' else v}"
                     for k, v in values.items() if k not in _LABELS)


def _full_run(values: dict) -> str:
    """What the full settings are: a profile's recipe, or the chapter's own settings."""
    from .results.recipes import PROFILE_ENV
    recipe, profile = values.get("recipe"), values.get("profile")
    if profile == "cpu":
        return (f"the CPU recipe `{recipe}`, the settings of the recorded runs "
                f"(results/{recipe}-<framework>.json)")
    if profile == "book":
        return f"the book's settings for `{recipe}` ({PROFILE_ENV}=book, meant for a GPU)"
    return "the full settings"


def which_run(P: "Settings", recipe: Optional[str] = None) -> str:
    """What kind of run the settings ``P`` make, as a phrase: a smoke check, the CPU recipe
    of the records, or the book profile's settings (``recipe`` overrides ``P.recipe``, for a
    second network trained with the same settings)."""
    from .results.recipes import PROFILE_ENV
    recipe = recipe or getattr(P, "recipe", None)
    profile = getattr(P, "profile", None)
    if P.mode == "smoke":
        limit = getattr(P, "limit", None)
        return (f"a SMOKE run ({SMOKE_ENV}=1): a check that the code runs"
                + (f" on {limit} images" if limit else "") + ", not a result")
    if profile == "cpu":
        return f"a full run of the CPU recipe `{recipe}`, the settings of its recorded runs"
    if profile == "book":
        return f"a full run of `{recipe}` with the book profile's settings ({PROFILE_ENV}=book)"
    return "a full run"


def settings(full: dict, smoke: dict, quiet: bool = False) -> Settings:
    """The parameters cell: ``full`` (the book's run, or a recipe's:
    ``full=show.live_settings(name)``) or, with ``D2LPORT_SMOKE=1``, ``smoke`` (keys
    missing from ``smoke`` keep their full value).  Prints which."""
    if smoke_mode():
        values, mode = {**full, **smoke}, "smoke"
    else:
        values, mode = dict(full), "full"
    if not quiet:
        from .results.recipes import PROFILE_ENV
        other = ""
        if full.get("profile") == "cpu":
            other = f"; {PROFILE_ENV}=book selects the book's settings (for a GPU)"
        elif full.get("profile") == "book":
            other = f"; unset {PROFILE_ENV} for the CPU recipe of the recorded runs"
        if mode == "smoke":
            print(f"SMOKE mode ({SMOKE_ENV}=1): {_describe(values)}\n"
                  "  a quick check on a small subset, not a result: accuracies are far "
                  "below the recorded runs'.\n"
                  f"  Full settings (unset {SMOKE_ENV}), {_full_run(full)}: "
                  f"{_describe(full)}{other}")
        else:
            print(f"FULL mode, {_full_run(full)}: {_describe(values)}\n"
                  f"  ({SMOKE_ENV}=1 selects the smoke settings: "
                  f"{_describe({**full, **smoke})}{other})")
    return Settings(mode=mode, **values)


# =========================================================================== results
def to_numpy(x) -> np.ndarray:
    """numpy from a torch tensor, a TF tensor, an MXNet NDArray or anything array-like."""
    if hasattr(x, "asnumpy"):                       # MXNet
        return x.asnumpy()
    if hasattr(x, "detach"):                        # torch
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy"):                         # TensorFlow eager tensors
        return x.numpy()
    return np.asarray(x)


def _images_2d(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) or (N, H, W, 1) -> (N, H, W)."""
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else x[..., 0]
    return x


def predictions(d2p, net, data_iter, max_examples: Optional[int] = None
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images (N, H, W), labels, predicted labels)`` over ``data_iter`` with the
    backend's ``d2p.predict`` (evaluation mode), as numpy arrays."""
    images, ys, preds, seen = [], [], [], 0
    for X, y in data_iter:
        images.append(_images_2d(to_numpy(X)))
        ys.append(to_numpy(y).astype(np.int64))
        preds.append(to_numpy(d2p.predict(net, X)).astype(np.int64))
        seen += len(ys[-1])
        if max_examples is not None and seen >= max_examples:
            break
    cut = slice(0, max_examples)
    return (np.concatenate(images)[cut], np.concatenate(ys)[cut], np.concatenate(preds)[cut])


def _pyplot():
    import matplotlib
    if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def show_predictions(images, labels, predicted, n: int = 16, cols: int = 8,
                     names: Sequence[str] = LABELS, title: str = ""):
    """A grid of the first ``n`` images, true label above predicted one (red when wrong);
    returns the matplotlib figure."""
    plt = _pyplot()
    images, labels, predicted = (np.asarray(a) for a in (images, labels, predicted))
    n = min(n, len(labels))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.75 * rows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray_r")
        ok = labels[i] == predicted[i]
        ax.set_title(f"{names[labels[i]]}\n{names[predicted[i]]}", fontsize=7.5,
                     color="black" if ok else "red")
    fig.suptitle((f"{title}: " if title else "") + "true label above the prediction "
                 "(red: wrong)", fontsize=9)
    fig.tight_layout()
    return fig


def confusion_matrix(labels, predicted, num_classes: int = 10) -> np.ndarray:
    """Counts ``m[true, predicted]``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return m


def show_confusion_matrix(labels, predicted, names: Sequence[str] = LABELS, title: str = ""):
    """The confusion matrix as a picture (rows: true class, columns: predicted), with the
    counts written in; returns the matplotlib figure."""
    plt = _pyplot()
    m = confusion_matrix(labels, predicted, len(names))
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = m.max() if m.size else 0
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > top / 2 else "black")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(title or f"accuracy {acc:.3f} on {m.sum()} test images", fontsize=9)
    fig.tight_layout()
    return fig


def report(history, settings: Optional[Settings] = None, recipe: Optional[str] = None) -> str:
    """Final test accuracy, throughput and device of a training ``History``; with the
    notebook's ``settings``, a second line saying which run it was (a smoke check, the CPU
    recipe, the book's settings) and, for the CPU recipe, the committed record's accuracy in
    the same framework."""
    last = history.epochs[-1]
    line = (f"{history.model} ({history.framework}): test accuracy {last['test_acc']:.3f}, "
            f"train accuracy {last['train_acc']:.3f}, loss {last['loss']:.3f} after "
            f"{len(history.epochs)} epoch(s); {last['examples_per_sec']:.1f} examples/s "
            f"on {history.device}")
    if settings is None:
        return line
    line += "\n  this was " + which_run(settings, recipe)
    name = recipe or getattr(settings, "recipe", None)
    if settings.mode == "full" and getattr(settings, "profile", None) == "cpu" and name:
        from .results import record as _record
        path = _record.path_for(f"{name}-{history.framework}")
        try:
            h = _record.load(path)["history"]
            line += (f"; the committed record ({path.parent.name}/{path.name}): test "
                     f"accuracy {h[-1]['test_acc']:.3f} after {len(h)} epoch(s)")
        except _record.RecordError:
            line += f"; {path.parent.name}/{path.name} is not recorded yet (make results)"
    return line


def same_as_package(d2p, mine, name: str, tol: float = 1e-6, **kwargs) -> None:
    """Check that ``mine``, a network built from a class typed into the notebook, is
    ``d2p.create_model(name, **kwargs)``: the same canonical parameter names and shapes, the
    same parameter count and, with the package model's weights loaded, the same output.
    Raises AssertionError naming the first difference; prints one line when they agree."""
    ref = d2p.create_model(name, seed=0, **kwargs)
    theirs, ours = d2p.get_weights(ref), d2p.get_weights(mine)
    if list(theirs) != list(ours):
        extra = sorted(set(ours) - set(theirs))[:3]
        missing = sorted(set(theirs) - set(ours))[:3]
        order = "" if extra or missing else " (the same names in another order)"
        raise AssertionError(f"parameter names differ{order}: extra {extra}, missing {missing}")
    for key in theirs:
        if theirs[key].shape != ours[key].shape:
            raise AssertionError(f"{key}: shape {ours[key].shape}, the package has "
                                 f"{theirs[key].shape}")
    if d2p.count_params(mine) != d2p.count_params(ref):
        raise AssertionError(f"{d2p.count_params(mine):,} parameters, the package has "
                             f"{d2p.count_params(ref):,}")
    d2p.set_weights(mine, theirs)
    x = np.random.default_rng(0).standard_normal((2,) + tuple(ref.spec.input_shape))
    x = x.astype(np.float32)
    a, b = np.asarray(d2p.logits(mine, x)), np.asarray(d2p.logits(ref, x))
    diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
    if not diff <= tol * max(1.0, float(np.max(np.abs(b)))):
        raise AssertionError(f"outputs differ by up to {diff:.3g}")
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    shown = getattr(d2p, "network", lambda net: net)(mine)   # JAX: the linen module
    line = (f"{type(shown).__name__} typed here = d2p.create_model({name!r}{args}): "
            f"{len(theirs)} weight arrays with the same names and shapes, "
            f"{d2p.count_params(ref):,} parameters, the same output for the same weights")
    print(line)


# =========================================================================== static outputs
class Markdown:
    """Markdown text that Jupyter renders (``_repr_markdown_``) and ``print`` shows raw."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def vgg_configurations(**kwargs) -> Markdown:
    """The VGG configurations A–E (``specs.VGG_CONFIGS`` through ``specs.vgg``) as a
    Markdown table: conv layers per block, weight layers, parameters at 224 px, 1000
    classes (``kwargs`` go to :func:`specs.vgg`)."""
    names = {cfg: name for name, cfg in specs.VGG_MODELS.items()}
    header = ["configuration", "model"] + [f"block {i}" for i in range(1, 6)] + \
        ["weight layers", "parameters"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + [":-:"] * 5
                                                            + ["--:"] * 2) + "|"]
    for cfg in specs.VGG_CONFIGS:
        spec = specs.vgg(cfg, **kwargs)
        cells = []
        for block in spec.blocks:
            if not isinstance(block, specs.Sequential):
                continue
            parts = []
            for layer in block.layers:
                if isinstance(layer, specs.Conv):
                    parts.append(f"{layer.kernel}×{layer.kernel}-{layer.out_channels}")
                elif isinstance(layer, specs.LRN):
                    parts.append("LRN")
            cells.append(", ".join(parts))
        weights = sum(1 for leaf in specs.iter_leaves(spec)
                      if isinstance(leaf.layer, (specs.Conv, specs.Dense)))
        row = [cfg, f"`{names[cfg]}`"] + cells + [str(weights),
                                                  f"{specs.count_params(spec):,}"]
        lines.append("| " + " | ".join(row) + " |")
    return Markdown("\n".join(lines))


# Figures the chapters show as static images (``notebooks/img/NAME.svg``): NAME -> the
# d2lport.draw arguments.  The notebooks draw them live.
FIGURES: Dict[str, Tuple[str, dict]] = {
    "vgg": ("vgg", {}),
    "vgg_d2l": ("vgg_d2l", {}),
    "inception": ("inception", {}),
    "googlenet": ("googlenet", {}),
    "googlenet_v1": ("googlenet_v1", dict(num_classes=10, in_channels=1, image_size=96)),
    "inception_a": ("inception_a", {}),
    "residual_block": ("residual_block", {}),
}
# Static Markdown regions: NAME -> function returning the Markdown.
TABLES = {"vgg_configurations": lambda: vgg_configurations().text}


# =========================================================================== chapter tooling
ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
NOTEBOOKS = ROOT / "notebooks"
IMG = NOTEBOOKS / "img"
FRAMEWORKS = registry.FRAMEWORKS
TITLES = {"torch": "PyTorch", "tensorflow": "TensorFlow", "mxnet": "MXNet",
          "jax": "JAX"}

FENCE = re.compile(r"^(`{3,})\s*([A-Za-z0-9_+-]*)(.*)$")
TAB = re.compile(r"^\s*#@tab\s+(.+?)\s*$")
STATIC_BEGIN = re.compile(r"^<!--\s*static:\s*([A-Za-z0-9_]+)\s*-->\s*$")
STATIC_END = re.compile(r"^<!--\s*/static\s*-->\s*$")
# A code block's line (after ``#@tab``) naming package source it shows:
# ``#@source d2lport/torch/googlenet.py Inception GoogLeNet``.  ``sync`` copies those
# top-level classes/functions into the block; ``check`` fails when the copy drifts.
SOURCE = re.compile(r"^\s*#@source\s+(\S+)\s+(.+?)\s*$")
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


class ChapterError(ValueError):
    pass


def chapter_files(root: Path = CHAPTERS) -> List[Path]:
    """The chapters, in order: ``chapters/<number>_<name>.md``."""
    return sorted(p for p in root.glob("*.md") if re.match(r"\d+_", p.name))


def parse_tabs(line: str, where: str = "") -> Optional[Tuple[str, ...]]:
    """Frameworks named by a ``#@tab`` line (``all`` = every framework), None if not one."""
    m = TAB.match(line)
    if not m:
        return None
    names = [n.strip() for n in m.group(1).split(",") if n.strip()]
    if names == ["all"]:
        return FRAMEWORKS
    out = []
    for n in names:
        try:
            out.append(registry.normalize_framework(n))
        except ValueError:
            raise ChapterError(f"{where}: unknown framework {n!r} in {line.strip()!r}; use "
                               f"all or {', '.join(FRAMEWORKS)}") from None
    return tuple(out)


def code_blocks(text: str, where: str = "") -> List[dict]:
    """The ```python blocks of a chapter: ``{"line", "end", "info", "code", "tabs"}``
    (``line``: the opening fence, 1-based; ``end``: the line after the closing one)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, info = m.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise ChapterError(f"{where}:{i + 1}: code block never closed")
        body = lines[i + 1:end]
        if lang == "python":
            tabs = parse_tabs(body[0], f"{where}:{i + 2}") if body else None
            if tabs is not None:
                body = body[1:]
            blocks.append(dict(line=i + 1, end=end + 1, info=info, code="\n".join(body),
                               tabs=tabs if tabs is not None else FRAMEWORKS))
        elif lang not in ("", "text", "markdown", "md"):
            raise ChapterError(f"{where}:{i + 1}: a ```{lang} block would become a notebook "
                               "cell (jupytext runs it as a %%magic): use ```python, or "
                               "```text for text to show")
        i = end + 1
    return blocks


def _rewrite_link(target: str, framework: str, chapters_dir: Path) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return target
    path, _, anchor = target.partition("#")
    full = (chapters_dir / path).resolve()
    if full.parent == chapters_dir.resolve() and re.match(r"\d+_.*\.md$", full.name):
        new = full.with_suffix(".ipynb").name                # the same framework's notebook
    else:
        new = os.path.relpath(full, NOTEBOOKS / framework)
    return new + (f"#{anchor}" if anchor else "")


def notebook_markdown(text: str, framework: str, name: str,
                      chapters_dir: Path = CHAPTERS) -> str:
    """The chapter ``text`` for one framework, as jupytext Markdown (see the module doc)."""
    framework = registry.normalize_framework(framework)
    out: List[str] = [
        f"*{TITLES[framework]} notebook generated from "
        f"[chapters/{name}.md](../../chapters/{name}.md) by `make notebooks`: edit the "
        "chapter, not this file. The stored outputs are from the run whose settings the "
        "parameters cell prints; the committed notebooks ran in smoke mode "
        f"(`{SMOKE_ENV}=1`) on a 2-core CPU, so their live training cells are checks, not "
        "results. The results are the recorded runs of `make results` (`results/*.json`), "
        f"which the training sections show. Unset `{SMOKE_ENV}` to train the CPU recipe "
        "of those records here (`D2LPORT_PROFILE=book`: the book's settings).*",
        "", ""]
    lines, i = text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        after = static_region_end(lines, i, name)
        if after is not None:
            i = after
            continue
        fm = FENCE.match(line)
        if fm:
            fence, lang, _ = fm.groups()
            end = i + 1
            while end < len(lines) and lines[end].strip() != fence:
                end += 1
            body = lines[i + 1:end]
            if lang == "python":
                tabs = parse_tabs(body[0], f"{name}:{i + 2}") if body else None
                if tabs is not None:
                    body = body[1:]
                if tabs is not None and framework not in tabs:
                    # drop the block and the blank line after it
                    i = end + 1
                    if i < len(lines) and not lines[i].strip():
                        i += 1
                    continue
            out += [line] + body + [lines[end] if end < len(lines) else fence]
            i = end + 1
            continue
        out.append(LINK.sub(lambda m: m.group(1) + _rewrite_link(m.group(2), framework,
                                                                 chapters_dir) + m.group(3),
                            line))
        i += 1
    return "\n".join(out).rstrip() + "\n"


def chapter_notebook(chapter: Path, framework: str):
    """The notebook (nbformat node, no outputs) jupytext makes of a chapter for a framework."""
    import jupytext
    md = notebook_markdown(chapter.read_text(encoding="utf-8"), framework, chapter.stem,
                           chapter.parent)
    return jupytext.reads(md, fmt="md")


def notebook_path(chapter: Path, framework: str) -> Path:
    return NOTEBOOKS / framework / f"{chapter.stem}.ipynb"


def _cell_key(cell) -> Tuple[str, str, Tuple[str, ...]]:
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    return (cell["cell_type"], source, tuple(cell.get("metadata", {}).get("tags", ())))


# --------------------------------------------------------------------------- static regions
def static_region_end(lines: Sequence[str], i: int, where: str = "") -> Optional[int]:
    """When ``lines[i]`` opens a ``<!-- static: name -->`` region (a code host's printed
    copy of an output, which the notebooks and the book replace by the live output): the
    index after its closing line and the blank line after that; else None."""
    m = STATIC_BEGIN.match(lines[i])
    if not m:
        return None
    end = i + 1
    while end < len(lines) and not STATIC_END.match(lines[end]):
        end += 1
    if end == len(lines):
        raise ChapterError(f"{where}: <!-- static: {m.group(1)} --> never closed")
    end += 1
    return end + 1 if end < len(lines) and not lines[end].strip() else end


def without_static(lines: Sequence[str], where: str = "") -> List[str]:
    """``lines`` less their static regions (:func:`static_region_end`)."""
    out, i = [], 0
    while i < len(lines):
        after = static_region_end(lines, i, where)
        if after is None:
            out.append(lines[i])
        i = i + 1 if after is None else after
    return out


def render_static(name: str) -> str:
    """The Markdown of a static region: a table from TABLES, or a figure's image line."""
    if name in TABLES:
        return TABLES[name]()
    if name in FIGURES:
        what, kwargs = FIGURES[name]
        args = ", ".join([repr(what)] + [f"{k}={v!r}" for k, v in kwargs.items()])
        return f"![d2lport.draw({args})](../notebooks/img/{name}.svg)"
    raise ChapterError(f"unknown static region {name!r}: known {sorted({**TABLES, **FIGURES})}")


def sync_static(text: str, where: str = "") -> str:
    """The chapter text with every static region's content recomputed."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = STATIC_BEGIN.match(lines[i])
        out.append(lines[i])
        i += 1
        if not m:
            continue
        while i < len(lines) and not STATIC_END.match(lines[i]):
            i += 1
        if i == len(lines):
            raise ChapterError(f"{where}: <!-- static: {m.group(1)} --> never closed")
        # blank lines around the content: a table or an image is its own Markdown block
        out += [""] + render_static(m.group(1)).splitlines() + [""]
        out.append(lines[i])
        i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def package_source(path: str, names: Sequence[str]) -> str:
    """The source of the top-level classes/functions ``names`` of the package file ``path``
    (relative to the repository), decorators included, in the order asked."""
    import ast
    file = ROOT / path
    if not file.is_file():
        raise ChapterError(f"#@source: no file {path}")
    text = file.read_text(encoding="utf-8")
    lines = text.splitlines()
    nodes = {n.name: n for n in ast.parse(text).body
             if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    parts = []
    for name in names:
        if name == "imports":
            parts.append(_module_imports(path, text))
            continue
        if name not in nodes:
            raise ChapterError(f"#@source: {path} has no top-level class or function {name!r} "
                               f"(it has {', '.join(nodes)})")
        node = nodes[name]
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        parts.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n\n\n".join(parts)


def _module_imports(path: str, text: str) -> str:
    """The module's top-level imports (``#@source PATH imports``), relative ones made
    absolute (``from .layers import X`` -> ``from d2lport.torch.layers import X``) so that
    a notebook can run them."""
    import ast
    package = path[:-3].replace("/", ".").split(".")[:-1]       # d2lport/torch/x.py
    lines = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            code = ast.get_source_segment(text, node)
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
                names = [a.name + (f" as {a.asname}" if a.asname else "") for a in node.names]
                code = f"from {module} import {', '.join(names)}"
                if len(code) > 92:
                    import textwrap
                    code = textwrap.fill(f"from {module} import (" + ", ".join(names) + ")",
                                         92, subsequent_indent="    ", break_on_hyphens=False)
            lines.append(code)
    return "\n".join(lines)


def sync_sources(text: str, where: str = "") -> str:
    """The chapter text with every ``#@source`` block's body copied anew from the package."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fm = FENCE.match(lines[i])
        out.append(lines[i])
        i += 1
        if not fm or fm.group(2) != "python":
            continue
        fence = fm.group(1)
        end = i
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = lines[i:end]
        head = 1 if body and TAB.match(body[0]) else 0
        m = SOURCE.match(body[head]) if len(body) > head else None
        if m:
            try:
                body = body[:head + 1] + package_source(m.group(1), m.group(2).split()).splitlines()
            except ChapterError as err:
                raise ChapterError(f"{where}:{i + head + 1}: {err}") from None
        out += body
        i = end
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def sync(chapters: Iterable[Path] = None) -> List[str]:
    """Recompute static regions, the package code the chapters show, and the figures;
    returns what changed."""
    from .draw import draw
    changed = []
    for chapter in chapters or chapter_files():
        text = chapter.read_text(encoding="utf-8")
        new = sync_sources(sync_static(text, chapter.name), chapter.name)
        if new != text:
            chapter.write_text(new, encoding="utf-8")
            changed.append(str(chapter.relative_to(ROOT)))
    IMG.mkdir(parents=True, exist_ok=True)
    for name, (what, kwargs) in FIGURES.items():
        d = draw(what, **kwargs)
        gv, svg = IMG / f"{name}.gv", IMG / f"{name}.svg"
        if not gv.exists() or gv.read_text(encoding="utf-8") != d.source or not svg.exists():
            gv.write_text(d.source, encoding="utf-8")
            svg.write_text(d.svg(), encoding="utf-8")
            changed += [str(gv.relative_to(ROOT)), str(svg.relative_to(ROOT))]
    return changed


# --------------------------------------------------------------------------- checks
def check(frameworks: Sequence[str] = FRAMEWORKS, chapters: Iterable[Path] = None,
          executed: bool = True) -> List[str]:
    """Every way the chapters, figures and committed notebooks can be out of date; an
    empty list when all is well."""
    from .draw import draw
    problems: List[str] = []
    chapters = list(chapters or chapter_files())
    if not chapters:
        return [f"no chapters in {CHAPTERS}"]
    for chapter in chapters:
        rel = chapter.relative_to(ROOT)
        text = chapter.read_text(encoding="utf-8")
        try:
            blocks = code_blocks(text, str(rel))
            if sync_static(text, str(rel)) != text:
                problems.append(f"{rel}: a static region is stale (the spec changed): run "
                                "`make notebooks` (or python -m d2lport.notebook sync)")
            if sync_sources(text, str(rel)) != text:
                problems.append(f"{rel}: a #@source block differs from the package's code: "
                                "run `make notebooks` (or python -m d2lport.notebook sync)")
        except ChapterError as err:
            problems.append(str(err))
            continue
        problems += [f"{rel}: {p}" for p in markdown_problems(text)]
        seen_sources = set()
        for fw in frameworks:
            path = notebook_path(chapter, fw)
            want = [_cell_key(c) for c in chapter_notebook(chapter, fw).cells]
            if not path.exists():
                problems.append(f"{path.relative_to(ROOT)} is missing: run `make notebooks`")
                continue
            nb = json.loads(path.read_text(encoding="utf-8"))
            have = [_cell_key(c) for c in nb["cells"]]
            if want != have:
                first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b),
                             min(len(want), len(have)))
                problems.append(f"{path.relative_to(ROOT)} is out of date with {rel} (cell "
                                f"{first + 1} differs): run `make notebooks`")
            if executed:
                problems += [f"{path.relative_to(ROOT)}: {p}" for p in execution_problems(nb)]
            seen_sources |= {c[1] for c in want if c[0] == "code"}
        for b in blocks:
            if b["code"] not in seen_sources and set(b["tabs"]) & set(frameworks):
                problems.append(f"{rel}:{b['line']}: code block reaches no notebook")
        unused = [b for b in blocks if not set(b["tabs"]) & set(FRAMEWORKS)]
        problems += [f"{rel}:{b['line']}: code block names no framework" for b in unused]
    for name, (what, kwargs) in FIGURES.items():
        gv, svg = IMG / f"{name}.gv", IMG / f"{name}.svg"
        if not gv.exists() or not svg.exists():
            problems.append(f"{gv.relative_to(ROOT)} (or .svg) is missing: run `make notebooks`")
        elif gv.read_text(encoding="utf-8") != draw(what, **kwargs).source:
            problems.append(f"{svg.relative_to(ROOT)} is stale (the spec or d2lport.draw "
                            "changed): run `make notebooks`")
    return problems


def execution_problems(nb: dict) -> List[str]:
    """A committed notebook must have run top to bottom without an error."""
    out, count = [], 0
    for i, cell in enumerate(nb["cells"], 1):
        if cell["cell_type"] != "code":
            continue
        count += 1
        if cell.get("execution_count") != count:
            out.append(f"cell {i} was not executed in order (execution_count "
                       f"{cell.get('execution_count')}, expected {count}): run `make notebooks`")
            break
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i} stored an error: {o.get('ename')}: {o.get('evalue')}")
    return out


def markdown_problems(text: str) -> List[str]:
    """Things that render badly on a code host: unbalanced $ math in a paragraph, table
    rows whose column count differs from their header, headings without a space."""
    out = []
    prose = re.sub(r"^(`{3,}).*?^\1\s*$", "", text, flags=re.S | re.M)
    prose = re.sub(r"<!--.*?-->", "", prose, flags=re.S)
    for para in re.split(r"\n\s*\n", prose):
        stripped = re.sub(r"`[^`]*`", "", para).replace(r"\$", "")
        if stripped.count("$") % 2:
            out.append(f"unbalanced $ in: {para.strip()[:60]!r}")
        rows = [l for l in para.splitlines() if l.strip().startswith("|")]
        if len(rows) >= 2:
            widths = {len(r.strip().strip("|").split("|")) for r in rows}
            if len(widths) != 1:
                out.append(f"table rows with different column counts: {rows[0][:60]!r}")
        for l in para.splitlines():
            if re.match(r"^#{1,6}[^#\s]", l):
                out.append(f"heading without a space after #: {l[:60]!r}")
    if not re.search(r"^## Exercises\s*$", text, re.M):
        out.append("no '## Exercises' section")
    return out


# =========================================================================== native logs
# A line a framework's C++ core writes straight to the process's stderr (TensorFlow 2.21's
# absl log at import: "I0000 00:00:17955.. 7809 port.cc:153] oneDNN custom operations are
# on", and absl's note before it).  The kernel that nbconvert starts forwards such lines into
# the cell's output; nbval's kernel sends them to /dev/null, so a stored copy would make
# `make test-notebooks` fail, and it says nothing about the chapter's code.
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called "
                        r"are written to STDERR|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
                        r"[\w./-]+:\d+\] .*)\n?$")


def strip_native_logs(notebook: dict) -> int:
    """Remove native log lines (:data:`NATIVE_LOG`) from the stderr streams of a notebook's
    code cells (a stream left empty goes too); returns how many lines were removed."""
    removed = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                lines = (text if isinstance(text, str) else "".join(text)).splitlines(True)
                rest = [line for line in lines if not NATIVE_LOG.match(line)]
                removed += len(lines) - len(rest)
                if not rest:
                    continue
                out = dict(out, text=rest if isinstance(text, list) else "".join(rest))
            kept.append(out)
        cell["outputs"] = kept
    return removed


def strip_native_logs_file(path) -> int:
    """:func:`strip_native_logs` on a notebook file, rewritten in nbformat's own layout
    (only when something was removed)."""
    path = Path(path)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    removed = strip_native_logs(notebook)
    if removed:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    return removed


# =========================================================================== command line
def main(argv: Sequence[str] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m d2lport.notebook",
                                     description="chapter -> notebook tooling")
    sub = parser.add_subparsers(dest="command", required=True)
    md = sub.add_parser("md", help="the chapter's Markdown for one framework (stdout)")
    md.add_argument("chapter")
    md.add_argument("framework")
    sub.add_parser("sync", help="recompute the chapters' static regions and the figures")
    chk = sub.add_parser("check", help="fail when chapters, figures or notebooks are stale")
    chk.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    sub.add_parser("list", help="the chapters, one stem a line")
    strip = sub.add_parser("strip-logs", help="remove native log lines (TensorFlow's absl "
                           "lines at import) from executed notebooks' stderr outputs")
    strip.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "md":
            chapter = Path(args.chapter)
            sys.stdout.write(notebook_markdown(chapter.read_text(encoding="utf-8"),
                                               args.framework, chapter.stem,
                                               chapter.resolve().parent))
        elif args.command == "sync":
            for path in sync():
                print(f"updated {path}")
        elif args.command == "list":
            print("\n".join(p.stem for p in chapter_files()))
        elif args.command == "strip-logs":
            for path in args.notebooks:
                removed = strip_native_logs_file(path)
                if removed:
                    print(f"{path}: {removed} native log line(s) removed from stderr outputs")
        else:
            problems = check([registry.normalize_framework(f)
                              for f in args.frameworks.split(",") if f])
            for p in problems:
                print(f"STALE: {p}", file=sys.stderr)
            if problems:
                return 1
            print(f"chapters, figures and notebooks are up to date "
                  f"({len(chapter_files())} chapters x {args.frameworks})")
    except ChapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
