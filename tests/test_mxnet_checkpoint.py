"""Checkpoints of the MXNet backend (issue 11): a training process killed with SIGKILL (at a
step, or in the middle of writing a checkpoint) or Ctrl-C'd leaves a loadable checkpoint,
and the resumed run ends with the full history and the *same* weights as an uninterrupted
one, in legacy (``mx.nd``) and numpy (``npx.set_np()``) mode; divergence, mismatched and
damaged checkpoints give their messages.  Imports neither torch nor TensorFlow.

Resume equality is exact (``assert_array_equal``), not within a tolerance: on the CPU
MXNet's kernels give the same bits for the same inputs and thread count, the payload
(``save_parameters`` + ``Trainer.save_states``) stores float32 bit for bit, the data order
is seeded, and dropout is replayed by reseeding ``mx.random`` from the step number.

The killed runs are child processes (``D2LPORT_TEST_KILL``, see d2lport/checkpoint.py), so
the signals hit the child only; the resumes run in this process.
"""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from d2lport import checkpoint as C

pytestmark = pytest.mark.mxnet

d2p = pytest.importorskip("d2lport.mxnet")
mx = pytest.importorskip("mxnet")
ROOT = Path(__file__).resolve().parent.parent

# residual_net on 192 real Fashion-MNIST examples, batch 32: 6 steps per epoch, 12 in all;
# mid-epoch checkpoints every 2 steps (2, 4, 8, 10) and one at the end of each epoch (6, 12).
MODEL = "residual_net"
RUN = dict(num_epochs=2, lr=0.1, momentum=0.9, seed=0, checkpoint_every=2)
STEPS = 12

CHILD = textwrap.dedent("""
    import sys
    import mxnet as mx
    from d2lport import mxnet as d2p
    ckdir, mode, model, kwargs, resize, run = sys.argv[1:]
    if mode == "numpy":
        mx.npx.set_np()
    net = d2p.create_model(model, seed=0, **eval(kwargs))
    train_iter, test_iter = d2p.load_data_fashion_mnist(32, resize=eval(resize), limit=192,
                                                        seed=0)
    d2p.train(net, train_iter, test_iter, progress=False, checkpoint_dir=ckdir, resume=True,
              **eval(run))
""")

# vgg11 (its fc1/fc2 dropout makes the RNG replay matter), 32 px, a quarter of the width.
VGG = ("vgg11", dict(width_ratio=8, image_size=32, in_channels=1, num_classes=10), 32,
       dict(RUN, lr=0.02))


def _child(ckdir, kill, mode="legacy", model=MODEL, kwargs=None, resize=None, run=None):
    """Train in a fresh interpreter with ``D2LPORT_TEST_KILL=kill`` (resuming from ckdir)."""
    env = dict(os.environ, D2LPORT_TEST_KILL=kill, D2LPORT_PROGRESS="0",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", CHILD, str(ckdir), mode, model,
                           repr(kwargs or {}), repr(resize), repr(run or RUN)],
                          env=env, capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def _mode(mode):
    """numpy mode (``npx.set_np()``) for a block of a test; legacy mode comes back."""
    if mode == "numpy":
        mx.npx.set_np()
    try:
        yield
    finally:
        if mode == "numpy":
            mx.npx.reset_np()


def _train(mode="legacy", model=MODEL, kwargs=None, resize=None, run=None, **extra):
    """Train in this process; returns (history, canonical weights, what it printed)."""
    with _mode(mode):
        net = d2p.create_model(model, seed=0, **(kwargs or {}))
        data = d2p.load_data_fashion_mnist(32, resize=resize, limit=192, seed=0)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            hist = d2p.train(net, *data, progress=False, **dict(run or RUN, **extra))
        return hist, d2p.get_weights(net), out.getvalue()


def _same_run(got, want):
    """Full history (epochs 1..N, same numbers) and bit-identical weights."""
    (hist, weights), (ref_hist, ref_weights) = got, want
    assert [e["epoch"] for e in hist.epochs] == list(range(1, RUN["num_epochs"] + 1))
    for key in ("loss", "train_acc", "test_acc"):
        assert getattr(hist, key) == getattr(ref_hist, key), key
    assert set(weights) == set(ref_weights)
    for key in ref_weights:
        np.testing.assert_array_equal(weights[key], ref_weights[key], err_msg=key)


def _files(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*")
                  if p.is_file())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, legacy mode: (history, weights) and its checkpoint directory."""
    hist, weights, _ = _train(checkpoint_every=None)
    ckdir = tmp_path_factory.mktemp("mxnet_ref") / "ck"
    ck_hist, ck_weights, printed = _train(checkpoint_dir=ckdir, resume=True,
                                          settings={"model_kwargs": {}})   # as the CLI does
    return (hist, weights), (ck_hist, ck_weights), ckdir, printed


@pytest.fixture(scope="module")
def numpy_reference():
    hist, weights, _ = _train("numpy", checkpoint_every=None)
    return hist, weights


def _resume_from(ckdir, mode="legacy", **kw):
    hist, weights, printed = _train(mode, checkpoint_dir=ckdir, resume=True, **kw)
    return (hist, weights), printed


# --------------------------------------------------------------------------- make test
def test_checkpointing_run_equals_plain_run_and_keeps_the_last_three(reference):
    plain, with_ck, ckdir, printed = reference
    assert f"no checkpoint in {ckdir} yet: starting from scratch" in printed
    _same_run(with_ck, plain)               # saving changes nothing in the training
    assert plain[0].test_acc[-1] > 0.1
    assert [p.name for p in sorted(ckdir.iterdir())] == [
        "ckpt-00000008", "ckpt-00000010", "ckpt-00000012"]
    path, state = C.Checkpointer(ckdir, {}).latest()
    assert (state.epoch, state.batch, state.step) == (2, 0, STEPS)
    assert [e["epoch"] for e in state.history] == [1, 2]
    assert {k: state.settings[k] for k in ("model", "framework", "batch_size", "optimizer")} \
        == {"model": MODEL, "framework": "mxnet", "batch_size": 32, "optimizer": "sgd"}
    assert sorted(p.name for p in path.iterdir()) == [
        "MANIFEST.json", "model.params", "state.json", "trainer.states"]
    mid = C.TrainState.from_json((ckdir / "ckpt-00000010" / "state.json").read_text())
    assert (mid.epoch, mid.batch, mid.step) == (1, 4, 10) and mid.partial["seen"] == 128


@pytest.mark.parametrize("kill", ["step:5", "save:3:state"])
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path, reference, kill):
    """SIGKILL after step 5 / halfway through writing the 3rd checkpoint's state.json: the
    checkpoint of step 4 remains loadable, and the resumed run is the uninterrupted one."""
    proc = _child(tmp_path, kill)
    assert proc.returncode == -9, proc.stderr[-2000:]
    path, state = C.Checkpointer(tmp_path, {}).latest()
    assert (path.name, state.epoch, state.batch, state.step) == ("ckpt-00000004", 0, 4, 4)
    got, printed = _resume_from(tmp_path)
    assert f"resuming from {path}: epoch 0, batch 4 (step 4)" in printed
    _same_run(got, reference[0])


def test_ctrl_c_saves_says_how_to_resume_and_resume_completes_in_numpy_mode(
        tmp_path, numpy_reference):
    """D2L 1.0's numpy mode: Ctrl-C (SIGINT) after step 3 saves ckpt-3, prints how to resume
    and exits non-zero; resuming in numpy mode gives the uninterrupted numpy-mode run."""
    proc = _child(tmp_path, "int:3", mode="numpy")
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr, proc.stderr[-2000:]
    assert (f"interrupted at step 3 (epoch 1); checkpoint saved to {tmp_path}/ckpt-00000003. "
            f"Resume with: d2lport train ... --checkpoint-dir {tmp_path} --resume") \
        in proc.stdout
    got, printed = _resume_from(tmp_path, "numpy")
    assert "resuming from" in printed and "epoch 0, batch 3 (step 3)" in printed
    _same_run(got, numpy_reference)


def test_a_diverging_run_stops_naming_step_and_lr_and_keeps_the_last_good_checkpoint(
        tmp_path):
    with pytest.raises(C.DivergenceError) as err:
        _train(checkpoint_dir=tmp_path, run=dict(RUN, lr=1e3, checkpoint_every=1))
    step, text = err.value.step, str(err.value)
    assert step >= 1 and f"at step {step} (epoch 1) with learning rate 1000" in text
    assert "--lr 0.05" in text and f"ckpt-{step - 1:08d}" in text
    path, state = C.Checkpointer(tmp_path, {}).latest()
    assert state.step == step - 1                        # kept, and not a diverged one
    assert all(np.isfinite(v.asnumpy()).all()
               for v in mx.nd.load(str(path / "model.params")).values())
    # NaN in the data: stopped at step 1, before any checkpoint
    bad = [(d2p.as_array(np.full((4, 1, 28, 28), np.nan, np.float32)),
            d2p.as_array([0, 1, 2, 3], dtype="int32"))]
    with pytest.raises(C.DivergenceError, match=r"loss nan at step 1 \(epoch 1\) with "
                                                r"learning rate 0\.1\. Try a smaller"):
        d2p.train(d2p.create_model(MODEL), bad, bad, num_epochs=1, progress=False)


def test_resuming_with_another_model_or_framework_is_refused_and_nothing_changes(
        tmp_path, reference):
    ckdir = tmp_path / "ck"
    shutil.copytree(reference[2], ckdir)
    before = _files(ckdir)
    with pytest.raises(C.CheckpointError, match=r"written with model='residual_net', this "
                                                r"run has model='inception_a_net': resume "
                                                r"with the same settings"):
        _train(model="inception_a_net", checkpoint_dir=ckdir, resume=True)
    with pytest.raises(C.CheckpointError, match=r"model_kwargs=\{'num_classes': 4\}"):
        _train(kwargs=dict(num_classes=4), checkpoint_dir=ckdir, resume=True,
               settings={"model_kwargs": {"num_classes": 4}})
    # train() called directly, without model_kwargs in the settings: the payload check
    # names the layer and both shapes
    with pytest.raises(C.CheckpointError, match=r"layer fc\.weight has shape \(10, 512\) "
                                                r"there, \(4, 512\) here"):
        _train(kwargs=dict(num_classes=4), checkpoint_dir=ckdir, resume=True)
    assert _files(ckdir) == before
    torch_dir = tmp_path / "torch"
    C.Checkpointer(torch_dir, {"model": MODEL, "framework": "torch", "batch_size": 32}).save(
        C.TrainState(step=6), lambda tmp: (tmp / "torch.pt").write_bytes(b"\0" * 64))
    with pytest.raises(C.CheckpointError, match=r"framework='torch'.*this run has "
                                                r"framework='mxnet'"):
        _train(checkpoint_dir=torch_dir, resume=True)
    with pytest.raises(ValueError, match=r"resume=True needs checkpoint_dir=\.\.\."):
        _train(resume=True)
    with pytest.raises(ValueError, match="num_epochs must be a whole number >= 1, got -1"):
        _train(run=dict(RUN, num_epochs=-1))
    with pytest.raises(ValueError, match="learning rate must be a finite number > 0, got nan"):
        _train(run=dict(RUN, lr=float("nan")))


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    """A truncated model.params in ckpt-12, a flipped byte in ckpt-10's trainer.states:
    resume takes ckpt-8 (epoch 2, batch 2), leaves the damaged ones on disk, and ends with
    the uninterrupted run's weights.  (Other networks built first shift MXNet's global
    parameter names, conv12_weight for conv0_weight: the optimizer state must still reach
    the right parameters.)"""
    for _ in range(2):
        d2p.create_model("inception_a_net")
    ckdir = tmp_path / "ck"
    shutil.copytree(reference[2], ckdir)
    params = ckdir / "ckpt-00000012" / "model.params"
    params.write_bytes(params.read_bytes()[:1000])
    states = ckdir / "ckpt-00000010" / "trainer.states"
    raw = bytearray(states.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    states.write_bytes(bytes(raw))
    got, printed = _resume_from(ckdir)
    assert f"resuming from {ckdir}/ckpt-00000008: epoch 1, batch 2 (step 8)" in printed
    _same_run(got, reference[0])
    assert params.exists() and states.exists()


# --------------------------------------------------------------------------- make kill-loop
KILL_POINTS = ([f"step:{k}" for k in range(1, STEPS)]
               + [f"save:{k}:{phase}" for k in (1, 2, 3, 4)
                  for phase in ("payload", "state", "manifest", "renamed")]
               + ["int:2", "int:6", "int:11"])


@pytest.mark.killloop
@pytest.mark.parametrize("kill", KILL_POINTS)
def test_kill_loop(tmp_path, reference, kill):
    """Every step, every phase of the first four saves, three Ctrl-Cs: a checkpoint is
    loadable whenever one was completed before the kill, and the resumed run equals the
    uninterrupted one."""
    proc = _child(tmp_path, kill)
    assert proc.returncode != 0, proc.stdout[-1000:]
    found = C.Checkpointer(tmp_path, {}).latest()       # raises if none is intact
    # none only when killed before the first save (step 2, after the hook) was renamed
    assert found is not None or kill in ("step:1", "step:2", "save:1:payload",
                                         "save:1:state", "save:1:manifest")
    got, printed = _resume_from(tmp_path)
    assert ("resuming from" if found else "starting from scratch") in printed
    _same_run(got, reference[0])


@pytest.mark.killloop
def test_kill_loop_chain_of_kills_and_dropout_network(tmp_path, reference):
    """One run killed four times in a row (each resumed run killed again) still ends as the
    uninterrupted run; and a network with dropout (vgg11) is replayed exactly."""
    for kill in ("step:3", "save:1:manifest", "save:2:state", "int:9", "step:11"):
        assert _child(tmp_path, kill).returncode != 0
    got, _ = _resume_from(tmp_path)
    _same_run(got, reference[0])
    model, kwargs, resize, run = VGG
    want = _train(model=model, kwargs=kwargs, resize=resize, run=dict(run, checkpoint_every=None))
    for kill in ("step:5", "save:4:payload"):
        ckdir = tmp_path / kill.replace(":", "_")
        assert _child(ckdir, kill, model=model, kwargs=kwargs, resize=resize,
                      run=run).returncode == -9
        got = _train(model=model, kwargs=kwargs, resize=resize, run=run,
                     checkpoint_dir=ckdir, resume=True)
        _same_run(got[:2], want[:2])
