"""TensorFlow checkpoints: a training process killed with SIGKILL (in the middle of writing
a checkpoint; after every step in the kill loop) or Ctrl-C'd resumes to the very weights of
an uninterrupted run (exact: CPU, op determinism on, same seeds), with the full history; a
diverging run stops naming the step and the learning rate; a checkpoint of another model or
framework is refused; a damaged newest checkpoint falls back to the one before.

Training runs in child processes (``sys.executable -c CHILD``) so the kill hooks
(``D2LPORT_TEST_KILL``) hit the child only and ``enable_op_determinism`` stays out of the
pytest process.  Real Fashion-MNIST, 192 examples, batch 32: 6 steps an epoch, 2 epochs,
a checkpoint every 2 steps."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from d2lport import checkpoint as C

pytestmark = pytest.mark.tensorflow

SETTINGS = dict(limit=192, batch_size=32, epochs=2, every=2)
STEPS = 12                                  # 2 epochs x 6 batches
SAVES = 6                                   # every 2 steps: 2, 4, 6 (epoch end), 8, 10, 12

# argv[1]: JSON list of jobs {"dir", "resume", "out"}; each trains residual_net on CPU and
# writes its weights (<out>.npz) and history (<out>.json).  Ctrl-C exits 130 like the CLI.
CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    from d2lport import tensorflow as d2p
    cfg = json.loads(sys.argv[2])
    for job in json.loads(sys.argv[1]):
        net = d2p.create_model("residual_net", seed=0)
        train_iter, test_iter = d2p.load_data_fashion_mnist(cfg["batch_size"],
                                                            limit=cfg["limit"], seed=0)
        try:
            h = d2p.train(net, train_iter, test_iter, num_epochs=cfg["epochs"], lr=0.1,
                          momentum=0.9, seed=0, device="/CPU:0", progress=False,
                          checkpoint_dir=job["dir"], resume=job["resume"],
                          checkpoint_every=cfg["every"])
        except KeyboardInterrupt:
            sys.exit(130)
        np.savez(job["out"] + ".npz", **d2p.get_weights(net))
        with open(job["out"] + ".json", "w") as f:
            json.dump(h.epochs, f)
""")


def _child(jobs, kill=None, wait=True):
    env = {k: v for k, v in os.environ.items() if k != "D2LPORT_TEST_KILL"}
    env.update(D2LPORT_PROGRESS="0", **({"D2LPORT_TEST_KILL": kill} if kill else {}))
    args = [sys.executable, "-c", CHILD, json.dumps([{k: str(v) if k != "resume" else v
                                                       for k, v in j.items()} for j in jobs]),
            json.dumps(SETTINGS)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return _wait(proc) if wait else proc


def _wait(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _result(out):
    weights = np.load(f"{out}.npz")
    with open(f"{out}.json") as f:
        return {k: weights[k] for k in weights.files}, json.load(f)


def _settings():
    return {"model": "residual_net", "framework": "tensorflow", "optimizer": "sgd",
            "batch_size": SETTINGS["batch_size"]}


def _latest(directory):
    return C.Checkpointer(directory, _settings()).latest()


def assert_same_run(result, baseline):
    (weights, history), (ref_weights, ref_history) = result, baseline
    assert [e["epoch"] for e in history] == list(range(1, SETTINGS["epochs"] + 1))
    for e, ref in zip(history, ref_history):      # seconds/examples_per_sec are timings
        assert (e["loss"], e["train_acc"], e["test_acc"]) == \
            (ref["loss"], ref["train_acc"], ref["test_acc"])
    assert weights.keys() == ref_weights.keys()
    for key in ref_weights:                        # exact: TF on CPU with op determinism
        np.testing.assert_array_equal(weights[key], ref_weights[key], err_msg=key)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The uninterrupted run (its child starts at once and runs beside the killed ones)."""
    d = tmp_path_factory.mktemp("tf_baseline")
    proc = _child([{"dir": d / "ck", "resume": False, "out": d / "run"}], wait=False)

    def get():
        if not hasattr(get, "value"):
            rc, out, err = _wait(proc)
            assert rc == 0, err[-3000:]
            get.value = _result(d / "run")
        return get.value
    yield get
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_killed_interrupted_and_damaged_runs_resume_to_the_uninterrupted_weights(
        tmp_path, baseline):
    ck = tmp_path / "ck"
    job = {"dir": ck, "resume": True, "out": tmp_path / "run"}
    # 1. A fresh run SIGKILLed halfway through writing its 2nd checkpoint (step 4's
    #    state.json): the 1st (step 2) is intact, the torn one is never taken.
    rc, out, err = _child([dict(job, resume=False)], kill="save:2:state")
    assert rc == -9, err[-3000:]
    path, state = _latest(ck)
    assert (path.name, state.epoch, state.batch) == ("ckpt-00000002", 0, 2)
    assert [p.name for p in ck.glob(".tmp-ckpt-*")] == [".tmp-ckpt-00000004"]
    # 2. Resumed, then Ctrl-C after step 9: saves there, says how to resume, exits 130.
    rc, out, err = _child([job], kill="int:9")
    assert rc == 130, err[-3000:]
    assert f"resuming from {ck / 'ckpt-00000002'}: epoch 0, batch 2 (step 2)" in out
    assert "interrupted at step 9 (epoch 2); checkpoint saved to" in out
    assert f"--checkpoint-dir {ck} --resume" in out
    path, state = _latest(ck)
    assert (path.name, state.epoch, state.batch, len(state.history)) == \
        ("ckpt-00000009", 1, 3, 1)
    assert state.partial["seen"] == 3 * SETTINGS["batch_size"]
    # 3. The newest checkpoint's payload truncated: the one before is used ...
    data = next((path / "tf").glob("ckpt.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    previous = _latest(ck)[0]
    assert previous.name < path.name
    # ... and the run completes with the full history and the uninterrupted run's weights.
    rc, out, err = _child([job])
    assert rc == 0, err[-3000:]
    assert f"resuming from {previous}:" in out
    assert_same_run(_result(tmp_path / "run"), baseline())
    assert data.exists()                                # damaged, skipped, never deleted


@pytest.fixture
def data():
    """Fresh loaders (3 batches of 32), each at epoch 0 of the seeded order."""
    from d2lport import tensorflow as d2p
    return lambda: d2p.load_data_fashion_mnist(32, limit=96, seed=0)


def _train(name, data, directory, **kwargs):
    from d2lport import tensorflow as d2p
    net = d2p.create_model(name, seed=0, **kwargs.pop("model_kwargs", {}))
    return d2p.train(net, *data(), **{**dict(num_epochs=1, lr=0.1, device="/CPU:0",
                                           progress=False, checkpoint_dir=directory,
                                           checkpoint_every=1), **kwargs})


def test_divergence_stops_at_the_step_naming_the_lr_and_keeps_the_last_checkpoint(
        tmp_path, data, capsys):
    with pytest.raises(C.DivergenceError, match=r"training diverged: loss nan at step 2 "
                       r"\(epoch 1\) with learning rate 1e\+30; the last good checkpoint is "
                       r".*ckpt-00000001\. Try a smaller learning rate"):
        _train("residual_net", data, tmp_path, lr=1e30, resume=True)
    assert f"no checkpoint in {tmp_path} yet: starting from scratch" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001"]


def test_resuming_another_model_framework_or_shape_is_refused(tmp_path, data):
    _train("residual_net", data, tmp_path, max_steps=1)
    before = sorted((p, p.stat().st_size) for p in tmp_path.rglob("*"))
    with pytest.raises(C.CheckpointError, match=r"written with model='residual_net', this "
                       r"run has model='inception_a_net': resume with the same settings"):
        _train("inception_a_net", data, tmp_path, resume=True)
    # same name, other shapes (no model_kwargs in the settings): the payload says which
    with pytest.raises(C.CheckpointError, match=r"does not fit this model.*shape \(512, 10\) "
                       r"when attempting to restore variable with shape \(512, 5\)"):
        _train("residual_net", data, tmp_path, resume=True, model_kwargs={"num_classes": 5})
    # a PyTorch run's checkpoint directory
    torch_dir = tmp_path / "torch"
    C.Checkpointer(torch_dir, dict(_settings(), framework="torch", batch_size=32)).save(
        C.TrainState(step=4), lambda tmp: (tmp / "model.pt").write_bytes(b"torch"))
    with pytest.raises(C.CheckpointError, match=r"framework='torch'.*this run has "
                       r"framework='tensorflow'"):
        _train("residual_net", data, torch_dir, resume=True)
    assert sorted((p, p.stat().st_size) for p in tmp_path.rglob("*")
                  if not p.is_relative_to(torch_dir)) == before     # nothing changed


def _dropout_net():
    import keras
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dropout(0.5), keras.layers.Dense(10)],
                            name="dropout_net")


def test_ctrl_c_in_process_and_the_dropout_rng_resume_exactly(tmp_path, data, monkeypatch,
                                                               capsys):
    """Dropout masks after a resume are the uninterrupted run's: the generators' states
    travel in TrainState.rng (a dense net: deterministic on the CPU without op determinism)."""
    from d2lport import tensorflow as d2p
    kw = dict(num_epochs=2, lr=0.1, momentum=0.9, seed=0, device="/CPU:0", progress=False,
              checkpoint_every=2)
    whole = _dropout_net()
    d2p.train(whole, *data(), checkpoint_dir=tmp_path / "whole", **kw)
    monkeypatch.setenv("D2LPORT_TEST_KILL", "int:4")      # a Ctrl-C after step 4 of 6
    with pytest.raises(KeyboardInterrupt):
        d2p.train(_dropout_net(), *data(), checkpoint_dir=tmp_path / "ck", **kw)
    assert "interrupted at step 4 (epoch 2); checkpoint saved to" in capsys.readouterr().out
    monkeypatch.delenv("D2LPORT_TEST_KILL")
    state = C.Checkpointer(tmp_path / "ck", {}).latest()[1]
    assert (state.step, state.epoch, state.batch) == (4, 1, 1)
    assert state.rng["seed_generators"]                     # the dropout layer's state
    resumed = _dropout_net()                                # other initial weights
    h = d2p.train(resumed, *data(), checkpoint_dir=tmp_path / "ck", resume=True, **kw)
    assert [e["epoch"] for e in h.epochs] == [1, 2]
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_train_arguments_are_checked_first(tmp_path, data):
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        _train("residual_net", data, None, resume=True)
    with pytest.raises(ValueError, match="num_epochs must be a whole number >= 1, got 0"):
        _train("residual_net", data, tmp_path, num_epochs=0)
    with pytest.raises(ValueError, match="learning rate must be a finite number > 0"):
        _train("residual_net", data, tmp_path, lr=float("nan"))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ kill loop
KILL_POINTS = ([f"step:{k}" for k in range(1, STEPS + 1)]
               + [f"save:{k}:{phase}" for k in range(1, 5)
                  for phase in ("payload", "state", "manifest", "renamed")])


@pytest.mark.killloop
def test_kill_loop_every_point_leaves_a_checkpoint_and_resumes_exactly(tmp_path, baseline):
    """28 kill points of a fresh run (after each of the 12 steps; each phase of the first 4
    saves); each resumed (in one child) to the uninterrupted run's weights and history."""
    jobs = []
    for i, point in enumerate(KILL_POINTS):
        d = tmp_path / f"k{i}"
        rc, out, err = _child([{"dir": d / "ck", "resume": False, "out": d / "run"}],
                              kill=point)
        assert rc == -9, (point, err[-3000:])
        found = _latest(d / "ck")
        # Checkpoints at steps 2, 4, 6, ... (each after the step's kill hook): none yet
        # only before the first one is renamed into place.
        none_yet = point in ("step:1", "step:2") or (point.startswith("save:1:")
                                                    and not point.endswith("renamed"))
        assert (found is None) == none_yet, point
        jobs.append({"dir": d / "ck", "resume": True, "out": d / "run"})
    rc, out, err = _child(jobs)
    assert rc == 0, err[-3000:]
    assert out.count("resuming from") + out.count("starting from scratch") == len(jobs)
    for point, job in zip(KILL_POINTS, jobs):
        assert_same_run(_result(job["out"]), baseline())
