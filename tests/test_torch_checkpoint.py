"""PyTorch checkpoints: killed (SIGKILL, Ctrl-C) anywhere, resumed to the same weights.

Training runs in a child process (``sys.executable -c``) so the test hooks of
:mod:`d2lport.checkpoint` (``D2LPORT_TEST_KILL``) kill only the child.  The run:
``residual_net`` on 192 real Fashion-MNIST examples, batch 32 (6 steps an epoch), 2 epochs,
a checkpoint every 2 steps (saves at steps 2, 4, 6 (end of epoch 1), 8, 10, 12).

Resume equality is exact (``np.array_equal``): on a CPU PyTorch computes the same ops in
the same order with the same thread count bit for bit, the checkpoint holds the weights,
the optimizer's momentum buffers and the RNG state exactly (torch.save), and the data order
is seeded, so the resumed run replays the uninterrupted one.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lport import checkpoint
from d2lport import torch as d2p

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS_PER_EPOCH, EVERY = 2, 6, 2
SAVES = [2, 4, 6, 8, 10, 12]            # steps of the 1st, 2nd, ... save of a whole run
RUN = dict(num_epochs=EPOCHS, lr=0.05, momentum=0.9, seed=0, device="cpu", progress=False,
           checkpoint_every=EVERY)

CHILD = r"""
import json, sys
import numpy as np
from d2lport import torch as d2p
ckdir, out, model, resume = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
kw = json.loads(sys.argv[5])
net = d2p.create_model(model, seed=0, **kw.get("model_kwargs", {}))
train_iter, test_iter = d2p.load_data_fashion_mnist(kw.get("batch", 32), resize=kw.get("resize"),
                                                    limit=kw.get("limit", 192), seed=0)
h = d2p.train(net, train_iter, test_iter, checkpoint_dir=ckdir, resume=resume,
              **kw.get("train", {}))
np.savez(out, **d2p.get_weights(net))
print("HISTORY " + json.dumps(h.to_records()))
"""


def _child(ckdir, out, model="residual_net", resume=False, kill=None, **kw):
    kw.setdefault("train", {k: v for k, v in RUN.items()})
    env = {k: v for k, v in os.environ.items() if k != "D2LPORT_TEST_KILL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if kill:
        env["D2LPORT_TEST_KILL"] = kill
    return subprocess.run([sys.executable, "-c", CHILD, str(ckdir), str(out), model,
                           "1" if resume else "0", json.dumps(kw)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _history(proc):
    line = [x for x in proc.stdout.splitlines() if x.startswith("HISTORY ")]
    assert line, proc.stdout + proc.stderr
    return json.loads(line[-1][len("HISTORY "):])


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k}: max diff {np.abs(a[k] - b[k]).max()}"


def _checkpointer(ckdir, model="residual_net"):
    return checkpoint.Checkpointer(ckdir, {"model": model, "framework": "torch"})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its checkpoint directory, final weights and history."""
    d = tmp_path_factory.mktemp("reference")
    proc = _child(d / "ck", d / "final.npz")
    assert proc.returncode == 0, proc.stderr
    return d / "ck", _weights(d / "final.npz"), _history(proc)


def _expected_latest(kill):
    """The step of the newest complete checkpoint a kill at ``kill`` leaves (None: none)."""
    kind, k, *phase = kill.split(":")
    k = int(k)
    if kind in ("step", "int"):
        done = [s for s in SAVES if s < k]
    else:
        done = SAVES[:k] if phase == ["renamed"] else SAVES[:k - 1]
    return done[-1] if done else None


def _kill_and_resume(tmp_path, reference, kill):
    _, ref_weights, ref_history = reference
    ckdir = tmp_path / "ck"
    killed = _child(ckdir, tmp_path / "killed.npz", kill=kill)
    assert killed.returncode == -9, (kill, killed.returncode, killed.stderr[-2000:])
    assert "HISTORY" not in killed.stdout
    # (a) a loadable checkpoint remains: the newest complete one, never a half-written one
    expected = _expected_latest(kill)
    found = _checkpointer(ckdir).latest()
    assert (found[1].step if found else None) == expected, kill
    resumed = _child(ckdir, tmp_path / "resumed.npz", resume=True)
    assert resumed.returncode == 0, (kill, resumed.stderr[-3000:])
    if expected is None:
        assert "no checkpoint in" in resumed.stdout and "starting from scratch" in resumed.stdout
    else:
        assert f"resuming from {ckdir / f'ckpt-{expected:08d}'}" in resumed.stdout
    # (b) the full history, (c) the same weights as the uninterrupted run
    history = _history(resumed)
    assert [e["epoch"] for e in history] == list(range(1, EPOCHS + 1))
    for mine, ref in zip(history, ref_history):
        for key in ("loss", "train_acc", "test_acc"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), (kill, key)
    _assert_same_weights(_weights(tmp_path / "resumed.npz"), ref_weights)
    assert _checkpointer(ckdir).latest()[1].step == SAVES[-1]


# A kill in the middle of writing the end-of-epoch checkpoint's state.json; the Ctrl-C test
# below adds one in the middle of the second epoch; the killloop test walks every step and
# every phase of every save (make kill-loop).
@pytest.mark.parametrize("kill", ["save:3:state"])
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, reference, kill):
    _kill_and_resume(tmp_path, reference, kill)


def test_reference_run_checkpoints_every_two_steps_and_keeps_three(reference):
    ckdir, _, history = reference
    assert [e["epoch"] for e in history] == [1, 2]
    assert sorted(p.name for p in ckdir.iterdir()) == [f"ckpt-{s:08d}" for s in SAVES[-3:]]
    path, state = _checkpointer(ckdir).latest()
    assert (state.epoch, state.batch, state.step) == (EPOCHS, 0, SAVES[-1])
    assert state.history == history
    assert state.settings["batch_size"] == 32 and state.settings["seed"] == 0
    assert sorted(p.name for p in path.iterdir()) == ["MANIFEST.json", "state.json", "torch.pt"]


def test_ctrl_c_saves_prints_how_to_resume_and_exits_nonzero(tmp_path, reference):
    _, ref_weights, _ = reference
    ckdir = tmp_path / "ck"
    proc = _child(ckdir, tmp_path / "int.npz", kill="int:9")
    assert proc.returncode not in (0, -9), proc.returncode
    assert "KeyboardInterrupt" in proc.stderr
    saved = ckdir / "ckpt-00000009"
    assert f"interrupted at step 9 (epoch 2); checkpoint saved to {saved}" in proc.stdout
    assert f"--checkpoint-dir {ckdir} --resume" in proc.stdout
    state = _checkpointer(ckdir).latest()[1]
    assert (state.epoch, state.batch, state.step) == (1, 3, 9)
    assert state.partial["seen"] == 3 * 32 and len(state.history) == 1
    resumed = _child(ckdir, tmp_path / "resumed.npz", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {saved}: epoch 1, batch 3 (step 9)" in resumed.stdout
    history = _history(resumed)
    assert [e["epoch"] for e in history] == [1, 2]
    for mine, ref in zip(history, reference[2]):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-12)
        assert mine["train_acc"] == ref["train_acc"] and mine["test_acc"] == ref["test_acc"]
    _assert_same_weights(_weights(tmp_path / "resumed.npz"), ref_weights)


def _data():
    return d2p.load_data_fashion_mnist(32, limit=192, seed=0)


def test_diverging_run_names_step_and_lr_and_keeps_last_good_checkpoint(tmp_path):
    ckdir = tmp_path / "ck"
    with pytest.raises(checkpoint.DivergenceError) as err:
        d2p.train(d2p.create_model("residual_net", seed=0), *_data(), lr=1000, seed=0,
                  device="cpu", progress=False, checkpoint_dir=ckdir, checkpoint_every=1)
    text, step = str(err.value), err.value.step
    assert step >= 2 and err.value.lr == 1000
    assert f"at step {step} (epoch 1) with learning rate 1000" in text
    assert f"the last good checkpoint is {ckdir / f'ckpt-{step - 1:08d}'}" in text
    assert "Try a smaller learning rate (e.g. --lr " in text
    # nothing was saved at or after the diverged step
    assert _checkpointer(ckdir).latest()[1].step == step - 1
    assert not (ckdir / f"ckpt-{step:08d}").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_epochs=0), "num_epochs must be a whole number >= 1, got 0"),
    (dict(lr=float("nan")), "learning rate must be a finite number > 0, got nan"),
    (dict(optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
    (dict(resume=True), "resume=True needs checkpoint_dir=..."),
    (dict(checkpoint_dir="X", checkpoint_every="-3"), "--checkpoint-every must be"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, message):
    if kwargs.get("checkpoint_dir"):
        kwargs["checkpoint_dir"] = tmp_path / "ck"
    with pytest.raises(ValueError) as err:
        d2p.train(d2p.create_model("residual_net", seed=0), [], [], device="cpu", **kwargs)
    assert message in str(err.value)
    assert not (tmp_path / "ck").exists()


def test_resuming_with_another_model_or_framework_is_refused(tmp_path, reference):
    ckdir = tmp_path / "ck"
    shutil.copytree(reference[0], ckdir)
    before = sorted(p.name for p in ckdir.iterdir())
    with pytest.raises(checkpoint.CheckpointError) as err:
        d2p.train(d2p.create_model("inception_a_net", seed=0), *_data(), resume=True,
                  checkpoint_dir=ckdir, **{k: v for k, v in RUN.items() if k != "checkpoint_every"})
    assert ("was written with model='residual_net', this run has model='inception_a_net': "
            "resume with the same settings") in str(err.value)
    # other model keyword arguments, not declared in settings: the layer and both shapes
    with pytest.raises(checkpoint.CheckpointError) as err:
        d2p.train(d2p.create_model("residual_net", seed=0, num_classes=5), *_data(),
                  resume=True, checkpoint_dir=ckdir, device="cpu", progress=False)
    assert "layer fc.weight has shape (10, 512) there, (5, 512) here" in str(err.value)
    assert sorted(p.name for p in ckdir.iterdir()) == before          # nothing changed
    # a checkpoint another backend wrote
    other = tmp_path / "tf"
    checkpoint.Checkpointer(other, {"model": "residual_net", "framework": "tensorflow"}).save(
        checkpoint.TrainState(step=1), lambda tmp: (tmp / "ckpt.index").write_bytes(b"x"))
    with pytest.raises(checkpoint.CheckpointError) as err:
        d2p.train(d2p.create_model("residual_net", seed=0), *_data(), resume=True,
                  checkpoint_dir=other, device="cpu", progress=False)
    assert "was written with framework='tensorflow', this run has framework='torch'" in str(
        err.value)


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, capsys):
    h = d2p.train(d2p.create_model("residual_net", seed=0), *_data(), num_epochs=1,
                  max_steps=2, device="cpu", progress=False, seed=0,
                  checkpoint_dir=tmp_path / "empty", resume=True)
    assert f"no checkpoint in {tmp_path / 'empty'} yet: starting from scratch" in \
        capsys.readouterr().out
    assert [e["epoch"] for e in h.epochs] == [1]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_payload_falls_back_to_the_previous_checkpoint(tmp_path, reference,
                                                                      capsys, damage):
    ckdir = tmp_path / "ck"
    shutil.copytree(reference[0], ckdir)
    payload = ckdir / f"ckpt-{SAVES[-1]:08d}" / "torch.pt"
    data = bytearray(payload.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    net = d2p.create_model("residual_net", seed=0)
    h = d2p.train(net, *_data(), resume=True, checkpoint_dir=ckdir, **RUN)
    assert f"resuming from {ckdir / f'ckpt-{SAVES[-2]:08d}'}: epoch 1, batch 4 (step 10)" in \
        capsys.readouterr().out
    assert [e["epoch"] for e in h.epochs] == [1, 2]
    _assert_same_weights(d2p.get_weights(net), reference[1])


def test_all_checkpoints_damaged_is_a_checkpoint_error(tmp_path, reference):
    ckdir = tmp_path / "ck"
    shutil.copytree(reference[0], ckdir)
    for p in ckdir.glob("ckpt-*/torch.pt"):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError) as err:
        d2p.train(d2p.create_model("residual_net", seed=0), *_data(), resume=True,
                  checkpoint_dir=ckdir, **RUN)
    assert f"no intact checkpoint in {ckdir}: ckpt-{SAVES[-1]:08d}: torch.pt has 100 bytes" \
        in str(err.value)


def test_dropout_rng_is_replayed_on_resume(tmp_path, monkeypatch, capsys):
    """A network with dropout: the resumed run draws the same masks (the torch RNG state is
    in the checkpoint), so its weights equal the uninterrupted run's.  In process: the
    Ctrl-C hook (int:K) interrupts this process's own training loop."""
    import torch

    def net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64),
                                   torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                   torch.nn.Linear(64, 10))

    kw = dict(num_epochs=2, lr=0.1, momentum=0.9, seed=0, device="cpu", progress=False,
              channels_last=False, checkpoint_every=4)
    whole = net()
    d2p.train(whole, *_data(), **kw)
    monkeypatch.setenv("D2LPORT_TEST_KILL", "int:7")
    with pytest.raises(KeyboardInterrupt):
        d2p.train(net(), *_data(), checkpoint_dir=tmp_path, **kw)
    monkeypatch.delenv("D2LPORT_TEST_KILL")
    assert "interrupted at step 7 (epoch 2)" in capsys.readouterr().out
    # another seed on resume: the masks can only match if the RNG state came back
    resumed = net()
    h = d2p.train(resumed, *_data(), checkpoint_dir=tmp_path, resume=True, **{**kw, "seed": 5})
    assert "resuming from" in capsys.readouterr().out and len(h.epochs) == 2
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


KILL_LOOP = ([f"step:{k}" for k in range(1, EPOCHS * STEPS_PER_EPOCH + 1)]
             + [f"save:{k}:{phase}" for k in range(1, len(SAVES) + 1)
                for phase in ("payload", "state", "manifest", "renamed")])


@pytest.mark.killloop
@pytest.mark.parametrize("kill", KILL_LOOP)
def test_kill_loop(tmp_path, reference, kill):
    _kill_and_resume(tmp_path, reference, kill)
