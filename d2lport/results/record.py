"""One recorded training run as a JSON file: what ran (model, settings, code, machine), what
it gave (per-epoch history, test-set predictions), and the checks that it is whole and
still describes what the code would train today."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import registry, specs

FORMAT = "d2lport-record/1"
ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "results"
# Accuracy from the stored predictions and the last epoch's test accuracy agree to this
# (the same network evaluated twice; an exact tie between two logits may break either way).
ACCURACY_TOL = 2e-4
HISTORY_KEYS = ("epoch", "loss", "train_acc", "test_acc", "examples_per_sec", "seconds")


class RecordError(ValueError):
    """A record that cannot be read, or is not a d2lport record."""


def spec_digest(spec: specs.NetSpec) -> str:
    """SHA-256 of the framework-free description of the network (its dataclass repr)."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()


def labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(labels, np.int64).tobytes()).hexdigest()


# A recorded (one-device) run does not import these: tests/test_results.py checks it.
_NOT_RUN = ("bookpath.py", "distributed.py")


def code_digest(framework: str) -> str:
    """SHA-256 of the code that decides what a framework's run computes: its backend package
    (but the book-path baselines and the data-parallel trainer, which a one-device run never
    imports) and the framework-free batching.  A record made with other code is not
    current: ``make results`` trains it again."""
    pkg = ROOT / "d2lport"
    files = sorted(p for p in (pkg / framework).glob("*.py") if p.name not in _NOT_RUN)
    files += [pkg / "loader.py", pkg / "results" / "init.py"]
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def git_state() -> Dict[str, object]:
    """The commit checked out and whether the tree had changes (None outside a checkout)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "d2lport")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(framework: str, device: str) -> Dict[str, object]:
    from ..common import physical_cores
    threads = None
    mod = sys.modules.get(framework)
    try:
        if framework == "torch":
            threads = mod.get_num_threads()
        elif framework == "tensorflow":
            threads = (mod.config.threading.get_intra_op_parallelism_threads()
                       or physical_cores())
        elif framework == "mxnet":
            threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or None
    except Exception:                   # noqa: BLE001 - a detail of the record, never fatal
        threads = None
    gpu = None
    if "cuda" in device.lower() or "gpu" in device.lower():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            gpu = out.stdout.strip().splitlines()[0] if out.returncode == 0 else device
        except (OSError, subprocess.SubprocessError, IndexError):
            gpu = device
    try:    # other work on the machine slows a run: the load says whether there was any
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(), "threads": threads, "device": device,
            "gpu": gpu, "platform": platform.platform(), "load_average_at_end": load}


def versions(framework: str) -> Dict[str, str]:
    from .. import __version__
    mod = sys.modules.get(framework)
    return {"python": platform.python_version(), "numpy": np.__version__,
            framework: getattr(mod, "__version__", "?"), "d2lport": __version__}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def dumps(record: dict) -> str:
    """JSON with one line per top-level field and per epoch: a record reads (and diffs) as a
    few dozen lines, the long list of predictions on one of them."""
    lines = []
    for key, value in record.items():
        if key == "history":
            text = "[\n  " + ",\n  ".join(json.dumps(e) for e in value) + "\n ]"
        else:
            text = json.dumps(value)
        lines.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write(path, record: dict) -> Path:
    """Atomically: a temporary file in the same directory, fsynced, renamed into place."""
    from ..checkpoint import fsync_dir
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"no record at {path}: make it with `make results` "
                          f"(or `d2lport results run`)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{path} is not readable JSON ({err}): delete it and run "
                          "`d2lport results run` again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RecordError(f"{path} is not a d2lport record (format {FORMAT}): delete it and "
                          "run `d2lport results run` again")
    return record


def internal_problems(record: dict, test_labels: Optional[np.ndarray] = None) -> List[str]:
    """What makes a record disagree with itself (and with the test labels, when given)."""
    problems = []
    history = record.get("history") or []
    epochs = record.get("settings", {}).get("epochs")
    if len(history) != epochs:
        problems.append(f"{len(history)} epochs in the history, settings say {epochs}")
    for i, e in enumerate(history, 1):
        missing = [k for k in HISTORY_KEYS if k not in e]
        if missing:
            problems.append(f"epoch {i} lacks {', '.join(missing)}")
            continue
        if e["epoch"] != i:
            problems.append(f"epoch {i} is numbered {e['epoch']}")
        for key in ("train_acc", "test_acc"):
            if not 0.0 <= e[key] <= 1.0:
                problems.append(f"epoch {i}: {key} {e[key]} is not in [0, 1]")
        if not (np.isfinite(e["loss"]) and e["examples_per_sec"] > 0 and e["seconds"] > 0):
            problems.append(f"epoch {i}: loss, examples/s or seconds not a positive number")
    test = record.get("test", {})
    preds = np.asarray(test.get("predictions", []), np.int64)
    if len(preds) != test.get("examples"):
        problems.append(f"{len(preds)} predictions for {test.get('examples')} test examples")
    elif test_labels is not None:
        if len(test_labels) != len(preds):
            problems.append(f"{len(preds)} predictions, the test set has {len(test_labels)}")
        else:
            if labels_digest(test_labels) != test.get("labels_sha256"):
                problems.append("the test labels are not those the record was made on")
            acc = float((preds == test_labels).mean())
            if abs(acc - test.get("accuracy", -1)) > 1e-9:
                problems.append(f"the predictions give accuracy {acc:.4f}, the record says "
                                f"{test.get('accuracy')}")
            if history and abs(acc - history[-1].get("test_acc", -1)) > ACCURACY_TOL:
                problems.append(f"the predictions give accuracy {acc:.4f}, the last epoch's "
                                f"test accuracy is {history[-1].get('test_acc'):.4f}")
    if preds.size and (preds.min() < 0 or preds.max() >= record.get("num_classes", 10)):
        problems.append("a prediction is not a class index")
    return problems


def staleness(record: dict, recipe) -> List[str]:
    """Why ``record`` no longer describes what ``recipe`` trains today (empty: current,
    but for the code, see :func:`code_changed`)."""
    problems = []
    if record.get("recipe") != recipe.name:
        problems.append(f"made for recipe {record.get('recipe')!r}, not {recipe.name!r}")
    if record.get("recipe_sha256") != recipe.digest():
        problems.append("the recipe changed (settings, model or its keyword arguments)")
    spec = recipe.spec()
    if record.get("spec_sha256") != spec_digest(spec):
        problems.append(f"the spec of {recipe.model} changed")
    if record.get("params") != specs.count_params(spec):
        problems.append(f"{record.get('params')} parameters recorded, the spec has "
                        f"{specs.count_params(spec)}")
    return problems


def code_changed(record: dict) -> bool:
    return record.get("code", {}).get("backend_sha256") != code_digest(record["framework"])


def path_for(run: str, directory=None) -> Path:
    return Path(directory or RESULTS_DIR) / f"{run}.json"


def summarize(records: Sequence[dict]) -> List[Dict[str, object]]:
    """One row per record: final test accuracy, minutes of training, examples/s."""
    rows = []
    for r in records:
        h = r["history"]
        rows.append({"run": r["run"], "recipe": r.get("recipe"), "framework": r["framework"],
                     "test_acc": h[-1]["test_acc"], "train_acc": h[-1]["train_acc"],
                     "loss": h[-1]["loss"], "epochs": len(h),
                     "minutes": sum(e["seconds"] for e in h) / 60,
                     "minutes_per_epoch": sum(e["seconds"] for e in h) / 60 / len(h),
                     "examples_per_sec": float(np.median([e["examples_per_sec"] for e in h]))})
    return rows
