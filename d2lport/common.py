"""Framework-neutral pieces every backend shares: summary tables, training history,
auxiliary outputs, the combined GoogLeNet loss weighting and plots.  Imports no framework."""
from __future__ import annotations

import os
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from . import specs

# What a network with auxiliary heads returns in training mode (GoogLeNet v1):
# the main logits and a tuple of auxiliary logits, in tap order (aux1, aux2).
AuxOutputs = namedtuple("AuxOutputs", ["logits", "aux"])


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyperthreads of one core count once):
    the thread count that suits OpenMP's compute loops.  Linux's topology files; elsewhere
    the number of usable logical CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def combined_loss_weights(n_aux: int) -> List[float]:
    """Weights of [main, aux1, aux2, ...] in the total loss (Szegedy et al. 2014: 0.3)."""
    return [1.0] + [specs.AUX_LOSS_WEIGHT] * n_aux


# --------------------------------------------------------------------------- summaries
@dataclass
class Row:
    name: str
    shape: Tuple[int, ...]          # per-example output shape, (C, H, W) or (F,)
    params: int

    def as_tuple(self):
        return (self.name, self.shape, self.params)


def format_shape(shape: Sequence[int]) -> str:
    return " x ".join(str(s) for s in shape)


def format_table(rows: Sequence[Row], title: str = "") -> str:
    """One line per block: name, output C x H x W, trainable parameters; then the total."""
    name_w = max([len("block")] + [len(r.name) for r in rows])
    shape_w = max([len("output (C x H x W)")] + [len(format_shape(r.shape)) for r in rows])
    lines = [title] if title else []
    lines.append(f"{'block':<{name_w}}  {'output (C x H x W)':<{shape_w}}  {'params':>12}")
    lines.append("-" * len(lines[-1]))
    for r in rows:
        lines.append(f"{r.name:<{name_w}}  {format_shape(r.shape):<{shape_w}}  {r.params:>12,}")
    lines.append(f"{'total':<{name_w}}  {'':<{shape_w}}  {sum(r.params for r in rows):>12,}")
    return "\n".join(lines)


def batch_shape(spec: specs.NetSpec, input_shape: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """``input_shape`` as a tuple, or one example of the shape the net is built for."""
    return tuple(input_shape) if input_shape is not None else (1,) + tuple(spec.input_shape)


def print_summary(spec: specs.NetSpec, rows: Sequence[Row], framework: str,
                  input_shape: Optional[Sequence[int]] = None, print_fn=print) -> List[Row]:
    """Every backend's ``summary``: print the block table under one title format."""
    shape = ", ".join(str(s) for s in batch_shape(spec, input_shape))
    print_fn(format_table(rows, f"{spec.name} ({framework}), input ({shape})"))
    return list(rows)


def check_input_shape(spec: specs.NetSpec, nchw: Sequence[int]) -> None:
    """Raise InputShapeError with the size a network takes when (N, C, H, W) cannot work."""
    if len(nchw) != 4:
        raise specs.InputShapeError(f"{spec.name} takes a batch of images (N, C, H, W), "
                                    f"got shape {tuple(nchw)}")
    specs.infer(spec, tuple(nchw))


# --------------------------------------------------------------------------- history
@dataclass
class History:
    """Per-epoch training record, the same fields in every backend."""
    framework: str = ""
    device: str = ""
    model: str = ""
    epochs: List[Dict[str, float]] = field(default_factory=list)

    def append(self, **record):
        self.epochs.append(record)

    def _col(self, key):
        return [e[key] for e in self.epochs]

    @property
    def loss(self):
        return self._col("loss")

    @property
    def train_acc(self):
        return self._col("train_acc")

    @property
    def test_acc(self):
        return self._col("test_acc")

    @property
    def examples_per_sec(self):
        return self._col("examples_per_sec")

    def __str__(self):
        head = f"{self.model} on {self.framework}/{self.device}"
        lines = [head, "epoch    loss  train acc  test acc   examples/s"]
        for e in self.epochs:
            lines.append(f"{e['epoch']:>5}  {e['loss']:6.4f}  {e['train_acc']:9.4f}  "
                         f"{e['test_acc']:8.4f}  {e['examples_per_sec']:11.1f}")
        return "\n".join(lines)

    def to_records(self) -> List[Dict[str, float]]:
        return [dict(e) for e in self.epochs]


def plot_history(history: History, ax=None):
    """Loss and accuracies per epoch, D2L-style; returns the matplotlib figure.  A run of
    one epoch has no curve to draw: it shows as points, and the title says so."""
    import matplotlib
    if ax is None and not os.environ.get("DISPLAY") and "ipykernel" not in _modules():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3))
    else:
        fig = ax.figure
    x = [e["epoch"] for e in history.epochs]
    one = len(x) == 1
    size = 8 if one else 6
    ax.plot(x, history.loss, "-o", markersize=size, label="train loss")
    ax.plot(x, history.train_acc, "--s", markersize=size, label="train acc")
    ax.plot(x, history.test_acc, "-.^", markersize=size, label="test acc")
    ax.set_xlabel("epoch")
    if x:
        ax.set_xticks(x if len(x) <= 12 else x[::-(-len(x) // 10)])
        ax.set_xlim(min(x) - 0.5, max(x) + 0.5)
    title = f"{history.model} ({history.framework}, {history.device})"
    if one:
        title += "\none epoch: points, no curve"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def replace_section(path, start: str, end: str, markdown: str, what: str) -> None:
    """Replace the text between the marker lines ``start`` and ``end`` of a Markdown file
    (a README section a command writes), atomically."""
    from pathlib import Path
    p = Path(path)
    text = p.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{p} has no {what}: put the lines {start!r} and {end!r} where it "
                         "should go")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(head + start + "\n" + markdown + end + tail)
    tmp.replace(p)


def _modules():
    import sys
    return sys.modules


class Progress:
    """tqdm progress over batches when wanted, a no-op otherwise (CI logs stay short)."""

    def __init__(self, enabled: bool, total: Optional[int], desc: str):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=desc, leave=False)
            except ImportError:   # tqdm is optional
                self.bar = None

    def update(self, n=1, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def progress_default() -> bool:
    """Progress bars unless running under CI or pytest, or D2LPORT_PROGRESS=0."""
    env = os.environ.get("D2LPORT_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no")
    return not (os.environ.get("CI") or "PYTEST_CURRENT_TEST" in os.environ)
