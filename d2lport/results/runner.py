"""``make results``: every recipe in every framework, each run in its own process, skipping
the records that are current, resuming the ones an interruption cut short."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from .. import registry, worker
from . import record as _record
from .recipes import Recipe, recipes

CHECKPOINTS = _record.RESULTS_DIR / ".checkpoints"
README_START = "<!-- results:start (make results writes this section) -->"
README_END = "<!-- results:end -->"


def update_readme(path) -> None:
    """The README's results section: the overview table of the records there are."""
    from ..common import replace_section
    from .show import overview
    replace_section(path, README_START, README_END, str(overview()) + "\n", "results section")


def state(recipe: Recipe, framework: str, directory=None) -> Tuple[str, List[str]]:
    """``("current" | "missing" | "stale" | "code changed" | "broken", reasons)``."""
    path = _record.path_for(recipe.run_name(framework), directory)
    if not path.exists():
        return "missing", []
    try:
        rec = _record.load(path)
    except _record.RecordError as err:
        return "broken", [str(err)]
    reasons = _record.staleness(rec, recipe)
    if reasons:
        return "stale", reasons
    problems = _record.internal_problems(rec)
    if problems:
        return "broken", problems
    if _record.code_changed(rec):
        return "code changed", [f"d2lport/{framework} changed since the record was made"]
    return "current", []


def plan(names: Optional[Sequence[str]] = None, frameworks: Optional[Sequence[str]] = None,
         directory=None) -> List[Tuple[Recipe, str, str, List[str]]]:
    table = recipes("cpu")
    names = list(names or table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"no recipe named {', '.join(unknown)}: the recipes are "
                         f"{', '.join(table)}")
    frameworks = [registry.normalize_framework(f) for f in (frameworks or registry.FRAMEWORKS)]
    return [(table[n], fw, *state(table[n], fw, directory)) for n in names for fw in frameworks]


def status(names=None, frameworks=None, directory=None) -> str:
    lines = [f"{'run':<26} {'state':<13} detail"]
    for recipe, fw, st, reasons in plan(names, frameworks, directory):
        detail = "; ".join(reasons)
        if st == "current":
            rec = _record.load(_record.path_for(recipe.run_name(fw), directory))
            row = _record.summarize([rec])[0]
            detail = (f"test acc {row['test_acc']:.4f}, {row['minutes']:.1f} min, "
                      f"{row['examples_per_sec']:.0f} ex/s")
        lines.append(f"{recipe.run_name(fw):<26} {st:<13} {detail}")
    return "\n".join(lines)


def _git_commit(path: Path, message: str, readme=None) -> None:
    """Commit the record file (and the README it updated; nothing else that is staged),
    retrying a busy index."""
    root = _record.ROOT
    files = [str(path)] + ([str(readme)] if readme else [])
    for attempt in range(5):
        add = subprocess.run(["git", "add", "--", *files], cwd=root, capture_output=True,
                             text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *files], cwd=root,
            capture_output=True, text=True).returncode == 0
        if done:
            print(f"committed {path.relative_to(root)}", flush=True)
            return
        time.sleep(2 + 3 * attempt)
    print(f"(could not commit {path}: commit it by hand)", flush=True)


def run(names=None, frameworks=None, commit: bool = False, rerun_code_changes: bool = True,
        dry_run: bool = False, python: Optional[str] = None, readme=None) -> int:
    """Train every run that is not current, one process each, in recipe order.  A run cut
    short (Ctrl-C, a kill, a reboot) resumes from its checkpoint the next time.  ``python``:
    the interpreter of every run; default each framework's (``worker.python_for``: MXNet's
    own environment, ``.venv-mxnet``, when there is one)."""
    todo = [(r, fw, st) for r, fw, st, _ in plan(names, frameworks)
            if st != "current" and (rerun_code_changes or st != "code changed")]
    print(status(names, frameworks), flush=True)
    if not todo:
        print("every record is current: nothing to train", flush=True)
        return 0
    print(f"\n{len(todo)} run(s) to train: " + ", ".join(r.run_name(fw) for r, fw, _ in todo),
          flush=True)
    if dry_run:
        return 0
    for recipe, fw, st in todo:
        run_name = recipe.run_name(fw)
        fw_python = python or worker.python_for(fw)
        if fw_python == sys.executable:
            missing = not registry.framework_available(fw)
        else:       # another interpreter (MXNet's own environment): asked by a probe
            missing = python is None and worker.probe(fw) is not None
        if missing:
            print(f"skipping {run_name}: {fw} is not installed here", flush=True)
            continue
        path = _record.path_for(run_name)
        ckpt = CHECKPOINTS / run_name
        stamp = ckpt / "RECIPE"
        # checkpoints of another version of the recipe cannot be resumed: start afresh
        if ckpt.exists() and (not stamp.exists() or stamp.read_text() != recipe.digest()):
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True, exist_ok=True)
        stamp.write_text(recipe.digest())
        cmd = [fw_python, "-m", "d2lport.cli", "train", "--recipe", recipe.name, "-f", fw,
               "--record", str(path), "--checkpoint-dir", str(ckpt), "--resume",
               "--checkpoint-every", "5m"]
        print(f"\n== {run_name} ({st}) ==\n$ d2lport train --recipe {recipe.name} -f {fw} "
              f"--record {path.relative_to(_record.ROOT)} --checkpoint-dir "
              f"{ckpt.relative_to(_record.ROOT)} --resume", flush=True)
        env = dict(os.environ, D2LPORT_PROGRESS=os.environ.get("D2LPORT_PROGRESS", "0"))
        t0 = time.perf_counter()
        code = subprocess.run(cmd, cwd=_record.ROOT, env=env).returncode
        if code != 0:
            print(f"{run_name} failed (exit status {code}) after "
                  f"{time.perf_counter() - t0:.0f} s; its checkpoints are kept in {ckpt}: "
                  "`make results` resumes it", flush=True)
            return code
        shutil.rmtree(ckpt, ignore_errors=True)
        rec = _record.load(path)
        row = _record.summarize([rec])[0]
        print(f"{run_name}: test accuracy {row['test_acc']:.4f}, {row['minutes']:.1f} min "
              f"of training, {row['examples_per_sec']:.0f} ex/s", flush=True)
        if readme:
            update_readme(readme)
        if commit:
            _git_commit(path, f"results: {run_name} (test accuracy {row['test_acc']:.4f}, "
                              f"{row['minutes']:.0f} min)", readme)
    print("\n" + status(names, frameworks), flush=True)
    return 0
