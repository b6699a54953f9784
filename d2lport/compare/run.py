"""The comparison itself: :func:`compare` (one model, per-block outputs, optional SGD
steps and speed), :func:`compare_many` (several models, one worker per framework) and
:func:`bench` (examples per second).  Prepares the shared weights, input and batches, runs
the workers, and turns their replies into :mod:`.results`.  Imports no framework.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import registry, specs
from .. import weights as weight_files
from ..common import check_input_shape, format_shape
from .inputs import INPUT_BATCH, dropout_off, resolve, seeded_input, training_batches
from .results import DEFAULT_RTOL, BlockRow, Comparison, SpeedTable, TrainCurves
from .workers import available, make_job, normalize_all, run_workers, write_npz

SPEED_STEPS, SPEED_WARMUP = 3, 1     # timed and untimed calls of compare(speed=True)


@dataclass
class _Case:
    model: str
    kwargs: dict
    spec: specs.NetSpec
    input_shape: Tuple[int, ...]
    data: Path                   # canonical weights ("w:<key>") and the input ("x")


def _prepare_case(tmp: Path, index: int, model: str, kwargs: dict, input_shape, seed: int):
    name, kwargs = resolve(model, kwargs)
    kwargs = registry.fit_kwargs(name, input_shape, **kwargs)
    spec = registry.get_spec(name, **kwargs)
    shape = tuple(input_shape) if input_shape is not None else (INPUT_BATCH,) + spec.input_shape
    check_input_shape(spec, shape)      # a wrong size fails here, by name, not in 3 workers
    arrays = {f"w:{k}": v for k, v in weight_files.random_weights(spec, seed).items()}
    arrays["x"] = seeded_input(shape, seed)
    return _Case(name, kwargs, spec, shape, write_npz(tmp / f"case{index}.npz", arrays))


def _blocks_job(case: _Case, fw: str, perturb: Optional[dict]) -> dict:
    hook = None
    if perturb and registry.normalize_framework(perturb["framework"]) == fw:
        hook = {k: v for k, v in perturb.items() if k != "framework"}
    return make_job("compare_blocks", [case.data], model=case.model, kwargs=case.kwargs,
                include_aux=True, perturb=hook)


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
    frameworks, reference = normalize_all(frameworks, reference)
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
            extra.append(make_job("speed", [], model=case.model, kwargs=case.kwargs,
                                  batch_size=batch_size, steps=SPEED_STEPS,
                                  warmup=SPEED_WARMUP, seed=seed))
        results = run_workers(ready, lambda fw: [_blocks_job(case, fw, perturb)] + extra,
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
    frameworks, reference = normalize_all(frameworks, reference)
    ready, skipped = available(frameworks)
    failed: Dict[str, str] = {}
    seconds: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="d2lport-compare-") as tmp:
        prepared = [_prepare_case(Path(tmp), i, m, kw, None, seed)
                    for i, (m, kw) in enumerate(cases)]
        results = run_workers(ready, lambda fw: [_blocks_job(c, fw, None) for c in prepared],
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
    batches = write_npz(tmp / "batches.npz", {"train_x": x, "train_y": y})
    notes = [note] if note else []
    if chw[0] != 1:
        notes.append(f"grey images repeated into {chw[0]} channels")
    if case.spec.taps:
        notes.append("loss = main + 0.3 x auxiliary heads")
    job = make_job("sgd_train", [case.data, batches], model=case.model, kwargs=kwargs, lr=lr)
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
    frameworks, _ = normalize_all(frameworks, frameworks[0] if frameworks else "torch")
    ready, skipped = available(frameworks)
    cases = []
    for model in models:
        name, kwargs = resolve(model, model_kwargs)
        if input_size is not None and registry.accepts(name, "image_size"):
            kwargs["image_size"] = input_size
        cases.append((name, kwargs, registry.get_spec(name, **kwargs)))
    jobs = [make_job("speed", [], model=name, kwargs=kw, batch_size=batch_size, steps=steps,
                     warmup=warmup, seed=seed) for name, kw, _ in cases]
    failed: Dict[str, str] = {}
    results = run_workers(ready, lambda fw: jobs, skipped, failed, {}, threads)
    tables = []
    for i, (name, kwargs, spec) in enumerate(cases):
        title = _speed_title(name, kwargs, spec, batch_size, steps, warmup, threads)
        table = _speed_table(title, {fw: res[i] for fw, res in results.items()}, failed)
        if table is not None:
            tables.append(table)
    return tables, {**skipped, **failed}
