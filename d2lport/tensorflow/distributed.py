"""Data-parallel training for the TensorFlow backend, with ``tf.distribute``:
``from d2lport.tensorflow import distributed``.

MODE = "devices": one process drives all the devices of its machine with a
``tf.distribute.MirroredStrategy`` (GPUs, or a CPU split into logical devices); several
processes, one per machine, form a ``MultiWorkerMirroredStrategy`` (its ``TF_CONFIG`` is
built from torchrun's variables, see :func:`setup`).  The loop is D2L's custom training
loop written the ``tf.distribute`` way: the model and optimizer variables live under
``strategy.scope()``, every step is ``strategy.run(step, args=per_replica_batch)`` in a
``tf.function``, and ``strategy.reduce`` sums what the replicas report.

What this module adds to the engine, and why:

* **Setting TensorFlow up before it starts.**  Logical CPU devices, the visible GPUs and
  ``MultiWorkerMirroredStrategy`` ("collective ops must be configured at program
  startup") can only be set before TensorFlow runs its first op - and building a model or a
  data loader runs ops.  :func:`setup` does it; call it first (``d2lport train --devices``
  does).  Too late, it raises :class:`~d2lport.distributed.DistributedError` saying so.
* **The data.**  Each global batch of d2lport's seeded order is cut into one contiguous
  shard per replica by :func:`d2lport.distributed.shard_bounds` and handed to the replicas
  with ``experimental_distribute_values_from_function`` (not ``distribute_dataset``, which
  would re-batch by its own rule); every process reads the same global batches.
  TensorFlow's all-reduce SUMS the replicas' gradients (Keras' optimizer all-reduces with
  ``ReduceOp.SUM`` in replica context), so a replica's loss is its mean loss times
  ``loss_weight(n_local, B, R) / R = n_local / B``: the sum is the gradient of the global
  batch's mean loss, uneven last shards included (TensorFlow's own
  ``tf.nn.compute_average_loss(..., global_batch_size=B)`` rule).
* **A network built outside the scope** (``create_model`` runs before ``train``): its
  variables are re-created under ``strategy.scope()`` for the run - each Keras variable's
  ``tf.Variable`` is replaced by a ``MirroredVariable`` initialised from it - and the
  originals get the trained values back at the end, so ``net`` is trained in place as by
  the one-device ``train`` (and compiled functions that captured its variables stay valid).
  This works for every network, where rebuilding from ``get_config`` would not (VGG and
  the single blocks have no config).
* **BatchNorm's moving statistics**: Keras 3 creates them with ``aggregation="none"``;
  under ``MirroredStrategy`` each replica then silently keeps its own shard's statistics
  in its copy (and a checkpoint saves replica 0's).  Re-created here with
  ``aggregation=MEAN``: the replicas' updates are averaged and every copy agrees.
* **By default BatchNorm normalizes with per-replica statistics** (each replica's own
  shard, as Keras does under any strategy); ``sync_bn=True`` switches every Keras
  ``BatchNormalization`` to ``synchronized=True`` for the run: mean and variance over the
  global batch (all-reduced sums, so uneven shards weigh right) - then a data-parallel step
  computes what one device computes on the whole batch.
* **Dropout**: every replica's generator is offset by its replica id, so the replicas do
  not draw the same masks (the masks are not a one-device run's either).

Checkpoints are ``train.py``'s (``tf.train.Checkpoint`` of model and optimizer under
``tf/ckpt``, ``state.json`` beside it): a data-parallel checkpoint resumes in a one-device
run and vice versa.  Rank 0 writes it; under ``MultiWorkerMirroredStrategy`` every worker
writes the payload (TensorFlow's rule: saving may run collective ops), the others into a
temporary directory they delete.  Every rank resumes from the checkpoint directory, which
must therefore be one that all machines see (or a copy on each).

Peers: a process that dies closes its connections and the other processes' next
collective fails at once (``UnavailableError``, well under a second on one machine; a
machine that vanishes from the network is noticed by TensorFlow's coordination-service
heartbeat); ``train`` then raises :class:`~d2lport.distributed.PeerLostError` (``d2lport
train`` exits with :data:`~d2lport.distributed.EXIT_PEER_LOST`).  ``peer_timeout`` adds a
:class:`~d2lport.distributed.StepWatchdog` for a peer that stalls without dying.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import ExitStack, contextmanager, nullcontext, redirect_stdout
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from .. import checkpoint
from ..common import History, Progress, progress_default
from ..distributed import (EXIT_PEER_LOST, DistributedError, LinearScaling, PeerLostError,
                           Role, StepWatchdog, check_batches, free_port, loss_weight,
                           machine_command, shard_bounds, strip_options)
from .train import _correct, _optimizer, _reseed, _restore, _rng_state, loss_fn

__all__ = ["MODE", "setup", "train", "command", "node_processes", "multinode_hint"]

MODE = "devices"
RENDEZVOUS_TIMEOUT = 600.0      # seconds rank 0 waits for the others at --master (and back)
_SEED_STRIDE = 1_000_003        # replica r's dropout generator: seed + r * stride
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError)
_PEER_SIGNS = ("collective", "coordination", "connect", "heartbeat", "peer", "socket")

# Strategies made by setup(): one MirroredStrategy per device list; at most one
# MultiWorkerMirroredStrategy per process (TensorFlow configures its collectives once).
_MIRRORED: Dict[Tuple[str, ...], tf.distribute.Strategy] = {}
_MULTI: Dict[str, object] = {}


# ------------------------------------------------------------ before TensorFlow starts
def _count(devices) -> Optional[int]:
    """``devices`` as a number (None: not given); a value that is not one raises."""
    if devices is None:
        return None
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise ValueError(f"devices={devices!r}: give the number of devices this process "
                         "trains on, a whole number >= 1 (e.g. devices=2), or None for all "
                         "TensorFlow sees")
    return int(devices)


def _split_cpu(n: int) -> bool:
    """Split the CPU into ``n`` logical devices; False when TensorFlow already started."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        return True
    except RuntimeError:          # "Virtual devices cannot be modified after being initialized"
        return False


def _too_late(asked: int, have: int) -> DistributedError:
    return DistributedError(
        f"TensorFlow already initialised {have} CPU device(s), {asked} asked for: call "
        f"d2lport.tensorflow.distributed.setup({asked}) before anything runs a TensorFlow op "
        f"(before create_model and load_data_fashion_mnist), or run in a fresh process "
        "that does so first")


def _too_late_multi(role: Role, devices) -> DistributedError:
    return DistributedError(
        f"rank {role.rank} of {role.world}: TensorFlow already started, and "
        "MultiWorkerMirroredStrategy must be created before its first op: call "
        f"d2lport.tensorflow.distributed.setup({devices or 1}) first (before create_model and "
        "load_data_fashion_mnist), in a fresh process")


def setup(devices=None, role: Optional[Role] = None) -> tf.distribute.Strategy:
    """Prepare TensorFlow for data parallelism and return the ``tf.distribute`` strategy;
    call it before TensorFlow runs any op (before ``create_model``).

    ``devices``: the number of devices this process drives (default: all GPUs, else the
    CPU devices TensorFlow has - one unless this function split it).  Without GPUs the CPU
    is split into ``devices`` logical devices (``tf.config.set_logical_device_configuration``:
    each is a replica with its own share of the work; they share the cores).
    ``role`` (default :meth:`Role.from_env`, torchrun's variables): with ``world > 1`` this
    process is worker ``rank`` of a ``MultiWorkerMirroredStrategy``.  Its ``TF_CONFIG``
    lists every worker's ``host:port``; they are exchanged through rank 0's ``MASTER_ADDR:
    MASTER_PORT`` (each process picks a free port for its TensorFlow server; a ``TF_CONFIG``
    already in the environment that fits the role is used as it is).  That strategy drives
    one CPU device per process, or the process's GPUs.

    Called again with the same request it returns the same strategy.  When TensorFlow has
    already started with fewer devices (or without the multi-worker set-up), it raises
    :class:`DistributedError` saying what to do instead."""
    n = _count(devices)
    role = Role.from_env() if role is None else role
    if role.world > 1:
        return _multi_worker(n, role)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if n is not None and n > len(gpus):
            raise DistributedError(f"devices={n}: TensorFlow sees {len(gpus)} GPU(s) here: "
                                   f"use devices={len(gpus)} or fewer")
        names = tuple(d.name for d in tf.config.list_logical_devices("GPU"))[:n]
    else:
        if n is not None and n > 1:
            _split_cpu(n)                          # fails quietly when TF already started
        have = tf.config.list_logical_devices("CPU")
        if n is not None and len(have) < n:
            raise _too_late(n, len(have))
        names = tuple(d.name for d in have)[:n]
    if names not in _MIRRORED:
        _MIRRORED[names] = tf.distribute.MirroredStrategy(list(names))
    return _MIRRORED[names]


def _multi_worker(n: Optional[int], role: Role) -> tf.distribute.Strategy:
    key = json.dumps([n, role.rank, role.world, role.master])
    if _MULTI:
        if _MULTI["key"] != key:
            raise DistributedError(
                f"this process already joined a run as {_MULTI['what']}: one process joins "
                "one multi-worker run (TensorFlow configures its collectives once); start a "
                "fresh process for another")
        return _MULTI["strategy"]
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if n is not None and n > len(gpus):
            raise DistributedError(f"devices={n}: TensorFlow sees {len(gpus)} GPU(s) on this "
                                   f"machine: use devices={len(gpus)} or fewer")
    elif n not in (None, 1):
        raise DistributedError(
            f"devices={n} with {role.world} processes: MultiWorkerMirroredStrategy drives one "
            "CPU device per process (it does not use logical CPU devices): use devices=1 "
            "(--devices 1) on each machine, or GPUs")
    # Any device configuration fails once TensorFlow has started: the cheap test, before
    # the rendezvous makes the other machines wait for this one.
    if not _split_cpu(1):
        raise _too_late_multi(role, n)
    if gpus and n is not None and n < len(gpus):
        tf.config.set_visible_devices(gpus[:n], "GPU")
    workers = _tf_config_workers(role) or _rendezvous(role)
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                          "task": {"type": "worker", "index": role.rank}})
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        if "startup" in str(err):
            raise _too_late_multi(role, n) from None
        raise
    _MULTI.update(key=key, strategy=strategy, workers=workers,
                  what=f"rank {role.rank} of {role.world} (master {role.master})")
    return strategy


def _tf_config_workers(role: Role) -> Optional[List[str]]:
    """The workers of a ``TF_CONFIG`` set by the user (a cluster manager) that fits ``role``."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", ""))
        workers = list(config["cluster"]["worker"])
        task = config["task"]
    except (ValueError, KeyError, TypeError):
        return None
    if len(workers) == role.world and task.get("index") == role.rank:
        return workers
    return None


def _rendezvous(role: Role, timeout: float = RENDEZVOUS_TIMEOUT) -> List[str]:
    """Every worker's ``host:port``, exchanged through rank 0's ``MASTER_ADDR:MASTER_PORT``
    (like torchrun's rendezvous): rank 0 listens there; every other rank connects, says
    where its TensorFlow server will listen (the address it reaches rank 0 from, a free
    port) and gets the whole list back."""
    deadline = time.monotonic() + timeout
    if role.is_chief:
        loopback = role.master_addr in ("127.0.0.1", "localhost", "::1")
        workers = [f"{role.master_addr}:{_free_port('')}"] + [None] * (role.world - 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((role.master_addr if loopback else "", role.master_port))
            server.listen(role.world)
            peers = []
            while None in workers:
                server.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    missing = [str(r) for r, w in enumerate(workers) if w is None]
                    raise DistributedError(
                        f"rank 0 waited {timeout:g} s at {role.master} for rank(s) "
                        f"{', '.join(missing)}: start the same command on every machine, "
                        "each with its own --node-rank and this --master") from None
                hello = json.loads(_read_line(conn, deadline))
                workers[int(hello["rank"])] = f"{hello['host']}:{hello['port']}"
                peers.append(conn)
            for conn in peers:
                with conn:
                    conn.sendall((json.dumps(workers) + "\n").encode())
        return workers
    while True:
        try:
            conn = socket.create_connection((role.master_addr, role.master_port), timeout=10)
            break
        except OSError as err:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"rank {role.rank} could not reach rank 0 at {role.master} in "
                    f"{timeout:g} s ({err}): start machine 0 too, and check --master and the "
                    "firewall") from None
            time.sleep(0.5)
    with conn:
        host = conn.getsockname()[0]
        conn.sendall((json.dumps({"rank": role.rank, "host": host,
                                  "port": _free_port("")}) + "\n").encode())
        return json.loads(_read_line(conn, deadline))


def _free_port(host: str) -> int:
    if host == "":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return s.getsockname()[1]
    return free_port()


def _read_line(conn: socket.socket, deadline: float) -> str:
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            chunk = b""
        if not chunk:
            raise DistributedError("the rendezvous at --master broke off: a process of the "
                                   "run ended; start them all again")
        data += chunk
    return data.decode()


# ------------------------------------------------------------ the network under the scope
def _batch_norms(net) -> list:
    return [layer for layer in net._flatten_layers(include_self=True, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _seed_states(net) -> list:
    return [layer.seed_generator.state
            for layer in net._flatten_layers(include_self=False, recursive=True)
            if getattr(layer, "seed_generator", None) is not None]


_AGGREGATION = {"none": tf.VariableAggregation.NONE, "sum": tf.VariableAggregation.SUM,
                "mean": tf.VariableAggregation.MEAN,
                "only_first_replica": tf.VariableAggregation.ONLY_FIRST_REPLICA}


class _InScope:
    """The network's variables re-created under ``strategy.scope()`` for one run (Keras
    variables keep their identity; only the ``tf.Variable`` inside each is replaced) and
    the originals restored, holding the trained values, afterwards."""

    def __init__(self, net, strategy, first_replica: int):
        self.net, self.strategy, self.first = net, strategy, first_replica
        self.swapped = []
        self.seeds = {id(v) for v in _seed_states(net)}

    def __enter__(self):
        seen = set()
        with self.strategy.scope():
            for var in self.net.variables:
                if id(var) in seen:
                    continue
                seen.add(id(var))
                old = var._value
                floating = old.dtype.is_floating
                # BatchNorm's moving statistics (non-trainable floats): averaged over the
                # replicas instead of Keras' "none" (each copy its own shard's statistic).
                aggregation = (tf.VariableAggregation.MEAN if floating and not var.trainable
                               else _AGGREGATION[var.aggregation])
                with _scope_of(old):
                    value = old.read_value()
                var._value = tf.Variable(value, dtype=old.dtype, trainable=var.trainable,
                                         name=var.name, aggregation=aggregation)
                self.swapped.append((var, old))
        self.spread_seeds()
        return self

    def spread_seeds(self) -> None:
        """Offset replica r's dropout generator by r (after a restore set them all equal)."""
        for var in _seed_states(self.net):
            for i, part in enumerate(getattr(var._value, "values", ())):
                replica = self.first + i
                if replica:
                    part.assign(part.read_value()
                                + tf.constant([replica * _SEED_STRIDE, 0], part.dtype))

    def __exit__(self, *exc):
        for var, old in self.swapped:
            value = var._value.read_value()            # this process's first replica's copy
            if id(var) in self.seeds and self.first:
                value -= tf.constant([self.first * _SEED_STRIDE, 0], value.dtype)
            with _scope_of(old):
                old.assign(value)
            var._value = old
        return False


def _scope_of(variable):
    strategy = getattr(variable, "_distribute_strategy", None)
    return strategy.scope() if strategy is not None else nullcontext()


@contextmanager
def _synchronized(net, on: bool):
    """``sync_bn``: every Keras BatchNormalization normalizes with the global batch's
    statistics for the run (Keras' ``synchronized=True``, read when the step is traced)."""
    layers = _batch_norms(net) if on else []
    before = [layer.synchronized for layer in layers]
    for layer in layers:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer, was in zip(layers, before):
            layer.synchronized = was


# ------------------------------------------------------------ the steps
def _shards(strategy, replicas: int, tensors, n: int, extra=None):
    """Replica g's part of every tensor of a global batch of ``n``: rows
    ``shard_bounds(n, g, replicas)``, plus its loss weight ``n_g / n`` (what makes the SUM
    of the replicas' gradients the batch's mean gradient) and ``extra(g)``."""
    bounds = [shard_bounds(n, g, replicas) for g in range(replicas)]

    def part(ctx):
        g = ctx.replica_id_in_sync_group
        start, stop = bounds[g]
        weight = loss_weight(stop - start, n, replicas) / replicas
        out = tuple(t[start:stop] for t in tensors) + (tf.constant(weight, tf.float32),)
        return out + ((tf.constant(extra(g), tf.float32),) if extra else ())

    return strategy.experimental_distribute_values_from_function(part)


def _train_step(strategy, net, opt, weight_decay: float, replicas: int):
    variables = net.trainable_variables

    def replica_step(X, y, weight, flag):
        with tf.GradientTape() as tape:
            outputs = net(X, training=True)
            loss = loss_fn(outputs, y) * weight
        grads = tape.gradient(loss, variables)
        if weight_decay:
            # PyTorch's L2 on the gradient (as train.py); the replicas' terms sum to it.
            grads = [g + (weight_decay / replicas) * tf.cast(v, g.dtype)
                     for g, v in zip(grads, variables)]
        opt.apply_gradients(zip(grads, variables))     # all-reduce (SUM), then the update
        return tf.stack([loss, tf.cast(_correct(outputs, y), tf.float32), flag])

    def step(batch):
        # [global mean loss, correct, a flag set by rank 0] in one small all-reduce
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(replica_step, args=batch), axis=None)

    return tf.function(step, reduce_retracing=True, autograph=False)


def _eval_step(strategy, net):
    def replica_eval(X, y, weight):
        return _correct(net(X, training=False), y)

    def step(batch):
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(replica_eval, args=batch), axis=None)

    return tf.function(step, reduce_retracing=True, autograph=False)


def _evaluate(strategy, replicas, eval_step, test_iter) -> float:
    """Accuracy over the whole test split: every example counted once, on one replica."""
    correct = total = 0
    for X, y in test_iter:
        n = int(y.shape[0])
        correct += int(eval_step(_shards(strategy, replicas, (X, y), n)))
        total += n
    return correct / max(total, 1)


# ------------------------------------------------------------ peers
def _peer_lost(err: BaseException, role: Role) -> Optional[PeerLostError]:
    """The error a failed collective of a multi-worker run becomes (None: not that)."""
    if role.world == 1 or not isinstance(err, tf.errors.OpError):
        return None
    text = str(getattr(err, "message", "") or err)
    if not (isinstance(err, _PEER_ERRORS) or any(s in text.lower() for s in _PEER_SIGNS)):
        return None
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    # TensorFlow's first line is often just "Graph execution error:"; say why instead
    # ("Collective ops is aborted by: recvmsg:Connection reset by peer")
    telling = [line for sign in ("aborted by",) + _PEER_SIGNS for line in lines
               if sign in line.lower()]
    first = (telling or lines or [""])[0][:200]
    return PeerLostError(
        f"rank {role.rank}: lost another replica of this run ({type(err).__name__}: {first}); "
        f"stopping (exit status {EXIT_PEER_LOST}). Resume the whole run with --resume when "
        "all machines are back")


class _NoWatchdog:
    def beat(self):
        pass

    pause = resume = beat


# ------------------------------------------------------------ train
def train(net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0, *,
          devices=None, role: Optional[Role] = None, seed: Optional[int] = None,
          sync_bn: bool = False, lr_scaling: Optional[LinearScaling] = None,
          progress: Optional[bool] = None, max_steps: Optional[int] = None,
          checkpoint_dir=None, resume: bool = False, checkpoint_every=None, keep: int = 3,
          settings: Optional[dict] = None, step_losses: Optional[list] = None,
          peer_timeout: Optional[float] = None) -> History:
    """Data-parallel :func:`d2lport.tensorflow.train`: the same algorithm and
    :class:`History`, on ``devices`` replicas of this process (see :func:`setup`; on a CPU
    call ``setup(devices)`` before building the model) times the processes of ``role``.

    ``train_iter``/``test_iter``: the loaders of ``load_data_fashion_mnist(global_batch)``;
    every global batch is cut among the replicas (every test example is counted once).
    The net is trained in place (its variables are mirrored for the run, see the module's
    docstring).  ``sync_bn``: BatchNorm statistics over the global batch (Keras'
    ``synchronized=True``); by default each replica normalizes with its own shard's
    statistics (no effect on a net without BatchNorm).  ``lr_scaling``: a
    :class:`~d2lport.distributed.LinearScaling` (default off).  ``step_losses``: a list
    that gets the global mean loss of every step (before its update).  ``peer_timeout``:
    seconds without a finished step before this process gives up on a stalled peer
    (:class:`StepWatchdog`; a dead peer is noticed by TensorFlow at once).  The history is
    the same on every process; only rank 0 shows progress, prints and writes checkpoints
    (see the module's docstring for the multi-worker rule).  Computes in float32 (no AMP).
    """
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    role = Role.from_env() if role is None else role
    if lr_scaling is not None and not isinstance(lr_scaling, LinearScaling):
        raise TypeError(f"lr_scaling must be a d2lport.distributed.LinearScaling or None, got "
                        f"{type(lr_scaling).__name__}")
    if peer_timeout is not None and not peer_timeout > 0:
        raise ValueError(f"peer_timeout must be > 0 seconds, got {peer_timeout!r}")
    for loader, what in ((train_iter, "training"), (test_iter, "test")):
        if not hasattr(loader, "batches"):
            raise TypeError(f"{type(loader).__name__} is not a d2lport loader: data-parallel "
                            "training shards the loaders of load_data_fashion_mnist")
    strategy = setup(devices, role)
    replicas = strategy.num_replicas_in_sync
    local = len(strategy.extended.worker_devices)
    check_batches(train_iter.num_examples, train_iter.batches.batch_size, replicas, "training")
    check_batches(test_iter.num_examples, test_iter.batches.batch_size, replicas, "test")
    model_name = getattr(getattr(net, "spec", None), "name", net.name)
    with ExitStack() as stack:
        if not role.is_chief:                                  # rank 0 prints
            stack.enter_context(redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        ck = checkpoint.open_run(checkpoint_dir, resume, "tensorflow", model_name, train_iter,
                                 optimizer, lr, momentum, weight_decay, seed, settings, keep,
                                 checkpoint_every)
        if seed is not None:
            keras.utils.set_random_seed(seed)
            _reseed(net, seed)
        gpu = "GPU" in strategy.extended.worker_devices[0].upper()
        kind = "gpu" if gpu else "cpu"
        engine = (f"MultiWorkerMirroredStrategy, {role.world} processes x {local} "
                  f"{kind}" if role.world > 1 else "MirroredStrategy")
        history = History(framework="tensorflow", model=model_name,
                          device=f"{replicas} x {kind} ({engine})")
        progress = (progress_default() if progress is None else progress) and role.is_chief
        try:
            with _InScope(net, strategy, role.rank * local) as scoped, \
                    _synchronized(net, sync_bn):
                with strategy.scope():
                    opt = _optimizer(optimizer, lr, momentum)
                    opt.build(net.trainable_variables)
                payload = tf.train.Checkpoint(model=net, optimizer=opt)
                run = _Run(strategy, role, replicas, net, opt, payload, ck, history, lr,
                           lr_scaling, weight_decay, progress, max_steps, step_losses)
                if resume:
                    run.resume(train_iter, scoped)
                if peer_timeout is not None and role.world > 1:
                    with StepWatchdog(peer_timeout, role.rank) as watchdog:
                        run.epochs(train_iter, test_iter, num_epochs, watchdog)
                else:
                    run.epochs(train_iter, test_iter, num_epochs, _NoWatchdog())
        except tf.errors.OpError as err:
            lost = _peer_lost(err, role)
            if lost is None:
                raise
            raise lost from None
    return history


class _Run:
    """One data-parallel run's loop: where it is (a :class:`checkpoint.Position`, only
    changed inside ``guard.hold()``), saving, resuming."""

    def __init__(self, strategy, role, replicas, net, opt, payload, ck, history, lr,
                 lr_scaling, weight_decay, progress, max_steps, step_losses):
        self.strategy, self.role, self.replicas = strategy, role, replicas
        self.net, self.opt, self.payload, self.ck, self.history = net, opt, payload, ck, history
        self.lr, self.lr_scaling, self.progress = lr, lr_scaling, progress
        self.max_steps, self.step_losses = max_steps, step_losses
        self.pos = checkpoint.Position()
        self.step_fn = _train_step(strategy, net, opt, weight_decay, replicas)
        self.eval_fn = _eval_step(strategy, net)

    # -------------------------------------------------------------- checkpoints
    def save(self) -> Optional[Path]:
        """Rank 0 writes the checkpoint; under MultiWorkerMirroredStrategy every other
        worker writes the payload too (saving may run collectives), into a temporary
        directory it deletes."""
        pos = self.pos
        state = checkpoint.TrainState(epoch=pos.epoch, batch=pos.batch, step=pos.step,
                                      history=self.history.to_records(),
                                      rng=_rng_state(self.net),
                                      partial=pos.partial(time.perf_counter()))
        if self.role.is_chief:
            return self.ck.save(state, lambda tmp: self.payload.write(
                str(Path(tmp) / "tf" / "ckpt")))
        with tempfile.TemporaryDirectory(prefix="d2lport-tf-worker-") as tmp:
            self.payload.write(str(Path(tmp) / "tf" / "ckpt"))
        return None

    def resume(self, train_iter, scoped) -> None:
        found = self.ck.latest()
        step = -1
        if found is None:
            print(f"no checkpoint in {self.ck.directory} yet: starting from scratch")
        else:
            _restore(self.ck, found, self.payload, self.net, self.opt, self.lr, train_iter)
            scoped.spread_seeds()
            state = found[1]
            self.history.epochs = [dict(e) for e in state.history]
            pos = self.pos
            pos.epoch, pos.batch, pos.step = state.epoch, state.batch, state.step
            pos.set_partial(state.partial)
            step = state.step
        if self.role.world > 1:
            low, high = self._agree(step)
            if low != high:
                raise DistributedError(
                    f"rank {self.role.rank} resumes from step {step if step >= 0 else 'none'}"
                    f", another rank from {low if low != step else high}: every machine must "
                    f"see the same --checkpoint-dir ({self.ck.directory}): use a shared "
                    "directory or copy rank 0's to the others")

    def _agree(self, value: int) -> Tuple[int, int]:
        """(min, max) of ``value`` over the processes (one small all-reduce)."""
        v = tf.constant([-value, value], tf.float32)
        both = self.strategy.reduce(tf.distribute.ReduceOp.MAX,
                                    self.strategy.run(lambda: tf.identity(v)), axis=None)
        return int(-both[0]), int(both[1])

    # -------------------------------------------------------------- the epochs
    def epochs(self, train_iter, test_iter, num_epochs: int, watchdog) -> None:
        pos, ck, role = self.pos, self.ck, self.role
        n_batches = len(train_iter)
        per_epoch = n_batches if self.max_steps is None else min(n_batches, self.max_steps)
        guard = checkpoint.InterruptGuard()
        traced = set()
        try:
            with guard.installed():
                while pos.epoch < num_epochs:
                    epoch = pos.epoch + 1
                    bar = Progress(self.progress, n_batches, f"epoch {epoch}/{num_epochs}")
                    bar.update(pos.batch)
                    pos.start = time.perf_counter()
                    for X, y in train_iter:
                        if pos.batch >= per_epoch:
                            break
                        n = int(y.shape[0])
                        rate = self.lr
                        if self.lr_scaling is not None:
                            rate = self.lr_scaling.lr_at(self.lr, pos.step, n)
                            self.opt.learning_rate = rate
                        # rank 0 decides whether a mid-epoch checkpoint follows this step
                        # (a time-based schedule differs between machines; all must save)
                        want = float(ck is not None and role.is_chief
                                     and ck.due(pos.step + 1))
                        batch = _shards(self.strategy, self.replicas, (X, y), n,
                                        lambda g: want if g == 0 else 0.0)
                        shape = tuple(X.shape[1:]) + (n == train_iter.batches.batch_size,)
                        if shape not in traced:            # tracing is not training time
                            watchdog.pause()
                            tracing = time.perf_counter()
                            self.step_fn.get_concrete_function(batch)
                            pos.start += time.perf_counter() - tracing
                            traced.add(shape)
                            watchdog.resume()
                        with guard.hold():      # the update and its bookkeeping, or neither
                            out = self.step_fn(batch).numpy()
                            loss, hits, flag = float(out[0]), float(out[1]), float(out[2])
                            pos.step += 1
                            pos.batch += 1
                            pos.loss_sum += loss * n
                            pos.correct += hits
                            pos.seen += n
                        watchdog.beat()
                        if self.step_losses is not None:
                            self.step_losses.append(loss)
                        checkpoint.check_loss(loss, pos.step, epoch, rate, ck)
                        checkpoint.after_step(pos.step)
                        bar.update(1, loss=pos.loss_sum / pos.seen)
                        if ck is not None and flag > 0 and pos.batch < per_epoch:
                            watchdog.pause()
                            saving = time.perf_counter()
                            self.save()
                            pos.start += time.perf_counter() - saving   # not training time
                            watchdog.resume()
                    elapsed = pos.seconds + time.perf_counter() - pos.start
                    bar.close()
                    watchdog.pause()
                    test_acc = _evaluate(self.strategy, self.replicas, self.eval_fn, test_iter)
                    with guard.hold():
                        self.history.append(
                            epoch=epoch, loss=pos.loss_sum / max(pos.seen, 1),
                            train_acc=pos.correct / max(pos.seen, 1), test_acc=test_acc,
                            examples_per_sec=pos.seen / max(elapsed, 1e-9), seconds=elapsed)
                        pos.next_epoch()
                    if ck is not None:
                        self.save()
                    watchdog.resume()
        except KeyboardInterrupt:
            # Rank 0 saves alone: its mirrored variables are read without any collective.
            if ck is not None and role.is_chief:
                path = self.save()
                print(checkpoint.interrupted_message(path, pos.step, pos.epoch + 1))
            raise


# ------------------------------------------------------------ commands
def command(argv: Sequence[str], devices, nodes: int = 1, node_rank: int = 0,
            master: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """This machine's command: one process drives this machine's devices (:func:`d2lport.distributed.machine_command`)."""
    return machine_command(argv, devices, nodes, node_rank, master, python)


def node_processes(role: Role, devices) -> list:
    """None: TensorFlow's servers and coordination service run inside the workers."""
    return []


def multinode_hint(argv: Sequence[str], devices: int, nodes: int) -> str:
    """The commands to type on each of ``nodes`` machines."""
    args = " ".join(strip_options(argv))
    gpus = len(tf.config.list_physical_devices("GPU"))
    per = devices if gpus else 1
    lines = [f"TensorFlow, {nodes} machines (MultiWorkerMirroredStrategy, one process per "
             f"machine driving {'its GPUs' if gpus else 'one CPU device'}): on machine K "
             f"(K = 0 ... {nodes - 1}), with HOST:PORT the first machine's address and a "
             "port free there:"]
    for k in range(nodes):
        lines.append(f"  machine {k}: d2lport {args} --devices {per} --nodes {nodes} "
                     f"--node-rank {k} --master HOST:PORT")
    lines.append("(each process also opens a free port for its TensorFlow server, exchanged "
                 "through HOST:PORT; on one machine, for a try: HOST 127.0.0.1 and a free "
                 f"port, e.g. {free_port()}; every machine needs the data, and a "
                 "--checkpoint-dir they all see)")
    return "\n".join(lines)
