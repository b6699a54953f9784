"""Checkpoints that survive a kill at any moment, and the guards of a training run.

Framework-neutral: each backend's ``train`` writes its own payload (model and optimizer
state, with the framework's own mechanism: ``torch.save`` of state dicts,
``tf.train.Checkpoint``, Gluon ``save_parameters`` + ``Trainer.save_states``) into a
directory that :class:`Checkpointer` hands it, and :class:`TrainState` (epoch, step,
position in the seeded data order, history, RNG) is written beside it as JSON.

A checkpoint is a directory ``ckpt-<step>`` under ``checkpoint_dir``.  It is written as
``.tmp-ckpt-<step>`` (every file fsynced), then a ``MANIFEST.json`` with each file's size
and SHA-256 is written and fsynced, the directory is renamed into place and the parent
directory fsynced.  :meth:`Checkpointer.latest` takes the newest directory whose manifest
verifies, so a kill at any moment leaves the previous checkpoint loadable; the last
``keep`` are kept.

Test hook (never set outside tests): ``D2LPORT_TEST_KILL="step:K"`` kills the process with
SIGKILL after optimizer step K, ``"int:K"`` sends it SIGINT (Ctrl-C) there, ``"save:K:PHASE"`` during the K-th save of the process, at
PHASE ``payload`` (payload written, nothing else), ``state`` (half of state.json written),
``manifest`` (before the rename) or ``renamed`` (after the rename, before pruning).

This module imports no framework.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

FORMAT = 1
EXIT_DIVERGED = 3          # `d2lport train` exit status when the loss is not finite
EXIT_INTERRUPTED = 130     # Ctrl-C (after saving a checkpoint), as shells report SIGINT
DEFAULT_EVERY_SECONDS = 300.0
_NAME = re.compile(r"^ckpt-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class DivergenceError(ArithmeticError):
    """The training loss became NaN or infinite; the run stopped at that step."""

    def __init__(self, step: int, epoch: int, lr: float, loss: float, checkpoint=None):
        self.step, self.epoch, self.lr, self.loss, self.checkpoint = step, epoch, lr, loss, checkpoint
        kept = f"; the last good checkpoint is {checkpoint}" if checkpoint else ""
        self.suggested_lr = min(lr / 10, 0.05)
        super().__init__(
            f"training diverged: loss {loss:g} at step {step} (epoch {epoch}) with learning "
            f"rate {lr:g}{kept}. Try a smaller learning rate (e.g. --lr "
            f"{self.suggested_lr:g}), batch normalization, or gradient clipping")


@dataclass
class TrainState:
    """Where a run is: ``epoch`` epochs completed, ``batch`` batches of the next epoch done,
    ``step`` optimizer steps in all; the history so far; settings for the mismatch check;
    ``rng``: whatever the backend needs to replay its randomness (JSON-able)."""
    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: List[dict] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)
    rng: Dict[str, object] = field(default_factory=dict)
    # The running sums of the epoch in progress (loss_sum, correct, seen, seconds), so a
    # resumed epoch reports the same loss and accuracy as an uninterrupted one.
    partial: Dict[str, float] = field(default_factory=dict)
    format: int = FORMAT

    @classmethod
    def from_json(cls, text: str, where: str = "") -> "TrainState":
        try:
            raw = json.loads(text)
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{where}: state.json is not a d2lport training state "
                                  f"({err})") from None


def parse_every(value) -> Tuple[Optional[int], Optional[float]]:
    """``--checkpoint-every``: ``"200"`` steps, ``"5m"``/``"90s"`` time, or a number of
    minutes as a float; returns (steps, seconds), one of them None."""
    if value is None:
        return None, DEFAULT_EVERY_SECONDS
    text = str(value).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(m|min|s|sec|steps?)?", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--checkpoint-every must be a number of steps (200), minutes (5m) "
                         f"or seconds (90s), greater than 0; got {value!r}")
    number, unit = float(m.group(1)), m.group(2)
    if unit in ("m", "min"):
        return None, number * 60
    if unit in ("s", "sec"):
        return None, number
    if unit is None and isinstance(value, float):
        return None, number * 60
    if number != int(number):
        raise ValueError(f"--checkpoint-every {value!r}: a number of steps must be whole")
    return int(number), None


# --------------------------------------------------------------------------- file plumbing
def fsync_dir(path: Union[str, Path]) -> None:
    """Make a rename or a new file in ``path`` durable (no-op where directories can't be
    opened, e.g. Windows)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted({p.parent for p in path.rglob("*")} | {path}):
        fsync_dir(d)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kill_hook(kind: str, count: int, phase: str = "") -> None:
    spec = os.environ.get("D2LPORT_TEST_KILL", "")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] == kind and int(parts[1]) == count and (kind != "save" or parts[2] == phase):
        os.kill(os.getpid(), signal.SIGINT if kind == "int" else signal.SIGKILL)


def after_step(step: int) -> None:
    """Backends call this after every optimizer step (the test hooks: ``step:K`` kills the
    process after step K, ``int:K`` sends it SIGINT, i.e. a Ctrl-C)."""
    _kill_hook("step", step)
    _kill_hook("int", step)


def interrupted_message(path, step: int, epoch: int) -> str:
    """The line a Ctrl-C'd run prints after saving."""
    where = path.parent if path is not None else None
    return (f"interrupted at step {step} (epoch {epoch}); checkpoint saved to {path}. "
            f"Resume with: d2lport train ... --checkpoint-dir {where} --resume "
            "(or train(..., checkpoint_dir=..., resume=True))")


# A mean cross-entropy this large has diverged: chance level over 10 classes is ln 10 = 2.3,
# and a freshly initialised network of this book starts below 10.  (Seen here: lr 1e6 trained
# a whole epoch at loss ~1e36 before the loss became infinite.)
DIVERGED_LOSS = 1e6


def check_loss(loss: float, step: int, epoch: int, lr: float, checkpointer=None) -> None:
    """Raise :class:`DivergenceError` when ``loss`` is NaN, infinite or above
    :data:`DIVERGED_LOSS`."""
    if not (math.isfinite(loss) and loss <= DIVERGED_LOSS):
        last = checkpointer.latest_path() if checkpointer is not None else None
        raise DivergenceError(step, epoch, lr, loss, last)


# --------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Saves and finds checkpoints of one run in ``directory``.

    ``settings`` (model, framework, model keyword arguments, optimizer, batch size, seed,
    ...) are stored with each checkpoint; resuming with other settings is refused with a
    message saying which differ.  ``every_steps`` / ``every_seconds``: how often
    :meth:`due` says a mid-epoch checkpoint is due (default every 5 minutes).
    """

    def __init__(self, directory, settings: Dict[str, object], keep: int = 3,
                 every_steps: Optional[int] = None,
                 every_seconds: Optional[float] = DEFAULT_EVERY_SECONDS):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.settings = dict(settings)
        self.keep, self.every_steps, self.every_seconds = keep, every_steps, every_seconds
        self._saves = 0
        self._last_time = time.monotonic()
        self._last_step = 0
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} is a file: pass a "
                                  "directory to --checkpoint-dir")
        self.directory.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- when
    def resumed_at(self, step: int) -> None:
        """A resumed run continues the schedule: the next step-based save is due
        ``every_steps`` after the checkpoint it resumed from, as in the uninterrupted run."""
        self._last_step, self._last_time = int(step), time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps is not None:
            return step - self._last_step >= self.every_steps
        return (self.every_seconds is not None
                and time.monotonic() - self._last_time >= self.every_seconds)

    # ---------------------------------------------------------------- write
    def save(self, state: TrainState, write_payload: Callable[[Path], None]) -> Path:
        """Write one checkpoint: ``write_payload(tmp_dir)`` writes the framework's files,
        then the state, the manifest, the rename.  Returns the checkpoint's directory."""
        self._saves += 1
        name = f"ckpt-{state.step:08d}"
        final = self.directory / name
        tmp = self.directory / f".tmp-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_payload(tmp)
        _kill_hook("save", self._saves, "payload")
        state.settings = dict(self.settings)
        text = json.dumps(asdict(state), indent=1, default=_json_default)
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            half = len(text) // 2
            f.write(text[:half])
            f.flush()
            _kill_hook("save", self._saves, "state")
            f.write(text[half:])
        fsync_tree(tmp)
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "step": state.step, "epoch": state.epoch,
                    "files": files}
        with open(tmp / "MANIFEST.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _kill_hook("save", self._saves, "manifest")
        if final.exists():                    # the same step saved again (end of an epoch)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.directory)
        _kill_hook("save", self._saves, "renamed")
        self._prune()
        self._last_time, self._last_step = time.monotonic(), state.step
        return final

    def _prune(self) -> None:
        done = self._complete()
        for path in done[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for tmp in self.directory.glob(".tmp-ckpt-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- read
    def _complete(self) -> List[Path]:
        return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name) and p.is_dir())

    def verify(self, path: Path) -> Optional[str]:
        """None if the checkpoint at ``path`` is complete and intact, else what is wrong."""
        try:
            manifest = json.loads((path / "MANIFEST.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return f"no readable MANIFEST.json ({err.__class__.__name__})"
        for rel, info in manifest.get("files", {}).items():
            f = path / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != info["bytes"]:
                return f"{rel} has {f.stat().st_size} bytes, expected {info['bytes']}"
            if _sha256(f) != info["sha256"]:
                return f"{rel} is corrupt (checksum mismatch)"
        return None

    def latest_path(self) -> Optional[Path]:
        for path in reversed(self._complete()):
            if self.verify(path) is None:
                return path
        return None

    def latest(self) -> Optional[Tuple[Path, TrainState]]:
        """The newest intact checkpoint and its state, checked against this run's settings;
        None when the directory holds none (damaged ones are skipped, never deleted)."""
        path = self.latest_path()
        if path is None:
            broken = self._complete()
            if broken:
                why = self.verify(broken[-1])
                raise CheckpointError(
                    f"no intact checkpoint in {self.directory}: {broken[-1].name}: {why}. "
                    "Start afresh without --resume, or with another --checkpoint-dir")
            return None
        state = TrainState.from_json((path / "state.json").read_text(encoding="utf-8"),
                                     str(path))
        self.check_compatible(state, path)
        return path, state

    def check_compatible(self, state: TrainState, path: Path) -> None:
        diff = [k for k in ("model", "framework", "model_kwargs", "batch_size", "optimizer")
                if k in self.settings and k in state.settings
                and _norm(state.settings[k]) != _norm(self.settings[k])]
        if diff:
            was = ", ".join(f"{k}={state.settings[k]!r}" for k in diff)
            now = ", ".join(f"{k}={self.settings[k]!r}" for k in diff)
            raise CheckpointError(
                f"checkpoint {path} was written with {was}, this run has {now}: resume with "
                f"the same settings, or use another --checkpoint-dir (nothing was changed)")


def _norm(value):
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------- argument checks
OPTIMIZERS = ("sgd", "adam")


def check_train_args(num_epochs, lr, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                     max_steps=None, batch_size=None) -> None:
    """One-line ValueError for a training argument that cannot work, before any work."""
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a whole number >= 1, got {num_epochs!r}")
    if not _positive_finite(lr):
        raise ValueError(f"learning rate must be a finite number > 0, got {lr!r} "
                         "(D2L uses 0.1 for GoogLeNet, 0.05 for VGG)")
    if str(optimizer).lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if not (_finite(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not (_finite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a whole number >= 1, got {max_steps!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch size must be a whole number >= 1, got {batch_size!r}")


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _positive_finite(x) -> bool:
    return _finite(x) and float(x) > 0


# --------------------------------------------------------------------------- a run's start
def open_run(checkpoint_dir, resume: bool, framework: str, model: str, train_iter,
             optimizer: str, lr: float, momentum: float, weight_decay: float, seed,
             settings: Optional[dict] = None, keep: int = 3,
             checkpoint_every=None) -> Optional[Checkpointer]:
    """The :class:`Checkpointer` of a ``train(..., checkpoint_dir=...)`` call (None without
    a directory), its settings the ones every backend records and checks on resume."""
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir=...")
    every = parse_every(checkpoint_every)
    if checkpoint_dir is None:
        return None
    batches = getattr(train_iter, "batches", None)
    return Checkpointer(checkpoint_dir, {
        "model": model, "framework": framework, "optimizer": optimizer,
        "batch_size": getattr(batches, "batch_size", None), "lr": lr, "momentum": momentum,
        "weight_decay": weight_decay, "seed": seed, **(settings or {})}, keep, *every)


def resume_position(ck: Checkpointer, path: Path, state: TrainState, train_iter) -> int:
    """After a backend loaded checkpoint ``path``: continue the save schedule, put the
    loader at the checkpoint's place in the seeded order and say so.  Returns how many
    batches the loop must skip itself (a loader without ``resume_at``, e.g. a torch
    ``DataLoader``, whose order is not ours to set)."""
    ck.resumed_at(state.step)
    print(f"resuming from {path}: epoch {state.epoch}, batch {state.batch} "
          f"(step {state.step})")
    if hasattr(train_iter, "resume_at"):
        train_iter.resume_at(state.epoch, state.batch)
        return 0
    return state.batch


# --------------------------------------------------------------------------- the loop's helpers
class Position:
    """Where a training loop is: completed epochs, batches done of the next one, optimizer
    steps, and the running sums of the epoch in progress.  ``scalar`` turns a sum kept as a
    device array (MXNet keeps them on the device between syncs) into a float."""

    def __init__(self, scalar=float):
        self.scalar = scalar
        self.epoch = self.batch = self.step = self.seen = 0
        self.loss_sum = self.correct = self.seconds = 0.0
        self.start = time.perf_counter()

    def set_partial(self, partial: dict) -> None:
        self.loss_sum = float(partial.get("loss_sum", 0.0))
        self.correct = float(partial.get("correct", 0.0))
        self.seen = int(partial.get("seen", 0))
        self.seconds = float(partial.get("seconds", 0.0))

    def sums(self) -> Tuple[float, float]:
        return tuple(v if isinstance(v, float) else self.scalar(v)
                     for v in (self.loss_sum, self.correct))

    def partial(self, now: float) -> dict:
        loss_sum, correct = self.sums()
        seconds = self.seconds + (now - self.start if self.batch else 0.0)
        return {"loss_sum": loss_sum, "correct": correct, "seen": self.seen,
                "seconds": seconds}

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch = self.seen = 0
        self.loss_sum = self.correct = self.seconds = 0.0


class InterruptGuard:
    """Defers a Ctrl-C that arrives inside :meth:`hold` to the end of it, so the weights,
    the optimizer state and the counters always describe the same finished step (an
    optimizer updates one parameter after another: an interrupt between two would save
    half a step).  Only installed in the main thread over Python's default SIGINT handler."""

    def __init__(self):
        self.active = self.pending = False

    def _handler(self, signum, frame):
        if self.active:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        ours = (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if ours:
            signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            if ours:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextmanager
    def hold(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt
