"""Data-parallel training for the MXNet backend: a multi-context Gluon ``Trainer`` with a
kvstore (D2L's "Concise Implementation for Multiple GPUs"), and MXNet's parameter server
(``dist_sync``) across machines.

``from d2lport.mxnet import distributed`` (the one-device path, :func:`d2lport.mxnet.train`,
never imports this module).  MODE "devices": ONE process drives all the devices of its
machine; several processes (one per machine) only with ``--nodes``.

**One machine.**  The network's parameters get one copy per context
(``net.collect_params().reset_ctx([ctx0, ctx1, ...])``); each global batch is cut into one
contiguous shard per context (:func:`d2lport.distributed.shard_bounds`, sizes differing by at
most one: no example repeated, none left out), every context runs forward and backward on its
shard, and ``Trainer.step`` sums the contexts' gradients in the kvstore (``'device'``, Gluon's
default, or ``'local'``) and applies the same update to every copy.  Each replica's loss is
its mean loss times :func:`d2lport.distributed.loss_weight` and ``trainer.step(R)`` divides
the sum of the ``R`` replicas' gradients by ``R``, so the update is the one of the whole
batch's mean gradient, uneven last batch included (one ``trainer.step`` argument for every
step).  On a CPU the contexts are ``mx.cpu(0), mx.cpu(1), ...``: logical devices of MXNet's
engine that share the machine's cores (real data parallelism across processes or GPUs,
the same code).  ``devices``: a number (the first N GPUs, or N CPU contexts on a machine
without GPUs), a list of contexts or strings (``["cpu:0", "cpu:1"]``, ``"gpu:0,gpu:1"``);
default: every GPU, else one CPU context (MXNet sees one CPU device; ask for more).

**Several machines** (``role.world > 1``: torchrun's variables, which ``d2lport train
--nodes M --node-rank K --master HOST:PORT`` sets): MXNet's ``dist_sync`` kvstore, a
parameter server (ps-lite) with a scheduler, servers and workers, which learn their role
from ``DMLC_*`` environment variables.  :func:`train` translates the role: it starts this
machine's extra processes itself (:func:`node_processes`: machine 0 the scheduler, listening
on ``MASTER_ADDR:MASTER_PORT``, and every machine one server; each is ``python -c "import
mxnet"`` with ``DMLC_ROLE=scheduler|server``: importing MXNet runs that node), becomes a
worker (``DMLC_ROLE=worker``) and stops them when the run ends (they also end when their
worker process dies).  Every worker drives its own contexts; the gradients are summed over
the contexts of each machine, then over the machines by the servers; the optimizer runs on
every worker (``update_on_kvstore=False``: the same update everywhere, optimizer state
checkpointed like on one device, learning rate changes with warm-up).  Replica ``i`` of
machine ``k`` is replica ``k * N + i`` of ``R = machines * N``.  At the start rank 0's
weights are broadcast through the kvstore.  ps-lite starts once per process: one
multi-machine run per process (the CLI's case).  On one machine for a try, ``MASTER_ADDR``
127.0.0.1: every node then announces 127.0.0.1 (``DMLC_NODE_HOST``); on a cluster ps-lite
picks the machine's address (``DMLC_INTERFACE`` / ``DMLC_NODE_HOST`` choose another).

**A lost machine.**  ``dist_sync`` never gives up: a worker whose peer died waits forever in
the next push/pull (ps-lite's heartbeats can count dead nodes; nothing acts on it).  So
every worker runs a :class:`d2lport.distributed.StepWatchdog`: when no step finishes for
``peer_timeout`` seconds (default :data:`DEFAULT_PEER_TIMEOUT`; evaluation and the chief's
checkpoint writing are paused out, the exchange after them is watched), it prints one line
on stderr and exits with :data:`d2lport.distributed.EXIT_PEER_LOST`; its scheduler/server
processes follow within a second.  The start (all machines connecting to the scheduler) is
watched the same way with :data:`START_TIMEOUT`.  ``peer_timeout`` must exceed the longest step
(the first one builds the graph) and the chief's checkpoint writes, which the other
machines wait for.  One machine (one process) has no peers: ``peer_timeout`` is unused.

**BatchNorm.**  MXNet's default under data parallelism: every context normalises with the
mean and variance of its own shard (per-device statistics), and keeps its own running
statistics.  This module averages the running statistics over all replicas (kvstore) at the
end of every epoch, before evaluation, so that every replica evaluates, saves and returns
one model.  ``sync_bn=True`` swaps every ``nn.BatchNorm`` for Gluon's
``contrib.nn.SyncBatchNorm`` (same parameters) during the run, on GPU contexts: statistics
over all the GPUs of this process, which MXNet computes as the unweighted mean of the
devices' means and mean squares, i.e. the global batch's exactly when every shard has the
same size (an uneven last batch, shards one example apart, is close, not exact).  Two
limits raise :class:`~d2lport.distributed.DistributedError`: several machines (MXNet
synchronises the devices of one process only), and CPU contexts: there MXNet 1.9.1's
SyncBatchNorm hangs in the backward pass (each device's part waits for the others while
holding one of the engine's temporary workspaces, which all CPU contexts share: four by
default, ``MXNET_CPU_TEMP_COPY``; the other device's part queues for the held one; seen
here with conv -> BatchNorm -> ReLU -> dense on cpu(0), cpu(1), any thread count, oneDNN on
or off, hybridized or not).

**Checkpoints** (``checkpoint_dir``): the one-device format (``model.params`` with Gluon's
parameter names and ``Trainer.save_states``; weights of the first context, running
statistics averaged over the contexts like ``save_parameters``), written by rank 0 only and
read by every machine on ``resume``: the directory must be the same on all of them (a
shared file system).  The machines check that they resumed at the same step, with the same
batch size and data.  A data-parallel checkpoint resumes in a one-device
:func:`d2lport.mxnet.train` run and vice versa (the optimizer state is per parameter, the
data position in global batches).

After :func:`train` the parameters are on the first context only, as after
:func:`d2lport.mxnet.train` (the weights of that context, identical on all of them), and
BatchNorm layers are ``nn.BatchNorm`` again.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import math
import os
import shlex
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.util import is_np_array

from .. import checkpoint
from .. import distributed as core
from ..common import History, Progress, progress_default
from ..distributed import (DistributedError, LinearScaling, Role, StepWatchdog, check_batches,
                           loss_weight, shard_bounds)
from .data import to_ctx
from .train import _PARAMS, _STATES, _correct, _load_payload, _logits, _optimizer, _scalar, loss_fn

__all__ = ["MODE", "DEFAULT_PEER_TIMEOUT", "START_TIMEOUT", "NodeProcess", "command",
           "contexts", "dmlc_env", "multinode_hint", "node_processes",
           "setup", "train"]

MODE = "devices"
DEFAULT_PEER_TIMEOUT = 300.0   # seconds without a finished step before a machine gives up
START_TIMEOUT = 600.0          # seconds for every machine to connect to the scheduler
STOP_TIMEOUT = 30.0            # seconds the scheduler/server get to end after the run
ERROR_WAIT = 10.0              # seconds an erring worker lets its exchanges in flight finish
KVSTORES = ("device", "local")                 # one process
DIST_KVSTORES = ("dist_sync", "dist_sync_device")   # several (one per machine)
ENGINE = "Gluon Trainer"

# The kvstore keys of this module (Gluon's Trainer uses 0 .. parameters - 1).
_STATS_KEY, _EVAL_KEY, _AGREE_KEY, _AUX_KEY = 1 << 20, (1 << 20) + 1, (1 << 20) + 2, 1 << 21

_DIST_STARTED = False          # ps-lite runs once per process


# ------------------------------------------------------------------------------ devices
def _parse_one(device) -> mx.Context:
    if isinstance(device, mx.Context):
        return device
    if not isinstance(device, str):
        raise DistributedError(f"device {device!r}: name a device as 'cpu:0', 'gpu:1' or an "
                               "mx.Context")
    kind, _, index = device.strip().lower().partition(":")
    if kind in ("cpu", "gpu", "cuda") and (index or "0").isdigit():
        return mx.cpu(int(index or 0)) if kind == "cpu" else mx.gpu(int(index or 0))
    raise DistributedError(f"device {device!r}: name a device as 'cpu:0', 'gpu:1' or an "
                           "mx.Context")


def contexts(devices=None) -> List[mx.Context]:
    """The contexts ``devices`` names: a number N (the first N GPUs; N CPU contexts
    ``mx.cpu(0..N-1)`` on a machine without GPUs), a list of contexts or strings, a string
    ``"cpu:0,cpu:1"``; None: every GPU, else ``[mx.cpu(0)]``."""
    gpus = mx.context.num_gpus()
    if devices is None:
        return [mx.gpu(i) for i in range(gpus)] or [mx.cpu(0)]
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, (bool, np.bool_)):
        n = int(devices)
        if n < 1:
            raise DistributedError(f"devices={devices}: give the number of devices (1 or more) "
                                   "or a list of them, e.g. devices=2 or ['cpu:0', 'cpu:1']")
        if gpus:
            if n > gpus:
                raise DistributedError(f"devices={n}, but this machine has {gpus} GPU(s): use "
                                       f"devices={gpus} or fewer (or CPU contexts, "
                                       "devices=['cpu:0', 'cpu:1'])")
            return [mx.gpu(i) for i in range(n)]
        return [mx.cpu(i) for i in range(n)]
    if isinstance(devices, str):
        devices = [d for d in devices.split(",") if d.strip()]
    elif isinstance(devices, mx.Context):
        devices = [devices]
    if isinstance(devices, (bool, float)) or not hasattr(devices, "__iter__"):
        raise DistributedError(f"devices={devices!r}: give a whole number of devices (e.g. 2) "
                               "or a list of them (['cpu:0', 'cpu:1'])")
    ctxs = [_parse_one(d) for d in devices]
    if not ctxs:
        raise DistributedError("devices=[]: name at least one device, e.g. devices=2")
    keys = [(c.device_type, c.device_id) for c in ctxs]
    if len(set(keys)) < len(keys):
        raise DistributedError(f"devices {', '.join(map(str, ctxs))}: a device is named twice; "
                               "every replica needs its own (cpu:0, cpu:1, ...)")
    if len({c.device_type for c in ctxs}) > 1:
        raise DistributedError(f"devices {', '.join(map(str, ctxs))}: mix of CPU and GPU "
                               "contexts; the replicas run in lockstep at the slowest one's "
                               "pace: use one kind")
    for c in ctxs:
        if c.device_type == "gpu" and c.device_id >= gpus:
            raise DistributedError(f"device {c}: this MXNet sees {gpus} GPU(s) "
                                   f"({'a CPU-only build' if not gpus else 'gpu:0..'}); use "
                                   "CPU contexts, devices=['cpu:0', 'cpu:1']")
    return ctxs


def setup(devices=None, sync_bn: bool = False) -> List[mx.Context]:
    """The contexts of ``devices`` (:func:`contexts`), checked for what the run asks of them.

    MXNet needs nothing before it is imported for data parallelism: ``mx.cpu(1)`` or
    ``mx.gpu(1)`` exist at any time, so there is no "too late" here (unlike TensorFlow's
    logical devices or JAX's host device count).  ``sync_bn`` on several CPU contexts
    raises :class:`~d2lport.distributed.DistributedError`: MXNet's SyncBatchNorm hangs there
    (see the module docstring)."""
    ctxs = contexts(devices)
    cpus = sum(c.device_type == "cpu" for c in ctxs)
    if sync_bn and cpus > 1:
        raise DistributedError(
            f"sync_bn on {cpus} CPU contexts: MXNet's SyncBatchNorm hangs on CPU contexts (its "
            "per-device parts wait for each other while holding a temporary workspace, and "
            "all CPU contexts share MXNet's few workspaces), so it is for GPUs only; train on "
            "CPU without sync_bn (per-device BatchNorm statistics), or on GPUs")
    return ctxs


# ------------------------------------------------------------------- the processes of a run
@dataclass(frozen=True)
class NodeProcess:
    """One extra process of MXNet's parameter server on this machine: ``role`` is
    ``"scheduler"`` or ``"server"``; run ``command`` with ``env`` added to the environment
    (:meth:`shell` gives the line to type)."""
    role: str
    command: List[str]
    env: Dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
                        + [shlex.quote(c) for c in self.command])


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def dmlc_env(role: Role) -> Dict[str, str]:
    """The ``DMLC_*`` variables every node of ``role``'s run shares (``DMLC_ROLE`` apart):
    the scheduler at ``MASTER_ADDR:MASTER_PORT``, one server and one worker per machine."""
    env = {"DMLC_PS_ROOT_URI": role.master_addr, "DMLC_PS_ROOT_PORT": str(role.master_port),
           "DMLC_NUM_SERVER": str(role.world), "DMLC_NUM_WORKER": str(role.world)}
    if _loopback(role.master_addr):
        env["DMLC_NODE_HOST"] = "127.0.0.1"    # every node on this machine's loopback
    return env


def node_processes(role: Role, devices=None, python: Optional[str] = None) -> List[NodeProcess]:
    """The extra processes machine ``role.rank`` runs beside its worker (``dist_sync``):
    machine 0 the scheduler (it listens on ``MASTER_PORT``) and a server, every other
    machine a server; none for a one-machine run.  :func:`train` starts them itself; this is
    what it starts (and what a cluster launcher would start instead)."""
    if role.world < 2:
        return []
    python = python or sys.executable
    base = dmlc_env(role)
    cmd = [python, "-c", "import mxnet"]     # DMLC_ROLE=scheduler/server: the import runs it
    procs = [NodeProcess("scheduler", cmd, {**base, "DMLC_ROLE": "scheduler"})] \
        if role.rank == 0 else []
    return procs + [NodeProcess("server", cmd, {**base, "DMLC_ROLE": "server"})]


# Run by train(): the node, ended when the worker that started it is gone (a watchdog's
# os._exit or a SIGKILL leaves no chance to stop it).
_SUPERVISED = """
import os, threading, time
parent = int(os.environ["D2LPORT_PARENT_PID"])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
import mxnet
"""


def command(argv: Sequence[str], devices, nodes: int = 1, node_rank: int = 0,
            master: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """This machine's command: one process drives this machine's contexts and starts its scheduler/server processes itself (:func:`d2lport.distributed.machine_command`)."""
    return core.machine_command(argv, devices, nodes, node_rank, master, python)


def multinode_hint(argv: Sequence[str], devices, nodes: int) -> str:
    """The commands to type on each of ``nodes`` machines."""
    args = " ".join(shlex.quote(a) for a in core.strip_options(argv))
    lines = [f"MXNet dist_sync, {nodes} machine(s) x {devices} device(s): one process per "
             f"machine; on machine K (K = 0..{nodes - 1}), with HOST:PORT machine 0's address "
             "and a free port there (MXNet's scheduler listens on it):"]
    for k in range(nodes):
        lines.append(f"  machine {k}: d2lport {args} --devices {devices} --nodes {nodes} "
                     f"--node-rank {k} --master HOST:PORT")
    lines.append("(each starts MXNet's server for its machine, machine 0 also the scheduler; "
                 "servers and workers listen on ports ps-lite picks, so the machines must "
                 "reach each other on any port; DMLC_INTERFACE=eth0 or DMLC_NODE_HOST=ADDRESS "
                 "chooses the address a machine announces.  Every machine needs the data and "
                 "a --checkpoint-dir they all see.  On one machine, for a try: HOST 127.0.0.1 "
                 f"and a free port, e.g. {core.free_port()})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the engine
class _NoWatchdog:
    def beat(self):
        pass

    pause = resume = beat

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _nd(x):
    """A legacy NDArray view of an MXNet array (the kvstore's and concat's type)."""
    return x.as_nd_ndarray() if isinstance(x, mx.np.ndarray) else x


def _row(*values):
    """One (k,) float32 legacy NDArray from k one-element arrays (on the first one's
    context)."""
    return mx.nd.concat(*[_nd(v).reshape((1,)).astype("float32") for v in values], dim=0)


class _Engine:
    """The kvstore side of a run: one process (``'device'``/``'local'``, the Trainer's own
    kvstore) or ``dist_sync`` with this machine's scheduler/server processes and the
    watchdog.  :meth:`reduce` sums a small vector over the machines (in place)."""

    def __init__(self, role: Role, ctxs, kvtype: str, peer_timeout: float):
        self.role, self.ctxs, self.kvtype = role, ctxs, kvtype
        self.dist = role.world > 1
        self.kv = None
        self.children: List[subprocess.Popen] = []
        self.saved_env: Dict[str, Optional[str]] = {}
        self.keys = set()
        self.closed = False
        self.watchdog = (StepWatchdog(peer_timeout, role.rank) if self.dist else _NoWatchdog())
        if self.dist:
            try:
                self._start()
            except BaseException:
                self.close(ok=False)
                raise

    @property
    def trainer_kvstore(self):
        return self.kv if self.dist else self.kvtype

    def _start(self) -> None:
        global _DIST_STARTED
        if _DIST_STARTED:
            raise DistributedError(
                "MXNet's dist_sync kvstore (ps-lite) starts once per process and this one "
                "has run it already: run each multi-machine training in a fresh process "
                "(d2lport train ... --nodes M does)")
        _DIST_STARTED = True
        env = dmlc_env(self.role)
        for p in node_processes(self.role, len(self.ctxs)):
            child_env = {k: v for k, v in os.environ.items()
                         if not k.startswith("DMLC_") and k != "D2LPORT_TEST_KILL"}
            child_env.update(p.env, D2LPORT_PARENT_PID=str(os.getpid()))
            self.children.append(subprocess.Popen([p.command[0], "-c", _SUPERVISED],
                                                  env=child_env))
        for key, value in {**env, "DMLC_ROLE": "worker"}.items():
            self.saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        with StepWatchdog(START_TIMEOUT, self.role.rank,
                          what="start-up (every machine connecting to MXNet's scheduler at "
                               f"{self.role.master})"):
            self.kv = mx.kv.create(self.kvtype)
        if self.kv.num_workers != self.role.world:
            raise DistributedError(f"MXNet's scheduler counts {self.kv.num_workers} machines, "
                                   f"this run {self.role.world}: is another run using "
                                   f"{self.role.master}?")

    def describe(self) -> str:
        kind = self.ctxs[0].device_type
        n, world = len(self.ctxs), self.role.world
        where = f"{n * world} x {kind}" + (f": {world} machines x {n}" if self.dist else "")
        kv = self.kvtype if (self.dist or n > 1) else "none"
        return f"{where} ({ENGINE}, kvstore {kv})"

    def reduce(self, key: int, vec):
        """``vec`` (a legacy NDArray) summed over the machines (the same on every one);
        one process: ``vec`` itself."""
        if not self.dist:
            return vec
        if key not in self.keys:
            self.kv.init(key, mx.nd.zeros(vec.shape, ctx=vec.context))
            self.keys.add(key)
        self.kv.pushpull(key, vec)      # in place: the sum over the machines
        return vec

    def close(self, ok: bool) -> None:
        """End the parameter server.  After a finished run every worker meets the others in
        the kvstore's last barrier (freeing it) and rank 0 stops the servers.  After an
        error this worker leaves without the barrier: it lets the exchanges in flight finish
        for :data:`ERROR_WAIT` seconds (the other machines may still serve them), frees the
        kvstore if they did and abandons it if not (freeing waits for every exchange, which
        would be forever without the peers), then stops its own scheduler/server."""
        if not self.dist or self.closed:
            return
        self.closed = True
        kv, self.kv = self.kv, None
        if kv is not None:
            if not ok:
                done = threading.Event()
                threading.Thread(target=lambda: (mx.nd.waitall(), done.set()),
                                 daemon=True).start()
                if done.wait(ERROR_WAIT):
                    mx.base._LIB.MXKVStoreSetBarrierBeforeExit(kv.handle, ctypes.c_int(0))
                else:
                    kv.handle = None         # MXKVStoreFree(NULL) deletes nothing
            gone = weakref.ref(kv)
            del kv
            gc.collect()
            if gone() is not None and ok:   # a reference left somewhere: freed at exit
                print("d2lport: the dist_sync kvstore is still referenced; MXNet's servers "
                      "stop when this process ends", file=sys.stderr)
        deadline = time.monotonic() + (STOP_TIMEOUT if ok else 0.0)
        for child in self.children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------ BatchNorm
def _batch_norms(block, path=()):
    """(ancestors as (parent, name) pairs, parent, name, layer) of every nn.BatchNorm."""
    for name, child in list(block._children.items()):
        here = path + ((block, name),)
        if isinstance(child, gluon.nn.BatchNorm):
            from mxnet.gluon.contrib.nn import SyncBatchNorm
            if not isinstance(child, SyncBatchNorm):
                yield here, block, name, child
        else:
            yield from _batch_norms(child, here)


def _put_child(parent, name, child) -> None:
    """Make ``child`` ``parent``'s child ``name`` (Gluon refuses a plain setattr from a
    subclass back to its base class, so the old one is removed first)."""
    if getattr(parent, name, None) is parent._children.get(name):
        if not isinstance(child, type(getattr(parent, name))):
            delattr(parent, name)
        setattr(parent, name, child)
    else:                               # a child without an attribute (HybridSequential)
        parent.register_child(child, name)


def _refresh(path) -> None:
    """Drop the cached graphs of the ancestors of a swapped layer (a HybridBlock's cached
    graph holds its children's operators): re-setting a child clears its parent's."""
    for parent, name in path:
        child = parent._children[name]
        if getattr(parent, name, None) is child:
            setattr(parent, name, child)


def _use_sync_batch_norm(net, n: int):
    """Swap every nn.BatchNorm of ``net`` for a SyncBatchNorm over ``n`` devices sharing its
    Parameters; returns what :func:`_restore_batch_norm` needs to undo it."""
    from mxnet.gluon.contrib.nn import SyncBatchNorm
    swaps = []
    for path, parent, name, bn in list(_batch_norms(net)):
        kw = bn._kwargs
        if kw.get("axis", 1) != 1:
            raise DistributedError(f"BatchNorm {bn.name} normalises axis {kw['axis']}; "
                                   "MXNet's SyncBatchNorm only axis 1 (NCHW): train without "
                                   "sync_bn")
        sync = SyncBatchNorm(in_channels=bn.gamma.shape[0], num_devices=n,
                             momentum=kw["momentum"], epsilon=kw["eps"],
                             scale=not kw["fix_gamma"], center=bn.beta.grad_req != "null",
                             use_global_stats=kw["use_global_stats"],
                             prefix=bn.prefix, params=bn.params)
        _put_child(parent, name, sync)
        _refresh(path[:-1])
        swaps.append((path, parent, name, bn))
    return swaps


def _restore_batch_norm(swaps) -> None:
    for path, parent, name, bn in reversed(swaps):
        _put_child(parent, name, bn)
        _refresh(path[:-1])


# ------------------------------------------------------------------------------ parameters
def _aux(params):
    """The parameters no gradient reaches (BatchNorm's running statistics)."""
    return [p for p in params if p.grad_req == "null"]


def _average_aux(params, engine: _Engine, replicas: int) -> None:
    """Every replica's running statistics become their mean over all replicas."""
    ctx0 = engine.ctxs[0]
    for j, p in enumerate(_aux(params)):
        arrays = [_nd(a) for a in p.list_data()]
        total = mx.nd.add_n(*[a.as_in_context(ctx0) for a in arrays]) if len(arrays) > 1 \
            else arrays[0].copy()
        mean = engine.reduce(_AUX_KEY + j, total) / replicas
        for a in arrays:
            mean.as_in_context(a.context).copyto(a)


def _write_payload(tmp: Path, net, trainer, ctx0) -> None:
    """train.py's payload (``save_parameters``' file, ``Trainer.save_states``), the weights
    from the first context (``save_parameters`` would average the identical copies, which
    is not exact for three), the running statistics averaged over the contexts as it does."""
    arrays = {}
    for key, p in net._collect_params_with_prefix().items():
        copies = p.list_data()
        if p.grad_req == "null" and len(copies) > 1:
            arrays[key] = sum(c.copyto(mx.cpu()) for c in copies) / len(copies)
        else:
            arrays[key] = p.data(ctx0)
    (mx.npx.save if is_np_array() else mx.nd.save)(str(tmp / _PARAMS), arrays)
    trainer.save_states(str(tmp / _STATES))


def _share_update_counts(trainer, ctxs) -> None:
    """After ``load_states``: every context's update counts (Adam's bias correction) are the
    first context's, also when the checkpoint came from a run on fewer devices."""
    opt = trainer._optimizer
    counts = getattr(opt, "_all_index_update_counts", None)
    if not counts:
        return
    first = counts.get(ctxs[0].device_id, {})
    for c in ctxs:
        counts[c.device_id] = dict(first)
    if hasattr(opt, "_set_current_context"):
        opt._set_current_context(ctxs[0].device_id)


def _to_first_context(params, ctx0) -> None:
    """Every parameter on ``ctx0`` only, with ctx0's values bit for bit (``reset_ctx``
    averages the copies, not exact for three)."""
    for p in params:
        try:
            copies = p.list_data()
        except Exception:                # noqa: BLE001 - never initialised: nothing to keep
            continue
        if len(copies) == 1 and copies[0].context == ctx0:
            continue
        keep = p.data(ctx0) if ctx0 in p.list_ctx() else copies[0]
        keep = keep.copyto(mx.cpu())
        p.reset_ctx(ctx0)
        try:
            p.set_data(keep)
        except mx.base.MXNetError:
            for arr in p.list_data():
                keep.copyto(arr)


# ------------------------------------------------------------------------------ training
def _kvstore_type(kvstore: Optional[str], dist: bool) -> str:
    allowed = DIST_KVSTORES if dist else KVSTORES
    if kvstore is None:
        return allowed[0]
    if kvstore not in allowed:
        other = KVSTORES if dist else DIST_KVSTORES
        why = ("several machines (--nodes) need" if dist else
               "one process (no --nodes) uses") if kvstore in other else "use"
        raise DistributedError(f"kvstore {kvstore!r}: {why} one of {', '.join(allowed)}")
    return kvstore


def train(net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0, *,
          devices=None, role: Optional[Role] = None, seed: Optional[int] = None,
          sync_bn: bool = False, lr_scaling: Optional[LinearScaling] = None,
          progress: Optional[bool] = None, max_steps: Optional[int] = None,
          checkpoint_dir=None, resume: bool = False, checkpoint_every=None, keep: int = 3,
          settings: Optional[dict] = None, step_losses: Optional[list] = None,
          peer_timeout: Optional[float] = None, kvstore: Optional[str] = None) -> History:
    """Train ``net`` data-parallel on ``devices`` (this machine's contexts, see
    :func:`contexts`) and, when ``role.world > 1``, on every machine of the run (``role``:
    default :meth:`Role.from_env`, torchrun's variables).  Returns the per-epoch
    :class:`~d2lport.common.History`, the same on every machine (loss and accuracies of all
    replicas together); ``history.device`` says what ran.

    ``train_iter``/``test_iter``: the loaders of ``load_data_fashion_mnist(global_batch)``;
    every global batch is cut among the replicas here.  Evaluation counts every test example
    once.  ``step_losses``: a list to which the mean loss of every step (the global batch's,
    before the update) is appended.  ``lr_scaling``: a
    :class:`~d2lport.distributed.LinearScaling` (default off).  ``sync_bn``: see the module
    docstring (default: per-device BatchNorm statistics).  ``peer_timeout``: seconds without
    a finished step before a machine gives up on a lost peer (several machines only; default
    :data:`DEFAULT_PEER_TIMEOUT`).  ``kvstore``: ``'device'`` (default) or ``'local'`` on
    one machine, ``'dist_sync'`` (default) or ``'dist_sync_device'`` across machines.
    The other arguments are :func:`d2lport.mxnet.train`'s: ``seed`` fixes numpy and
    ``mx.random`` (reseeded per step and replica), checkpoints as described above, rank 0
    shows progress and prints."""
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    role = Role.from_env() if role is None else role
    ctxs = setup(devices, sync_bn=sync_bn)
    n, dist = len(ctxs), role.world > 1
    replicas = n * role.world
    kvtype = _kvstore_type(kvstore, dist)
    if sync_bn and dist:
        raise DistributedError(
            "sync_bn across machines: MXNet's SyncBatchNorm synchronises the devices of one "
            "process only, and dist_sync has no synchronised BatchNorm; train on one machine "
            "(--devices N) with --sync-bn, or across machines without it (per-device "
            "statistics)")
    if not hasattr(train_iter, "batches"):
        raise TypeError(f"{type(train_iter).__name__} is not a d2lport loader: data-parallel "
                        "training shards the loaders of load_data_fashion_mnist")
    check_batches(train_iter.batches.num_examples, train_iter.batches.batch_size, replicas)
    if lr_scaling is not None and not isinstance(lr_scaling, LinearScaling):
        raise TypeError(f"lr_scaling must be a d2lport.distributed.LinearScaling or None, got "
                        f"{type(lr_scaling).__name__}")
    if peer_timeout is not None and not (isinstance(peer_timeout, (int, float))
                                         and math.isfinite(peer_timeout) and peer_timeout > 0):
        raise ValueError(f"peer_timeout must be a number of seconds > 0, got {peer_timeout!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir=...")
    checkpoint.parse_every(checkpoint_every)
    if seed is not None:
        mx.random.seed(seed)
        np.random.seed(seed)
    chief = role.is_chief
    progress = (progress_default() if progress is None else progress) and chief

    swaps = _use_sync_batch_norm(net, n) if sync_bn and n > 1 else []
    params = list(net.collect_params().values())
    engine, done = None, False
    try:
        net.collect_params().reset_ctx(ctxs)
        engine = _Engine(role, ctxs, kvtype, peer_timeout or DEFAULT_PEER_TIMEOUT)
        # A list in the network's own order (train.py says why); the gradients are summed
        # by the kvstore and applied on every context (update_on_kvstore=False).
        trainer = gluon.Trainer(params, *_optimizer(optimizer, lr, momentum, weight_decay),
                                kvstore=engine.trainer_kvstore, update_on_kvstore=False)
        try:
            with engine.watchdog:
                history = _run(net, params, engine, trainer, train_iter, test_iter,
                               num_epochs, lr, optimizer, momentum, weight_decay, role, seed,
                               lr_scaling, progress, max_steps, checkpoint_dir, resume,
                               checkpoint_every, keep, settings, step_losses,
                               synced=bool(swaps) or replicas == 1)
                # The kvstore's last barrier is watched too: a machine that died after its
                # last step must not leave the others waiting there.
                _release(trainer)
                engine.watchdog.beat()
                engine.close(ok=True)
        finally:
            _release(trainer)
        done = True
    finally:
        if engine is not None and not done:
            engine.close(ok=False)
        _restore_batch_norm(swaps)
        _to_first_context(params, ctxs[0])
    return history


def _release(trainer) -> None:
    """The engine must hold the last reference to a dist_sync kvstore: freeing it is how the
    machines meet in ps-lite's last barrier and rank 0 stops the servers (Gluon's Trainer
    keeps it twice, and the parameters keep the Trainer)."""
    trainer._kvstore = None
    trainer._kvstore_params["kvstore"] = None


def _run(net, params, engine: _Engine, trainer, train_iter, test_iter, num_epochs, lr,
         optimizer, momentum, weight_decay, role: Role, seed, lr_scaling, progress, max_steps,
         checkpoint_dir, resume, checkpoint_every, keep, settings, step_losses,
         synced: bool) -> History:
    ctxs, ctx0 = engine.ctxs, engine.ctxs[0]
    n = len(ctxs)
    replicas = n * role.world
    first = role.rank * n                      # this machine's first replica
    chief = role.is_chief
    global_batch = train_iter.batches.batch_size
    model_name = getattr(getattr(net, "spec", None), "name", type(net).__name__)
    history = History(framework="mxnet", device=engine.describe(), model=model_name)
    quiet = contextlib.nullcontext() if chief else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        ck = checkpoint.open_run(checkpoint_dir, resume, "mxnet", model_name, train_iter,
                                 optimizer, lr, momentum, weight_decay, seed, settings, keep,
                                 checkpoint_every)
    pos = checkpoint.Position(_scalar)
    if resume:
        found = ck.latest()
        if found is None:
            if chief:
                print(f"no checkpoint in {ck.directory} yet: starting from scratch")
        else:
            path, state = found
            _load_payload(path, net, trainer, ctxs, lr, momentum, weight_decay)
            _share_update_counts(trainer, ctxs)
            history.epochs = [dict(e) for e in state.history]
            pos.epoch, pos.batch, pos.step = state.epoch, state.batch, state.step
            pos.set_partial(state.partial)
            with quiet:
                checkpoint.resume_position(ck, path, state, train_iter)
    if engine.dist:
        _check_agreement(engine, role, pos, train_iter, test_iter)
        # Initialises the kvstore: rank 0's weights (and running statistics) go to every
        # context of every machine before the first forward pass (the zero gradients of
        # this exchange are overwritten by the first backward pass).
        trainer.allreduce_grads()

    def save() -> Path:
        engine.watchdog.pause()
        try:
            state = checkpoint.TrainState(
                epoch=pos.epoch, batch=pos.batch, step=pos.step,
                history=history.to_records(),
                rng={"mxnet": "no RNG-state API in MXNet 1.x: mx.random.seed(seed + step) "
                              "before every step", "seed": seed},
                partial=pos.partial(time.perf_counter()))
            return ck.save(state, lambda tmp: _write_payload(tmp, net, trainer, ctx0))
        finally:
            engine.watchdog.resume()

    n_batches = len(train_iter)
    guard = checkpoint.InterruptGuard()
    pending = None            # (global [loss sum, hits], batch size, step, epoch) of the last step

    def finish(item) -> None:
        """Wait for a step's global loss: divergence check, step_losses, the watchdog."""
        if item is None:
            return
        stats, size, step, epoch = item
        loss = _scalar(stats[0]) / size
        checkpoint.check_loss(loss, step, epoch, lr, ck)
        if step_losses is not None:
            step_losses.append(loss)
        engine.watchdog.beat()

    with guard.installed():
        try:
            while pos.epoch < num_epochs:
                epoch = pos.epoch + 1
                bar = Progress(progress, n_batches, f"epoch {epoch}/{num_epochs}")
                bar.update(pos.batch)
                mx.nd.waitall()
                pos.start = time.perf_counter()
                for X, y in train_iter:
                    if max_steps is not None and pos.batch >= max_steps:
                        break
                    size = y.shape[0]
                    bounds = [shard_bounds(size, first + i, replicas) for i in range(n)]
                    if seed is not None:
                        # train.py's replay of the randomness (dropout), one stream per
                        # replica; replica 0's is the one-device run's.
                        for i, ctx in enumerate(ctxs):
                            mx.random.seed(seed + pos.step + 1_000_003 * (first + i), ctx=ctx)
                    shards, losses = [], []
                    with autograd.record():
                        for ctx, (start, stop) in zip(ctxs, bounds):
                            Xi, yi = to_ctx(X[start:stop], ctx), to_ctx(y[start:stop], ctx)
                            outputs = net(Xi)
                            per_example = loss_fn(outputs, yi)
                            shards.append((Xi, yi, outputs, per_example))
                            losses.append(per_example.mean()
                                          * loss_weight(stop - start, size, replicas))
                    # one backward pass over every replica's graph (SyncBatchNorm's
                    # per-device parts meet inside it)
                    autograd.backward(losses)
                    # this machine's [loss sum, hits], then summed over the machines (0 * X:
                    # train.py's NaN carrier, oneDNN's ReLU maps NaN to 0)
                    local = [_row(l.sum() + 0 * Xi.sum(), _correct(_logits(o), yi))
                             for Xi, yi, o, l in shards]
                    stats = local[0] if n == 1 else mx.nd.add_n(
                        *[v.as_in_context(ctx0) for v in local])
                    stats = engine.reduce(_STATS_KEY, stats)
                    with guard.hold():          # the update and its bookkeeping, or neither
                        if lr_scaling is not None:
                            trainer.set_learning_rate(
                                lr_scaling.lr_at(lr, pos.step, global_batch))
                        trainer.step(replicas)
                        pos.step += 1
                        pos.batch += 1
                        pos.loss_sum = pos.loss_sum + stats[0]
                        pos.correct = pos.correct + stats[1]
                        pos.seen += size
                    finish(pending)             # the previous step (MXNet runs ahead)
                    pending = (stats, size, pos.step, epoch)
                    checkpoint.after_step(pos.step)
                    if progress:
                        bar.update(1, loss=_scalar(pos.loss_sum) / pos.seen)
                    last = ((max_steps is not None and pos.batch >= max_steps)
                            or pos.batch >= n_batches)
                    if chief and ck is not None and not last and ck.due(pos.step):
                        finish(pending)
                        pending = None
                        save()
                finish(pending)
                pending = None
                mx.nd.waitall()
                elapsed = pos.seconds + time.perf_counter() - pos.start
                bar.close()
                loss_sum, correct = pos.sums()
                if not synced and _aux(params):
                    _average_aux(params, engine, replicas)
                test_acc = _evaluate(net, test_iter, engine, first, replicas)
                with guard.hold():
                    history.append(epoch=epoch, loss=loss_sum / max(pos.seen, 1),
                                   train_acc=correct / max(pos.seen, 1), test_acc=test_acc,
                                   examples_per_sec=pos.seen / max(elapsed, 1e-9),
                                   seconds=elapsed)
                    pos.next_epoch()
                if chief and ck is not None:
                    save()
        except KeyboardInterrupt:
            finish(pending)
            if chief and ck is not None:
                path = save()
                print(checkpoint.interrupted_message(path, pos.step, pos.epoch + 1))
            raise
    return history


def _evaluate(net, test_iter, engine: _Engine, first: int, replicas: int) -> float:
    """Accuracy over ``test_iter``: every replica its shard of every batch, the hits summed
    over the contexts and the machines; every example counted once."""
    ctxs, ctx0 = engine.ctxs, engine.ctxs[0]
    hits, total = None, 0
    engine.watchdog.pause()             # local work; the exchange below is watched
    try:
        for X, y in test_iter:
            size = y.shape[0]
            for i, ctx in enumerate(ctxs):
                start, stop = shard_bounds(size, first + i, replicas)
                if stop == start:
                    continue
                yi = to_ctx(y[start:stop], ctx)
                h = _row(_correct(_logits(net(to_ctx(X[start:stop], ctx))), yi)).as_in_context(ctx0)
                hits = h if hits is None else hits + h
            total += size
        hits = mx.nd.zeros((1,), ctx=ctx0) if hits is None else hits
        hits.wait_to_read()
    finally:
        engine.watchdog.resume()
    hits = engine.reduce(_EVAL_KEY, hits)
    return _scalar(hits) / max(total, 1)


def _check_agreement(engine: _Engine, role: Role, pos, train_iter, test_iter) -> None:
    """Every machine resumed at the same place, with the same batch size and data."""
    mine = [pos.step, pos.epoch, pos.batch, train_iter.batches.batch_size,
            train_iter.batches.num_examples, getattr(test_iter, "num_examples", 0)]
    total = engine.reduce(_AGREE_KEY, mx.nd.array(mine, ctx=engine.ctxs[0])).asnumpy()
    if not np.array_equal(total, np.asarray(mine, np.float32) * role.world):
        raise DistributedError(
            f"the machines of this run disagree: machine {role.rank} is at step {pos.step} "
            f"(epoch {pos.epoch}, batch {pos.batch}) with batch size {mine[3]} and "
            f"{mine[4]}/{mine[5]} train/test examples, another one is not; every machine needs "
            "the same data, --batch-size and --limit, and for --resume the same checkpoint "
            "directory (a shared file system)")
