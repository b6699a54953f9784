"""Side by side: one network in several frameworks, from the same canonical weights.

``compare("googlenet")`` runs each framework in its own worker process
(:mod:`d2lport.worker`), hands every framework the same canonical weights
(:func:`d2lport.weights.random_weights`) and the same seeded input, and tabulates per block
the output shape and parameters per framework and the largest absolute and relative
difference from the reference framework, with a verdict.  ``train=N`` adds N plain-SGD
steps from those weights on the same Fashion-MNIST batches (loss per step, side by side);
``speed=True`` adds examples per second; :func:`bench` tabulates that for several models
(one worker per framework: the chapters' quick table; ``d2lport bench``, with the book's own
code and each framework's fast path, is :mod:`d2lport.bench`).  :func:`export_weights` and
:func:`import_weights` serve the ``d2lport export|import`` commands.

One module per job:

* :mod:`.results`   the result classes and their rendering (tables, HTML, records, plots)
* :mod:`.inputs`    what every framework receives (seeded input, resized batches, dropout off)
* :mod:`.workers`   which frameworks can run, and running their worker processes
* :mod:`.run`       :func:`compare`, :func:`compare_many`, :func:`bench`
* :mod:`.transfer`  :func:`export_weights`, :func:`import_weights`

This package imports no framework, and must not: the parent of a comparison talks to
TensorFlow and MXNet, and MXNet imported after TensorFlow in one process segfaults.
"""
from __future__ import annotations

import sys
import types

from .inputs import (INPUT_BATCH, dropout_off, images_to_input, resolve, seeded_input,
                     training_batches)
from .inputs import _bilinear_matrix  # noqa: F401  (tests check the resize weights)
from .results import (DEFAULT_RTOL, TRAIN_ATOL, BlockRow, Comparison, SpeedTable, TrainCurves,
                      format_import)
from .run import SPEED_STEPS, SPEED_WARMUP, bench, compare, compare_many
from .transfer import export_weights, import_weights
from .workers import available

__all__ = ["compare", "compare_many", "bench", "export_weights", "import_weights",
           "Comparison", "BlockRow", "TrainCurves", "SpeedTable", "format_import",
           "available", "resolve", "seeded_input", "dropout_off", "images_to_input",
           "training_batches", "DEFAULT_RTOL", "TRAIN_ATOL", "INPUT_BATCH", "SPEED_STEPS",
           "SPEED_WARMUP"]


# `d2lport.compare(...)` reads as a function, but the package attribute `compare` is this
# package (any `import d2lport.compare` binds it): calling the package calls compare().
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
