"""``d2lport bench``: d2lport's training and inference speed against the book's own code
and each framework's fast path, in one run (see :mod:`.run`, :mod:`.measure`,
:mod:`.report`)."""
from .report import BenchReport, update_readme  # noqa: F401
from .run import bench  # noqa: F401
