"""Side by side: one network in several frameworks, built from the one spec.

``compare("googlenet")`` runs each framework in its own worker process
(:mod:`d2lport.worker`), hands every framework the same canonical weights
(:func:`d2lport.weights.random_weights`) and the same seeded input, and tabulates per block
the output shape and parameters per framework and the largest absolute and relative
difference from the reference framework, with a verdict.  ``train=N`` adds N plain-SGD
steps from those weights on the same Fashion-MNIST batches (loss per step, side by side);
``speed=True`` adds examples per second.  :func:`bench`, :func:`export_weights` and
:func:`import_weights` serve the ``d2lport bench|export|import`` commands.

This module imports no framework, and must not: the parent of a comparison talks to
TensorFlow and MXNet, and MXNet imported after TensorFlow in one process segfaults.
"""
from __future__ import annotations

import contextlib
import html
import inspect
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import registry, specs, worker
from . import weights as weight_files
from .common import check_input_shape, format_shape

DEFAULT_RTOL = 1e-4          # CPU float32 differences between frameworks are ~1e-6 relative
TRAIN_ATOL = 1e-3            # loss curves "match" while they are this close
INPUT_BATCH = 2
SPEED_STEPS, SPEED_WARMUP = 3, 1     # timed and untimed calls of compare(speed=True)


# =========================================================================== results
@dataclass
class BlockRow:
    """One block: what each framework produced, and how far it is from the reference."""
    name: str
    expected_shape: Optional[Tuple[int, ...]]          # from the spec
    expected_params: Optional[int]
    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    params: Dict[str, int] = field(default_factory=dict)
    max_abs: Dict[str, float] = field(default_factory=dict)    # frameworks other than the ref
    max_rel: Dict[str, float] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)   # frameworks without this output

    def problems(self, rtol: float) -> List[str]:
        """What is wrong with this block (empty when the frameworks agree)."""
        out = [f"no output from {fw}" for fw in self.missing]
        expected = {self.expected_shape} if self.expected_shape else set()
        if len(set(self.shapes.values()) | expected) > 1:
            out.append("output shape " + _by_framework(self.shapes, format_shape,
                                                       self.expected_shape))
        expected = {self.expected_params} if self.expected_params is not None else set()
        if len(set(self.params.values()) | expected) > 1:
            out.append("parameters " + _by_framework(self.params, "{:,}".format,
                                                     self.expected_params))
        for fw, rel in self.max_rel.items():
            if not rel <= rtol:          # NaN counts as a difference
                out.append(f"{fw} differs by {rel:.2e} relative ({self.max_abs[fw]:.2e} abs)")
        return out


def _by_framework(values: Mapping[str, object], fmt, expected) -> str:
    parts = [f"{fw} {fmt(v)}" for fw, v in values.items()]
    if expected is not None:
        parts.append(f"spec {fmt(expected)}")
    return ", ".join(parts)


@dataclass
class TrainCurves:
    """Loss per plain-SGD step of each framework from the same weights on the same batches."""
    model: str
    steps: int
    batch_size: int
    lr: float
    input_shape: Tuple[int, int, int]
    reference: str
    losses: Dict[str, np.ndarray]
    notes: List[str] = field(default_factory=list)

    def differences(self) -> Dict[str, np.ndarray]:
        """|loss - reference loss| per step, for every other framework."""
        ref = self.losses[self.reference]
        return {fw: np.abs(v - ref) for fw, v in self.losses.items() if fw != self.reference}

    def first_divergence(self, atol: float = TRAIN_ATOL) -> Optional[int]:
        """The first step (1-based) where a framework's loss is more than ``atol`` from the
        reference's, or None: where float drift becomes visible."""
        worst = self.worst_per_step()
        over = np.nonzero(~(worst <= atol))[0]
        return int(over[0]) + 1 if len(over) else None

    def worst_per_step(self) -> np.ndarray:
        diffs = list(self.differences().values())
        return np.max(diffs, axis=0) if diffs else np.zeros(self.steps)

    def summary(self, atol: float = TRAIN_ATOL) -> str:
        if len(self.losses) < 2:
            return f"only {self.reference} trained: nothing to compare"
        worst = self.worst_per_step()
        first = self.first_divergence(atol)
        k = min(5, self.steps)
        head = f"the first {k} steps agree to {worst[:k].max():.1e}"
        if first is None:
            return f"{head}; all {self.steps} within {atol:g} (worst {worst.max():.1e})"
        return f"{head}; drift beyond {atol:g} from step {first} (worst {worst.max():.1e})"

    def __str__(self) -> str:
        fws = list(self.losses)
        c, h, w = self.input_shape
        lines = [f"{self.model}: {self.steps} SGD steps, lr {self.lr:g}, batch {self.batch_size} "
                 f"of Fashion-MNIST at {c}x{h}x{w}, from the same weights; loss per step"]
        lines += [f"  ({n})" for n in self.notes]
        width = max(11, *(len(f) for f in fws))
        lines.append(f"{'step':>4}  " + "  ".join(f"{f:>{width}}" for f in fws)
                     + f"  {'max |diff|':>10}")
        worst = self.worst_per_step()
        for i in range(self.steps):
            losses = "  ".join(f"{self.losses[f][i]:>{width}.6f}" for f in fws)
            lines.append(f"{i + 1:>4}  {losses}  {worst[i]:>10.1e}")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_records(self) -> List[dict]:
        return [dict(step=i + 1, **{fw: float(v[i]) for fw, v in self.losses.items()})
                for i in range(self.steps)]

    def plot(self, path=None):
        """Loss curves (top) and |difference from the reference| on a log scale (bottom);
        saved to ``path`` (PNG, SVG, PDF: by its suffix) when given.  Returns the figure."""
        import matplotlib
        if path is not None or not (os.environ.get("DISPLAY") or "ipykernel" in sys.modules):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
        x = np.arange(1, self.steps + 1)
        # One colour and marker per framework in both panels; dashes keep overlapping
        # curves (the point of the plot) distinguishable.
        styles = dict(zip(self.losses, [("-o", "C0"), ("--s", "C1"), (":^", "C2"), ("-.v", "C3")]))
        for fw, loss in self.losses.items():
            top.plot(x, loss, styles[fw][0], color=styles[fw][1], markersize=4, label=fw)
        top.set_ylabel("training loss")
        top.set_title(f"{self.model}: the same SGD steps in each framework")
        top.legend()
        for fw, diff in self.differences().items():
            # exact zeros would vanish from a log axis
            bottom.semilogy(x, np.maximum(diff, 1e-12), styles[fw][0], color=styles[fw][1],
                            markersize=4, label=f"{fw} vs {self.reference}")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.axhline(TRAIN_ATOL, color="grey", linewidth=0.8, linestyle="--")
        bottom.set_xlabel("step")
        bottom.set_ylabel("|loss difference|")
        if self.differences():
            bottom.legend()
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig


@dataclass
class SpeedTable:
    """Examples per second of inference and training per framework, same model and batch."""
    title: str
    rows: Dict[str, dict]           # framework -> {"inference", "training", "device"}

    def ratios(self, key: str) -> Dict[str, float]:
        values = {fw: r[key] for fw, r in self.rows.items() if r.get(key)}
        fastest = max(values.values(), default=0.0)
        return {fw: v / fastest for fw, v in values.items()} if fastest else {}

    def __str__(self) -> str:
        inf, tr = self.ratios("inference"), self.ratios("training")
        fw_w = max([9] + [len(f) for f in self.rows])
        lines = [self.title,
                 f"{'framework':<{fw_w}}  {'inference ex/s':>14} {'vs fastest':>10}  "
                 f"{'training ex/s':>13} {'vs fastest':>10}  device"]
        for fw, r in self.rows.items():
            train = (f"{r['training']:>13.1f} {tr[fw]:>9.2f}x" if r.get("training")
                     else f"{'-':>13} {'-':>10}")
            lines.append(f"{fw:<{fw_w}}  {r['inference']:>14.1f} {inf[fw]:>9.2f}x  {train}  "
                         f"{r['device']}")
        return "\n".join(lines)

    def to_records(self) -> List[dict]:
        inf, tr = self.ratios("inference"), self.ratios("training")
        return [dict(framework=fw, inference=r["inference"], inference_ratio=inf.get(fw),
                     training=r.get("training"), training_ratio=tr.get(fw), device=r["device"])
                for fw, r in self.rows.items()]


@dataclass
class Comparison:
    """The result of :func:`compare`: rows per block, a verdict, and what was left out.

    ``str()`` is the terminal table, ``_repr_html_`` the Jupyter one; ``to_records()``
    and ``to_pandas()`` give the rows as data.
    """
    model: str
    kwargs: dict
    input_shape: Tuple[int, ...]
    seed: int
    reference: str
    rtol: float
    rows: List[BlockRow]
    frameworks: List[str]                       # the ones that ran, reference first
    skipped: Dict[str, str] = field(default_factory=dict)   # not installed / not usable
    failed: Dict[str, str] = field(default_factory=dict)    # ran and broke
    notes: List[str] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    train: Optional[TrainCurves] = None
    speed: Optional[SpeedTable] = None

    # ------------------------------------------------------------------ verdict
    @property
    def others(self) -> List[str]:
        return [fw for fw in self.frameworks if fw != self.reference]

    @property
    def first_difference(self) -> Optional[str]:
        """The first block (in network order) where the frameworks disagree, or None."""
        return next((r.name for r in self.rows if r.problems(self.rtol)), None)

    @property
    def verdict(self) -> str:
        """"agree", "differ", "incomplete" (a framework failed) or "alone" (one ran)."""
        if self.first_difference is not None:
            return "differ"
        if self.failed or not self.rows:
            return "incomplete"
        return "agree" if self.others else "alone"

    @property
    def ok(self) -> bool:
        return self.verdict == "agree"

    def worst(self) -> Tuple[Optional[str], Optional[str], float]:
        """(block, framework, relative difference) of the largest difference."""
        best = (None, None, 0.0)
        for row in self.rows:
            for fw, rel in row.max_rel.items():
                if not rel <= best[2]:
                    best = (row.name, fw, rel)
        return best

    def verdict_line(self) -> str:
        v = self.verdict
        if v == "differ":
            row = next(r for r in self.rows if r.name == self.first_difference)
            return (f"verdict: DIFFER, first at block {row.name}: "
                    + "; ".join(row.problems(self.rtol)))
        if v == "incomplete":
            return "verdict: INCOMPLETE: " + ("; ".join(f"{fw} failed" for fw in self.failed)
                                              or "no framework ran")
        if v == "alone":
            return (f"verdict: only {self.reference} ran, nothing to compare with (its shapes "
                    "and parameters match the spec)")
        block, fw, rel = self.worst()
        out = self.rows[-1]
        out_rel = max(out.max_rel.values())
        verb = "matches" if len(self.others) == 1 else "match"
        return (f"verdict: agree: {' and '.join(self.others)} {verb} {self.reference} on every "
                f"block within rtol {self.rtol:g}; worst {rel:.1e} relative ({fw}, {block}); "
                f"output {out.name}: {out_rel:.1e}")

    # ------------------------------------------------------------------ text
    def header(self) -> str:
        kw = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        shape = "x".join(map(str, self.input_shape))
        return (f"{self.model}{f'({kw})' if kw else ''} · input {shape} · "
                f"canonical weights seed {self.seed} · inference mode · reference "
                f"{self.reference} · rtol {self.rtol:g}")

    def _cells(self) -> Tuple[List[str], List[List[str]]]:
        """Column titles and the text cells of every row (shared by text and HTML)."""
        titles = ["block", "output (C x H x W)", "params"]
        for fw in self.others:
            titles += [f"{fw} max abs", f"{fw} max rel"]
        first = self.first_difference
        body = []
        for row in self.rows:
            ref_shape = row.shapes.get(self.reference, row.expected_shape)
            same_shape = len(set(row.shapes.values())) <= 1 and ref_shape == row.expected_shape
            ref_params = row.params.get(self.reference, row.expected_params)
            same_params = len(set(row.params.values())) <= 1 and ref_params == row.expected_params
            cells = [row.name, format_shape(ref_shape) + ("" if same_shape else " *"),
                     f"{ref_params:,}" + ("" if same_params else " *")]
            for fw in self.others:
                if fw not in row.max_abs:
                    cells += ["shape≠" if fw in row.shapes else "-", ""]
                else:
                    cells += [f"{row.max_abs[fw]:.2e}", f"{row.max_rel[fw]:.2e}"]
            cells.append("<- first difference" if row.name == first else "")
            body.append(cells)
        return titles + [""], body

    def _footer(self) -> List[str]:
        lines = []
        totals = {fw: sum(r.params.get(fw, 0) for r in self.rows) for fw in self.frameworks}
        spec_total = sum(r.expected_params or 0 for r in self.rows)
        if len(set(totals.values()) | {spec_total}) == 1:
            lines.append(f"parameters: {spec_total:,} in every framework (= the spec)")
        else:
            lines.append("parameters: " + _by_framework(totals, "{:,}".format, spec_total))
        for row in self.rows:
            if row.problems(self.rtol) and row.name != self.first_difference:
                lines.append(f"  also at {row.name}: " + "; ".join(row.problems(self.rtol)))
        lines.append(self.verdict_line())
        for fw, why in self.skipped.items():
            lines.append(f"skipped {fw}: {why}")
        for fw, why in self.failed.items():
            lines.append(f"failed {fw}: {why}")
        lines += [f"note: {n}" for n in self.notes]
        if self.seconds:
            lines.append("worker time: " + ", ".join(f"{fw} {s:.1f} s"
                                                     for fw, s in self.seconds.items()))
        return lines

    def table(self) -> str:
        titles, body = self._cells()
        widths = [max(len(t), *(len(r[i]) for r in body)) if body else len(t)
                  for i, t in enumerate(titles)]
        left = {0, 1, len(titles) - 1}
        fmt = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        lines = [fmt(titles), "-" * len(fmt(titles))] + [fmt(r) for r in body]
        return "\n".join(lines)

    def __str__(self) -> str:
        parts = [self.header(), self.table(), "\n".join(self._footer())]
        if self.train is not None:
            parts.append(str(self.train))
        if self.speed is not None:
            parts.append(str(self.speed))
        return "\n".join(parts[:3]) + "".join("\n\n" + p for p in parts[3:])

    def _repr_html_(self) -> str:
        titles, body = self._cells()
        esc = html.escape
        head = "".join(f"<th>{esc(t)}</th>" for t in titles)
        rows = "".join(
            "<tr%s>" % (' style="background:#fdd"' if r[-1] else "")
            + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
        colour = "green" if self.ok else ("#b60" if self.verdict == "alone" else "red")
        footer = self._footer()
        verdict = self.verdict_line()
        notes = "".join(f"<div>{esc(line)}</div>" for line in footer if line != verdict)
        out = (f"<div><b>{esc(self.header())}</b>"
               f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
               f"<div style='color:{colour};font-weight:bold'>{esc(verdict)}</div>{notes}")
        if self.train is not None:
            out += f"<pre>{esc(str(self.train))}</pre>"
        if self.speed is not None:
            out += f"<pre>{esc(str(self.speed))}</pre>"
        return out + "</div>"

    # ------------------------------------------------------------------ data
    def to_records(self) -> List[dict]:
        """One dict per block: ``block``, ``spec_shape``, ``spec_params``, then per framework
        ``shape[fw]``, ``params[fw]`` and (not for the reference) ``max_abs[fw]``,
        ``max_rel[fw]``; and ``agree``."""
        records = []
        for row in self.rows:
            rec = {"block": row.name, "spec_shape": row.expected_shape,
                   "spec_params": row.expected_params}
            for fw in self.frameworks:
                rec[f"shape[{fw}]"] = row.shapes.get(fw)
                rec[f"params[{fw}]"] = row.params.get(fw)
            for fw in self.others:
                rec[f"max_abs[{fw}]"] = row.max_abs.get(fw)
                rec[f"max_rel[{fw}]"] = row.max_rel.get(fw)
            rec["agree"] = not row.problems(self.rtol)
            records.append(rec)
        return records

    def to_pandas(self):
        """The rows as a pandas DataFrame indexed by block (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas (pip install pandas); to_records() "
                              "gives the same rows as plain dicts") from None
        return pd.DataFrame.from_records(self.to_records()).set_index("block")


# =========================================================================== model and inputs
def resolve(model: str, kwargs: Optional[dict] = None) -> Tuple[str, dict]:
    """(registered name, keyword arguments) with aliases expanded (``vgg_d2l`` -> vgg11 with
    width_ratio=4, ...), so that a worker or a weight file's meta can rebuild the model."""
    name, fixed = registry.resolve(model)
    return name, {**fixed, **(kwargs or {})}


def fit_input(model: str, kwargs: dict, input_shape: Optional[Sequence[int]]) -> dict:
    """Keyword arguments that build ``model`` for an (N, C, H, W) input: its channels, and
    its size for a net whose classifier depends on it (as ``d2lport shapes --input``)."""
    kwargs = dict(kwargs)
    if input_shape is None:
        return kwargs
    if len(input_shape) != 4:
        raise specs.InputShapeError(f"input_shape is (N, C, H, W), got {tuple(input_shape)}")
    if registry.accepts(model, "in_channels"):
        kwargs.setdefault("in_channels", int(input_shape[1]))
    if registry.accepts(model, "image_size") and not registry.get_spec(model, **kwargs).any_size:
        kwargs.setdefault("image_size", int(input_shape[2]))
    return kwargs


def seeded_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """The one input every framework receives: standard normal, float32, from a stream
    seeded apart from the weights' (``random_weights`` uses ``default_rng(seed)``)."""
    return np.random.default_rng([seed, 1]).standard_normal(tuple(shape)).astype(np.float32)


def dropout_off(model: str, kwargs: dict) -> Tuple[dict, Optional[str]]:
    """``kwargs`` with every dropout rate the model takes set to 0, and a note saying so.

    Dropout masks come from each framework's own random generator, so no two frameworks
    can take the same training step with dropout on; the weights do not change (dropout
    has none), so the comparison still trains the very network of the block table.
    """
    factory = registry.describe(model).factory
    rates = [p for p in inspect.signature(factory).parameters if "dropout" in p]
    new = dict(kwargs, **{p: 0.0 for p in rates})
    left = [leaf.path for leaf in specs.iter_leaves(registry.get_spec(model, **new))
            if (isinstance(leaf.layer, specs.Dropout) and leaf.layer.rate > 0)
            or (isinstance(leaf.layer, specs.Dense) and leaf.layer.dropout > 0)]
    if left:
        raise ValueError(f"{model} has dropout no keyword turns off ({left[0]}): its training "
                         "steps cannot agree across frameworks")
    if not rates:
        return new, None
    return new, ("dropout off for training: " + ", ".join(f"{p}=0" for p in rates)
                 + " (each framework draws its own masks)")


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling at half-pixel centres without
    antialiasing: torch's ``interpolate(align_corners=False)`` and ``tf.image.resize``."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def images_to_input(images: np.ndarray, chw: Sequence[int]) -> np.ndarray:
    """uint8 (B, 28, 28) -> float32 (B, C, H, W) in [0, 1]: resized in numpy (the same
    array then goes to every framework) and the grey channel repeated C times."""
    c, h, w = chw
    x = images.astype(np.float64) / 255.0
    if x.shape[1:] != (h, w):
        x = np.einsum("hi,bij,wj->bhw", _bilinear_matrix(x.shape[1], h), x,
                      _bilinear_matrix(x.shape[2], w))
    return np.repeat(x[:, None], c, axis=1).astype(np.float32)


def training_batches(chw: Sequence[int], steps: int, batch_size: int, seed: int = 0,
                     root=None) -> Tuple[np.ndarray, np.ndarray]:
    """``steps`` real Fashion-MNIST batches (x (S, B, C, H, W) float32, y (S, B) int64):
    a seeded subset of the training split in the seeded order of the backends' loaders."""
    from .loader import ArrayBatches, fashion_mnist_splits
    if not 1 <= batch_size <= 60000:
        raise ValueError(f"batch_size must be between 1 and 60000, got {batch_size}")
    images, labels, _, _ = fashion_mnist_splits(min(steps * batch_size, 60000), seed, root)
    batches = ArrayBatches(images, labels, batch_size, shuffle=True, seed=seed)
    xs, ys = [], []
    while len(xs) < steps:          # more steps than the split holds: further epochs
        for x, y in batches:
            if len(xs) == steps:
                break
            if len(y) == batch_size:    # a short last batch would change the step's scale
                xs.append(images_to_input(x, chw))
                ys.append(y.astype(np.int64))
    return np.stack(xs), np.stack(ys)


# =========================================================================== running workers
def available(frameworks: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
    """(frameworks that can run, {framework: why not} for the others).  The interpreter of
    this process is asked directly; another one (``D2LPORT_PYTHON_<FW>``) by a probe."""
    ready, skipped = [], {}
    for fw in frameworks:
        if worker.python_for(fw) == sys.executable:
            why = None if registry.framework_available(fw) else (
                f"not installed in {sys.executable}: install it (pip install "
                f"'d2lport[{fw}]') or point D2LPORT_PYTHON_{fw.upper()} at a Python that has it")
        else:
            why = worker.probe(fw)
        if why is None:
            ready.append(fw)
        else:
            skipped[fw] = why
    return ready, skipped


# The variables each framework reads at start-up for its CPU thread pools (OpenMP: torch
# and MXNet; TensorFlow its own two pools).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                     "TF_NUM_INTEROP_THREADS")


@contextlib.contextmanager
def _threads(threads: Optional[int]):
    """Workers started inside use ``threads`` CPU threads in every framework.  Set in this
    process's environment, which the workers inherit: MXNet reads OMP_NUM_THREADS only
    when it is imported, so no call inside a running worker could do it."""
    if not threads:
        yield
        return
    saved = {k: os.environ.get(k) for k in _THREAD_VARIABLES}
    os.environ.update({k: str(int(threads)) for k in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_workers(frameworks: Sequence[str], jobs_for, skipped: Dict[str, str],
                 failed: Dict[str, str], seconds: Dict[str, float],
                 threads: Optional[int] = None) -> Dict[str, list]:
    """Run each framework's jobs in its own worker, one after the other (a fair clock for
    speed, and the machine's cores to one framework at a time).  A worker that cannot
    import its framework joins ``skipped``; one that dies joins ``failed``."""
    results = {}
    for fw in frameworks:
        started = time.perf_counter()
        try:
            with _threads(threads):
                results[fw] = worker.run_jobs(fw, jobs_for(fw))
        except worker.WorkerImportError as err:
            skipped[fw] = f"its worker could not import it: {_short(err)}"
        except worker.WorkerError as err:
            failed[fw] = _short(err)
        seconds[fw] = time.perf_counter() - started
    return results


def _short(err: BaseException) -> str:
    text = str(err).strip()
    return text if len(text) < 600 else text[:300] + " ... " + text[-250:]


def _job(task: str, data: Sequence[Path], **params) -> dict:
    return {"task": task, "data": [str(p) for p in data], "params": params}


def _write(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


@dataclass
class _Case:
    model: str
    kwargs: dict
    spec: specs.NetSpec
    input_shape: Tuple[int, ...]
    data: Path                   # canonical weights ("w:<key>") and the input ("x")


def _prepare_case(tmp: Path, index: int, model: str, kwargs: dict, input_shape, seed: int):
    name, kwargs = resolve(model, kwargs)
    kwargs = fit_input(name, kwargs, input_shape)
    spec = registry.get_spec(name, **kwargs)
    shape = tuple(input_shape) if input_shape is not None else (INPUT_BATCH,) + spec.input_shape
    check_input_shape(spec, shape)      # a wrong size fails here, by name, not in 3 workers
    arrays = {f"w:{k}": v for k, v in weight_files.random_weights(spec, seed).items()}
    arrays["x"] = seeded_input(shape, seed)
    return _Case(name, kwargs, spec, shape, _write(tmp / f"case{index}.npz", arrays))


def _blocks_job(case: _Case, fw: str, perturb: Optional[dict]) -> dict:
    hook = None
    if perturb and registry.normalize_framework(perturb["framework"]) == fw:
        hook = {k: v for k, v in perturb.items() if k != "framework"}
    return _job("compare_blocks", [case.data], model=case.model, kwargs=case.kwargs,
                include_aux=True, perturb=hook)


def _frameworks(frameworks, reference: str) -> Tuple[List[str], str]:
    fws = list(dict.fromkeys(registry.normalize_framework(f) for f in frameworks))
    return fws, registry.normalize_framework(reference)


def _pick_reference(ran: Sequence[str], reference: str, notes: List[str]) -> Optional[str]:
    if reference in ran or not ran:
        return reference if reference in ran else None
    notes.append(f"reference {reference} did not run; comparing against {ran[0]}")
    return ran[0]


# =========================================================================== building tables
def _rows(case: _Case, outputs: Dict[str, Tuple[dict, dict]], reference: str) -> List[BlockRow]:
    expected = {r.name: r for r in specs.infer(case.spec, case.input_shape)}
    ref_arrays, _ = outputs[reference]
    rows = []
    for name, ref in ref_arrays.items():
        exp = expected.get(name)
        row = BlockRow(name, exp.out_shape if exp else None, exp.params if exp else None)
        for fw, (arrays, meta) in outputs.items():
            if name not in arrays:
                row.missing.append(fw)
                continue
            row.shapes[fw] = tuple(int(s) for s in arrays[name].shape[1:])
            params = {r[0]: r[2] for r in meta["rows"]}
            if name in params:
                row.params[fw] = params[name]
            if fw != reference and arrays[name].shape == ref.shape:
                diff = float(np.abs(arrays[name].astype(np.float64) - ref).max(initial=0.0))
                row.max_abs[fw] = diff
                row.max_rel[fw] = diff / max(1.0, float(np.abs(ref).max(initial=0.0)))
        rows.append(row)
    return rows


def _case_result(case: _Case, results: Dict[str, list], job: int, seed: int, reference: str,
                 rtol: float, skipped, failed, seconds) -> Comparison:
    """The Comparison of one case from the job at index ``job`` of every worker's results."""
    failed = dict(failed)
    outputs = {}
    for fw, res in results.items():
        arrays, meta = res[job]
        if "error" in meta:
            failed[fw] = meta["error"]
        else:
            outputs[fw] = (arrays, meta)
    notes: List[str] = []
    ref = _pick_reference(list(outputs), reference, notes)
    order = ([ref] if ref else []) + [fw for fw in outputs if fw != ref]
    rows = _rows(case, {fw: outputs[fw] for fw in order}, ref) if ref else []
    return Comparison(case.model, case.kwargs, case.input_shape, seed, ref or reference, rtol,
                      rows, order, dict(skipped), failed, notes, dict(seconds))


# =========================================================================== public API
def compare(model: str, frameworks: Sequence[str] = registry.FRAMEWORKS,
            input_shape: Optional[Sequence[int]] = None, seed: int = 0,
            reference: str = "torch", rtol: float = DEFAULT_RTOL, train: int = 0,
            lr: float = 0.01, batch_size: int = 32, speed: bool = False,
            threads: Optional[int] = None, perturb: Optional[dict] = None, data_root=None,
            **model_kwargs) -> Comparison:
    """Compare ``model`` across ``frameworks``: per-block shapes, parameters and outputs.

    Every framework gets the canonical weights ``random_weights(spec, seed)`` and the input
    ``seeded_input(input_shape, seed)`` (default (2, C, H, W) at the model's size) and runs
    in inference mode on the CPU; each block's largest absolute difference from
    ``reference`` is divided by ``max(1, max|reference output|)`` and compared with
    ``rtol``.  Frameworks that are not installed are skipped and reported.

    ``train=N``: N plain-SGD steps (learning rate ``lr``, no momentum) from the same
    weights on the same ``batch_size`` Fashion-MNIST batches, dropout off (see
    :func:`dropout_off`); ``result.train`` holds the loss curves.  ``speed=True``: examples
    per second of inference and training at ``batch_size`` (``result.speed``);
    ``threads=n`` gives every framework n CPU threads (steadier timings on a shared machine).
    ``perturb={"framework": fw, "key": weight key[, "scale": 1.01 | "index": i, "delta":
    d]}`` changes one weight tensor in one framework: a test hook, the comparison must then
    fail at that block.
    Model keyword arguments (``width_ratio=8``, ``batch_norm=True``...) go to the spec.
    """
    frameworks, reference = _frameworks(frameworks, reference)
    ready, skipped = available(frameworks)
    failed: Dict[str, str] = {}
    seconds: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="d2lport-compare-") as tmp:
        tmp = Path(tmp)
        case = _prepare_case(tmp, 0, model, model_kwargs, input_shape, seed)
        extra, training = [], None
        if train:
            training = _prepare_training(tmp, case, train, batch_size, lr, seed, data_root)
            extra.append(training.job)
        if speed:
            extra.append(_job("speed", [], model=case.model, kwargs=case.kwargs,
                              batch_size=batch_size, steps=SPEED_STEPS, warmup=SPEED_WARMUP,
                              seed=seed))
        results = _run_workers(ready, lambda fw: [_blocks_job(case, fw, perturb)] + extra,
                               skipped, failed, seconds, threads)
    result = _case_result(case, results, 0, seed, reference, rtol, skipped, failed, seconds)
    job = 1                     # the jobs after the block comparison, in order
    if train:
        result.train = _train_curves(case, training, results, job, result)
        job += 1
    if speed:
        title = _speed_title(case.model, {}, case.spec, batch_size, SPEED_STEPS, SPEED_WARMUP,
                             threads)
        result.speed = _speed_table(title, {fw: res[job] for fw, res in results.items()},
                                    result.failed)
    return result


def compare_many(cases: Sequence[Tuple[str, dict]], frameworks: Sequence[str] = registry.FRAMEWORKS,
                 seed: int = 0, reference: str = "torch", rtol: float = DEFAULT_RTOL
                 ) -> List[Comparison]:
    """:func:`compare` for several ``(model, kwargs)`` cases with ONE worker per framework
    (a framework's import is paid once, not once per model).  Inputs: (2, C, H, W)."""
    frameworks, reference = _frameworks(frameworks, reference)
    ready, skipped = available(frameworks)
    failed: Dict[str, str] = {}
    seconds: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="d2lport-compare-") as tmp:
        prepared = [_prepare_case(Path(tmp), i, m, kw, None, seed)
                    for i, (m, kw) in enumerate(cases)]
        results = _run_workers(ready, lambda fw: [_blocks_job(c, fw, None) for c in prepared],
                               skipped, failed, seconds)
    return [_case_result(c, results, i, seed, reference, rtol, skipped, failed, seconds)
            for i, c in enumerate(prepared)]


# --------------------------------------------------------------------------- training
@dataclass
class _Training:
    job: dict
    chw: Tuple[int, int, int]
    steps: int
    batch_size: int
    lr: float
    notes: List[str]


def _prepare_training(tmp: Path, case: _Case, steps: int, batch_size: int, lr: float,
                      seed: int, root) -> _Training:
    """The sgd_train job for ``case``: dropout off, real batches resized to the model's
    input in numpy and written once, so every framework trains on the same arrays."""
    last = specs.infer(case.spec, include_aux=False)[-1].out_shape
    if len(last) != 1 or last[0] < 10:
        raise ValueError(f"train= needs a network ending in at least 10 class scores "
                         f"(Fashion-MNIST); {case.model} ends in {format_shape(last)}")
    kwargs, note = dropout_off(case.model, case.kwargs)
    chw = case.spec.input_shape
    x, y = training_batches(chw, steps, batch_size, seed, root)
    batches = _write(tmp / "batches.npz", {"train_x": x, "train_y": y})
    notes = [note] if note else []
    if chw[0] != 1:
        notes.append(f"grey images repeated into {chw[0]} channels")
    if case.spec.taps:
        notes.append("loss = main + 0.3 x auxiliary heads")
    job = _job("sgd_train", [case.data, batches], model=case.model, kwargs=kwargs, lr=lr)
    return _Training(job, chw, steps, batch_size, lr, notes)


def _train_curves(case: _Case, training: _Training, results: Dict[str, list], job: int,
                  result: Comparison) -> Optional[TrainCurves]:
    losses = {}
    for fw in sorted(results, key=lambda f: f != result.reference):    # reference first
        arrays, meta = results[fw][job]
        if "error" in meta:
            result.failed[f"{fw} (train)"] = meta["error"]
        else:
            losses[fw] = arrays["loss"]
    if not losses:
        return None
    ref = result.reference if result.reference in losses else next(iter(losses))
    return TrainCurves(case.model, training.steps, training.batch_size, training.lr,
                       tuple(training.chw), ref, losses, training.notes)


# --------------------------------------------------------------------------- speed
def _speed_table(title: str, per_fw: Dict[str, Tuple[dict, dict]], failed: Dict[str, str]
                 ) -> Optional[SpeedTable]:
    rows = {}
    for fw, (_, meta) in per_fw.items():
        if "error" in meta:
            failed[f"{fw} (speed)"] = meta["error"]
        else:
            rows[fw] = {k: meta[k] for k in ("inference", "training", "device")}
    return SpeedTable(title, rows) if rows else None


def _speed_title(model, kwargs, spec, batch_size, steps, warmup, threads) -> str:
    kw = "".join(f", {k}={v}" for k, v in kwargs.items())
    return (f"{model}{kw}: batch {batch_size}, input {format_shape(spec.input_shape)}, "
            f"{steps} timed steps after {warmup} warm-up, "
            + (f"{threads} CPU thread(s) each" if threads else "default threads"))


def bench(models: Sequence[str] = ("googlenet",), frameworks: Sequence[str] = registry.FRAMEWORKS,
          batch_size: int = 64, steps: int = 3, warmup: int = 1, input_size: Optional[int] = None,
          seed: int = 0, threads: Optional[int] = None,
          **model_kwargs) -> Tuple[List[SpeedTable], Dict[str, str]]:
    """Examples/s of inference and SGD training per framework for each model (one worker
    per framework for all models, frameworks one after another; ``threads``: CPU threads
    of every framework).  Returns the tables and ``{framework: why}`` for those skipped or
    failed."""
    frameworks, _ = _frameworks(frameworks, frameworks[0] if frameworks else "torch")
    ready, skipped = available(frameworks)
    cases = []
    for model in models:
        name, kwargs = resolve(model, model_kwargs)
        if input_size is not None and registry.accepts(name, "image_size"):
            kwargs["image_size"] = input_size
        cases.append((name, kwargs, registry.get_spec(name, **kwargs)))
    jobs = [_job("speed", [], model=name, kwargs=kw, batch_size=batch_size, steps=steps,
                 warmup=warmup, seed=seed) for name, kw, _ in cases]
    failed: Dict[str, str] = {}
    results = _run_workers(ready, lambda fw: jobs, skipped, failed, {}, threads)
    tables = []
    for i, (name, kwargs, spec) in enumerate(cases):
        title = _speed_title(name, kwargs, spec, batch_size, steps, warmup, threads)
        table = _speed_table(title, {fw: res[i] for fw, res in results.items()}, failed)
        if table is not None:
            tables.append(table)
    return tables, {**skipped, **failed}


# --------------------------------------------------------------------------- weight files
def export_weights(model: str, framework: str, out, seed: int = 0, **model_kwargs) -> dict:
    """Build ``model`` in ``framework`` with that framework's seeded initialisation and
    write its canonical weights to ``out`` (.npz; meta names the model and its kwargs)."""
    fw = registry.normalize_framework(framework)
    name, kwargs = resolve(model, model_kwargs)
    registry.get_spec(name, **kwargs)                    # a bad keyword fails here
    (_, meta), = _one_worker(fw, _job("export_weights", [], model=name, kwargs=kwargs,
                                      seed=seed, out=str(Path(out).resolve())))
    return meta


def import_weights(path, framework: str, evaluate: bool = False, limit: Optional[int] = None,
                   batch_size: int = 256, seed: int = 0, data_root=None) -> dict:
    """Load a canonical weight file into ``framework``'s model named in its meta.

    Returns the model, parameter count, ``logits`` for ``seeded_input((2, C, H, W), seed)``
    with their ``checksum`` (sum and L2 norm: the same numbers in every framework, to
    float rounding), and with ``evaluate`` the test accuracy on real Fashion-MNIST
    (``limit``: a seeded subset of the test split, the same one in every framework).
    """
    fw = registry.normalize_framework(framework)
    weights, meta = weight_files.load(path)
    if "model" not in meta:
        raise weight_files.WeightsError(f"{path} names no model in its meta")
    spec = registry.get_spec(meta["model"], **meta.get("kwargs", {}))
    weight_files.check(spec, weights)                    # before paying for a worker
    with tempfile.TemporaryDirectory(prefix="d2lport-import-") as tmp:
        x = seeded_input((INPUT_BATCH,) + spec.input_shape, seed)
        x = _write(Path(tmp) / "x.npz", {"x": x})
        (arrays, result), = _one_worker(fw, _job(
            "import_weights", [x], path=str(Path(path).resolve()), evaluate=evaluate,
            limit=limit, batch_size=batch_size, seed=seed,
            root=str(data_root) if data_root else None))
    logits = arrays["logits"].astype(np.float64)
    result = dict(result, framework=fw, logits=arrays["logits"],
                  checksum=(float(logits.sum()), float(np.sqrt((logits ** 2).sum()))))
    return result


def _one_worker(framework: str, job: dict):
    ready, skipped = available([framework])
    if not ready:
        raise registry.FrameworkNotInstalledError(f"{framework}: {skipped[framework]}")
    results = worker.run_jobs(framework, [job])
    for _, meta in results:
        if "error" in meta:
            raise worker.WorkerError(f"{framework}: {meta['error']}")
    return results


def format_import(result: dict) -> str:
    lines = [f"{result['model']}({', '.join(f'{k}={v}' for k, v in result['kwargs'].items())}) "
             f"in {result['framework']}, weights from {result.get('source') or 'unknown'}: "
             f"{result['tensors']} tensors, {result['params']:,} trainable parameters",
             "output checksum on the seeded input: sum {:.6f}, L2 {:.6f}".format(
                 *result["checksum"])]
    if "test_acc" in result:
        lines.append(f"test accuracy: {result['test_acc']:.4f} on {result['test_examples']} "
                     "Fashion-MNIST test images")
    return "\n".join(lines)


# `d2lport.compare(...)` reads as a function, but the package attribute `compare` is this
# module (any `import d2lport.compare` binds it): calling the module calls compare().
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
