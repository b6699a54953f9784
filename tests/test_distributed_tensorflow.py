"""Data parallelism in TensorFlow (d2lport.tensorflow.distributed): MirroredStrategy over
two logical CPU devices, MultiWorkerMirroredStrategy over two processes on the loopback
interface, against the one-device train().

Two logical CPU devices exist only if TensorFlow is told before it starts, and this pytest
process has usually started it already (the other TensorFlow tests): everything that needs
them runs in ONE fresh process (the ``runs`` fixture: distributed.setup(2) first, then all
the runs, results written to files), the multi-process tests start their own processes.

Tolerances: a 2-replica step sums two shard gradients where one device reduces the whole
batch at once; float32 addition in another order differs in the last bits (~1e-7
relative per step), and five momentum steps carry that along: losses to rtol 1e-5, weights
to atol 1e-6 + rtol 1e-5 (measured: 2e-7 and 3e-8).  Synchronized BatchNorm computes the
variance as E[x^2] - E[x]^2 (Keras' sync path) instead of tf.nn.moments' form: 1e-4.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from d2lport import distributed as dist
from d2lport.distributed import EXIT_PEER_LOST, DistributedError, Role

pytestmark = pytest.mark.tensorflow

ROOT = Path(__file__).resolve().parents[1]
# Every run: residual_net (no BatchNorm, no dropout), 301 examples, global batch 64: 4 full
# steps and a last batch of 45 = 23 + 22 (uneven shards), SGD lr 0.05 momentum 0.9, seed 0.
STEPS = 5
LOSS_RTOL, W_ATOL, W_RTOL = 1e-5, 1e-6, 1e-5
PEER_LOST_WITHIN = 20.0        # s from a peer's death to this rank's exit (measured: 3 s)


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", D2LPORT_PROGRESS="0", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "TF_CONFIG", "D2LPORT_TEST_KILL"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# ------------------------------------------------------------------ the 2-device process
RUNS = textwrap.dedent(r'''
    import json, os, shutil, sys
    out = sys.argv[1]
    from d2lport.tensorflow import distributed
    strategy = distributed.setup(2)          # before TensorFlow runs any op
    import keras
    import numpy as np
    import d2lport.tensorflow as d2p
    from d2lport.distributed import DistributedError
    from d2lport.tensorflow.layers import Conv, Dense, MaxPool2D

    KW = dict(num_epochs=1, lr=0.05, momentum=0.9, seed=0)
    res = {"replicas": strategy.num_replicas_in_sync}

    def data(batch=64, limit=301):
        return d2p.load_data_fashion_mnist(batch, limit=limit, seed=0)

    def save(name, weights, **info):
        np.savez(os.path.join(out, name + ".npz"), **weights)
        res[name] = info

    def values(net):                       # every variable, BatchNorm statistics included
        return {f"{i}": v.numpy() for i, v in enumerate(net.weights)}

    # 1. equality: the one-device train(), one replica, two replicas
    net = d2p.create_model("residual_net", seed=0)
    h = d2p.train(net, *data(), **KW)
    save("one_device", d2p.get_weights(net), history=h.epochs)
    for n in (1, 2):
        net, losses = d2p.create_model("residual_net", seed=0), []
        h = distributed.train(net, *data(), devices=n, step_losses=losses, **KW)
        save(f"replicas{n}", d2p.get_weights(net), losses=losses, history=h.epochs,
             device=h.device)

    # 4. checkpoint + resume: Ctrl-C after step 3 (a checkpoint every 2 steps), resume
    ck = os.path.join(out, "ck")
    os.environ["D2LPORT_TEST_KILL"] = "int:3"
    try:
        distributed.train(d2p.create_model("residual_net", seed=0), *data(), devices=2,
                          checkpoint_dir=ck, checkpoint_every=2, **KW)
        res["interrupted"] = False
    except KeyboardInterrupt:
        res["interrupted"] = True
    del os.environ["D2LPORT_TEST_KILL"]
    res["saved"] = sorted(p for p in os.listdir(ck) if p.startswith("ckpt-"))
    shutil.copytree(ck, ck + "-copy")
    net, losses = d2p.create_model("residual_net", seed=0), []
    h = distributed.train(net, *data(), devices=2, checkpoint_dir=ck, resume=True,
                          step_losses=losses, **KW)
    save("resumed", d2p.get_weights(net), losses=losses, history=h.epochs)
    # ... the data-parallel checkpoint in the one-device train(), and the reverse
    net = d2p.create_model("residual_net", seed=0)
    h = d2p.train(net, *data(), checkpoint_dir=ck + "-copy", resume=True, **KW)
    save("resumed_one_device", d2p.get_weights(net), history=h.epochs)
    os.environ["D2LPORT_TEST_KILL"] = "int:3"
    try:
        d2p.train(d2p.create_model("residual_net", seed=0), *data(),
                  checkpoint_dir=ck + "-one", checkpoint_every=2, **KW)
    except KeyboardInterrupt:
        pass
    del os.environ["D2LPORT_TEST_KILL"]
    net = d2p.create_model("residual_net", seed=0)
    h = distributed.train(net, *data(), devices=2, checkpoint_dir=ck + "-one", resume=True,
                          **KW)
    save("resumed_from_one_device", d2p.get_weights(net), history=h.epochs)

    # 5. BatchNorm: per-replica statistics by default, the global batch's with sync_bn
    def bn_net():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((28, 28, 1)),
                                 Conv(8, 5, batch_norm=True, name="conv"),
                                 MaxPool2D(2, 2, name="pool"),
                                 Dense(10, flatten=True, name="fc")], name="tiny_bn")
    net = bn_net()
    h = d2p.train(net, *data(), **KW)
    save("bn_one_device", values(net), history=h.epochs)
    for sync in (True, False):
        net, losses = bn_net(), []
        h = distributed.train(net, *data(), devices=2, sync_bn=sync, step_losses=losses, **KW)
        save(f"bn_sync{int(sync)}", values(net), losses=losses, history=h.epochs,
             synchronized=[l.synchronized for l in net._flatten_layers()
                           if isinstance(l, keras.layers.BatchNormalization)])

    # 6. errors that need two replicas, and that the fix each suggests works
    def error(**kw):
        try:
            distributed.train(d2p.create_model("residual_net", seed=0), *kw.pop("loaders"),
                              devices=2, max_steps=1, **KW, **kw)
        except (DistributedError, ValueError) as err:
            return f"{type(err).__name__}: {err}"
        return None
    res["small_batch"] = error(loaders=data(batch=1, limit=8))
    res["small_batch_fixed"] = error(loaders=data(batch=2, limit=8))
    res["uneven"] = error(loaders=data(batch=64, limit=65))
    fix = int(res["uneven"].split("--batch-size ")[1].split(")")[0])
    res["uneven_fixed"] = error(loaders=data(batch=fix, limit=65))
    try:
        distributed.setup(3)
    except DistributedError as err:
        res["three"] = str(err)
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump(res, f)
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf_runs")
    proc = subprocess.run([sys.executable, "-c", RUNS, str(out)], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "runs.json").read_text())
    weights = {name: dict(np.load(out / f"{name}.npz")) for name in res
               if (out / f"{name}.npz").exists()}
    return res, weights


def _max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in b)


def _assert_weights(a, b, atol=W_ATOL, rtol=W_RTOL):
    assert a.keys() == b.keys()
    for key in b:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=rtol, err_msg=key)


def test_two_replicas_give_the_one_device_losses_and_weights(runs):
    res, w = runs
    assert res["replicas"] == 2                  # setup(2) before TensorFlow started: 2 CPUs
    one, two = res["replicas1"], res["replicas2"]
    assert one["device"] == "1 x cpu (MirroredStrategy)"
    assert two["device"] == "2 x cpu (MirroredStrategy)"
    assert len(one["losses"]) == len(two["losses"]) == STEPS
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=LOSS_RTOL)
    # the ordinary one-device train() is the reference for the weights
    _assert_weights(w["replicas2"], w["one_device"])
    _assert_weights(w["replicas1"], w["one_device"])
    # the history: the same numbers (test accuracy: every test example counted once)
    ref = res["one_device"]["history"][0]
    for got in (one["history"][0], two["history"][0]):
        assert got["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL)
        assert got["train_acc"] == ref["train_acc"] and got["test_acc"] == ref["test_acc"]
    # the run trained (the weights moved far more than the tolerance)
    assert two["losses"][-1] < two["losses"][0]


def test_checkpoint_and_resume_under_data_parallelism(runs):
    res, w = runs
    assert res["interrupted"]
    assert res["saved"] == ["ckpt-00000002", "ckpt-00000003"]   # every 2 steps, and Ctrl-C
    resumed = res["resumed"]
    assert len(resumed["losses"]) == STEPS - 3                  # steps 4 and 5 only
    np.testing.assert_allclose(resumed["losses"], res["replicas2"]["losses"][3:],
                               rtol=LOSS_RTOL)
    _assert_weights(w["resumed"], w["replicas2"])
    for name in ("resumed", "resumed_one_device", "resumed_from_one_device"):
        got, ref = res[name]["history"][0], res["replicas2"]["history"][0]
        assert got["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL), name
        assert (got["train_acc"], got["test_acc"]) == (ref["train_acc"], ref["test_acc"]), name
    # a data-parallel checkpoint resumes in the one-device train(), and the reverse
    _assert_weights(w["resumed_one_device"], w["one_device"])
    _assert_weights(w["resumed_from_one_device"], w["one_device"])


def test_sync_bn_gives_the_one_device_batchnorm_and_the_default_does_not(runs):
    res, w = runs
    ref = w["bn_one_device"]
    sync, local = w["bn_sync1"], w["bn_sync0"]
    # moving statistics included (variables 2-5 of the conv: gamma, beta, mean, variance)
    _assert_weights(sync, ref, atol=1e-4, rtol=1e-4)
    assert res["bn_sync1"]["history"][0]["loss"] == pytest.approx(
        res["bn_one_device"]["history"][0]["loss"], rel=1e-4)
    # per-replica statistics (Keras' default under a strategy): another computation
    assert _max_diff(local, ref) > 1e-3
    assert abs(res["bn_sync0"]["losses"][0] - res["bn_sync1"]["losses"][0]) > 1e-4
    # sync_bn is for the run only: the layers are as they were afterwards
    assert res["bn_sync1"]["synchronized"] == [False]


def test_errors_that_need_two_replicas_say_what_works(runs):
    res, _ = runs
    assert "batch size 1 is smaller than the 2 replicas" in res["small_batch"]
    assert "--batch-size 2" in res["small_batch"]
    assert res["small_batch_fixed"] is None                     # the suggested fix trains
    assert "last training batch has 1 example(s) for 2 replicas" in res["uneven"]
    assert res["uneven_fixed"] is None
    assert res["three"].startswith("TensorFlow already initialised 2 CPU device(s), 3 asked "
                                   "for: call d2lport.tensorflow.distributed.setup(3) before")


# ------------------------------------------------------------------ in this process
def test_bad_devices_and_a_setup_too_late_are_one_line_errors():
    import tensorflow as tf
    from d2lport.tensorflow import distributed
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ValueError, match=r"give the number of devices this process trains "
                                             r"on, a whole number >= 1"):
            distributed.setup(bad)
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the too-late messages are about logical CPU devices")
    tf.constant(1.0) + 1.0                           # TensorFlow has started now, if not before
    have = len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(DistributedError) as err:
        distributed.setup(have + 1)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"TensorFlow already initialised {have} CPU device(s), {have + 1} "
                          f"asked for: call d2lport.tensorflow.distributed.setup({have + 1}) "
                          "before anything runs a TensorFlow op")
    assert "fresh process" in msg                   # the runs fixture shows that fix working
    assert distributed.setup(1).num_replicas_in_sync == 1       # what it has: fine
    role = Role(rank=0, world=2, master_port=dist.free_port())
    with pytest.raises(DistributedError, match=r"rank 0 of 2: TensorFlow already started, and "
                                               r"MultiWorkerMirroredStrategy must be created "
                                               r"before its first op"):
        distributed.setup(1, role)                  # refused before waiting for rank 1
    with pytest.raises(DistributedError, match="one CPU device per process"):
        distributed.setup(2, role)


def test_the_commands_for_several_machines():
    from d2lport.tensorflow import distributed
    assert distributed.MODE == "devices" and distributed.node_processes(Role(), 2) == []
    cmd = distributed.command(["train", "residual_net", "-f", "tensorflow"], 1, nodes=2,
                              node_rank=1, master="10.0.0.1:29500", python="py")
    assert cmd == ["py", "-m", "d2lport.cli", "train", "residual_net", "-f", "tensorflow",
                   "--devices", "1", "--nodes", "2", "--node-rank", "1", "--master",
                   "10.0.0.1:29500"]
    hint = distributed.multinode_hint(["train", "residual_net", "-f", "tensorflow"], 2, 2)
    assert "machine 1: d2lport train residual_net -f tensorflow --devices" in hint
    assert "--nodes 2 --node-rank 1 --master HOST:PORT" in hint


# ------------------------------------------------------------------ several processes
# Two processes, each a "machine" (RANK 0/1 of WORLD_SIZE 2, rank 0 at 127.0.0.1): first a
# run through the Python API that must agree with the runs above, then - in the same
# processes, to start TensorFlow twice and not four times - `d2lport train` (the CLI, after
# distributed.setup: until the CLI calls setup before it builds the model, a process must
# do it first) with rank 1 killed after its third step.
PAIR = textwrap.dedent(r'''
    import json, os, sys
    out = sys.argv[1]
    from d2lport.tensorflow import distributed
    distributed.setup(1)             # RANK, WORLD_SIZE, MASTER_*: MultiWorkerMirroredStrategy
    import numpy as np
    import d2lport.tensorflow as d2p
    from d2lport.cli import main
    rank = os.environ["RANK"]
    net, losses = d2p.create_model("residual_net", seed=0), []
    h = distributed.train(net, *d2p.load_data_fashion_mnist(64, limit=301, seed=0),
                          num_epochs=1, lr=0.05, momentum=0.9, seed=0, devices=1,
                          step_losses=losses, checkpoint_dir=os.path.join(out, "ck"),
                          checkpoint_every=2, peer_timeout=120)
    np.savez(os.path.join(out, f"weights{rank}.npz"), **d2p.get_weights(net))
    with open(os.path.join(out, f"run{rank}.json"), "w") as f:
        json.dump({"losses": losses, "history": h.epochs, "device": h.device}, f)
    if rank == "1":
        os.environ["D2LPORT_TEST_KILL"] = "step:3"
    sys.exit(main(["train", "residual_net", "-f", "tensorflow", "--limit", "301",
                   "--batch-size", "64", "--epochs", "1", "--lr", "0.05", "--momentum", "0.9",
                   "--devices", "1"]))
''')


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf_pair")
    port = dist.free_port()
    procs = [subprocess.Popen([sys.executable, "-c", PAIR, str(out)], cwd=ROOT,
                              env=_env(**Role(rank=r, world=2, master_port=port).env()),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    outs = [None, None]
    # (the pipes are drained by threads: a full pipe must not stall a process)
    threads = [threading.Thread(target=lambda r=r: outs.__setitem__(r, procs[r].communicate()))
               for r in range(2)]
    for t in threads:
        t.start()
    died, deadline = None, time.monotonic() + 900
    while procs[0].poll() is None and time.monotonic() < deadline:
        if died is None and procs[1].poll() is not None:
            died = time.monotonic()
        time.sleep(0.05)
    ended = time.monotonic()
    if died is None and procs[1].poll() is not None:
        died = ended                                  # both ended within one poll
    for p in procs:
        if p.poll() is None:
            p.kill()
    for t in threads:
        t.join(60)
    return out, procs, outs, (ended - died if died is not None else None)


def test_two_machines_on_localhost_train_and_agree(pair, runs):
    out, procs, outs, _ = pair
    res, w = runs
    assert (out / "run1.json").exists(), outs[1][0][-2000:] + outs[1][1][-3000:]
    r0, r1 = (json.loads((out / f"run{r}.json").read_text()) for r in range(2))
    w0, w1 = (dict(np.load(out / f"weights{r}.npz")) for r in range(2))
    assert r0["device"] == "2 x cpu (MultiWorkerMirroredStrategy, 2 processes x 1 cpu)"
    # the two processes agree: the same all-reduced numbers, the same weights
    assert r0["losses"] == r1["losses"]
    numbers = ("epoch", "loss", "train_acc", "test_acc")        # not the timings
    assert [{k: e[k] for k in numbers} for e in r0["history"]] == \
        [{k: e[k] for k in numbers} for e in r1["history"]]
    _assert_weights(w1, w0, atol=0, rtol=0)
    # and they computed what two devices in one process and one device compute
    np.testing.assert_allclose(r0["losses"], res["replicas2"]["losses"], rtol=LOSS_RTOL)
    _assert_weights(w0, w["one_device"])
    # rank 0 wrote the checkpoints (every 2 steps, the epoch's end); no worker leftovers
    saved = sorted(p.name for p in (out / "ck").iterdir())
    assert saved == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000005"]
    state = json.loads((out / "ck" / "ckpt-00000005" / "state.json").read_text())
    assert state["history"] == r0["history"]


def test_a_killed_process_ends_the_other_with_peer_lost(pair):
    out, procs, outs, after = pair
    (out0, err0), (out1, err1) = outs
    assert (out / "run0.json").exists(), out0[-2000:] + err0[-3000:]   # the first run ended
    assert procs[1].returncode == -9, err1[-2000:]             # SIGKILL after step 3
    assert procs[0].returncode == EXIT_PEER_LOST, out0[-2000:] + err0[-3000:]
    assert after is not None and after < PEER_LOST_WITHIN
    lines = [line for line in err0.splitlines()
             if line.startswith("d2lport: error: rank 0: lost another replica")]
    assert len(lines) == 1, err0[-3000:]
    assert "Resume the whole run with --resume" in lines[0]
