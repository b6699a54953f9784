"""Framework-neutral Fashion-MNIST loader (numpy only).

Finds the four IDX files (Debian package ``dataset-fashion-mnist``, a user
cache, or a directory you name), verifies them by the SHA-256 of the
*decompressed* payload (mirrors re-gzip the files, so .gz bytes differ), and
returns uint8 images / int64 labels that every framework backend batches
itself.  Run ``python -m d2lport.data.fashion_mnist --status`` or
``--download`` from a shell.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

LABELS = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat',
          'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot')

# The dataset's own README links the files here.
OFFICIAL_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com'
DEBIAN_PACKAGE = 'dataset-fashion-mnist'
DEBIAN_DIR = Path('/usr/share/datasets/fashion-mnist')
ENV_VAR = 'D2LPORT_DATA'

# name -> (sha256 of the decompressed payload, payload size in bytes)
FILES = {
    'train-images-idx3-ubyte': (
        'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888', 47040016),
    'train-labels-idx1-ubyte': (
        'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9', 60008),
    't10k-images-idx3-ubyte': (
        '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b', 7840016),
    't10k-labels-idx1-ubyte': (
        '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34', 10008),
}
# name -> the array shape the file holds (to tell "another data set" from "damaged")
SHAPES = {
    'train-images-idx3-ubyte': (60000, 28, 28), 'train-labels-idx1-ubyte': (60000,),
    't10k-images-idx3-ubyte': (10000, 28, 28), 't10k-labels-idx1-ubyte': (10000,),
}
SPLITS = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

FIXES = (
    f'  1. as root: apt-get install -y {DEBIAN_PACKAGE}'
    f'   (Debian/Ubuntu; files land in {DEBIAN_DIR})\n'
    f'  2. copy the four files (.gz or uncompressed) into a directory and set {ENV_VAR}=that/dir'
    ' or pass root=that/dir\n'
    '  3. when online: `d2lport data --download` (or `make data`), which fetches them into'
    ' the cache directory')
BAD_FILE_FIX = ('delete it and run `make data` (or `d2lport data --download` when online), '
                f'or point {ENV_VAR} / root= at a directory holding good copies of the four '
                'Fashion-MNIST files')


class DataError(RuntimeError):
    """Fashion-MNIST files missing, truncated, corrupt or failing their checksum."""


# ---------------------------------------------------------------- reading

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/)
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


def _base_name(path):
    name = Path(path).name
    return name[:-3] if name.endswith('.gz') else name


def _read_payload(path):
    """Return the decompressed bytes of ``path`` (.gz or raw)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f'cannot read {path}: {e.strerror or e}: check the path and permissions, '
                        f'or {BAD_FILE_FIX}') from e
    return _gunzip(raw, path) if path.name.endswith('.gz') else raw


def _gunzip(raw, path, fix=BAD_FILE_FIX):
    """Decompress gzip bytes; ``path`` only names the file in error messages."""
    path = Path(path)
    expected = FILES.get(_base_name(path), (None, None))[1]
    chunks = []
    try:
        # zlib rather than gzip.decompress so a truncated stream still tells us
        # how much payload arrived; the loop handles multi-member gzip files.
        while raw:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunks.append(d.decompress(raw))
            if not d.eof:
                got = sum(map(len, chunks))
                exp = f', expected {expected}' if expected else ''
                raise DataError(f'{path.name} in {path.parent} is truncated (gzip stream ends '
                                f'early: got {got} bytes of payload{exp}): {fix}')
            raw = d.unused_data.lstrip(b'\0')  # gzip tolerates trailing zero padding
    except zlib.error as e:
        raise DataError(f'{path.name} in {path.parent} is corrupt (gzip error: {e}): '
                        f'{fix}') from e
    return b''.join(chunks)


def _parse_idx(payload, path):
    """Decode an IDX payload; every header/length problem becomes a DataError."""
    where = f'{Path(path).name} in {Path(path).parent}'
    if len(payload) < 4:
        raise DataError(f'{where} is truncated (got {len(payload)} bytes, not even an IDX '
                        f'header): {BAD_FILE_FIX}')
    if payload[:2] != b'\0\0' or payload[2] not in _IDX_DTYPES:
        raise DataError(f'{where} is not an IDX file (bad magic number '
                        f'0x{payload[:4].hex()}): {BAD_FILE_FIX}')
    dtype = np.dtype(_IDX_DTYPES[payload[2]])
    ndim = payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f'{where} is truncated (got {len(payload)} bytes of payload, header '
                        f'alone needs {header}): {BAD_FILE_FIX}')
    dims = tuple(int(x) for x in np.frombuffer(payload, '>u4', ndim, 4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(payload) < expected:
        raise DataError(f'{where} is truncated (got {len(payload)} bytes of payload, '
                        f'expected {expected}): {BAD_FILE_FIX}')
    if len(payload) > expected:
        raise DataError(f'{where} is corrupt ({len(payload) - expected} unexpected bytes after '
                        f'the {dims} data, {len(payload)} bytes of payload, expected '
                        f'{expected}): {BAD_FILE_FIX}')
    arr = np.frombuffer(payload, dtype, offset=header).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder('='))


def read_idx(path):
    """Parse an IDX file (.gz or raw) into a numpy array; raise DataError if broken."""
    return _parse_idx(_read_payload(path), path)


# ---------------------------------------------------------------- locating

def cache_dir():
    """Per-user download directory: $XDG_CACHE_HOME/d2lport/fashion-mnist."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'd2lport' / 'fashion-mnist'


@functools.lru_cache(maxsize=None)
def _debian_dirs():
    """Where dpkg says the package put its files (cached: it is a subprocess)."""
    dirs = []
    if shutil.which('dpkg'):
        try:
            out = subprocess.run(['dpkg', '-L', DEBIAN_PACKAGE], capture_output=True,
                                 text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ''
        for line in out.splitlines():
            if line.endswith('/train-images-idx3-ubyte.gz'):
                dirs.append(Path(line).parent)
    if DEBIAN_DIR not in dirs:
        dirs.append(DEBIAN_DIR)
    return tuple(dirs)


def _find_file(directory, name):
    """Path of ``name`` in ``directory``: the .gz (what we download) else raw."""
    for candidate in (Path(directory) / f'{name}.gz', Path(directory) / name):
        if candidate.is_file():
            return candidate
    return None


def _candidates(root):
    if root is not None:
        return [(Path(root).expanduser(), 'root= argument')]
    found = []
    if os.environ.get(ENV_VAR):
        found.append((Path(os.environ[ENV_VAR]).expanduser(), f'${ENV_VAR}'))
    found.append((cache_dir(), 'user cache'))
    found += [(d, f'Debian package {DEBIAN_PACKAGE}') for d in _debian_dirs()]
    return found


def _locate(root=None):
    """Return (directory, how it was found) for the first complete directory."""
    tried = []
    for directory, source in _candidates(root):
        if directory.exists() and not directory.is_dir():
            tried.append(f'  {directory}  ({source}): is a file, not a directory')
            continue
        if not directory.is_dir():
            tried.append(f'  {directory}  ({source}): no such directory')
            continue
        try:
            os.listdir(directory)      # unreadable: say so rather than "files missing"
            missing = [n for n in FILES if _find_file(directory, n) is None]
        except OSError as e:
            tried.append(f'  {directory}  ({source}): cannot be read ({e.strerror or e}): '
                         'check its permissions (e.g. chmod u+rx)')
            continue
        if not missing:
            return directory, source
        tried.append(f'  {directory}  ({source}): missing '
                     + ', '.join(f'{n}[.gz]' for n in missing))
    raise DataError('Fashion-MNIST data not found. Searched:\n' + '\n'.join(tried)
                    + '\nFix it one of these ways:\n' + FIXES)


def locate(root=None):
    """Directory holding all four files: root= only, else $D2LPORT_DATA, cache, Debian."""
    return _locate(root)[0]


# ---------------------------------------------------------------- verifying

_VERIFIED = {}   # (path, size, mtime_ns) -> verify() entry; repeated loads skip hashing
_ARRAYS = {}     # (split, file keys) -> (images, labels); train decodes to 47 MB


def _key(path):
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _entry(path, payload, fix=BAD_FILE_FIX):
    """verify() entry for a decompressed payload that belongs at ``path``."""
    name = _base_name(path)
    sha, size = FILES[name]
    digest = hashlib.sha256(payload).hexdigest()
    ok = digest == sha and len(payload) == size
    message = 'ok'
    if not ok:
        dims = _idx_dims(payload)
        what = (f'payload sha256 {digest}, {len(payload)} bytes; expected {sha}, {size} bytes')
        if dims is not None and dims != SHAPES[name]:
            message = (f'{path.name} in {path.parent} is a valid IDX file holding {dims}, not '
                       f'Fashion-MNIST (its {name} holds {SHAPES[name]}; {what}): another data '
                       f'set in the Fashion-MNIST directory? {fix}')
        elif dims is not None:
            message = (f'{path.name} in {path.parent} fails its checksum ({what}): damaged, or '
                       'another data set of the same layout (e.g. MNIST), not Fashion-MNIST: '
                       f'{fix}')
        else:       # not even well-formed: say how (truncated, bad magic...), not just "checksum"
            try:
                _parse_idx(payload, path)
                message = f'{path.name} in {path.parent} fails its checksum ({what}): {fix}'
            except DataError as e:
                message = str(e).replace(BAD_FILE_FIX, fix)
    return {'path': path, 'ok': ok, 'sha256': digest, 'bytes': len(payload),
            'message': message}


def _idx_dims(payload):
    """The dims of a well-formed IDX payload (exact length), else None."""
    try:
        return _parse_idx(payload, 'payload').shape
    except DataError:
        return None


def _check(path, payload=None):
    """verify() entry for one file, from the cache when the file is unchanged."""
    key = _key(path)
    if key not in _VERIFIED:
        try:
            _VERIFIED[key] = _entry(path, _read_payload(path) if payload is None else payload)
        except DataError as e:
            _VERIFIED[key] = {'path': path, 'ok': False, 'sha256': None, 'bytes': None,
                              'message': str(e)}
    return _VERIFIED[key]


def verify(directory=None):
    """Check every file in ``directory`` (default: locate()); never raises for bad files.

    Returns {name: {'path', 'ok', 'sha256', 'bytes', 'message'}}, sha256/bytes
    describing the decompressed payload (None when it could not be read).
    """
    directory = locate() if directory is None else Path(directory)
    report = {}
    for name in FILES:
        path = _find_file(directory, name)
        report[name] = _check(path) if path else {
            'path': None, 'ok': False, 'sha256': None, 'bytes': None,
            'message': f'{name}[.gz] missing from {directory}: ' + BAD_FILE_FIX}
    return report


def clear_cache():
    """Forget cached verification results and decoded arrays."""
    _VERIFIED.clear()
    _ARRAYS.clear()


# ---------------------------------------------------------------- loading

def load_arrays(split='train', root=None, verify=True):
    """Return (images uint8 (N,28,28), labels int64 (N,)) for 'train' or 'test'.

    The arrays are cached in-process and shared between callers, so they are
    read-only; copy (np.array(x)) or use to_float() before modifying.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {sorted(SPLITS)}, not {split!r}')
    directory = locate(root)
    paths = [_find_file(directory, n) for n in SPLITS[split]]
    cache_key = (split,) + tuple(_key(p) for p in paths)
    if cache_key in _ARRAYS:
        if verify:
            for p in paths:
                _raise_unless_ok(_check(p))
        return _ARRAYS[cache_key]

    arrays = []
    for p in paths:
        payload = _read_payload(p)
        if verify:
            _raise_unless_ok(_check(p, payload))
        arrays.append(_parse_idx(payload, p))
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f'{paths[0]} holds {images.dtype} {images.shape}, not uint8 (N,28,28): '
                        + BAD_FILE_FIX)
    if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() > 9):
        raise DataError(f'{paths[1]} does not hold {len(images)} labels in 0..9: '
                        + BAD_FILE_FIX)
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    _ARRAYS[cache_key] = (images, labels)
    return images, labels


def _raise_unless_ok(entry):
    if not entry['ok']:
        raise DataError(entry['message'])


def subset_indices(n, limit, seed=0):
    """Sorted int64 indices of a seeded random subset of ``limit`` out of ``n``.

    Pure numpy with a fixed seed, so ``limit=`` selects the same examples in
    every framework.  ``limit=None`` (or >= n) means all of them.
    """
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    if limit < 1:
        raise ValueError(f'limit must be a positive integer or None, not {limit!r}')
    idx = np.random.default_rng(seed).permutation(n)[:int(limit)]
    return np.sort(idx).astype(np.int64)


def to_float(images):
    """uint8 (N,28,28) or (N,1,28,28) -> float32 (N,1,28,28) in [0, 1] (NCHW)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f'to_float expects uint8 pixels, got {images.dtype} '
                         '(already converted?)')
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f'to_float expects (N,H,W) or (N,1,H,W), got {images.shape}')
    out = images.astype(np.float32)
    out /= 255.0
    return out


# ---------------------------------------------------------------- downloading

def _urlopen_fetch(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def download(dest=None, base_url=OFFICIAL_URL, fetch=None):
    """Fetch the four .gz files into ``dest`` (default cache_dir()) and verify them.

    Files already present and verified are kept.  Each download is verified
    in memory, then written to a temporary file that is renamed over the
    target, so a failed or corrupt download never leaves a partial file
    behind nor touches a good existing one.  ``fetch(url) -> bytes`` is injectable.
    """
    dest = cache_dir() if dest is None else Path(dest).expanduser()
    fetch = fetch or _urlopen_fetch
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f'cannot create {dest}: {e}: pass dest= a writable directory') from e
    for name in FILES:
        existing = _find_file(dest, name)
        if existing and _check(existing)['ok']:
            continue
        url = f'{base_url.rstrip("/")}/{name}.gz'
        try:
            data = fetch(url)
        except DataError:
            raise
        except Exception as e:  # URLError, timeouts, HTTP errors: all mean "no file"
            raise DataError(f'could not download {url}: {e}. Offline? Use one of:\n'
                            + FIXES) from e
        target = dest / f'{name}.gz'
        fix = (f'download of {url} rejected, nothing written to {dest}: retry, try another '
               'mirror (base_url=), or use one of:\n' + FIXES)
        entry = _entry(target, _gunzip(data, target, fix), fix)   # verify before writing
        if not entry['ok']:
            raise DataError(entry['message'])
        fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.part', dir=dest)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
            os.replace(tmp, target)   # atomic: readers never see a partial file
        finally:
            Path(tmp).unlink(missing_ok=True)   # no-op after a successful rename
        _VERIFIED[_key(target)] = entry
    return dest


# ---------------------------------------------------------------- reporting

def _status(root=None):
    try:
        directory, source = _locate(root)
    except DataError as e:
        return f'Fashion-MNIST: NOT FOUND\n{e}', False
    report = verify(directory)
    lines = [f'Fashion-MNIST: {directory}  (found via {source})']
    for name, entry in report.items():
        if entry['ok']:
            lines.append(f'  ok   {entry["path"].name:28s} {entry["bytes"]:>9d} bytes  '
                         f'sha256 {entry["sha256"][:16]}...')
        else:
            lines.append(f'  BAD  {name}: {entry["message"]}')
    ok = all(e['ok'] for e in report.values())
    lines.append('All four files verified.' if ok else
                 'Some files are bad: replace them (see above), or use another copy:\n' + FIXES)
    return '\n'.join(lines), ok


def status(root=None):
    """Human-readable report: where the data is, each file verified or not, what to do."""
    return _status(root)[0]


def main(argv=None):
    """CLI: --status (exit 1 unless all files verify) or --download."""
    parser = argparse.ArgumentParser(prog='python -m d2lport.data.fashion_mnist',
                                     description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--status', action='store_true', help='report and verify (default)')
    group.add_argument('--download', action='store_true', help='download into the cache dir')
    parser.add_argument('--root', help='directory to check (--status) or fill (--download)')
    parser.add_argument('--base-url', default=OFFICIAL_URL, help='mirror to download from')
    args = parser.parse_args(argv)
    if args.download:
        try:
            where = download(args.root, base_url=args.base_url)
        except DataError as e:
            print(f'error: {e}', file=sys.stderr)
            return 1
        print(f'Fashion-MNIST downloaded and verified in {where}')
        return 0
    text, ok = _status(args.root)
    print(text)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
