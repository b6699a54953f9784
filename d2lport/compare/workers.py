"""Running the frameworks' worker processes (:mod:`d2lport.worker`) for a comparison:
which frameworks can run, their CPU threads, one worker per framework for a list of jobs,
and the job and array files they read.  Imports no framework.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import registry, worker


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


def run_workers(frameworks: Sequence[str], jobs_for, skipped: Dict[str, str],
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


def make_job(task: str, data: Sequence[Path], **params) -> dict:
    """A job of :func:`d2lport.worker.run_jobs`: a task, its .npz files, its parameters."""
    return {"task": task, "data": [str(p) for p in data], "params": params}


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def normalize_all(frameworks, reference: str) -> Tuple[List[str], str]:
    """The frameworks' registry names, each once, in order; and the reference's."""
    fws = list(dict.fromkeys(registry.normalize_framework(f) for f in frameworks))
    return fws, registry.normalize_framework(reference)


def run_one(framework: str, job: dict):
    """One job in ``framework``'s worker; raises where the framework is missing or the job
    failed (``d2lport export|import``: one framework, nothing to tabulate)."""
    ready, skipped = available([framework])
    if not ready:
        raise registry.FrameworkNotInstalledError(f"{framework}: {skipped[framework]}")
    results = worker.run_jobs(framework, [job])
    for _, meta in results:
        if "error" in meta:
            raise worker.WorkerError(f"{framework}: {meta['error']}")
    return results
