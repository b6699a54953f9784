"""The results of a comparison and their rendering: per-block rows and the verdict
(:class:`Comparison`: terminal table, Jupyter HTML, records, pandas), loss curves of SGD steps
(:class:`TrainCurves`, with a plot), speed tables (:class:`SpeedTable`) and the summary of an
imported weight file (:func:`format_import`).  Imports no framework.
"""
from __future__ import annotations

import html
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..common import format_shape

DEFAULT_RTOL = 1e-4          # CPU float32 differences between frameworks are ~1e-6 relative
TRAIN_ATOL = 1e-3            # loss curves "match" while they are this close


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


