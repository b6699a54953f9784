"""Fashion-MNIST data layer: real files, corruption handling, locating, downloading.

Never touches the network: downloads use an injected fetch serving local bytes.
"""
import gzip
import os
import shutil

import numpy as np
import pytest

from d2lport.data import fashion_mnist as fm
from d2lport.data import (FILES, LABELS, DataError, download, load_arrays, locate,
                          read_idx, status, subset_indices, to_float, verify)

pytestmark = pytest.mark.core


@pytest.fixture(scope='module')
def real_dir(tmp_path_factory):
    """Directory with the four real files as .gz (the Debian package ships them so)."""
    try:
        found = fm.locate()
    except DataError as e:
        pytest.skip(f'Fashion-MNIST not installed here: {e}')
    if all((found / f'{n}.gz').is_file() for n in FILES):
        return found
    gz = tmp_path_factory.mktemp('gz')   # user keeps uncompressed copies: gzip them once
    for n in FILES:
        (gz / f'{n}.gz').write_bytes(gzip.compress(fm._read_payload(fm._find_file(found, n)), 1))
    return gz


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    # Keep the user's env var and cache out of the search order in every test.
    monkeypatch.delenv('D2LPORT_DATA', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('xdg')))


def _link_all(src, dst, skip=()):
    """Symlink the real files into dst (cheap), except names in skip."""
    dst.mkdir(exist_ok=True)
    for name in FILES:
        if name not in skip:
            (dst / f'{name}.gz').symlink_to(src / f'{name}.gz')
    return dst


# ---------------------------------------------------------------- real files

def test_labels():
    assert LABELS == ('t-shirt', 'trouser', 'pullover', 'dress', 'coat',
                      'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot')


def test_real_train_and_test(real_dir):
    x, y = load_arrays('train', root=real_dir)
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int64
    assert y.min() == 0 and y.max() == 9
    assert np.bincount(y).tolist() == [6000] * 10
    assert 0 < x.mean() < 255 and x.max() == 255
    xt, yt = load_arrays('test', root=real_dir)
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert np.bincount(yt).tolist() == [1000] * 10
    # Cached: the same objects come back, and they are protected from mutation.
    assert load_arrays('train', root=real_dir)[0] is x
    assert not x.flags.writeable and not y.flags.writeable


def test_verify_real(real_dir):
    report = verify(real_dir)
    assert set(report) == set(FILES)
    for name, entry in report.items():
        assert entry['ok'], entry['message']
        assert entry['sha256'] == FILES[name][0] and entry['bytes'] == FILES[name][1]
    text = status(real_dir)
    assert str(real_dir) in text and 'All four files verified' in text


def test_read_idx_matches_raw_bytes(real_dir):
    arr = read_idx(real_dir / 't10k-labels-idx1-ubyte.gz')
    raw = gzip.decompress((real_dir / 't10k-labels-idx1-ubyte.gz').read_bytes())
    assert arr.shape == (10000,) and arr.tobytes() == raw[8:]


def test_bad_split():
    with pytest.raises(ValueError, match="'test'.*'train'|'train'.*'test'"):
        load_arrays('valid')


# ---------------------------------------------------------------- broken files

def test_truncated_gz(real_dir, tmp_path):
    bad = tmp_path / 't10k-images-idx3-ubyte.gz'
    shutil.copy(real_dir / bad.name, bad)
    with open(bad, 'r+b') as f:
        f.truncate(bad.stat().st_size // 2)
    with pytest.raises(DataError, match='truncated') as info:
        read_idx(bad)
    assert 'expected 7840016' in str(info.value) and 'make data' in str(info.value)


def test_truncated_raw(real_dir, tmp_path):
    raw = gzip.decompress((real_dir / 't10k-labels-idx1-ubyte.gz').read_bytes())
    bad = tmp_path / 't10k-labels-idx1-ubyte'
    bad.write_bytes(raw[:-100])
    with pytest.raises(DataError, match=r'truncated.*got 9908 bytes of payload, expected 10008'):
        read_idx(bad)
    bad.write_bytes(raw[:6])   # header cut inside the dimensions
    with pytest.raises(DataError, match='truncated'):
        read_idx(bad)


def test_bad_magic_and_trailing_bytes(tmp_path):
    bad = tmp_path / 'x-idx1-ubyte'
    bad.write_bytes(b'PK\x03\x04' + bytes(100))
    with pytest.raises(DataError, match='bad magic'):
        read_idx(bad)
    bad.write_bytes(b'\0\0\x08\x01' + (3).to_bytes(4, 'big') + bytes(5))
    with pytest.raises(DataError, match='corrupt'):
        read_idx(bad)


def test_not_gzip(tmp_path):
    bad = tmp_path / 'train-labels-idx1-ubyte.gz'
    bad.write_bytes(b'this is an HTML error page, not gzip')
    with pytest.raises(DataError, match='corrupt'):
        read_idx(bad)


def test_corrupted_byte_fails_checksum(real_dir, tmp_path):
    # A flipped label (still a valid IDX file) is only caught by the checksum;
    # stored uncompressed to exercise that form too.
    d = _link_all(real_dir, tmp_path / 'd', skip={'t10k-labels-idx1-ubyte'})
    raw = bytearray(gzip.decompress((real_dir / 't10k-labels-idx1-ubyte.gz').read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (d / 't10k-labels-idx1-ubyte').write_bytes(bytes(raw))
    with pytest.raises(DataError, match='t10k-labels-idx1-ubyte.*checksum') as info:
        load_arrays('test', root=d)
    assert 'make data' in str(info.value)
    assert load_arrays('test', root=d, verify=False)[1].shape == (10000,)
    report = verify(d)
    assert not report['t10k-labels-idx1-ubyte']['ok'] and report['train-labels-idx1-ubyte']['ok']
    assert 'BAD  t10k-labels-idx1-ubyte' in status(d)


def test_verify_cache_notices_changed_file(real_dir, tmp_path):
    f = tmp_path / 't10k-labels-idx1-ubyte.gz'
    shutil.copy(real_dir / f.name, f)
    assert fm._check(f)['ok']
    with open(f, 'r+b') as fh:
        fh.truncate(100)
    assert not fm._check(f)['ok'] and 'truncated' in fm._check(f)['message']


# ---------------------------------------------------------------- locating

def test_locate_empty_root_lists_fixes(tmp_path):
    with pytest.raises(DataError) as info:
        locate(root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and 'train-images-idx3-ubyte' in msg
    assert 'apt-get install -y dataset-fashion-mnist' in msg
    assert 'D2LPORT_DATA' in msg and '--download' in msg


def test_locate_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv('D2LPORT_DATA', str(tmp_path / 'env'))
    monkeypatch.setattr(fm, '_debian_dirs', lambda: (tmp_path / 'deb',))
    with pytest.raises(DataError) as info:
        locate()
    msg = str(info.value)
    for place in (tmp_path / 'env', fm.cache_dir(), tmp_path / 'deb'):
        assert str(place) in msg


def test_env_var_honoured(real_dir, tmp_path, monkeypatch):
    d = _link_all(real_dir, tmp_path / 'env')
    monkeypatch.setenv('D2LPORT_DATA', str(d))
    assert locate() == d
    assert '$D2LPORT_DATA' in status()
    x, y = load_arrays('test')
    assert x.shape == (10000, 28, 28)


def test_cache_dir_uses_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert fm.cache_dir() == tmp_path / 'd2lport' / 'fashion-mnist'


def test_status_when_missing(tmp_path):
    text = status(tmp_path)
    assert 'NOT FOUND' in text and 'apt-get install' in text
    assert fm.main(['--status', '--root', str(tmp_path)]) == 1


# ---------------------------------------------------------------- downloading

def _serve(real_dir, corrupt=()):
    urls = []

    def fetch(url):
        urls.append(url)
        name = url.rsplit('/', 1)[1]
        data = (real_dir / name).read_bytes()
        if name[:-3] in corrupt:
            payload = bytearray(gzip.decompress(data))
            payload[100] = (payload[100] + 1) % 10   # still a valid IDX file
            data = gzip.compress(bytes(payload))
        return data
    fetch.urls = urls
    return fetch


def test_download_ok(real_dir, tmp_path):
    fetch = _serve(real_dir)
    dest = download(tmp_path / 'dl', base_url='http://mirror.invalid/fm/', fetch=fetch)
    assert dest == tmp_path / 'dl'
    assert sorted(fetch.urls) == sorted(f'http://mirror.invalid/fm/{n}.gz' for n in FILES)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f'{n}.gz' for n in FILES)
    assert all(e['ok'] for e in verify(dest).values())
    # Present and good: nothing is fetched again.
    download(dest, fetch=fetch)
    assert len(fetch.urls) == 4


def test_download_default_dest_is_cache(real_dir):
    dest = download(fetch=_serve(real_dir))
    assert dest == fm.cache_dir() and locate() == dest


def test_download_via_file_url(real_dir, tmp_path):
    # The default fetch (urllib) with a local file:// mirror.
    dest = download(tmp_path / 'dl', base_url=real_dir.resolve().as_uri())
    assert all(e['ok'] for e in verify(dest).values())


def test_download_corrupt_leaves_nothing(real_dir, tmp_path):
    dest = tmp_path / 'dl'
    with pytest.raises(DataError, match='checksum') as info:
        download(dest, fetch=_serve(real_dir, corrupt={'train-labels-idx1-ubyte'}))
    assert 'train-labels-idx1-ubyte' in str(info.value)
    names = sorted(p.name for p in dest.iterdir())
    assert names == ['train-images-idx3-ubyte.gz']   # fetched first, good; no partial files


def test_download_keeps_good_existing_file(real_dir, tmp_path):
    dest = tmp_path / 'dl'
    dest.mkdir()
    good = dest / 't10k-labels-idx1-ubyte.gz'
    shutil.copy(real_dir / good.name, good)
    before = good.read_bytes()

    def garbage(url):
        return b'not gzip'
    with pytest.raises(DataError, match='corrupt'):
        download(dest, fetch=garbage)
    assert good.read_bytes() == before
    assert sorted(os.listdir(dest)) == ['t10k-labels-idx1-ubyte.gz']


def test_download_network_error_is_dataerror(tmp_path):
    def offline(url):
        raise OSError('Network is unreachable')
    with pytest.raises(DataError, match='(?s)could not download.*apt-get install'):
        download(tmp_path / 'dl', fetch=offline)


# ---------------------------------------------------------------- helpers

def test_subset_indices():
    a = subset_indices(60000, 500, seed=0)
    assert a.dtype == np.int64 and len(a) == 500 and len(np.unique(a)) == 500
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 60000
    assert np.array_equal(a, subset_indices(60000, 500, seed=0))
    assert not np.array_equal(a, subset_indices(60000, 500, seed=1))
    assert np.array_equal(subset_indices(10, None), np.arange(10))
    assert np.array_equal(subset_indices(10, 50), np.arange(10))
    with pytest.raises(ValueError):
        subset_indices(10, 0)


def test_to_float():
    x = np.array([[[0, 255], [128, 1]]] * 3, dtype=np.uint8)
    f = to_float(x)
    assert f.shape == (3, 1, 2, 2) and f.dtype == np.float32
    assert f.min() == 0.0 and f.max() == 1.0
    assert np.allclose(f[:, 0], x / 255.0)
    assert to_float(x[:, None]).shape == (3, 1, 2, 2)
    with pytest.raises(ValueError):
        to_float(f)


def test_to_float_real(real_dir):
    x, _ = load_arrays('test', root=real_dir)
    f = to_float(x[:64])
    assert f.shape == (64, 1, 28, 28) and 0.0 <= f.min() and f.max() <= 1.0
    assert f.flags.writeable
