"""Data-parallel training in the MXNet backend (issue 14): ``d2lport.mxnet.distributed``.

Equality: ``residual_net`` (no BatchNorm, no dropout) on 297 Fashion-MNIST examples, global
batch 64, SGD with momentum 0.9, seed 0: the batches are 64, 64, 64, 64, 41, so the last one
splits unevenly (21/20 on two replicas, 11/10/10/10 on four; 64 itself 22/21/21 on three).
A data-parallel run gives the loss of every step and the final weights of a one-device run
to float32 rounding: relative 1e-5 on the losses, 1e-5 relative + 1e-6 absolute on the
weights.  Why not bit-equal: every replica's gradient is a sum over its own shard, the
kvstore adds the replicas' sums (a different order of float32 additions than one sum over the
whole batch), and a replica's loss is its mean times ``loss_weight`` (another rounding);
measured here 2.4e-7 on the losses, 4e-8 on the weights (of order 0.1), far below the
tolerance, while averaging the shards' mean gradients without ``loss_weight`` (the uneven
last batch) moves the weights by 2.4e-4.  Replicas of one run, a resumed run against an
uninterrupted one, and the replicas against one device summing the same shards' gradients,
are bit-equal (the same operations in the same order).  Only the first epoch is compared
with one device: in the second, a ReLU input within rounding of zero flips, and any two
ways of summing a batch's gradient (two shards on one device too) drift apart by 1e-5
(losses) and 5e-4 (weights).

Several "machines" are processes on the loopback interface: MXNet's ``dist_sync`` parameter
server (scheduler, servers, workers), started by ``train`` from torchrun's variables.  The
killed-peer test asserts the survivor's own exit status and time: a StepWatchdog of
``PEER`` seconds (MXNet's dist_sync never gives up by itself).

Imports neither torch nor TensorFlow nor JAX.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from d2lport import checkpoint as C
from d2lport import distributed as core
from d2lport.distributed import EXIT_PEER_LOST, DistributedError, Role

pytestmark = pytest.mark.mxnet

# Imported by the fixture below when a test of this file runs, not when pytest collects it:
# the other frameworks' sessions (`make test-torch`, `make test-core` in .venv-mxnet with
# --forbid-imports mxnet) collect this file too and must not import MXNet.
d2p = mx = D = None


@pytest.fixture(autouse=True, scope="module")
def _mxnet():
    global d2p, mx, D
    try:
        import d2lport.mxnet as d2p
    except ImportError as err:          # MXNet lives in .venv-mxnet
        pytest.skip(str(err))
    import mxnet as mx
    from d2lport.mxnet import distributed as D

ROOT = Path(__file__).resolve().parent.parent
MODEL, BATCH, LIMIT = "residual_net", 64, 297
RUN = dict(num_epochs=1, lr=0.1, momentum=0.9, seed=0, progress=False)
LOSS_RTOL = 1e-5
W_RTOL, W_ATOL = 1e-5, 1e-6
PEER = 6.0                      # the killed-peer test's watchdog (seconds)


def _data(batch=BATCH, limit=LIMIT):
    return d2p.load_data_fashion_mnist(batch, limit=limit, seed=0)


def _close_weights(got, want):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=W_RTOL, atol=W_ATOL, err_msg=key)


def _same_weights(got, want):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.fixture(scope="module")
def reference():
    """The one-device run: d2lport.mxnet.train's final weights and history, and the loss of
    every step from a plain Gluon loop (the same model, data and optimizer)."""
    net = d2p.create_model(MODEL, seed=0)
    history = d2p.train(net, *_data(), device="cpu", **RUN)
    weights = d2p.get_weights(net)
    plain = d2p.create_model(MODEL, seed=0)
    trainer = mx.gluon.Trainer(list(plain.collect_params().values()), "sgd",
                               {"learning_rate": 0.1, "momentum": 0.9})
    losses = []
    for X, y in _data()[0]:
        with mx.autograd.record():
            loss = d2p.loss_fn(plain(X), y)
        loss.backward()
        trainer.step(y.shape[0])
        losses.append(float(loss.mean().asnumpy()[0]))
    _close_weights(d2p.get_weights(plain), weights)       # the loop is train()'s
    return losses, weights, history


# ------------------------------------------------------------------------ 1. equality
@pytest.mark.parametrize("devices,kvstore", [(2, "device"), (3, "local")])
def test_replicas_give_the_one_device_loss_per_step_and_weights(reference, devices, kvstore):
    assert LIMIT % BATCH % devices          # the last batch splits unevenly
    losses, weights, history = reference
    net = d2p.create_model(MODEL, seed=0)
    got = []
    hist = D.train(net, *_data(), devices=devices, kvstore=kvstore, step_losses=got, **RUN)
    assert len(got) == len(losses) == 5
    np.testing.assert_allclose(got, losses, rtol=LOSS_RTOL, atol=0)
    _close_weights(d2p.get_weights(net), weights)
    assert hist.device == f"{devices} x cpu (Gluon Trainer, kvstore {kvstore})"
    assert abs(hist.loss[0] - history.loss[0]) <= 1e-5 * history.loss[0]
    for key in ("train_acc", "test_acc"):       # the same examples counted, once each
        assert abs(getattr(hist, key)[0] - getattr(history, key)[0]) <= 1 / LIMIT, key
    # afterwards on the first context only, like after d2lport.mxnet.train
    assert {str(c) for p in net.collect_params().values() for c in p.list_ctx()} == {"cpu(0)"}


def test_without_loss_weight_the_uneven_batch_would_differ(reference):
    """The test above can fail: averaging the shards' mean gradients (no loss_weight) on the
    uneven last batch (21/20) moves the weights by far more than the tolerance."""
    _, weights, _ = reference
    net = d2p.create_model(MODEL, seed=0)
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net.collect_params().reset_ctx(ctxs)
    trainer = mx.gluon.Trainer(list(net.collect_params().values()), "sgd",
                               {"learning_rate": 0.1, "momentum": 0.9}, kvstore="device",
                               update_on_kvstore=False)
    for X, y in _data()[0]:
        n = y.shape[0]
        with mx.autograd.record():
            losses = [d2p.loss_fn(net(X[a:b].as_in_context(c)), y[a:b].as_in_context(c)).mean()
                      for c, (a, b) in zip(ctxs, [core.shard_bounds(n, r, 2) for r in range(2)])]
        mx.autograd.backward(losses)
        trainer.step(2)
    got = d2p.get_weights(net)
    worst = max(float(np.max(np.abs(got[k] - weights[k]) - W_RTOL * np.abs(weights[k])))
                for k in weights)
    assert worst > 100 * W_ATOL


# --------------------------------------------------------------- 2./3. several machines
WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from d2lport import mxnet as d2p
    from d2lport.mxnet import distributed as D
    from d2lport.distributed import DistributedError, Role
    out, devices, peer = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    role = Role.from_env()
    net = d2p.create_model("residual_net", seed=0)
    data = d2p.load_data_fashion_mnist(64, limit=297, seed=0)
    losses = []
    h = D.train(net, *data, num_epochs=1, lr=0.1, momentum=0.9, seed=0, progress=False,
                devices=devices, step_losses=losses, peer_timeout=peer)
    np.savez(f"{out}/rank{role.rank}.npz", **d2p.get_weights(net))
    try:
        D.train(net, *data, devices=devices)
        again = "no error"
    except DistributedError as err:
        again = str(err)
    json.dump({"losses": losses, "history": h.to_records(), "device": h.device,
               "again": again}, open(f"{out}/rank{role.rank}.json", "w"))
""")


def _worker_env(rank, port, **extra):
    return dict(Role(rank=rank, world=2, master_addr="127.0.0.1", master_port=port).env(),
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                D2LPORT_PROGRESS="0", **extra)


def _alive(pgid):
    """Processes (not zombies) of process group ``pgid`` (Linux /proc), or None elsewhere."""
    if not Path("/proc/self/stat").exists():
        return None
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_two_machines_on_localhost_train_and_agree_with_one_device(tmp_path, reference):
    """Two worker processes (2 CPU contexts each: 4 replicas) with MXNet's scheduler and
    servers, started by train() from torchrun's variables: both end with the same history,
    step losses and bit-equal weights, those of the one-device run; ps-lite runs once per
    process."""
    losses, weights, _ = reference
    port = core.free_port()
    cmd = [sys.executable, "-c", WORKER, str(tmp_path), "2", "60"]
    status = core.launch([cmd, cmd], [_worker_env(0, port), _worker_env(1, port)], grace=5)
    assert status == 0
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    got = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["history"][0]["loss"] == ranks[1]["history"][0]["loss"]
    assert ranks[0]["history"][0]["test_acc"] == ranks[1]["history"][0]["test_acc"]
    _same_weights(got[1], got[0])
    np.testing.assert_allclose(ranks[0]["losses"], losses, rtol=LOSS_RTOL, atol=0)
    _close_weights(got[0], weights)
    assert ranks[0]["device"] == "4 x cpu: 2 machines x 2 (Gluon Trainer, kvstore dist_sync)"
    assert "starts once per process" in ranks[0]["again"]


def test_a_killed_machine_ends_the_other_with_exit_status_peer_lost(tmp_path):
    """Rank 1 is SIGKILLed after step 3; rank 0's watchdog ends it with one line on stderr
    and EXIT_PEER_LOST within PEER seconds (+ slack for a loaded machine), and no scheduler
    or server process is left behind."""
    port = core.free_port()
    cmd = [sys.executable, "-c", WORKER, str(tmp_path), "1", str(PEER)]
    procs = [subprocess.Popen(cmd, env={**os.environ, **_worker_env(r, port, **extra)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
             for r, extra in ((0, {}), (1, {"D2LPORT_TEST_KILL": "step:3"}))]
    try:
        deadline = time.monotonic() + 240
        while procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        died = time.monotonic()
        assert procs[1].returncode == -9, procs[1].communicate()[1][-2000:]
        _, err = procs[0].communicate(timeout=PEER + 60)
        waited = time.monotonic() - died
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    assert procs[0].returncode == EXIT_PEER_LOST, err[-2000:]
    assert (f"d2lport: rank 0: no step finished in {PEER:g} s: another replica of this run "
            "has died or stalled; stopping (exit status 4)") in err
    assert PEER - 3 <= waited <= PEER + 15, waited
    assert not (tmp_path / "rank0.json").exists()
    end = time.monotonic() + 10
    while any(_alive(p.pid) for p in procs) and time.monotonic() < end:
        time.sleep(0.2)
    assert not any(_alive(p.pid) for p in procs), [_alive(p.pid) for p in procs]


# ------------------------------------------------------------------ 4. checkpoints
def _train_dp(ckdir=None, devices=2, epochs=2, **extra):
    net = d2p.create_model(MODEL, seed=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        hist = D.train(net, *_data(), devices=devices, checkpoint_dir=ckdir,
                       **dict(RUN, num_epochs=epochs, checkpoint_every=2), **extra)
    return hist, d2p.get_weights(net), out.getvalue()


def _train_one(ckdir, epochs=2, **extra):
    net = d2p.create_model(MODEL, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        hist = d2p.train(net, *_data(), device="cpu", checkpoint_dir=ckdir,
                         **dict(RUN, num_epochs=epochs, checkpoint_every=2), **extra)
    return hist, d2p.get_weights(net)


def test_ctrl_c_checkpoint_and_resume_equal_the_uninterrupted_run(tmp_path, monkeypatch,
                                                                   reference):
    """2 epochs of 5 steps on 2 replicas, checkpoints every 2 steps: a Ctrl-C after step 3
    saves ckpt-3, and resuming on 2 replicas gives the uninterrupted run bit for bit.  The
    same checkpoint resumes in a one-device run, and a one-device checkpoint in a
    data-parallel run: after the first epoch both are the one-device run's to float rounding
    (compared there: later in this run a ReLU input within rounding of 0 flips and two ways
    of summing a batch's gradient drift apart, see the test below)."""
    want_hist, want, _ = _train_dp(tmp_path / "full")
    assert [p.name for p in sorted((tmp_path / "full").iterdir())] == [
        "ckpt-00000007", "ckpt-00000009", "ckpt-00000010"]
    monkeypatch.setenv("D2LPORT_TEST_KILL", "int:3")
    with pytest.raises(KeyboardInterrupt):
        _train_dp(tmp_path / "dp")
    with pytest.raises(KeyboardInterrupt):
        _train_one(tmp_path / "one")
    monkeypatch.delenv("D2LPORT_TEST_KILL")
    for d in ("dp", "one"):
        path, state = C.Checkpointer(tmp_path / d, {}).latest()
        assert (path.name, state.epoch, state.batch, state.step) == ("ckpt-00000003", 0, 3, 3)
    shutil.copytree(tmp_path / "dp", tmp_path / "dp-to-one")
    hist, got, printed = _train_dp(tmp_path / "dp", resume=True)
    assert "resuming from" in printed and "epoch 0, batch 3 (step 3)" in printed
    _same_weights(got, want)
    for key in ("loss", "train_acc", "test_acc"):
        assert getattr(hist, key) == getattr(want_hist, key), key
    _close_weights(_train_one(tmp_path / "dp-to-one", epochs=1, resume=True)[1], reference[1])
    _close_weights(_train_dp(tmp_path / "one", epochs=1, resume=True)[1], reference[1])


def test_replicas_equal_one_device_summing_the_same_shards_bit_for_bit():
    """What the kvstore adds up is exactly a one-device loop that accumulates the gradients
    of the same two shards (grad_req 'add', the same loss weights): bit-equal weights.  The
    float32 difference to one device is the order of summation, nothing else."""
    net = d2p.create_model(MODEL, seed=0)
    D.train(net, *_data(), devices=2, **RUN)
    loop = d2p.create_model(MODEL, seed=0)
    params = list(loop.collect_params().values())
    for p in params:
        p.grad_req = "add"
    trainer = mx.gluon.Trainer(params, "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    for X, y in _data()[0]:
        n = y.shape[0]
        for p in params:
            p.zero_grad()
        for r in range(2):
            a, b = core.shard_bounds(n, r, 2)
            with mx.autograd.record():
                loss = d2p.loss_fn(loop(X[a:b]), y[a:b]).mean() * core.loss_weight(b - a, n, 2)
            loss.backward()
        trainer.step(2)
    _same_weights(d2p.get_weights(net), d2p.get_weights(loop))


def test_linear_scaling_sets_the_rate_of_the_global_batch_with_warm_up():
    """LinearScaling(32) turns lr 0.05 into 0.05 * 64 / 32 = 0.1 for the global batch of 64:
    the run of lr 0.1 bit for bit; with 2 warm-up steps the first step (rate 0.05) differs."""
    runs = {}
    for name, lr, scaling in (("plain", 0.1, None), ("scaled", 0.05, core.LinearScaling(32)),
                              ("warm", 0.05, core.LinearScaling(32, warmup_steps=2))):
        losses = []
        D.train(d2p.create_model(MODEL, seed=0), *_data(), devices=2, step_losses=losses,
                **dict(RUN, lr=lr), lr_scaling=scaling, max_steps=3)
        runs[name] = losses
    assert runs["scaled"] == runs["plain"]
    assert runs["warm"][0] == runs["plain"][0] and runs["warm"][1] != runs["plain"][1]


# ------------------------------------------------------------------------ 5. BatchNorm
def _tiny_bn():
    """conv -> BatchNorm -> ReLU -> pool -> dense, 28 px, seeded, hybridized like the
    package's networks."""
    class TinyBN(mx.gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.conv = mx.gluon.nn.Conv2D(4, 3, in_channels=1)
            self.bn = mx.gluon.nn.BatchNorm(in_channels=4)
            self.fc = mx.gluon.nn.Dense(10, in_units=4 * 13 * 13)

        def hybrid_forward(self, F, x):
            x = F.Activation(self.bn(self.conv(x)), act_type="relu")
            return self.fc(F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max"))

    mx.random.seed(0)
    net = TinyBN()
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def test_batch_norm_per_device_by_default_and_sync_bn_refused_where_mxnet_lacks_it():
    data = _data(64, 256)
    one, two = [], []
    D.train(_tiny_bn(), *data, devices=1, step_losses=one, **RUN)
    net = _tiny_bn()
    D.train(net, *data, devices=2, step_losses=two, **RUN)
    # per-device statistics: the first step's loss already differs from the whole batch's
    assert abs(two[0] - one[0]) > 1e-4
    assert type(net.bn) is mx.gluon.nn.BatchNorm
    with pytest.raises(DistributedError, match=r"sync_bn on 2 CPU contexts: MXNet's "
                                               r"SyncBatchNorm hangs on CPU contexts .* train "
                                               r"on CPU without sync_bn"):
        D.train(net, *data, devices=2, sync_bn=True, **RUN)
    with pytest.raises(DistributedError, match=r"sync_bn across machines: MXNet's "
                                               r"SyncBatchNorm synchronises the devices of one "
                                               r"process only"):
        D.train(net, *data, devices=1, sync_bn=True, role=Role(rank=0, world=2), **RUN)
    D.train(net, *data, devices=1, sync_bn=True, max_steps=1, **RUN)   # one device: plain BN


def test_running_statistics_are_averaged_over_the_replicas():
    net = _tiny_bn()
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net.collect_params().reset_ctx(ctxs)
    for i, c in enumerate(ctxs):
        net.bn.running_mean.data(c)[:] = float(i + 1)
    engine = D._Engine(Role(), ctxs, "device", 10.0)
    D._average_aux(list(net.collect_params().values()), engine, 2)
    for c in ctxs:
        np.testing.assert_array_equal(net.bn.running_mean.data(c).asnumpy(), [1.5] * 4)


def test_sync_batch_norm_swap_shares_the_parameters_and_is_undone():
    """The swap train(sync_bn=True) makes on GPUs, checked in inference (no synchronisation
    there, so it runs on a CPU): the same Parameters, the same outputs, BatchNorm again after."""
    from mxnet.gluon.contrib.nn import SyncBatchNorm
    net = _tiny_bn()
    x = mx.nd.random.uniform(shape=(3, 1, 28, 28))
    before, params = net(x).asnumpy(), list(net.collect_params().values())
    swaps = D._use_sync_batch_norm(net, 2)
    assert isinstance(net.bn, SyncBatchNorm) and net.bn._kwargs["ndev"] == 2
    assert all(a is b for a, b in zip(net.collect_params().values(), params))
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-6)
    D._restore_batch_norm(swaps)
    assert type(net.bn) is mx.gluon.nn.BatchNorm
    np.testing.assert_array_equal(net(x).asnumpy(), before)


# ------------------------------------------------------------------------- 6. errors
@pytest.mark.parametrize("devices,message", [
    (0, r"devices=0: give the number of devices \(1 or more\)"),
    (True, r"devices=True: give a whole number of devices"),
    (2.5, r"devices=2.5: give a whole number of devices"),
    ("tpu:0", r"device 'tpu:0': name a device as 'cpu:0', 'gpu:1'"),
    (["cpu:0", "cpu:0"], r"a device is named twice"),
    ([], r"devices=\[\]: name at least one device"),
    ("gpu:0", r"device gpu\(0\): this MXNet sees 0 GPU\(s\) \(a CPU-only build\); use CPU "
              r"contexts"),
])
def test_bad_devices_say_what_to_give(devices, message):
    if mx.context.num_gpus():
        pytest.skip("GPU messages differ")
    with pytest.raises(DistributedError, match=message):
        D.setup(devices)


def test_setup_is_never_too_late_and_its_contexts_train():
    """MXNet needs nothing before it is imported (this process has trained already): the
    suggested devices=2 / ['cpu:0', 'cpu:1'] work at any time."""
    assert D.setup(2) == D.setup(["cpu:0", "cpu:1"]) == D.setup("cpu:0,cpu:1") == \
        [mx.cpu(0), mx.cpu(1)]
    assert D.setup() == [mx.cpu(0)]


def test_a_batch_smaller_than_the_replicas_is_refused_and_the_fix_works():
    net = d2p.create_model(MODEL, seed=0)
    with pytest.raises(DistributedError, match=r"batch size 1 is smaller than the 2 replicas: "
                                               r"every replica needs examples; use "
                                               r"--batch-size 2 or more"):
        D.train(net, *_data(1, 8), devices=2, **RUN)
    with pytest.raises(DistributedError, match=r"the last training batch has 1 example\(s\) "
                                               r"for 2 replicas") as err:
        D.train(net, *_data(4, 9), devices=2, **RUN)
    fix = int(str(err.value).split("--batch-size ")[1].split(")")[0])
    assert D.train(net, *_data(2, 8), devices=2, max_steps=1, **RUN).epochs
    assert D.train(net, *_data(fix, 9), devices=2, max_steps=1, **RUN).epochs
    with pytest.raises(DistributedError, match=r"kvstore 'dist_sync': one process \(no "
                                               r"--nodes\) uses one of device, local"):
        D.train(net, *_data(), devices=2, kvstore="dist_sync", **RUN)
    with pytest.raises(ValueError, match=r"peer_timeout must be a number of seconds > 0"):
        D.train(net, *_data(), devices=2, peer_timeout=-1, **RUN)
    with pytest.raises(TypeError, match=r"list is not a d2lport loader"):
        D.train(net, [], [], devices=2, **RUN)


def test_node_processes_commands_and_hint():
    role = Role(rank=0, world=2, master_addr="127.0.0.1", master_port=9123)
    first = D.node_processes(role, 2, python="python")
    assert [p.role for p in first] == ["scheduler", "server"]
    assert first[0].env == {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9123",
                            "DMLC_NUM_SERVER": "2", "DMLC_NUM_WORKER": "2",
                            "DMLC_NODE_HOST": "127.0.0.1", "DMLC_ROLE": "scheduler"}
    assert first[1].shell().endswith("DMLC_ROLE=server python -c 'import mxnet'")
    assert [p.role for p in D.node_processes(Role(rank=1, world=2), 2)] == ["server"]
    assert D.node_processes(Role(), 2) == []
    argv = ["train", MODEL, "-f", "mxnet", "--devices", "2"]
    assert D.command(argv, 2, 2, 1, "10.0.0.1:29500", python="py") == [
        "py", "-m", "d2lport.cli", "train", MODEL, "-f", "mxnet", "--devices", "2",
        "--nodes", "2", "--node-rank", "1", "--master", "10.0.0.1:29500"]
    hint = D.multinode_hint(argv, 2, 2)
    assert (f"machine 1: d2lport train {MODEL} -f mxnet --devices 2 --nodes 2 --node-rank 1 "
            "--master HOST:PORT") in hint and hint.count("--devices") == 2
