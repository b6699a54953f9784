"""``d2lport bench``: every (framework, network, path) measured in its own worker process,
one after another (the machine's cores to one run at a time, a fair clock, and each run's
peak memory its own), plus each framework's matrix-multiply rate, into a
:class:`~d2lport.bench.report.BenchReport`.  Imports no framework."""
from __future__ import annotations

import datetime
import platform
from importlib import metadata
from typing import Optional, Sequence

from .. import registry, specs, worker
from ..common import physical_cores
from ..compare.workers import _threads, available
from .measure import PATHS, summary
from .report import BenchReport

DEFAULT_MODELS = ("googlenet", "vgg_d2l")
# What neither the book nor a practitioner without d2lport sets: MXNet's own thread default.
_LIKE_THE_BOOK = {"mxnet": {"D2LPORT_MXNET_THREADS": "mxnet"}}
_DISTRIBUTIONS = {"torch": ("torch",), "tensorflow": ("tensorflow", "tensorflow-cpu"),
                  "mxnet": ("mxnet",)}


def _version(framework: str) -> str:
    for dist in _DISTRIBUTIONS.get(framework, (framework,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_model(model: str) -> str:
    """The registered name of ``model``, if it trains on Fashion-MNIST as it is."""
    spec = registry.get_spec(model)
    out = specs.infer(spec, include_aux=False)[-1].out_shape
    if spec.input_shape[0] != 1 or tuple(out) != (10,):
        raise ValueError(f"d2lport bench trains on Fashion-MNIST: {model} takes "
                         f"{spec.input_shape} and gives {tuple(out)}; use a network with one "
                         "input channel and 10 classes, e.g. googlenet, vgg_d2l, residual_net")
    return model


def bench(models: Sequence[str] = DEFAULT_MODELS, frameworks: Sequence[str] = registry.FRAMEWORKS,
          paths: Sequence[str] = PATHS, batch_size: int = 128, steps: int = 3, repeats: int = 1,
          rounds: int = 3, warmup: int = 1, lr: float = 0.01, seed: int = 0, threads: Optional[int] = None,
          matmul_size: int = 2048, device: Optional[str] = None, timeout: float = 3600,
          log=print) -> BenchReport:
    """Measure; ``log`` gets a line per finished run (``None``: quiet).

    Each (framework, network, path) runs in ``rounds`` fresh processes, the paths taking
    turns (d2lport, book, fast, d2lport, ...), so that the machine's drifting load falls on
    every path alike; each process times ``repeats`` passes after ``warmup``.  A rate is the
    median of all those passes, a peak memory the largest of the processes'."""
    for p in paths:
        if p not in PATHS:
            raise ValueError(f"unknown path {p!r}: choose from {', '.join(PATHS)}")
    if min(batch_size, steps, repeats, rounds) < 1 or warmup < 0:
        raise ValueError("batch size, steps, repeats and rounds must be >= 1 and warmup >= 0")
    models = [check_model(m) for m in models]
    ready, skipped = available([registry.normalize_framework(f) for f in frameworks])
    report = BenchReport(
        settings=dict(models=list(models), frameworks=list(ready), paths=list(paths),
                      batch_size=batch_size, steps=steps, repeats=repeats, rounds=rounds,
                      warmup=warmup,
                      lr=lr, seed=seed, threads=threads, device=device or "default"),
        machine=dict(date=datetime.date.today().isoformat(), cpu=_cpu_name(),
                     cores=physical_cores(), device=device or "CPU",
                     python=platform.python_version(),
                     versions={fw: _version(fw) for fw in ready}),
        flops={m: specs.flops(registry.get_spec(m)) for m in models},
        failed=dict(skipped))
    say = log or (lambda *a: None)
    with _threads(threads):
        for fw in ready:
            try:
                _, meta = worker.run(fw, "bench_matmul", timeout=timeout, n=matmul_size,
                                     device=device)
                report.matmul[fw] = meta
                say(f"{fw}: matmul {meta['gflops']['median']:.0f} GFLOP/s on {meta['device']}")
            except worker.WorkerError as err:
                report.failed[f"{fw} matmul"] = _short(err)
            for model in models:
                runs = {}
                for turn in range(rounds):
                    for path in paths:
                        if path != "d2lport" and model not in registry.BOOK_MODELS:
                            report.failed[f"{fw} {model} {path}"] = "no book model for this network"
                            continue
                        if f"{fw} {model} {path}" in report.failed:
                            continue
                        env = _LIKE_THE_BOOK.get(fw) if path != "d2lport" else None
                        try:
                            _, meta = worker.run(fw, "bench_path", timeout=timeout, env=env,
                                                 model=model, path=path, batch_size=batch_size,
                                                 steps=steps, repeats=repeats, warmup=warmup,
                                                 lr=lr, seed=seed, device=device)
                        except worker.WorkerError as err:
                            report.failed[f"{fw} {model} {path}"] = _short(err)
                            continue
                        runs.setdefault(path, []).append(meta)
                        say(f"{fw} {model} {path} (round {turn + 1} of {rounds}): training "
                            f"{meta['training']['median']:.1f}, inference "
                            f"{meta['inference']['median']:.1f} examples/s, peak "
                            f"{meta['peak_gb']:.2f} GB ({meta['seconds']:.0f} s) on "
                            f"{meta['device']}")
                report.runs += [merge(metas) for path, metas in runs.items()
                                if f"{fw} {model} {path}" not in report.failed]
    report.machine["device"] = devices_used(report)
    return report


def devices_used(report) -> str:
    """The heading's device: "CPU", or each accelerator the workers ran on with the
    frameworks that ran there ("NVIDIA H100 80GB HBM3 (torch, jax)")."""
    where: dict = {}
    for fw, meta in list(report.matmul.items()) + [(r["framework"], r) for r in report.runs]:
        where.setdefault(meta.get("accelerator") or "CPU", []).append(fw)
    if set(where) <= {"CPU"}:
        return "CPU"
    return "; ".join(f"{name} ({', '.join(dict.fromkeys(fws))})" for name, fws in where.items())


def merge(metas: Sequence[dict]) -> dict:
    """One path's rounds as one run: every timed pass pooled, the largest peak memory."""
    out = dict(metas[0])
    for key in ("training", "inference"):
        out[key] = summary([rate for m in metas for rate in m[key]["all"]])
    out["peak_gb"] = max(m["peak_gb"] for m in metas)
    gpu_peaks = [m["device_peak_gb"] for m in metas if m.get("device_peak_gb") is not None]
    out["device_peak_gb"] = max(gpu_peaks) if gpu_peaks else None
    out["seconds"] = sum(m["seconds"] for m in metas)
    out["processes"] = len(metas)
    return out


def _short(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
