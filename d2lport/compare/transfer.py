"""Weight files across frameworks: :func:`export_weights` (a framework's seeded
initialisation, in canonical form) and :func:`import_weights` (load one into a framework and
check it: a checksum of its output, optionally the test accuracy).  Imports no framework.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from .. import registry
from .. import weights as weight_files
from .inputs import INPUT_BATCH, resolve, seeded_input
from .workers import make_job, run_one, write_npz


def export_weights(model: str, framework: str, out, seed: int = 0, **model_kwargs) -> dict:
    """Build ``model`` in ``framework`` with that framework's seeded initialisation and
    write its canonical weights to ``out`` (.npz; meta names the model and its kwargs)."""
    fw = registry.normalize_framework(framework)
    name, kwargs = resolve(model, model_kwargs)
    registry.get_spec(name, **kwargs)                    # a bad keyword fails here
    (_, meta), = run_one(fw, make_job("export_weights", [], model=name, kwargs=kwargs,
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
        x = write_npz(Path(tmp) / "x.npz", {"x": x})
        (arrays, result), = run_one(fw, make_job(
            "import_weights", [x], path=str(Path(path).resolve()), evaluate=evaluate,
            limit=limit, batch_size=batch_size, seed=seed,
            root=str(data_root) if data_root else None))
    logits = arrays["logits"].astype(np.float64)
    result = dict(result, framework=fw, logits=arrays["logits"],
                  checksum=(float(logits.sum()), float(np.sqrt((logits ** 2).sum()))))
    return result
