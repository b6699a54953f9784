"""What the chapters show of the recorded runs: one figure of the frameworks' curves per
network, a table per network, the best run's confusion matrix and prediction grid, and how a
recipe differs from D2L 1.0's settings.  Reads ``results/*.json``; imports no framework."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import registry, specs
from . import record as _record
from .recipes import BOOK_RECIPES, Recipe, recipes

FRAMEWORK_STYLE = {"torch": ("C0", "o"), "tensorflow": ("C1", "s"), "mxnet": ("C2", "^"),
                   "jax": ("C3", "D")}


class Markdown(str):
    """A string a notebook renders as Markdown (and prints as itself elsewhere)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def _records(name: str, directory=None) -> Dict[str, dict]:
    recipe = recipes("cpu")[name]
    out = {}
    for fw in registry.FRAMEWORKS:
        path = _record.path_for(recipe.run_name(fw), directory)
        if path.exists():
            out[fw] = _record.load(path)
    return out


def _missing_note(name: str, found: Sequence[str]) -> str:
    missing = [fw for fw in registry.FRAMEWORKS if fw not in found]
    if not missing:
        return ""
    return (f"Not recorded yet for {', '.join(missing)}: `make results` (or `d2lport results "
            f"run {name}`) trains {'them' if len(missing) > 1 else 'it'}.")


def table(name: str, directory=None) -> Markdown:
    """Markdown: one row per framework (final test and train accuracy, loss, epochs, minutes
    per epoch, examples/s, parameters), then the spread of the test accuracies."""
    recs = _records(name, directory)
    if not recs:
        return Markdown(f"**{name}**: no record yet. " + _missing_note(name, []))
    lines = ["| framework | test acc | train acc | loss | epochs | min/epoch | examples/s "
             "| parameters | device |", "|---|---|---|---|---|---|---|---|---|"]
    for row, rec in zip(_record.summarize(recs.values()), recs.values()):
        lines.append(f"| {row['framework']} | {row['test_acc']:.4f} | {row['train_acc']:.4f} | "
                     f"{row['loss']:.4f} | {row['epochs']} | {row['minutes_per_epoch']:.1f} | "
                     f"{row['examples_per_sec']:.0f} | {rec['params']:,} | "
                     f"{rec['machine']['device']} |")
    accs = [r["history"][-1]["test_acc"] for r in recs.values()]
    first = next(iter(recs.values()))
    text = "\n".join(lines)
    if len(accs) > 1:
        text += (f"\n\nSpread of the final test accuracies: {max(accs) - min(accs):.4f} "
                 f"({len(accs)} frameworks, the same recipe and initial weights).")
    text += (f"\n\nMachine: {first['machine']['cpu']}, {first['machine']['logical_cpus']} "
             "logical CPUs; the test accuracy is over all "
             f"{first['test']['examples']:,} test images.")
    note = _missing_note(name, list(recs))
    return Markdown(text + (f"\n\n{note}" if note else ""))


def curves(names, directory=None, title: Optional[str] = None):
    """One figure per call: for each network in ``names`` (one or more recipe names), the
    frameworks' test accuracy (solid) and training loss (dashed) per epoch.  A run of one
    epoch draws as points, and the title says so."""
    from ..notebook import _pyplot
    plt = _pyplot()
    names = [names] if isinstance(names, str) else list(names)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    one_epoch = False
    for i, name in enumerate(names):
        for fw, rec in _records(name, directory).items():
            color, marker = FRAMEWORK_STYLE.get(fw, ("k", "o"))
            h = rec["history"]
            x = [e["epoch"] for e in h]
            one_epoch |= len(x) == 1
            label = f"{name} ({fw})" if len(names) > 1 else fw
            style = ["-", "--", ":"][i % 3]
            axes[0].plot(x, [e["test_acc"] for e in h], style, color=color, marker=marker,
                         label=label)
            axes[1].plot(x, [e["loss"] for e in h], style, color=color, marker=marker,
                         label=label)
    for ax, what in zip(axes, ("test accuracy", "training loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "no record yet: make results", ha="center", va="center",
                    transform=ax.transAxes)
    head = title or ", ".join(names) + ": recorded runs on the CPU recipe"
    if one_epoch:
        head += "\n(one epoch: a point per framework, no curve)"
    fig.suptitle(head, fontsize=10)
    fig.tight_layout()
    return fig


def best(name: str, directory=None) -> Optional[dict]:
    """The record with the highest final test accuracy (None when there is none)."""
    recs = _records(name, directory)
    if not recs:
        return None
    return max(recs.values(), key=lambda r: r["history"][-1]["test_acc"])


def _best_on_test(name: str, what: str, directory=None, data_root=None):
    """``(record, test images, labels, predictions)`` of the best run, or None (and a
    note saying there is no ``what`` yet)."""
    from ..data import load_arrays
    rec = best(name, directory)
    if rec is None:
        print(f"{name}: no record yet, so no {what}. " + _missing_note(name, []))
        return None
    images, labels = load_arrays("test", root=data_root)
    return rec, images, labels, np.asarray(rec["test"]["predictions"])


def confusion(name: str, directory=None, data_root=None):
    """The best run's confusion matrix over the whole test set."""
    from ..notebook import show_confusion_matrix
    found = _best_on_test(name, "confusion matrix", directory, data_root)
    if found is None:
        return None
    rec, _, labels, preds = found
    return show_confusion_matrix(labels, preds, title=(
        f"{name} ({rec['framework']}): accuracy {np.mean(preds == labels):.4f} on "
        f"{len(labels):,} test images"))


def prediction_grid(name: str, n: int = 16, directory=None, data_root=None):
    """The best run's predictions for the first ``n`` test images (the record holds every
    prediction, so no weights are needed), then its first mistakes."""
    from ..notebook import show_predictions
    found = _best_on_test(name, "predictions to show", directory, data_root)
    if found is None:
        return None
    rec, images, labels, preds = found
    wrong = np.flatnonzero(preds != labels)[: n // 2]
    idx = np.concatenate([np.arange(n - len(wrong)), wrong])
    return show_predictions(images[idx], labels[idx], preds[idx], n=n,
                            title=f"{name} ({rec['framework']}), the first test images and "
                                  "the first mistakes")


def recipe_notes(name: str) -> Markdown:
    """How the CPU recipe differs from the book profile's settings for the network (D2L
    1.0's, or for the lecture's nets the lecture's), each differing setting named."""
    cpu, book = recipes("cpu")[name], {r.name: r for r in BOOK_RECIPES}[name]
    rows, differ = [], []
    for field in ("optimizer", "lr", "momentum", "weight_decay", "epochs", "batch_size",
                  "resize", "init"):
        a, b = getattr(cpu, field), getattr(book, field)
        rows.append(f"| {field} | {a} | {b} |" + (" differs |" if a != b else " |"))
        if a != b:
            differ.append(field)
    p_cpu, p_book = specs.count_params(cpu.spec()), specs.count_params(book.spec())
    rows.append(f"| parameters | {p_cpu:,} | {p_book:,} |" + (" differs |" if p_cpu != p_book
                                                                 else " |"))
    if p_cpu != p_book:
        differ.append(f"parameters ({p_cpu:,} instead of {p_book:,}, from the image size)")
    named = ("Settings that differ from the book profile: " + ", ".join(differ) + "."
             if differ else "The CPU recipe uses the book profile's settings.")
    return Markdown(
        f"**Recipe `{name}`** ({cpu.why}).\n\n"
        "| setting | CPU recipe (recorded, the default) | book profile (`D2LPORT_PROFILE=book`) "
        "| |\n|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\n{named} Book profile: {book.why}.\n\n"
        "Both start from the same Xavier-uniform weights in every framework (D2L 1.0's "
        "`init_cnn`), drawn once by numpy from the seed, and see the batches in the same "
        "seeded order.")


def side_by_side(names: Sequence[str], directory=None, epoch: Optional[int] = None) -> Markdown:
    """Markdown: one row per framework, the test accuracy of each recipe in ``names`` (the
    same settings but for the network) after ``epoch`` (default: the last) and the difference
    of the last from the first."""
    recs = {name: _records(name, directory) for name in names}

    def acc(rec):
        h = rec["history"]
        if epoch is None:
            return h[-1]["test_acc"]
        return h[epoch - 1]["test_acc"] if 1 <= epoch <= len(h) else None

    lines = ["| framework | " + " | ".join(f"`{n}`" for n in names) + " | difference |",
             "|---|" + "---|" * (len(names) + 1)]
    for fw in registry.FRAMEWORKS:
        accs = [acc(recs[n][fw]) if fw in recs[n] else None for n in names]
        cells = [f"{a:.4f}" if a is not None else
                 ("not recorded yet" if fw not in recs[n] else "–")
                 for n, a in zip(names, accs)]
        diff = (f"{accs[-1] - accs[0]:+.4f}" if accs[0] is not None and accs[-1] is not None
                else "–")
        lines.append(f"| {fw} | " + " | ".join(cells) + f" | {diff} |")
    when = "Final test accuracy" if epoch is None else f"Test accuracy after epoch {epoch}"
    return Markdown("\n".join(lines) + f"\n\n{when} on the 10,000 test images; the "
                    f"difference is `{names[-1]}` minus `{names[0]}`.")


def overview(names: Optional[Sequence[str]] = None, directory=None) -> Markdown:
    """Markdown: networks x frameworks, final test accuracy / minutes / examples/s."""
    table_ = recipes("cpu")
    names = list(names or table_)
    fws = list(registry.FRAMEWORKS)
    lines = ["| network | " + " | ".join(fws) + " | spread |",
             "|---|" + "---|" * (len(fws) + 1)]
    for name in names:
        recs = _records(name, directory)
        cells, accs = [], []
        for fw in fws:
            if fw not in recs:
                cells.append("not recorded yet")
                continue
            row = _record.summarize([recs[fw]])[0]
            accs.append(row["test_acc"])
            cells.append(f"{row['test_acc']:.4f} · {row['minutes']:.0f} min · "
                         f"{row['examples_per_sec']:.0f} ex/s")
        spread = f"{max(accs) - min(accs):.4f}" if len(accs) > 1 else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {spread} |")
    return Markdown("\n".join(lines) + "\n\nEach cell: final test accuracy on the 10,000 "
                    "test images · minutes of training · examples/s (median over epochs).")


def live_settings(name: str) -> dict:
    """The settings a chapter's live training cell runs with: the recipe of the profile
    (``D2LPORT_PROFILE``: ``cpu`` by default, ``book`` for the book's), as ``settings(full=)``
    of :mod:`d2lport.notebook` takes them; ``recipe`` and ``profile`` say where they come
    from (the report names them)."""
    from .recipes import profile
    which = profile()
    r: Recipe = recipes(which)[name]
    return dict(recipe=name, profile=which, epochs=r.epochs, batch_size=r.batch_size,
                optimizer=r.optimizer, lr=r.lr, momentum=r.momentum,
                weight_decay=r.weight_decay, resize=r.resize, limit=None, seed=r.seed,
                init=r.init)
