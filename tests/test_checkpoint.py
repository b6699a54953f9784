"""The framework-free checkpoint machinery: atomic saves that survive SIGKILL at every phase,
the newest intact checkpoint found, damaged ones skipped, mismatched settings refused,
argument guards, and the loader's resume position."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from d2lport import checkpoint as C
from d2lport.loader import ArrayBatches

pytestmark = pytest.mark.core

SETTINGS = {"model": "residual_net", "framework": "torch", "batch_size": 32}


def _payload(step):
    return lambda tmp: (tmp / "weights.bin").write_bytes(bytes([step % 256]) * (1000 + step))


def test_saves_keep_the_newest_and_latest_skips_damage(tmp_path):
    ck = C.Checkpointer(tmp_path, SETTINGS, keep=2, every_steps=2)
    for step in (2, 4, 6):
        ck.save(C.TrainState(epoch=0, batch=step, step=step, history=[{"epoch": 1}]),
                _payload(step))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004", "ckpt-00000006"]
    path, state = ck.latest()
    assert (path.name, state.step, state.history) == ("ckpt-00000006", 6, [{"epoch": 1}])
    assert state.settings == SETTINGS
    # a flipped byte in the newest: the one before is used, the damaged one is not deleted
    f = tmp_path / "ckpt-00000006" / "weights.bin"
    f.write_bytes(b"\xff" + f.read_bytes()[1:])
    assert ck.latest()[1].step == 4 and f.exists()
    assert "checksum" in ck.verify(tmp_path / "ckpt-00000006")
    # truncated too
    (tmp_path / "ckpt-00000004" / "weights.bin").write_bytes(b"x")
    with pytest.raises(C.CheckpointError, match="no intact checkpoint.*ckpt-00000006: weights.bin is corrupt"):
        ck.latest()


def test_resuming_with_other_settings_is_refused_and_nothing_changes(tmp_path):
    ck = C.Checkpointer(tmp_path, SETTINGS)
    ck.save(C.TrainState(step=3), _payload(3))
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())
    other = C.Checkpointer(tmp_path, dict(SETTINGS, model="googlenet", framework="mxnet"))
    with pytest.raises(C.CheckpointError, match="model='residual_net', framework='torch'.*"
                                                "this run has model='googlenet', "
                                                "framework='mxnet'"):
        other.latest()
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*")
                  if p.is_file()) == before
    assert C.Checkpointer(tmp_path / "empty", SETTINGS).latest() is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(C.CheckpointError, match="is a file"):
        C.Checkpointer(tmp_path / "file", SETTINGS)


SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from d2lport import checkpoint as C
    ck = C.Checkpointer(sys.argv[1], {"model": "m"}, keep=3)
    for step in (1, 2, 3):
        ck.save(C.TrainState(step=step), lambda t, s=step: (t / "w.bin").write_bytes(b"w" * 10**6 * s))
""")


@pytest.mark.parametrize("phase", ["payload", "state", "manifest", "renamed"])
def test_a_kill_in_any_phase_of_a_save_leaves_a_loadable_checkpoint(tmp_path, phase):
    env = dict(os.environ, D2LPORT_TEST_KILL=f"save:2:{phase}")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr             # SIGKILL
    path, state = C.Checkpointer(tmp_path, {"model": "m"}).latest()
    assert state.step == (2 if phase == "renamed" else 1)
    assert (path / "w.bin").stat().st_size == 10**6 * state.step
    # and the next run's save cleans up the half-written directory
    C.Checkpointer(tmp_path, {"model": "m"}).save(C.TrainState(step=5), _payload(5))
    assert not list(tmp_path.glob(".tmp-*"))


def test_divergence_message_names_step_lr_and_what_to_try(tmp_path):
    C.check_loss(1.5, 1, 1, 0.1)
    ck = C.Checkpointer(tmp_path, SETTINGS)
    ck.save(C.TrainState(step=4), _payload(4))
    with pytest.raises(C.DivergenceError, match=r"loss nan at step 7 \(epoch 2\) with learning "
                                                r"rate 10; the last good checkpoint is .*"
                                                r"ckpt-00000004.*--lr 0.05\b"):
        C.check_loss(float("nan"), 7, 2, 10.0, ck)
    with pytest.raises(C.DivergenceError, match=r"loss 2e\+36 at step 1"):
        C.check_loss(2e36, 1, 1, 1e6)
    C.check_loss(C.DIVERGED_LOSS, 1, 1, 0.1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_epochs=-1, lr=0.1), "num_epochs must be a whole number >= 1, got -1"),
    (dict(num_epochs=0, lr=0.1), "num_epochs must be"),
    (dict(num_epochs=1, lr=float("nan")), "learning rate must be a finite number > 0, got nan"),
    (dict(num_epochs=1, lr=0), "learning rate must be"),
    (dict(num_epochs=1, lr=float("inf")), "learning rate must be"),
    (dict(num_epochs=1, lr=0.1, optimizer="adagrad"), "unknown optimizer 'adagrad'"),
    (dict(num_epochs=1, lr=0.1, momentum=1.5), r"momentum must be in \[0, 1\)"),
    (dict(num_epochs=1, lr=0.1, weight_decay=-1), "weight_decay must be"),
    (dict(num_epochs=1, lr=0.1, batch_size=0), "batch size must be"),
])
def test_training_arguments_are_checked_up_front(kwargs, message):
    with pytest.raises(ValueError, match=message):
        C.check_train_args(**kwargs)
    good = dict(num_epochs=1, lr=0.1)
    C.check_train_args(**good)          # the fix the messages name works


@pytest.mark.parametrize("value,expected", [("200", (200, None)), ("5m", (None, 300.0)),
                                            ("90s", (None, 90.0)), (None, (None, 300.0))])
def test_checkpoint_every_parses_steps_and_time(value, expected):
    assert C.parse_every(value) == expected


@pytest.mark.parametrize("value", ["0", "-3", "often", "2.5"])
def test_checkpoint_every_rejects_nonsense(value):
    with pytest.raises(ValueError, match="--checkpoint-every"):
        C.parse_every(value)


def test_loader_resumes_at_a_position_of_the_seeded_order():
    images, labels = np.arange(10)[:, None], np.arange(10)
    full = ArrayBatches(images, labels, 3, True, seed=0)
    epochs = [[list(y) for _, y in full] for _ in range(2)]
    resumed = ArrayBatches(images, labels, 3, True, seed=0)
    resumed.resume_at(1, 2)
    assert [list(y) for _, y in resumed] == epochs[1][2:]
    with pytest.raises(ValueError, match="cannot resume at epoch 0, batch 9"):
        resumed.resume_at(0, 9)


def test_state_json_is_plain_json(tmp_path):
    ck = C.Checkpointer(tmp_path, SETTINGS)
    path = ck.save(C.TrainState(epoch=1, step=2, rng={"seed": np.int64(3)},
                                partial={"loss_sum": 1.5}), _payload(2))
    raw = json.loads((path / "state.json").read_text())
    assert raw["rng"] == {"seed": 3} and raw["partial"] == {"loss_sum": 1.5}
    assert set(json.loads((path / "MANIFEST.json").read_text())["files"]) == {
        "weights.bin", "state.json"}
