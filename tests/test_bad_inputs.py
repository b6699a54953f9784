"""The catalogue of bad inputs: every entry gives its message, in every backend it applies to.

One table (``CASES``); each entry builds its bad input under a temporary directory and
returns ``(call, exception type, regex of the message)``.  The driver checks the message,
and that nothing on disk was lost: every file that was there before the bad call is still
there, byte for byte.  Framework rows are parametrized per framework with that framework's
marker (like tests/test_conformance.py), so `make test-torch` / `test-tf` / `test-mxnet`
each run their own rows in their own process; framework-free rows are marked ``core``.

Below the table: tests that APPLY the fix each error message suggests (an ``image_size=``,
a resize, ``in_channels=``, a transpose, a pip extra, ``D2LPORT_DATA`` / ``root=``,
``--checkpoint-dir``...) and check that the call then succeeds.
"""
import contextlib
import gzip
import hashlib
import inspect
import io
import os
import pathlib
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lport import checkpoint, registry, specs, weights
from d2lport.checkpoint import CheckpointError, Checkpointer, TrainState
from d2lport.data import DataError
from d2lport.data import fashion_mnist as fm

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = registry.FRAMEWORKS
ALL = FRAMEWORKS
NHWC = ("tensorflow", "jax")    # frameworks whose networks take channels-last batches
CASES = []        # (name, scope, function): scope "core" or a tuple of frameworks


def case(scope="core"):
    def deco(fn):
        CASES.append((fn.__name__[len("case_"):], scope, fn))
        return fn
    return deco


class Env:
    """What a case builds on: a scratch directory, the framework (None for core rows)."""

    def __init__(self, tmp: Path, fw, monkeypatch):
        self.tmp, self.fw, self.monkeypatch = tmp, fw, monkeypatch
        self.cleanup = []
        self.d2p = pytest.importorskip(f"d2lport.{fw}") if fw else None

    @property
    def real(self) -> Path:
        return real_data()

    def data_copy(self, names=tuple(fm.FILES), raw=False) -> Path:
        """The real files (symlinked: never written) into a fresh directory."""
        d = self.tmp / "data"
        d.mkdir(exist_ok=True)
        for n in names:
            src = fm._find_file(self.real, n)
            if raw:
                (d / n).write_bytes(fm._read_payload(src))
            else:
                (d / src.name).symlink_to(src)
        return d

    def loaders(self, batch_size=32, limit=64):
        self.real
        return self.d2p.load_data_fashion_mnist(batch_size, limit=limit, seed=0)

    def batch(self, shape):
        """A zero batch of ``shape`` as the framework's own tensor, layout as given."""
        x = np.zeros(shape, np.float32)
        if self.fw == "torch":
            import torch
            return torch.from_numpy(x)
        if self.fw == "tensorflow":
            import tensorflow as tf
            return tf.constant(x)
        if self.fw == "jax":
            import jax.numpy as jnp
            return jnp.asarray(x)
        import mxnet as mx
        return mx.nd.array(x)

    def forward(self, net, shape):
        return lambda: net(self.batch(shape))


def real_data() -> Path:
    try:
        return fm.locate()
    except DataError as e:
        pytest.skip(f"Fashion-MNIST not installed here: {e}")


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX payload (uint8) of ``arr``."""
    arr = np.ascontiguousarray(arr, np.uint8)
    return (bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
            + arr.tobytes())


def synthetic_set(d: Path, n=100, n_labels=None, label_max=9) -> Path:
    """A valid IDX data set that is not Fashion-MNIST (small, random)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, (img, lab) in fm.SPLITS.items():
        (d / img).write_bytes(idx_bytes(rng.integers(0, 256, (n, 28, 28))))
        labels = rng.integers(0, label_max + 1, n if n_labels is None else n_labels)
        (d / lab).write_bytes(idx_bytes(labels))
    return d


def train_kwargs(**kw):
    return dict(dict(num_epochs=1, lr=0.05, seed=0, max_steps=1), **kw)


def needs_checkpointing(d2p):
    if "checkpoint_dir" not in inspect.signature(d2p.train).parameters:
        pytest.xfail("backend checkpointing in progress")


def fake_checkpoints(directory: Path, settings: dict, steps=(2, 4)) -> Checkpointer:
    ck = Checkpointer(directory, settings, keep=5, every_steps=2)
    for step in steps:
        ck.save(TrainState(epoch=0, batch=step, step=step),
                lambda tmp, s=step: (tmp / "payload.bin").write_bytes(bytes([s]) * 4096))
    return ck


# =========================================================================== data files
@case()
def case_data_directory_missing(env):
    return (lambda: fm.load_arrays("train", root=env.tmp / "nowhere"), DataError,
            r"Fashion-MNIST data not found.*nowhere  \(root= argument\): no such directory"
            r".*D2LPORT_DATA")


@case()
def case_data_directory_empty(env):
    (env.tmp / "empty").mkdir()
    return (lambda: fm.load_arrays("train", root=env.tmp / "empty"), DataError,
            r"empty  \(root= argument\): missing train-images-idx3-ubyte\[\.gz\], "
            r"train-labels.*Fix it one of these ways")


@case()
def case_data_directory_is_a_file(env):
    (env.tmp / "afile").write_text("x")
    return (lambda: fm.load_arrays("train", root=env.tmp / "afile"), DataError,
            r"afile  \(root= argument\): is a file, not a directory")


@case()
def case_data_directory_unreadable(env):
    d = env.data_copy()
    if os.geteuid() == 0:
        # root reads a chmod 000 directory anyway: make the OS answer as it does for a user
        real_listdir, real_is_file = os.listdir, pathlib.Path.is_file

        def denied(path):
            raise PermissionError(13, "Permission denied", str(path))

        env.monkeypatch.setattr(os, "listdir", lambda p=".": denied(p) if Path(p) == d
                                else real_listdir(p))
        env.monkeypatch.setattr(pathlib.Path, "is_file", lambda p: denied(p) if p.parent == d
                                else real_is_file(p))
    else:
        d.chmod(0)
        env.cleanup.append(lambda: d.chmod(0o755))
    return (lambda: fm.load_arrays("train", root=d), DataError,
            r"data  \(root= argument\): cannot be read \(Permission denied\): check its "
            r"permissions")


@case()
def case_data_one_file_missing(env):
    d = env.data_copy(names=list(fm.FILES)[:3])
    return (lambda: fm.load_arrays("test", root=d), DataError,
            r"missing t10k-labels-idx1-ubyte\[\.gz\]")


@case()
def case_data_truncated_gz(env):
    d = env.data_copy()
    p = d / "t10k-labels-idx1-ubyte.gz"
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data[:len(data) // 2])
    return (lambda: fm.load_arrays("test", root=d), DataError,
            r"t10k-labels-idx1-ubyte\.gz in .* is truncated \(gzip stream ends early: got "
            r"\d+ bytes of payload, expected 10008\).*make data")


@case()
def case_data_truncated_raw(env):
    d = env.data_copy(names=list(fm.FILES)[2:], raw=True)
    p = d / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:5000])
    for n in list(fm.FILES)[:2]:
        (d / f"{n}.gz").symlink_to(fm._find_file(env.real, n))
    return (lambda: fm.load_arrays("test", root=d), DataError,
            r"t10k-images-idx3-ubyte in .* is truncated \(got 5000 bytes of payload, "
            r"expected 7840016\)")


@case()
def case_data_corrupt_gzip(env):
    d = env.data_copy()
    p = d / "t10k-labels-idx1-ubyte.gz"
    p.unlink()
    p.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 50)
    return (lambda: fm.load_arrays("test", root=d), DataError,
            r"t10k-labels-idx1-ubyte\.gz in .* is corrupt \(gzip error")


@case()
def case_data_wrong_magic(env):
    d = env.data_copy()
    p = d / "t10k-labels-idx1-ubyte.gz"
    p.unlink()
    p.write_bytes(gzip.compress(b"\x01\x02\x03\x04" + bytes(100)))
    return (lambda: fm.load_arrays("test", root=d), DataError,
            r"is not an IDX file \(bad magic number 0x01020304\)")


@case()
def case_data_flipped_byte(env):
    d = env.data_copy()
    p = d / "t10k-labels-idx1-ubyte.gz"
    payload = bytearray(fm._read_payload(p))
    payload[5000] ^= 1
    p.unlink()
    p.write_bytes(gzip.compress(bytes(payload)))
    return (lambda: fm.load_arrays("test", root=d), DataError,
            r"fails its checksum .*damaged, or another data set of the same layout "
            r"\(e\.g\. MNIST\), not Fashion-MNIST")


@case()
def case_data_trailing_bytes(env):
    d = env.data_copy()
    p = d / "t10k-labels-idx1-ubyte.gz"
    payload = fm._read_payload(p)
    p.unlink()
    p.write_bytes(gzip.compress(payload + b"\0\0\0"))
    return (lambda: fm.load_arrays("test", root=d), DataError,
            r"is corrupt \(3 unexpected bytes after the \(10000,\) data")


@case()
def case_data_valid_idx_not_fashion_mnist(env):
    d = synthetic_set(env.tmp / "other")
    return (lambda: fm.load_arrays("train", root=d), DataError,
            r"train-images-idx3-ubyte in .* is a valid IDX file holding \(100, 28, 28\), not "
            r"Fashion-MNIST \(its train-images-idx3-ubyte holds \(60000, 28, 28\)")


@case()
def case_data_wrong_counts(env):
    d = synthetic_set(env.tmp / "other", n=100, n_labels=90)
    return (lambda: fm.load_arrays("train", root=d, verify=False), DataError,
            r"train-labels-idx1-ubyte does not hold 100 labels in 0\.\.9")


@case()
def case_data_labels_out_of_range(env):
    d = synthetic_set(env.tmp / "other", label_max=200)
    return (lambda: fm.load_arrays("test", root=d, verify=False), DataError,
            r"t10k-labels-idx1-ubyte does not hold 100 labels in 0\.\.9")


@case()
def case_data_wrong_image_size(env):
    d = env.tmp / "other"
    d.mkdir()
    for split, (img, lab) in fm.SPLITS.items():
        (d / img).write_bytes(idx_bytes(np.zeros((10, 32, 32))))
        (d / lab).write_bytes(idx_bytes(np.zeros(10)))
    return (lambda: fm.load_arrays("test", root=d, verify=False), DataError,
            r"holds uint8 \(10, 32, 32\), not uint8 \(N,28,28\)")


# =========================================================================== names
@case()
def case_unknown_model(env):
    return (lambda: registry.get_spec("googlenett"), registry.UnknownModelError,
            r"unknown model 'googlenett'\. Did you mean 'googlenet'")


@case(ALL)
def case_unknown_model_in_backend(env):
    return (lambda: env.d2p.create_model("vgg_17"), registry.UnknownModelError,
            r"unknown model 'vgg_17'\. Did you mean .*Registered models: ")


@case()
def case_unknown_framework(env):
    return (lambda: registry.create_model("googlenet", framework="caffe"), ValueError,
            r"unknown framework 'caffe'; choose one of torch, tensorflow, mxnet, jax")


@case()
def case_framework_not_installed(env):
    import importlib.util
    real = importlib.util.find_spec
    env.monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "mxnet" else real(name, *a))
    return (lambda: registry.create_model("googlenet", framework="mxnet"),
            registry.FrameworkNotInstalledError,
            r"mxnet is not installed in this Python .*pip install 'd2lport\[mxnet\]'")


@case(ALL)
def case_unknown_kwarg(env):
    return (lambda: env.d2p.create_model("googlenet", widht_ratio=4), TypeError,
            r"googlenet: .*unexpected keyword argument 'widht_ratio'; it takes num_classes, "
            r"in_channels, image_size")


# =========================================================================== training arguments
@case(ALL)
def case_unknown_optimizer(env):
    tr, te = env.loaders()
    net = env.d2p.create_model("residual_net", seed=0)
    return (lambda: env.d2p.train(net, tr, te, **train_kwargs(optimizer="rmsprop")),
            ValueError, r"unknown optimizer 'rmsprop': use")


@case(ALL)
def case_epochs_negative(env):
    tr, te = env.loaders()
    net = env.d2p.create_model("residual_net", seed=0)
    return (lambda: env.d2p.train(net, tr, te, **train_kwargs(num_epochs=-1)), ValueError,
            r"num_epochs must be a whole number >= 1, got -1")


@case(ALL)
def case_lr_nan(env):
    tr, te = env.loaders()
    net = env.d2p.create_model("residual_net", seed=0)
    return (lambda: env.d2p.train(net, tr, te, **train_kwargs(lr=float("nan"))), ValueError,
            r"learning rate must be a finite number > 0, got nan")


@case(ALL)
def case_batch_size_zero(env):
    env.real
    return (lambda: env.d2p.load_data_fashion_mnist(0, limit=64), ValueError,
            r"batch_size must be >= 1, got 0")


@case(ALL)
def case_resume_without_checkpoint_dir(env):
    needs_checkpointing(env.d2p)
    tr, te = env.loaders()
    net = env.d2p.create_model("residual_net", seed=0)
    return (lambda: env.d2p.train(net, tr, te, **train_kwargs(resume=True)), ValueError,
            r"resume=True needs checkpoint_dir")


def _cli(argv):
    from d2lport import cli

    def call():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(argv)
        if rc:
            raise SystemExit(f"exit {rc}: {err.getvalue().strip()}")
    return call


@case()
def case_cli_epochs_negative(env):
    return (_cli(["train", "googlenet", "--epochs", "-1"]), SystemExit,
            r"^exit 2: d2lport: error: num_epochs must be a whole number >= 1, got -1$")


@case()
def case_cli_lr_nan(env):
    return (_cli(["train", "inception_a_net", "--lr", "nan"]), SystemExit,
            r"^exit 2: d2lport: error: learning rate must be a finite number > 0, got nan")


@case()
def case_cli_resize_below_minimum(env):
    return (_cli(["train", "vgg11", "--resize", "16"]), SystemExit,
            r"^exit 2: d2lport: error: --resize 16 is too small for vgg11: it needs images "
            r"of at least 32x32 pixels \(e\.g\. --resize 32\)$")


@case()
def case_cli_resume_without_dir(env):
    return (_cli(["train", "residual_net", "--resume"]), SystemExit,
            r"^exit 2: d2lport: error: --resume needs --checkpoint-dir DIR")


@case()
def case_cli_bad_checkpoint_every(env):
    return (_cli(["train", "residual_net", "--checkpoint-dir", str(env.tmp / "ck"),
                  "--checkpoint-every", "soon"]), SystemExit,
            r"^exit 2: d2lport: error: --checkpoint-every must be a number of steps \(200\), "
            r"minutes \(5m\) or seconds \(90s\)")


# =========================================================================== images
@case()
def case_image_too_small_for_fixed_size_net(env):
    spec = registry.get_spec("vgg11", width_ratio=8, image_size=32)
    return (lambda: specs.infer(spec, (1, 3, 16, 16)), specs.InputShapeError,
            r"vgg11 is built for 32x32 input .*got 16x16: the network needs at least 32x32, "
            r"so resize the images to 32x32")


@case(ALL)
def case_image_too_small(env):
    net = env.d2p.create_model("residual_net", seed=0)
    shape = (2, 8, 8, 1) if env.fw in NHWC else (2, 1, 8, 8)
    return (env.forward(net, shape), specs.InputShapeError,
            r"residual_net is built for 28x28 input .*got 8x8: the network needs at least "
            r"16x16, so resize the images to 28x28")


@case(ALL)
def case_network_built_too_small(env):
    def call():      # torch and Keras refuse at build, MXNet at the first batch
        net = env.d2p.create_model("inception_a_net", image_size=8)
        net(env.batch((1, 8, 8, 1) if env.fw in NHWC else (1, 1, 8, 8)))
    return (call, specs.InputShapeError,
            r"inception_a_net needs input of at least 16x16 pixels, got 8x8 .*build it with "
            r"image_size=16 or more")


@case(ALL)
def case_wrong_channel_count(env):
    net = env.d2p.create_model("googlenet", seed=0, image_size=32)
    shape = (2, 32, 32, 3) if env.fw in NHWC else (2, 3, 32, 32)
    return (env.forward(net, shape), specs.InputShapeError,
            r"googlenet takes 1-channel input, got 3 channels: pass in_channels=3 to "
            r"create_model")


@case(ALL)
def case_wrong_layout(env):
    net = env.d2p.create_model("residual_net", seed=0)
    if env.fw == "tensorflow":     # NCHW given to Keras
        return (env.forward(net, (2, 1, 28, 28)), specs.InputShapeError,
                r"residual_net takes NHWC input \(Keras' layout\), got \(2, 1, 28, 28\), "
                r"which looks like NCHW: pass tf\.transpose\(x, \(0, 2, 3, 1\)\)")
    if env.fw == "jax":            # NCHW given to Flax
        return (env.forward(net, (2, 1, 28, 28)), specs.InputShapeError,
                r"residual_net takes NHWC input \(Flax's layout\), got \(2, 1, 28, 28\), "
                r"which looks like NCHW: pass x\.transpose\(0, 2, 3, 1\)")
    return (env.forward(net, (2, 28, 28, 1)), specs.InputShapeError,       # NHWC to NCHW
            r"residual_net takes NCHW input \(N, 1, H, W\), got \(2, 28, 28, 1\), which looks "
            r"like NHWC \(channels last\): transpose it to NCHW")


# =========================================================================== weight files
def _weight_file(env, name="w.npz", **kwargs):
    spec = registry.get_spec("residual_net", **kwargs)
    return weights.save(env.tmp / name, weights.random_weights(spec, 1),
                        {"model": "residual_net", "kwargs": kwargs})


@case()
def case_weights_not_a_zip(env):
    (env.tmp / "w.npz").write_bytes(b"this is not a zip archive")
    return (lambda: weights.load(env.tmp / "w.npz"), weights.WeightsError,
            r"w\.npz is not a readable \.npz weight file")


@case(ALL)
def case_weights_truncated(env):
    path = _weight_file(env)
    data = path.read_bytes()
    bad = env.tmp / "truncated.npz"
    bad.write_bytes(data[:len(data) // 2])
    net = env.d2p.create_model("residual_net", seed=0)
    return (lambda: env.d2p.set_weights(net, bad), weights.WeightsError,
            r"truncated\.npz is not a readable \.npz weight file")


@case(ALL)
def case_weights_corrupt_member(env):
    path = _weight_file(env)
    data = bytearray(path.read_bytes())
    i = data.index(b"b1.conv.weight.npy") + 200       # inside that member's data
    data[i:i + 16] = bytes(16)
    bad = env.tmp / "corrupt.npz"
    bad.write_bytes(bytes(data))
    net = env.d2p.create_model("residual_net", seed=0)
    return (lambda: env.d2p.set_weights(net, bad), weights.WeightsError,
            r"corrupt\.npz is not a readable \.npz weight file \(.*(CRC|Bad)")


@case(ALL)
def case_weights_mismatched_shapes(env):
    path = _weight_file(env, in_channels=3)
    net = env.d2p.create_model("residual_net", seed=0)
    return (lambda: env.d2p.set_weights(net, path), weights.WeightsError,
            r"weights do not fit residual_net .*wrong shapes: b1\.conv\.weight: got "
            r"\(16, 3, 5, 5\), expected \(16, 1, 5, 5\)")


@case(ALL)
def case_weights_of_another_model(env):
    path = _weight_file(env)
    net = env.d2p.create_model("inception_a_net", seed=0)
    return (lambda: env.d2p.set_weights(net, path), weights.WeightsError,
            r"weights do not fit inception_a_net .*missing \d+ keys .*unexpected \d+ keys "
            r"\(first: \['residual1\.conv1\.weight'.*wrong shapes: b1\.conv\.weight: got "
            r"\(16, 1, 5, 5\), expected \(10, 1, 5, 5\)")


@case()
def case_weights_missing_file(env):
    return (lambda: weights.load(env.tmp / "nope.npz"), weights.WeightsError,
            r"no weight file at .*nope\.npz")


# =========================================================================== checkpoints
SETTINGS = {"model": "residual_net", "framework": "torch", "optimizer": "sgd",
            "batch_size": 32, "model_kwargs": {"num_classes": 10}}


def _damage(path: Path, how: str):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if how == "truncate"
                     else bytes([data[0] ^ 0xFF]) + data[1:])


@case()
def case_checkpoint_corrupt_payload(env):
    ck = fake_checkpoints(env.tmp / "ck", SETTINGS)
    for d in ck._complete():
        _damage(d / "payload.bin", "flip")
    return (lambda: Checkpointer(env.tmp / "ck", SETTINGS).latest(), CheckpointError,
            r"no intact checkpoint in .*ck: ckpt-00000004: payload\.bin is corrupt \(checksum "
            r"mismatch\)\. Start afresh without --resume, or with another --checkpoint-dir")


@case()
def case_checkpoint_truncated_payload(env):
    ck = fake_checkpoints(env.tmp / "ck", SETTINGS)
    for d in ck._complete():
        _damage(d / "payload.bin", "truncate")
    return (lambda: Checkpointer(env.tmp / "ck", SETTINGS).latest(), CheckpointError,
            r"ckpt-00000004: payload\.bin has 2048 bytes, expected 4096")


@case()
def case_checkpoint_truncated_state(env):
    ck = fake_checkpoints(env.tmp / "ck", SETTINGS)
    for d in ck._complete():
        _damage(d / "state.json", "truncate")
    return (lambda: Checkpointer(env.tmp / "ck", SETTINGS).latest(), CheckpointError,
            r"ckpt-00000004: state\.json has \d+ bytes, expected \d+")


@case()
def case_checkpoint_other_model(env):
    fake_checkpoints(env.tmp / "ck", SETTINGS)
    other = dict(SETTINGS, model="inception_a_net")
    return (lambda: Checkpointer(env.tmp / "ck", other).latest(), CheckpointError,
            r"ckpt-00000004 was written with model='residual_net', this run has "
            r"model='inception_a_net': resume with the same settings")


@case()
def case_checkpoint_other_framework(env):
    fake_checkpoints(env.tmp / "ck", SETTINGS)
    other = dict(SETTINGS, framework="mxnet")
    return (lambda: Checkpointer(env.tmp / "ck", other).latest(), CheckpointError,
            r"was written with framework='torch', this run has framework='mxnet'")


@case()
def case_checkpoint_other_model_kwargs(env):
    fake_checkpoints(env.tmp / "ck", SETTINGS)
    other = dict(SETTINGS, model_kwargs={"num_classes": 7})
    return (lambda: Checkpointer(env.tmp / "ck", other).latest(), CheckpointError,
            r"model_kwargs=\{'num_classes': 10\}, this run has model_kwargs="
            r"\{'num_classes': 7\}")


@case()
def case_checkpoint_dir_is_a_file(env):
    (env.tmp / "ck").write_text("not a directory")
    return (lambda: Checkpointer(env.tmp / "ck", SETTINGS), CheckpointError,
            r"checkpoint directory .*ck is a file: pass a directory to --checkpoint-dir")


def _backend_resume(env, settings):
    needs_checkpointing(env.d2p)
    tr, te = env.loaders()
    net = env.d2p.create_model("residual_net", seed=0)
    fake_checkpoints(env.tmp / "ck", settings)
    return lambda: env.d2p.train(net, tr, te, **train_kwargs(
        checkpoint_dir=env.tmp / "ck", resume=True, checkpoint_every=2))


@case(ALL)
def case_resume_other_model(env):
    call = _backend_resume(env, {"model": "inception_a_net", "framework": env.fw})
    return (call, CheckpointError,
            r"was written with model='inception_a_net', this run has model='residual_net'")


@case(ALL)
def case_resume_other_framework(env):
    other = next(f for f in FRAMEWORKS if f != env.fw)
    call = _backend_resume(env, {"model": "residual_net", "framework": other})
    return (call, CheckpointError,
            rf"was written with framework='{other}', this run has framework='{env.fw}'")


@case(ALL)
def case_resume_damaged_checkpoints(env):
    call = _backend_resume(env, {"model": "residual_net", "framework": env.fw})
    for d in sorted((env.tmp / "ck").glob("ckpt-*")):
        _damage(d / "payload.bin", "flip")
    return (call, CheckpointError,
            r"no intact checkpoint in .*: ckpt-00000004: payload\.bin is corrupt")


# =========================================================================== the driver
def _params():
    out = []
    for name, scope, fn in CASES:
        if scope == "core":
            out.append(pytest.param(fn, None, marks=pytest.mark.core, id=f"core-{name}"))
        else:
            out += [pytest.param(fn, fw, marks=getattr(pytest.mark, fw), id=f"{fw}-{name}")
                    for fw in scope]
    return out


def snapshot(root: Path) -> dict:
    """Every file under ``root`` (symlinks: the link itself) -> its SHA-256."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = (
                "link:" + os.readlink(p) if p.is_symlink()
                else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("make,fw", _params())
def test_bad_input_gives_its_message(make, fw, tmp_path, monkeypatch):
    fm.clear_cache()
    env = Env(tmp_path, fw, monkeypatch)
    call, exc, pattern = make(env)
    before = snapshot(tmp_path)
    try:
        with pytest.raises(exc) as info:
            call()
    finally:
        monkeypatch.undo()
        for undo in env.cleanup:
            undo()
    message = str(info.value)
    assert message.strip(), "an empty message"
    import re
    assert re.search(pattern, message, re.S), f"{message!r} does not match {pattern!r}"
    after = snapshot(tmp_path)
    lost = {k: v for k, v in before.items() if after.get(k) != v}
    assert not lost, f"files lost or changed by the bad call: {sorted(lost)}"


def test_catalogue_is_large_enough():
    per = {fw: sum(1 for _, s, _ in CASES if s == "core" or fw in s) for fw in FRAMEWORKS}
    assert len(CASES) >= 25 and min(per.values()) >= 25, per


test_catalogue_is_large_enough = pytest.mark.core(test_catalogue_is_large_enough)


# =========================================================================== the fixes work
def _message(call, exc):
    with pytest.raises(exc) as info:
        call()
    return str(info.value)


def _per_framework():
    return pytest.mark.parametrize(
        "fw", [pytest.param(fw, marks=getattr(pytest.mark, fw), id=fw) for fw in FRAMEWORKS])


def _num(pattern, message):
    import re
    m = re.search(pattern, message)
    assert m, f"no {pattern!r} in {message!r}"
    return int(m.group(1))


@_per_framework()
def test_fix_image_size_works(fw, tmp_path, monkeypatch):
    """'pass image_size=48 to create_model': doing it makes the 48-px batch go through."""
    env = Env(tmp_path, fw, monkeypatch)
    net = env.d2p.create_model("residual_net", seed=0)
    shape = lambda s: (2, s, s, 1) if fw in NHWC else (2, 1, s, s)   # noqa: E731
    msg = _message(env.forward(net, shape(48)), specs.InputShapeError)
    side = _num(r"pass image_size=(\d+) to create_model", msg)
    fixed = env.d2p.create_model("residual_net", seed=0, image_size=side)
    assert tuple(fixed(env.batch(shape(48))).shape) == (2, 10)


@_per_framework()
def test_fix_for_too_small_images_works(fw, tmp_path, monkeypatch):
    """The issue's case: a VGG fed 16-px images.  The message no longer proposes
    image_size=16 (which fails); its fixes, a resize or image_size=32 with a resize to 32,
    both work."""
    env = Env(tmp_path, fw, monkeypatch)
    kw = dict(width_ratio=16, image_size=32)
    net = env.d2p.create_model("vgg11", seed=0, **kw)
    shape = lambda s: (1, s, s, 3) if fw in NHWC else (1, 3, s, s)   # noqa: E731
    msg = _message(env.forward(net, shape(16)), specs.InputShapeError)
    assert "image_size=16" not in msg
    side = _num(r"resize the images to (\d+)x\d+", msg)
    assert tuple(net(env.batch(shape(side))).shape) == (1, 1000)
    built = _num(r"build it with image_size=(\d+)", msg)
    other = env.d2p.create_model("vgg11", seed=0, **dict(kw, image_size=built))
    assert tuple(other(env.batch(shape(built))).shape) == (1, 1000)
    # a network built too small is told the size to build it for, and that size works
    msg = _message(lambda: env.d2p.create_model("vgg11", **dict(kw, image_size=16))(
        env.batch(shape(16))), specs.InputShapeError)
    side = _num(r"e\.g\. image_size=(\d+)", msg)
    built = env.d2p.create_model("vgg11", **dict(kw, image_size=side))
    assert tuple(built(env.batch(shape(side))).shape) == (1, 1000)


@_per_framework()
def test_fix_resize_with_the_loader_works(fw, tmp_path, monkeypatch):
    """'resize the images to 28x28' for a 16-px batch: the backend's own resize does it."""
    env = Env(tmp_path, fw, monkeypatch)
    net = env.d2p.create_model("residual_net", seed=0)
    images = np.zeros((2, 16, 16), np.uint8)
    msg = _message(lambda: net(env.d2p.to_tensor(images)), specs.InputShapeError)
    side = _num(r"resize the images to (\d+)x", msg)
    assert tuple(net(env.d2p.to_tensor(images, resize=side)).shape) == (2, 10)


@_per_framework()
def test_fix_in_channels_works(fw, tmp_path, monkeypatch):
    env = Env(tmp_path, fw, monkeypatch)
    net = env.d2p.create_model("googlenet", seed=0, image_size=32)
    shape = (2, 32, 32, 3) if fw in NHWC else (2, 3, 32, 32)
    msg = _message(env.forward(net, shape), specs.InputShapeError)
    c = _num(r"pass in_channels=(\d+) to create_model", msg)
    fixed = env.d2p.create_model("googlenet", seed=0, image_size=32, in_channels=c)
    assert tuple(fixed(env.batch(shape)).shape) == (2, 10)


@_per_framework()
def test_fix_layout_transpose_works(fw, tmp_path, monkeypatch):
    env = Env(tmp_path, fw, monkeypatch)
    net = env.d2p.create_model("residual_net", seed=0)
    if fw == "tensorflow":
        import tensorflow as tf
        x = env.batch((2, 1, 28, 28))
        msg = _message(lambda: net(x), specs.InputShapeError)
        assert "tf.transpose(x, (0, 2, 3, 1))" in msg
        fixed = tf.transpose(x, (0, 2, 3, 1))
    elif fw == "jax":
        x = env.batch((2, 1, 28, 28))
        msg = _message(lambda: net(x), specs.InputShapeError)
        assert "x.transpose(0, 2, 3, 1)" in msg
        fixed = x.transpose((0, 2, 3, 1))
    else:
        x = env.batch((2, 28, 28, 1))
        msg = _message(lambda: net(x), specs.InputShapeError)
        if fw == "torch":
            assert "x.permute(0, 3, 1, 2)" in msg
            fixed = x.permute(0, 3, 1, 2)
        else:
            assert "x.transpose(0, 3, 1, 2)" in msg
            fixed = x.transpose((0, 3, 1, 2))
    assert tuple(net(fixed).shape) == (2, 10)


@_per_framework()
def test_fix_weights_from_the_same_model_works(fw, tmp_path, monkeypatch):
    """'Were they exported from the same model with the same keyword arguments
    (in_channels, ...)?': building the model with the file's kwargs loads it."""
    env = Env(tmp_path, fw, monkeypatch)
    path = _weight_file(env, in_channels=3)
    msg = _message(lambda: env.d2p.set_weights(env.d2p.create_model("residual_net"), path),
                   weights.WeightsError)
    assert "in_channels" in msg
    meta = weights.load(path)[1]
    net = env.d2p.create_model(meta["model"], **meta["kwargs"])
    env.d2p.set_weights(net, path)


@pytest.mark.core
def test_fix_spec_resize_for_any_size_net_works():
    """An any-size network too small for its windows: 'e.g. resize=M', and M works."""
    spec = specs.NetSpec("tiny", (1, 8, 8), (specs.Sequential("b", (
        specs.Conv("conv", 4, 5), specs.GlobalAvgPool())),))
    msg = _message(lambda: specs.infer(spec, (1, 1, 3, 3)), specs.InputShapeError)
    side = _num(r"e\.g\. resize=(\d+)", msg)
    specs.infer(spec, (1, 1, side, side))


@pytest.mark.core
def test_fix_data_env_var_and_root_work(tmp_path, monkeypatch):
    real = real_data()
    monkeypatch.delenv("D2LPORT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(fm, "_debian_dirs", lambda: (tmp_path / "no-debian",))
    fm.clear_cache()
    msg = _message(lambda: fm.load_arrays("test"), DataError)
    assert "set D2LPORT_DATA=that/dir or pass root=that/dir" in msg
    monkeypatch.setenv("D2LPORT_DATA", str(real))            # the fix, as written
    assert fm.load_arrays("test")[0].shape == (10000, 28, 28)
    monkeypatch.delenv("D2LPORT_DATA")
    assert fm.load_arrays("test", root=real)[1].shape == (10000,)


@pytest.mark.core
def test_fix_data_download_works(tmp_path, monkeypatch):
    """'d2lport data --download': the same code, served from local files (no network)."""
    real = real_data()
    src = tmp_path / "mirror"
    src.mkdir()
    for n in fm.FILES:
        p = fm._find_file(real, n)
        (src / f"{n}.gz").write_bytes(p.read_bytes() if p.name.endswith(".gz")
                                      else gzip.compress(p.read_bytes(), 1))
    (tmp_path / "bad").mkdir()
    msg = _message(lambda: fm.load_arrays("test", root=tmp_path / "bad"), DataError)
    assert "d2lport data --download" in msg
    rc = fm.main(["--download", "--root", str(tmp_path / "cache"),
                  "--base-url", src.as_uri()])
    assert rc == 0
    fm.clear_cache()
    assert fm.load_arrays("test", root=tmp_path / "cache")[0].shape == (10000, 28, 28)


@pytest.mark.core
def test_fix_pip_extra_exists():
    """'pip install d2lport[<fw>]': each extra is declared and installs that framework."""
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for fw in FRAMEWORKS:
        msg = _message(lambda: _fake_missing(fw), registry.FrameworkNotInstalledError)
        extra = msg.split("d2lport[", 1)[1].split("]", 1)[0]
        assert any(req.split("<")[0].split(">")[0].split("=")[0].strip() == fw
                   for req in extras[extra]), (extra, extras[extra])


def _fake_missing(fw):
    import importlib.util
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == fw else real(name, *a)
    try:
        registry.require_framework(fw)
    finally:
        importlib.util.find_spec = real


@pytest.mark.core
def test_fix_checkpoint_messages_work(tmp_path):
    """'Start afresh without --resume, or with another --checkpoint-dir' and 'resume with
    the same settings': each works."""
    ck = fake_checkpoints(tmp_path / "ck", SETTINGS)
    msg = _message(lambda: Checkpointer(tmp_path / "ck", dict(SETTINGS, model="x")).latest(),
                   CheckpointError)
    assert "resume with the same settings, or use another --checkpoint-dir" in msg
    assert Checkpointer(tmp_path / "ck", SETTINGS).latest()[1].step == 4
    assert Checkpointer(tmp_path / "other", dict(SETTINGS, model="x")).latest() is None
    for d in ck._complete():
        _damage(d / "payload.bin", "flip")
    msg = _message(lambda: Checkpointer(tmp_path / "ck", SETTINGS).latest(), CheckpointError)
    assert "with another --checkpoint-dir" in msg
    assert Checkpointer(tmp_path / "fresh", SETTINGS).latest() is None


@pytest.mark.core
def test_fix_cli_messages_work(monkeypatch):
    """--resize 16 -> 'e.g. --resize 32'; --resume -> needs --checkpoint-dir: with the fix
    every argument passes the up-front checks (nothing is trained here)."""
    from d2lport import cli
    parse = cli.build_parser().parse_args
    msg = _message(_cli(["train", "vgg11", "--resize", "16"]), SystemExit)
    side = _num(r"e\.g\. --resize (\d+)", msg)
    kwargs, got, _ = cli._check_train_args(parse(["train", "vgg11", "--resize", str(side)]))
    assert got == side and kwargs["image_size"] == side
    cli._check_train_args(parse(["train", "residual_net", "--resume", "--checkpoint-dir",
                                 "somewhere", "--checkpoint-every", "5m"]))
    msg = _message(_cli(["train", "googlenett"]), SystemExit)
    assert "Did you mean 'googlenet'" in msg
    cli._check_train_args(parse(["train", "googlenet"]))


@pytest.mark.core
def test_cli_train_help_documents_exit_statuses(capsys):
    from d2lport import cli
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for status in ("0 ", "2 ", f"{checkpoint.EXIT_DIVERGED} ", f"{checkpoint.EXIT_INTERRUPTED} "):
        assert f"\n  {status}" in out
    assert "--checkpoint-dir DIR" in out and "--resume" in out and "--keep" in out


@pytest.mark.core
def test_cli_turns_divergence_and_ctrl_c_into_exit_statuses(monkeypatch, capsys):
    """DivergenceError -> 3 with its message; KeyboardInterrupt -> 130; CheckpointError ->
    2.  The backend is replaced by a stub (no framework in this process)."""
    from d2lport import cli
    import types

    def fake_backend(exc):
        def train(*a, **k):
            raise exc
        ns = types.SimpleNamespace(
            create_model=lambda *a, **k: object(),
            load_data_fashion_mnist=lambda *a, **k: (types.SimpleNamespace(num_examples=1),) * 2,
            train=train)
        monkeypatch.setattr(registry, "backend", lambda fw: ns)
        # torch counts as installed: .venv-mxnet runs the core tests too, without torch
        monkeypatch.setattr(registry, "framework_available", lambda fw: True)

    fake_backend(checkpoint.DivergenceError(7, 1, 0.5, float("nan"), None))
    assert cli.main(["train", "residual_net"]) == checkpoint.EXIT_DIVERGED == 3
    assert "training diverged: loss nan at step 7 (epoch 1) with learning rate 0.5" in \
        capsys.readouterr().err
    fake_backend(KeyboardInterrupt())
    assert cli.main(["train", "residual_net"]) == checkpoint.EXIT_INTERRUPTED == 130
    assert "nothing saved: pass --checkpoint-dir" in capsys.readouterr().err
    # `results run` trains in child processes that keep checkpoints: it says how to resume
    from d2lport.results import runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "run", interrupted)
    assert cli.main(["results", "run", "residual_net"]) == checkpoint.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "results/.checkpoints/" in err and "results run` (make results) resumes" in err
    assert "nothing saved" not in err
    fake_backend(CheckpointError("checkpoint x was written with model='a'"))
    assert cli.main(["train", "residual_net", "--checkpoint-dir", "d", "--resume"]) == 2
    assert "was written with model='a'" in capsys.readouterr().err


# =========================================================================== no network
@pytest.mark.core
def test_network_is_blocked_but_loopback_works():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match=r"network access blocked in tests: connect to "
                                          r"\('10\.255\.255\.1', 80\) refused before any packet"):
            s.connect(("10.255.255.1", 80))
    finally:
        s.close()
    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("example.com", 443), timeout=1)
    with pytest.raises(OSError, match="network access blocked"):
        socket.getaddrinfo("example.com", 443)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        client = socket.create_connection(server.getsockname(), timeout=5)
        client.close()
    finally:
        server.close()
    if hasattr(socket, "AF_UNIX"):
        a, b = socket.socketpair()
        a.close(), b.close()
