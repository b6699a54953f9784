"""PyTorch data parallelism (``d2lport.torch.distributed``): DistributedDataParallel over
gloo between CPU processes on the loopback interface, started by torchrun's machinery.

The runs: ``residual_net`` (no BatchNorm, no dropout) on a seeded subset of 297 real
Fashion-MNIST examples, global batch 64 (five steps an epoch; the last batch of 41 splits
21/20 between two replicas, so the loss weights of unequal shards are exercised), SGD with
momentum 0.9, two epochs, a checkpoint every 2 steps.  Three multi-process runs are shared
by the tests: two "machines" (two torchrun agents, ``--nnodes 2``, one process each), a
2-process torchrun run whose rank 1 is killed after step 3, and a 2-process resume of the
killed run.  Every child process runs with ``OMP_NUM_THREADS=1`` (2 cores here).

Tolerances.  A 2-replica step is the one-device step computed in another order: each
replica's mean over its shard, weighted, summed by gloo's all-reduce and halved by DDP,
against one mean over the whole batch; float32 sums in another order differ in the last
bits (measured here: losses within 2.4e-7 absolute / 1.1e-7 relative, weights within
2.3e-8 absolute after 5 steps).  The tests allow ``LOSS_RTOL`` = 1e-5 relative on losses
and ``WEIGHT_ATOL`` = 1e-5 absolute on weights (whose entries are ~0.05-0.4), far below
what a wrong loss weight (the uneven last batch: 21/20 instead of 20.5/20.5, about 1e-3
on its step's gradient) or a lost replica's shard would change.  Runs of the same world
size compute the same operations in the same order and are compared exactly.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from d2lport import distributed as core
from d2lport.distributed import EXIT_PEER_LOST, DistributedError, Role

pytestmark = pytest.mark.torch

# PyTorch is imported when this module's first test runs, not when pytest collects it:
# `make test-tf` / `test-mxnet` / `test-jax` collect this file too (and deselect it by its
# marker) with torch forbidden or absent.
torch = d2p = distributed = tiny_bn_net = None


@pytest.fixture(scope="module", autouse=True)
def _pytorch():
    global torch, d2p, distributed
    import torch
    from d2lport import torch as d2p
    from d2lport.torch import distributed
    exec(TINY_BN, globals())

ROOT = Path(__file__).resolve().parents[1]
LIMIT, BATCH, EPOCHS, EVERY = 297, 64, 2, 2
STEPS = 2 * 5
RUN = dict(num_epochs=EPOCHS, lr=0.01, momentum=0.9, seed=0, progress=False)
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5
KILL_DEADLINE = 15.0        # s from rank 1's death to the end of the whole torchrun run
STALL_TIMEOUT = 10.0        # peer_timeout of the stalled-peer test

# A tiny BatchNorm net (28 px), built the same way in the children and here.
TINY_BN = r"""
import torch
from torch import nn
def tiny_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 5, stride=2), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 10))
"""

# One replica of a run (started by torchrun or by d2lport.distributed.launch).  argv: the
# output folder and the JSON of train()'s keyword arguments plus "hook" ("kill:K": rank 1
# is SIGKILLed after step K through D2LPORT_TEST_KILL, set in rank 1's environment only;
# "stop:K": rank 1 stops itself with SIGSTOP there) and "bn" (then train the tiny BN net too).
CHILD = TINY_BN + r"""
import json, os, signal, sys, time
from pathlib import Path
import numpy as np
from d2lport import checkpoint
from d2lport import torch as d2p
from d2lport.torch import distributed
out, kw = Path(sys.argv[1]), json.loads(sys.argv[2])
rank = int(os.environ["RANK"])
hook, bn = kw.pop("hook", None), kw.pop("bn", False)
if hook and rank == 1:
    what, at = hook.split(":")
    if what == "kill":
        os.environ["D2LPORT_TEST_KILL"] = "step:" + at
    after_step = checkpoint.after_step
    def hooked(step):
        if step == int(at):
            (out / "hooked_at").write_text(repr(time.time()))
            if what == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
        after_step(step)
    checkpoint.after_step = hooked
net = d2p.create_model("residual_net", seed=0)
train_iter, test_iter = d2p.load_data_fashion_mnist(%(batch)d, limit=%(limit)d, seed=0)
losses = []
h = distributed.train(net, train_iter, test_iter, step_losses=losses, **kw)
np.savez(out / f"w{rank}.npz", **d2p.get_weights(net))
record = {"losses": losses, "history": h.to_records(), "device": h.device}
if bn:          # a second run in the same processes: the default (per-replica) BatchNorm
    train_iter, test_iter = d2p.load_data_fashion_mnist(%(batch)d, limit=128, seed=0)
    record["bn_losses"] = []
    distributed.train(tiny_bn_net(), train_iter, test_iter, num_epochs=1, lr=0.1, seed=0,
                      max_steps=2, progress=False, step_losses=record["bn_losses"])
(out / f"r{rank}.json").write_text(json.dumps(record))
print("DONE", rank, h.device, flush=True)
""" % dict(batch=BATCH, limit=LIMIT)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "D2LPORT_TEST_KILL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", D2LPORT_PROGRESS="0", **extra)
    return env


def _script(folder: Path) -> Path:
    path = folder / "child.py"
    path.write_text(CHILD)
    return path


def _torchrun(cmd, script: Path, out: Path, kw: dict):
    """``command()``'s torchrun command with the child script in place of ``-m d2lport.cli
    <argv>`` (the CLI's own --devices path is the lead's)."""
    i = cmd.index("d2lport.cli")
    assert cmd[i - 1] == "-m" and cmd[1:3] == ["-m", "torch.distributed.run"], cmd
    return cmd[:i - 1] + [str(script), str(out), json.dumps(kw)]


def _run_all(cmds, timeout=300):
    """Run the commands side by side, each in its own process group (torchrun's workers
    included), all killed if they outlast ``timeout``; [(returncode, output)]."""
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for cmd in cmds]
    try:
        deadline = time.monotonic() + timeout
        outs = [p.communicate(timeout=max(deadline - time.monotonic(), 1))[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outs)]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _result(folder, rank):
    return json.loads((Path(folder) / f"r{rank}.json").read_text())


def _same_history(a, b):
    for x, y in zip(a, b, strict=True):
        assert {k: x[k] for k in ("epoch", "loss", "train_acc", "test_acc")} == \
               {k: y[k] for k in ("epoch", "loss", "train_acc", "test_acc")}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _data(limit=LIMIT, batch=BATCH):
    return d2p.load_data_fashion_mnist(batch, limit=limit, seed=0)


# ------------------------------------------------------------------ the shared runs
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One device: the package's ordinary train() (final weights, history, its checkpoints)
    and a one-replica run of distributed.train (per-step losses)."""
    d = tmp_path_factory.mktemp("reference")
    net = d2p.create_model("residual_net", seed=0)
    history = d2p.train(net, *_data(), device="cpu", checkpoint_dir=d / "ck",
                        checkpoint_every=EVERY, **RUN)
    one = d2p.create_model("residual_net", seed=0)
    losses = []
    one_history = distributed.train(one, *_data(), step_losses=losses, **RUN)
    bn_losses = []
    distributed.train(tiny_bn_net(), *_data(128), num_epochs=1, lr=0.1, seed=0, max_steps=2,
                      progress=False, step_losses=bn_losses)
    return dict(weights=d2p.get_weights(net), history=history.to_records(), ck=d / "ck",
                one_weights=d2p.get_weights(one), one_history=one_history.to_records(),
                one_device=one_history.device, losses=losses, bn_losses=bn_losses)


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory):
    """Two torchrun agents on this machine standing in for two machines (--nnodes 2, one
    process each, static rendezvous on 127.0.0.1): the commands command() gives."""
    d = tmp_path_factory.mktemp("two_machines")
    script, port = _script(d), core.free_port()
    kw = dict(RUN, checkpoint_dir=str(d / "ck"), checkpoint_every=EVERY, bn=True)
    done = _run_all([
        _torchrun(distributed.command(["train", "residual_net", "-f", "torch"], 1, nodes=2,
                                      node_rank=k, master=f"127.0.0.1:{port}"),
                  script, d, kw) for k in range(2)])
    assert [code for code, _ in done] == [0, 0], done
    return d


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """torchrun --standalone --nproc-per-node 2, rank 1 SIGKILLed after step 3."""
    d = tmp_path_factory.mktemp("killed")
    kw = dict(RUN, checkpoint_dir=str(d / "ck"), checkpoint_every=EVERY, hook="kill:3",
              peer_timeout=60)
    cmd = _torchrun(distributed.command(["train", "residual_net"], 2), _script(d), d, kw)
    [(code, output)] = _run_all([cmd])
    return dict(dir=d, code=code, ended=time.time(), output=output)


# ------------------------------------------------------------------ 1. equality
def test_one_replica_is_the_one_device_train_exactly(reference):
    # DDP with one process adds nothing to the arithmetic: bit for bit the ordinary train()
    assert reference["one_device"] == "1 x cpu (DistributedDataParallel, gloo)"
    assert _max_diff(reference["one_weights"], reference["weights"]) == 0.0
    _same_history(reference["one_history"], reference["history"])
    assert len(reference["losses"]) == STEPS


def test_two_replicas_give_the_one_device_losses_and_weights(reference, two_machines):
    mine = _result(two_machines, 0)
    assert mine["device"] == "2 x cpu (DistributedDataParallel, gloo, 2 machines)"
    ref, got = np.array(reference["losses"]), np.array(mine["losses"])
    assert got.shape == (STEPS,)
    weights = _weights(two_machines / "w0.npz")
    print(f"2 replicas vs 1: losses max abs {np.abs(got - ref).max():.2e}, max rel "
          f"{(np.abs(got - ref) / ref).max():.2e}; weights max abs "
          f"{_max_diff(weights, reference['weights']):.2e}")
    np.testing.assert_allclose(got, ref, rtol=LOSS_RTOL, atol=0)
    assert _max_diff(weights, reference["weights"]) < WEIGHT_ATOL
    # and the run changed the weights far more than the tolerance (the test can fail)
    assert _max_diff(reference["weights"], d2p.get_weights(
        d2p.create_model("residual_net", seed=0))) > 100 * WEIGHT_ATOL
    for a, b in zip(mine["history"], reference["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL)
        assert (a["train_acc"], a["test_acc"]) == (b["train_acc"], b["test_acc"])


def test_uneven_shards_are_weighted_by_their_size():
    # the last batch (41 examples) splits 21/20: weights 21*2/41 and 20*2/41, whose
    # average of the two shards' mean gradients is the batch's mean gradient
    assert LIMIT % BATCH == 41 and core.shard_bounds(41, 0, 2) == (0, 21)
    g = np.random.default_rng(0).normal(size=41)
    w = [core.loss_weight(21, 41, 2), core.loss_weight(20, 41, 2)]
    assert (w[0] * g[:21].mean() + w[1] * g[21:].mean()) / 2 == pytest.approx(g.mean())


# ------------------------------------------------------------------ 3. two machines
def test_two_machines_on_localhost_agree(two_machines):
    r0, r1 = _result(two_machines, 0), _result(two_machines, 1)
    assert r0["losses"] == r1["losses"] and r0["history"] == r1["history"]
    w0, w1 = _weights(two_machines / "w0.npz"), _weights(two_machines / "w1.npz")
    assert _max_diff(w0, w1) == 0.0
    # rank 0 alone wrote the checkpoints (both "machines" share this folder here)
    assert sorted(p.name for p in (two_machines / "ck").iterdir()) == \
        ["ckpt-00000007", "ckpt-00000009", "ckpt-00000010"]


def test_command_and_multinode_hint():
    argv = ["train", "residual_net", "-f", "torch", "--devices", "2"]
    assert distributed.command(argv, 2, python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "d2lport.cli", *argv]
    assert distributed.command(argv, 4, nodes=2, node_rank=1, master="10.0.0.1:29500",
                               python="py") == [
        "py", "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1",
        "--nproc-per-node", "4", "--master-addr", "10.0.0.1", "--master-port", "29500",
        "-m", "d2lport.cli", *argv]
    hint = distributed.multinode_hint(argv, 4, 2)
    assert "--node-rank 0" in hint and "--node-rank 1" in hint and "HOST:" not in hint
    assert "--master-addr HOST --master-port 29500" in hint
    assert distributed.node_processes(Role(), 2) == [] and distributed.MODE == "processes"
    with pytest.raises(DistributedError, match="need --master HOST:PORT"):
        distributed.command(argv, 2, nodes=2)


# ------------------------------------------------------------------ 2. a lost replica
def test_killed_rank_ends_the_run_with_one_line_on_rank_0(killed):
    out, code = killed["output"], killed["code"]
    hooked = float((killed["dir"] / "hooked_at").read_text())
    # torchrun's agent reports the failed run with status 1 and rank 1's SIGKILL
    assert code == 1, out[-3000:]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s*\n\s*exitcode\s*: -9", out), out[-3000:]
    # rank 0: one d2lport line, ending with EXIT_PEER_LOST (gloo's "connection closed", or
    # the agent's SIGTERM if its 0.1 s monitor got there first)
    lines = [x for x in out.splitlines() if x.startswith("d2lport: rank 0:")]
    assert len(lines) == 1, out[-3000:]
    assert f"exit status {EXIT_PEER_LOST}" in lines[0] and "--resume" in lines[0]
    assert "lost contact" in lines[0] or "SIGTERM" in lines[0]
    assert "d2lport/torch/distributed.py" not in out        # no worker's traceback
    if re.search(r"rank\s*: 0 \(local_rank: 0\)", out):      # when the agent saw it end
        assert re.search(rf"rank\s*: 0 \(local_rank: 0\)\s*\n\s*exitcode\s*: "
                         rf"{EXIT_PEER_LOST} ", out)
    print(f"rank 1 killed -> torchrun's run over in {killed['ended'] - hooked:.2f} s")
    assert killed["ended"] - hooked < KILL_DEADLINE
    assert not (killed["dir"] / "r0.json").exists()


def test_stalled_rank_is_given_up_after_peer_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP) after step 3: no connection closes, gloo's timeout
    (peer_timeout) ends rank 0."""
    port, script = core.free_port(), _script(tmp_path)
    kw = dict(RUN, num_epochs=1, hook="stop:3", peer_timeout=STALL_TIMEOUT)
    procs = [subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), json.dumps(kw)], cwd=ROOT,
        env=_env(**Role(rank=r, world=2, local_rank=r, local_world=2,
                        master_port=port).env()),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        out = procs[0].communicate(timeout=240)[0]
        ended = time.time()
    finally:
        for p in procs:           # rank 1 is stopped; rank 0 only if it outlived 240 s
            if p.poll() is None:
                p.kill()
                p.communicate()
    hooked = float((tmp_path / "hooked_at").read_text())
    assert procs[0].returncode == EXIT_PEER_LOST, out[-3000:]
    line = [x for x in out.splitlines() if x.startswith("d2lport: rank 0:")]
    assert len(line) == 1 and "lost contact" in line[0], out[-3000:]
    print(f"rank 1 stopped -> rank 0 gone in {ended - hooked:.2f} s")
    assert STALL_TIMEOUT - 1 < ended - hooked < STALL_TIMEOUT + 10


# ------------------------------------------------------------------ 4. checkpoints
def test_resume_of_the_killed_run_equals_the_uninterrupted_run(killed, two_machines,
                                                               tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(killed["dir"] / "ck", ck)
    assert [p.name for p in ck.iterdir()] == ["ckpt-00000002"]
    port, script = core.free_port(), _script(tmp_path)
    kw = dict(RUN, checkpoint_dir=str(ck), checkpoint_every=EVERY, resume=True)
    code = core.launch([[sys.executable, str(script), str(tmp_path), json.dumps(kw)]] * 2,
                       [{**_env(), **Role(rank=r, world=2, local_rank=r, local_world=2,
                                          master_port=port).env()} for r in range(2)])
    assert code == 0
    for rank in (0, 1):
        assert _max_diff(_weights(tmp_path / f"w{rank}.npz"),
                         _weights(two_machines / "w0.npz")) == 0.0
    _same_history(_result(tmp_path, 0)["history"], _result(two_machines, 0)["history"])
    assert sorted(p.name for p in ck.iterdir()) == \
        ["ckpt-00000007", "ckpt-00000009", "ckpt-00000010"]


def test_data_parallel_checkpoint_resumes_in_a_one_device_run(killed, reference, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(killed["dir"] / "ck", ck)
    net = d2p.create_model("residual_net", seed=0)
    history = d2p.train(net, *_data(), device="cpu", checkpoint_dir=ck, resume=True,
                        checkpoint_every=EVERY, **RUN)
    assert _max_diff(d2p.get_weights(net), reference["weights"]) < WEIGHT_ATOL
    assert history.test_acc == [e["test_acc"] for e in reference["history"]]


def test_one_device_checkpoint_resumes_in_a_data_parallel_run(reference, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(reference["ck"], ck)
    (ck / "ckpt-00000010").rename(ck / "x")       # resume from step 9 (of 10)
    shutil.rmtree(ck / "x")
    net = d2p.create_model("residual_net", seed=0)
    distributed.train(net, *_data(), checkpoint_dir=ck, resume=True, checkpoint_every=EVERY,
                      **RUN)
    assert _max_diff(d2p.get_weights(net), reference["weights"]) == 0.0


# ------------------------------------------------------------------ 5. BatchNorm
def test_batchnorm_statistics_are_per_replica_by_default(reference, two_machines):
    """The engine's default: each replica normalises with its own shard's statistics, so a
    BN net's very first loss already differs from one device's (unlike residual_net's)."""
    one, two = np.array(reference["bn_losses"]), np.array(_result(two_machines, 0)["bn_losses"])
    assert one.shape == two.shape == (2,)
    rel = np.abs(two - one) / one
    print("BN: 2 replicas vs one device, relative loss differences", rel)
    assert rel[0] > 5 * LOSS_RTOL and rel[1] > 5 * LOSS_RTOL
    assert _result(two_machines, 1)["bn_losses"] == list(two)


def test_sync_bn_on_cpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("SyncBatchNorm runs on CUDA")
    with pytest.raises(DistributedError, match=r"^sync_bn: PyTorch .*GPUs only.*without "
                                               r"--sync-bn, or on GPUs$"):
        distributed.train(tiny_bn_net(), *_data(128), num_epochs=1, sync_bn=True)
    assert not torch.distributed.is_initialized()


def test_the_engine_itself_refuses_sync_bn_on_cpu():
    """Why the error above: nn.SyncBatchNorm's own forward refuses CPU tensors (when this
    fails, a later PyTorch synchronises on CPU: drop the error and test it instead)."""
    if torch.cuda.is_available():
        pytest.skip("SyncBatchNorm runs on CUDA")
    import torch.distributed as dist
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(tiny_bn_net()).train()
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            net(torch.zeros(4, 1, 28, 28))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ 6. errors
@pytest.mark.parametrize("devices", [0, -1, 1.5, "2", True])
def test_bad_devices(devices):
    with pytest.raises(DistributedError, match=r"devices must be a whole number >= 1"):
        distributed.train(tiny_bn_net(), *_data(128), devices=devices)
    with pytest.raises(DistributedError, match=r"devices must be a whole number >= 1"):
        distributed.setup(devices)


def test_several_devices_in_a_lone_process_names_the_command():
    with pytest.raises(DistributedError) as err:
        distributed.train(tiny_bn_net(), *_data(128), devices=2)
    # the suggested command is command()'s, which the torchrun tests above run
    prefix = " ".join(distributed.command([], 2)[1:-2])
    assert prefix == "-m torch.distributed.run --standalone --nproc-per-node 2"
    assert f"`python {prefix} -m d2lport.cli train" in str(err.value)
    assert "\n" not in str(err.value) and not torch.distributed.is_initialized()


def test_devices_must_match_the_processes_on_this_machine():
    role = Role(rank=0, world=2, local_rank=0, local_world=2)
    with pytest.raises(DistributedError, match=r"devices=3 but this run has 2 process"):
        distributed.train(tiny_bn_net(), *_data(128), devices=3, role=role)


def test_batch_smaller_than_replicas_and_its_fix():
    role = Role(rank=0, world=2, local_rank=0, local_world=2)
    with pytest.raises(DistributedError, match=r"batch size 1 is smaller than the 2 replicas"
                                               r".*use --batch-size 2 or more") as err:
        distributed.train(tiny_bn_net(), *_data(128, batch=1), role=role)
    assert "\n" not in str(err.value)
    # a last batch of 1 example for 2 replicas (129 = 2 x 64 + 1): the suggested batch works
    with pytest.raises(DistributedError, match=r"last training batch has 1 example") as err:
        distributed.train(tiny_bn_net(), *_data(129, batch=64), role=role)
    fixed = int(re.search(r"--batch-size (\d+)", str(err.value)).group(1))
    loader = core.shard_loader(_data(129, batch=fixed)[0], 0, 2)
    assert len(next(iter(loader))[1]) == fixed - fixed // 2
    assert not torch.distributed.is_initialized()


def test_nothing_to_set_up_and_a_group_of_another_size_is_refused():
    """PyTorch needs no set-up before it starts (setup() only checks); what can be "too
    late" is a process group of another size already running in this process."""
    import torch.distributed as dist
    assert distributed.setup(2) == 2
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(DistributedError, match=r"a process group of 1 \(rank 0\) is "
                                                   r"already initialised.*destroy_process"):
            distributed.train(tiny_bn_net(), *_data(128),
                              role=Role(rank=0, world=2, local_rank=0, local_world=2))
    finally:
        dist.destroy_process_group()


def test_linear_scaling_rule_sets_the_rate():
    """lr 0.05 for batches of 32, global batch 64, no warm-up: the run of lr 0.1."""
    runs = []
    for lr, scaling in ((0.05, core.LinearScaling(32)), (0.1, None)):
        net, losses = tiny_bn_net(), []
        distributed.train(net, *_data(128), num_epochs=1, lr=lr, seed=0, max_steps=2,
                          progress=False, lr_scaling=scaling, step_losses=losses)
        runs.append(({k: v.detach().numpy() for k, v in net.state_dict().items()}, losses))
    assert runs[0][1] == runs[1][1]
    assert _max_diff(runs[0][0], runs[1][0]) == 0.0
