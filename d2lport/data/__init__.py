"""Framework-neutral datasets (numpy only): see :mod:`d2lport.data.fashion_mnist`."""

import importlib

__all__ = [
    'LABELS', 'OFFICIAL_URL', 'FILES', 'SPLITS', 'DataError', 'read_idx', 'cache_dir',
    'locate', 'verify', 'load_arrays', 'download', 'status', 'subset_indices', 'to_float',
    'clear_cache',
]


def __getattr__(name):
    # Imported lazily so `python -m d2lport.data.fashion_mnist` (used by
    # scripts/get_data.sh) does not find the module already imported by its
    # package and warn about it.
    if name in __all__:
        return getattr(importlib.import_module('.fashion_mnist', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
