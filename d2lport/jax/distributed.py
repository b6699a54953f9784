"""Data-parallel training for the JAX backend: ``jax.sharding`` over a mesh of devices.

``from d2lport.jax import distributed`` (the one-device path never imports this module).
JAX's own way, as its sharding tutorials write it: one Python program sees the *global*
batch as one array split along a mesh axis ``'data'`` (``NamedSharding(mesh,
PartitionSpec('data'))``), the parameters and optimizer state are *replicated*
(``PartitionSpec()``), and the training step is one ``jax.jit`` function written as for a
single device.  XLA's SPMD partitioner (GSPMD) runs it on every device on its part of the
batch and inserts the all-reduce of the gradients (and of any other sum over the batch: the
loss, the correct count, BatchNorm's statistics) by itself.

MODE = "devices": one process drives all devices of its machine; several processes are only
for several machines (``--nodes``), joined by ``jax.distributed.initialize`` (its
coordination service runs inside process 0) with Gloo collectives between CPUs (NCCL
between GPUs).

**Before JAX starts.**  The number of CPU devices (``jax_num_cpu_devices``, the config form
of ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and ``jax.distributed`` can only
be set before JAX initialises its backend, i.e. before the first computation, and
``create_model`` computes.  So :func:`setup` comes first::

    from d2lport.jax import distributed
    distributed.setup(2)                     # 2 CPU devices (and jax.distributed, see below)
    import d2lport.jax as d2p
    net = d2p.create_model("residual_net", seed=0)
    distributed.train(net, *d2p.load_data_fashion_mnist(64), devices=2, ...)

Too late, :func:`setup` and :func:`train` say so in one line (and what to do).

**The data.**  A global batch of ``B`` examples (the loader's batch, the one-device run's)
is cut by :func:`d2lport.distributed.shard_loader` into the processes' shards, and each
process's shard into its devices' parts (:func:`~d2lport.distributed.shard_bounds` both
times).  ``jax.sharding`` wants equal parts, so every device's part is completed to
``ceil(B / replicas)`` rows with *filler* rows (zero images, label 0) that carry an example
weight of 0: they are not repeated examples and count nowhere.  The step's loss is the
weighted mean ``sum(w * loss_i) / sum(w)`` over the whole global array, which is the mean
over the real ``B`` examples: what one device computes, so the gradient XLA all-reduces is
the batch's mean gradient also for an uneven last batch.  (This is
:func:`~d2lport.distributed.loss_weight` in JAX's global view: replica ``r``'s mean loss
enters the sum with weight ``n_r / B = loss_weight(n_r, B, R) / R``.)  Every batch has the
same padded shape, so the step compiles once.

**BatchNorm.**  Under ``jit`` + GSPMD a BatchNorm over the sharded batch axis computes its
mean and variance over the *global* batch (XLA all-reduces the sums): synchronized
BatchNorm is JAX's default and only behaviour here, and a data-parallel BN net computes what
the one-device net computes on the same batch (``tests/test_distributed_jax.py`` checks it).
Per-device statistics (PyTorch DDP's, Keras' and Gluon's default) would need the step
written per device with ``jax.shard_map`` and are not offered; ``sync_bn`` is accepted for
the common interface and changes nothing.  Filler rows would enter those statistics, so a
BN net needs every global batch (the last one too) to split evenly over the replicas: a
clear error names a batch size (or limit) that does.  Evaluation uses the running statistics, where
filler rows are harmless.

**Several machines.**  ``role`` (default ``Role.from_env()``: torchrun's ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) with ``world > 1``: :func:`setup` calls
``jax.distributed.initialize(MASTER_ADDR:MASTER_PORT, WORLD_SIZE, RANK)``; the mesh spans
every process's devices (the same number on each).  Rank 0's initial weights are broadcast
to all (as DDP does), rank 0 alone writes checkpoints and shows progress; every rank returns
the same history.  A peer that dies makes this rank's next collective fail at once (Gloo:
"Connection closed by peer"): the rank prints one line and exits with
:data:`d2lport.distributed.EXIT_PEER_LOST`.  A peer that hangs without closing its
connections is caught by :class:`~d2lport.distributed.StepWatchdog` after ``peer_timeout``
seconds; JAX's coordination service (heartbeat ``peer_timeout + 30`` s) is the backstop,
and it aborts the process itself.

Checkpoints are train.py's (the same ``jax/state.npz`` of variables and optimizer state,
the same position and history), so a data-parallel run resumes a one-device run's
checkpoint and vice versa (with ``lr_scaling`` warm-up the optimizer state holds a step
count and fits only runs with warm-up).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import checkpoint
from ..common import AuxOutputs, History, Progress, combined_loss_weights, progress_default
from ..distributed import (EXIT_PEER_LOST, DistributedError, LinearScaling, Role,
                           StepWatchdog, check_batches, free_port, shard_bounds, shard_loader,
                           machine_command, strip_options)
from .layers import Model, check_input
from .train import _read, _write, make_optimizer

MODE = "devices"
DEFAULT_PEER_TIMEOUT = 120.0    # seconds without a finished step before a rank gives up
HEARTBEAT_MARGIN = 30           # JAX's heartbeat timeout is the watchdog's plus this
AXIS = "data"


# ------------------------------------------------------------------------- before JAX starts
def _backend_started() -> bool:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


def _count(devices) -> Optional[int]:
    """``devices`` as a number of devices (None: not given); a bad value raises ValueError."""
    if devices is None:
        return None
    if isinstance(devices, (list, tuple)):
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            raise ValueError(f"devices={devices!r}: give a number of devices (devices=2) or "
                             "a non-empty list of jax.Device objects")
        return len(devices)
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise ValueError(f"devices={devices!r}: give a whole number >= 1 of devices to train "
                         "on (e.g. devices=2), or None for all JAX sees")
    return int(devices)


def _too_late(asked: int, have: List[jax.Device]) -> DistributedError:
    kind = have[0].platform.upper() if have else "CPU"
    if kind == "CPU":
        return DistributedError(
            f"JAX already started with {len(have)} CPU device(s), {asked} asked for: call "
            f"d2lport.jax.distributed.setup({asked}) before any JAX computation (before "
            f"create_model), or start a fresh process with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={asked}")
    return DistributedError(f"JAX sees {len(have)} {kind}(s) in this process, {asked} asked "
                            f"for: use devices={len(have)} or fewer")


def setup(devices=None, role: Optional[Role] = None, *,
          peer_timeout: Optional[float] = None) -> List[jax.Device]:
    """Prepare JAX for data parallelism; call it before any JAX computation (before
    ``create_model``).  Returns this process's devices for training.

    ``devices``: the number of devices this process drives.  On a CPU it sets
    ``jax_num_cpu_devices`` (what ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
    does); GPUs are as many as there are (``devices`` then takes the first N).
    ``role`` (default ``Role.from_env()``): with ``world > 1``, ``jax.distributed.initialize
    (f"{master_addr}:{master_port}", world, rank)`` with Gloo CPU collectives, its heartbeat
    timeout ``peer_timeout`` (default :data:`DEFAULT_PEER_TIMEOUT`) + 30 s.

    Called again with the same request, it returns the devices; after JAX has started with
    fewer devices (or without ``jax.distributed``) it raises :class:`DistributedError`
    saying what to do instead."""
    n = _count(devices)
    role = Role.from_env() if role is None else role
    if _backend_started():
        have = jax.local_devices()
        if n is not None and len(have) < n:
            raise _too_late(n, have)
        if role.world > 1 and not jax.distributed.is_initialized():
            raise DistributedError(
                f"rank {role.rank} of {role.world}: JAX already started without "
                "jax.distributed: call d2lport.jax.distributed.setup() before any JAX "
                "computation (before create_model), in a fresh process")
        return have[:n] if n else have
    if n is not None:
        jax.config.update("jax_num_cpu_devices", n)
    if role.world > 1 and not jax.distributed.is_initialized():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        timeout = DEFAULT_PEER_TIMEOUT if peer_timeout is None else float(peer_timeout)
        jax.distributed.initialize(role.master, role.world, role.rank,
                                   heartbeat_timeout_seconds=int(math.ceil(timeout))
                                   + HEARTBEAT_MARGIN)
    have = jax.local_devices()
    if n is not None and len(have) < n:
        raise _too_late(n, have)
    return have[:n] if n else have


def _local_devices(devices, role: Role) -> List[jax.Device]:
    """The devices of this process for ``train``."""
    n = _count(devices)
    if isinstance(devices, (list, tuple)):
        local = set(jax.local_devices())
        if role.world > 1 or not set(devices) <= local:
            raise ValueError("devices as a list must be devices of this process (one process "
                             "only); with several processes give a number per process")
        return list(devices)
    return setup(n, role)


# ------------------------------------------------------------------------- the program
def _example_losses(outputs, y):
    """Cross-entropy per example (``main + 0.3 * aux`` with auxiliary heads), as
    ``train.loss_fn`` before its mean."""
    def ce(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    if isinstance(outputs, AuxOutputs):
        heads = (outputs.logits,) + tuple(outputs.aux)
        return sum(w * ce(o) for w, o in zip(combined_loss_weights(len(outputs.aux)), heads))
    return ce(outputs)


def _hits(outputs, y, w):
    logits = outputs.logits if isinstance(outputs, AuxOutputs) else outputs
    return jnp.sum(jnp.where(w > 0, jnp.argmax(logits, axis=1) == y, False))


def _step_fn(module, tx):
    """The global-view step ``(state, X, y, w, key, step) -> (state, loss, correct)``: the
    one-device step of train.py with the example weights ``w`` (0 for filler rows)."""

    def loss_of(params, others, X, y, w, key):
        outputs, updates = module.apply({"params": params, **others}, X, training=True,
                                        rngs={"dropout": key}, mutable=["batch_stats"])
        # The mean over the real examples of the global batch; XLA sums across devices.
        return jnp.sum(w * _example_losses(outputs, y)) / jnp.sum(w), (outputs, updates)

    def step(state, X, y, w, key, count):
        variables, opt_state = state["variables"], state["opt_state"]
        params = variables["params"]
        others = {k: v for k, v in variables.items() if k != "params"}
        (loss, (outputs, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            params, others, X, y, w, jax.random.fold_in(key, count))
        changes, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, changes)
        return ({"variables": {**variables, "params": params, **updates},
                 "opt_state": opt_state}, loss, _hits(outputs, y, w))

    return step


def _eval_fn(module):
    def hits(variables, X, y, w):
        return _hits(module.apply(variables, X, training=False), y, w)
    return hits


_COMPILED: "OrderedDict[tuple, Any]" = OrderedDict()     # the last few, newest last


def _compiled(kind, module, config, mesh, make, args):
    """``make()`` jitted with the mesh's shardings, compiled ahead of time for ``args``;
    kept across train() calls (the tests train the same net several times).  Returns
    (executable, seconds spent compiling now)."""
    key = (kind, module, config, tuple(mesh.devices.flat),
           tuple((a.shape, str(a.dtype)) for a in args[1:]))
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], 0.0
    started = time.perf_counter()
    _COMPILED[key] = make().lower(*args).compile()
    while len(_COMPILED) > 8:
        _COMPILED.popitem(last=False)
    return _COMPILED[key], time.perf_counter() - started


# ------------------------------------------------------------------------- the replicas
class _Replicas:
    """The mesh of this run and how host data becomes global arrays on it."""

    def __init__(self, local: List[jax.Device], role: Role):
        self.role, self.local = role, local
        if role.world > 1:
            if not jax.distributed.is_initialized():
                raise DistributedError(
                    f"rank {role.rank} of {role.world}: JAX's distributed runtime is not "
                    "initialised: call d2lport.jax.distributed.setup() before any JAX "
                    "computation (before create_model)")
            if (jax.process_count(), jax.process_index()) != (role.world, role.rank):
                raise DistributedError(
                    f"jax.distributed has process {jax.process_index()} of "
                    f"{jax.process_count()}, the role says rank {role.rank} of {role.world}: "
                    "call setup() with the same RANK/WORLD_SIZE")
            per = {}
            for d in jax.devices():
                per.setdefault(d.process_index, []).append(d)
            ordered = []
            for p in range(role.world):
                ordered += sorted(per.get(p, []), key=lambda d: d.id)[:len(local)]
            if len(ordered) != role.world * len(local):
                raise DistributedError(f"every process must drive {len(local)} device(s): "
                                       "give every machine the same --devices")
            self.devices = ordered
        else:
            self.devices = list(local)
        self.count = len(self.devices)
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.data = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.repl = NamedSharding(self.mesh, PartitionSpec())

    def replicate(self, tree):
        """A host (or one-device) tree as arrays replicated on every device of the mesh."""
        def put(a):
            a = np.asarray(a)
            return jax.make_array_from_callback(a.shape, self.repl, lambda index: a[index])
        return jax.tree_util.tree_map(put, tree)

    def to_local(self, tree):
        """Replicated arrays as arrays on this process's first device (what a one-device
        run leaves in ``net.variables``)."""
        return jax.tree_util.tree_map(lambda a: jax.device_put(a.addressable_data(0),
                                                               self.local[0]), tree)

    def batch(self, X, y, rows: int):
        """This process's shard ``(X, y)`` as global arrays ``(X, y, w)`` of ``count * rows``
        rows: each local device's part of the shard, completed to ``rows`` by filler rows of
        weight 0."""
        X, y = np.asarray(X), np.asarray(y, np.int32)
        parts = ([], [], [])
        for i, device in enumerate(self.local):
            start, stop = shard_bounds(len(y), i, len(self.local))
            n = stop - start
            if n > rows:
                raise AssertionError(f"{n} examples for a part of {rows} rows")
            fill = rows - n
            x_part = X[start:stop]
            if fill:
                x_part = np.concatenate([x_part, np.zeros((fill,) + X.shape[1:], X.dtype)])
            y_part = np.concatenate([y[start:stop], np.zeros(fill, np.int32)])
            w_part = np.concatenate([np.ones(n, np.float32), np.zeros(fill, np.float32)])
            for out, value in zip(parts, (x_part, y_part, w_part)):
                out.append(jax.device_put(value, device))
        total = self.count * rows
        return tuple(jax.make_array_from_single_device_arrays(
            (total,) + tuple(arrays[0].shape[1:]), self.data, arrays) for arrays in parts)

    def broadcast(self, tree):
        """Rank 0's values of a host tree, on every rank (numpy)."""
        if self.role.world == 1:
            return jax.tree_util.tree_map(np.asarray, tree)
        return multihost_utils.broadcast_one_to_all(jax.tree_util.tree_map(np.asarray, tree))

    def check_same(self, what: str, values: Sequence[int]) -> None:
        """Every rank must have rank 0's ``values`` (batch size, data, devices...)."""
        if self.role.world == 1:
            return
        mine = np.asarray(values, np.int64)
        first = self.broadcast(mine)
        if not np.array_equal(first, mine):
            raise DistributedError(f"rank {self.role.rank} has {what} {mine.tolist()}, rank 0 "
                                   f"{first.tolist()}: start every machine with the same "
                                   "arguments")


# ------------------------------------------------------------------------- peers
_PEER_SIGNS = ("gloo", "connection", "peer", "unavailable", "heartbeat", "coordination",
               "socket", "barrier")


def _peer_lost(err: BaseException, role: Role) -> None:
    """A collective failed because another process of the run died: one line, exit."""
    if (role.world == 1 or not isinstance(err, (RuntimeError, ValueError))
            or isinstance(err, (DistributedError, checkpoint.CheckpointError))):
        return
    text = str(err)
    if not any(sign in text.lower() for sign in _PEER_SIGNS):
        return
    first = " ".join(text.strip().splitlines()[0].split())[:200]
    sys.stdout.flush()
    print(f"d2lport: rank {role.rank}: lost another replica of this run ({first}); stopping "
          f"(exit status {EXIT_PEER_LOST}). Resume the whole run with --resume when all "
          "machines are back", file=sys.stderr, flush=True)
    # Not sys.exit: JAX's atexit shutdown would wait for the dead peer at a barrier and
    # then abort the process.
    os._exit(EXIT_PEER_LOST)


def _has_batch_norm(net: Model) -> bool:
    return bool(jax.tree_util.tree_leaves(net.variables.get("batch_stats", {})))


def _even_fix(num_examples: int, batch: int, replicas: int) -> str:
    """A ``--batch-size`` (else a ``--limit``) whose every batch splits evenly."""
    for b in range(batch, batch + 100 * replicas):
        if b % replicas == 0 and (num_examples % b) % replicas == 0:
            return f"--batch-size {b}"
    b = batch - batch % replicas or replicas
    return f"--batch-size {b} with --limit {num_examples - num_examples % replicas}"


def _check_even(num_examples: int, batch: int, replicas: int) -> None:
    last = num_examples % batch
    if batch % replicas or last % replicas:
        bad = batch if batch % replicas else last
        raise DistributedError(
            f"a BatchNorm net needs every global batch to split evenly over the {replicas} "
            f"replicas (filler rows would enter the batch statistics), but a batch of {bad} "
            f"of the {num_examples} examples does not: use "
            f"{_even_fix(num_examples, batch, replicas)}")


def _rate(lr: float, scaling: Optional[LinearScaling], batch: int):
    """The learning rate (a number) or optax schedule of :class:`LinearScaling`."""
    if scaling is None:
        return lr
    target = lr * scaling.factor(batch)
    if scaling.warmup_steps == 0:
        return target
    warm = scaling.warmup_steps
    return lambda count: lr + (target - lr) * jnp.minimum(count, warm) / warm


# ------------------------------------------------------------------------- train
def train(net: Model, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0, *,
          devices=None, role: Optional[Role] = None, seed: Optional[int] = None,
          sync_bn: bool = False, lr_scaling: Optional[LinearScaling] = None,
          progress: Optional[bool] = None, max_steps: Optional[int] = None,
          checkpoint_dir=None, resume: bool = False, checkpoint_every=None, keep: int = 3,
          settings: Optional[dict] = None, step_losses: Optional[list] = None,
          peer_timeout: Optional[float] = None) -> History:
    """Train ``net`` data-parallel; the arguments and History are those of
    ``d2lport.jax.train`` (float32, no ``amp``), plus:

    ``devices``: the devices this process drives: a number (the first N of
    ``jax.local_devices()``: GPUs if JAX has them, else CPU devices, of which there are as
    many as :func:`setup` or ``XLA_FLAGS`` made; more than exist is an error saying so) or a
    list of ``jax.Device``; default None: all of them.  ``role`` (default
    ``Role.from_env()``): the processes of the run, one per machine; every process drives
    the same number of devices, and the replicas are all their devices.
    ``train_iter``/``test_iter``: the loaders of ``load_data_fashion_mnist(B)``, ``B`` the
    global batch (sharded here).  ``sync_bn``: accepted and without effect: BatchNorm is
    always synchronized under jit + GSPMD (module docstring).  ``lr_scaling``: a
    :class:`~d2lport.distributed.LinearScaling` (default off).  ``step_losses``: a list the
    global mean loss of every step is appended to (before the update).  ``peer_timeout``
    (several processes): seconds without a finished step before this rank stops with
    ``EXIT_PEER_LOST`` (default 120; a dead peer is noticed at once by the next collective).
    Checkpoints are written by rank 0 and read by every rank (a directory all machines see).
    """
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    if not isinstance(net, Model):
        raise TypeError(f"expected a d2lport JAX Model (create_model's), got "
                        f"{type(net).__name__}")
    if lr_scaling is not None and not isinstance(lr_scaling, LinearScaling):
        raise TypeError("lr_scaling must be a d2lport.distributed.LinearScaling or None")
    if peer_timeout is not None and not float(peer_timeout) > 0:
        raise ValueError(f"peer_timeout must be a number of seconds > 0, got {peer_timeout!r}")
    role = Role.from_env() if role is None else role
    for loader in (train_iter, test_iter):
        if not hasattr(loader, "batches"):
            raise TypeError(f"{type(loader).__name__} is not a d2lport loader: data-parallel "
                            "training shards the loaders of load_data_fashion_mnist")
    replicas = _Replicas(_local_devices(devices, role), role)
    try:
        return _train(net, train_iter, test_iter, num_epochs, lr, optimizer, momentum,
                      weight_decay, replicas, seed, lr_scaling, progress, max_steps,
                      checkpoint_dir, resume, checkpoint_every, keep, settings, step_losses,
                      peer_timeout)
    except (RuntimeError, ValueError) as err:
        _peer_lost(err, role)      # a collective failed because a peer died: exits
        raise


def _train(net, train_iter, test_iter, num_epochs, lr, optimizer, momentum, weight_decay,
           replicas, seed, lr_scaling, progress, max_steps, checkpoint_dir, resume,
           checkpoint_every, keep, settings, step_losses, peer_timeout) -> History:
    role = replicas.role
    R, world = replicas.count, role.world
    batch = train_iter.batches.batch_size
    check_batches(train_iter.num_examples, batch, R)
    if _has_batch_norm(net):
        _check_even(train_iter.num_examples, batch, R)
    replicas.check_same("(devices per process, batch size, train and test examples)",
                        [len(replicas.local), batch, train_iter.num_examples,
                         test_iter.num_examples])
    parts = (shard_loader(train_iter, role.rank, world),
             shard_loader(test_iter, role.rank, world, "test"))

    model_name = net.spec.name
    run_settings = {"replicas": R, "processes": world, **(settings or {})}
    if lr_scaling is not None:
        run_settings["lr_scaling"] = [lr_scaling.base_batch, lr_scaling.warmup_steps]
    ck = checkpoint.open_run(checkpoint_dir, resume, "jax", model_name, train_iter,
                             optimizer, lr, momentum, weight_decay, seed, run_settings, keep,
                             checkpoint_every)
    config = (optimizer.lower(), float(lr), float(momentum), float(weight_decay),
              None if lr_scaling is None else (lr_scaling.base_batch,
                                               lr_scaling.warmup_steps, batch))
    tx = make_optimizer(config[0], _rate(lr, lr_scaling, batch), momentum, weight_decay)
    platform = replicas.devices[0].platform
    how = "jax.sharding, jit/GSPMD all-reduce"
    if world > 1:
        how += f", {world} processes, jax.distributed" + (", gloo" if platform == "cpu" else "")
    history = History(framework="jax", device=f"{R} x {platform} ({how})", model=model_name)
    if seed is not None:
        key = jax.random.PRNGKey(seed)
    else:
        net.rng, key = jax.random.split(net.rng)
    state = {"variables": net.variables, "opt_state": tx.init(net.variables["params"])}
    pos, skip, saved = checkpoint.TrainState(), 0, None
    if resume:
        quiet = (contextlib.nullcontext() if role.is_chief
                 else contextlib.redirect_stdout(io.StringIO()))
        with quiet:
            found = ck.latest()
            if found is None:
                print(f"no checkpoint in {ck.directory} yet: starting from scratch")
            else:
                path, pos = found
                state = _read(state, path)
                key = jnp.asarray(pos.rng.get("dropout_key", np.asarray(key).tolist()),
                                  jnp.uint32)
                skip = checkpoint.resume_position(ck, path, pos, parts[0])
                history.epochs = [dict(e) for e in pos.history]
                saved = (path, (pos.epoch, pos.batch, pos.step))
        replicas.check_same("the checkpoint step (the checkpoint directory must be the "
                            "same for every machine)", [pos.step])
    # Rank 0's weights for all, as DDP does (a rank with another seed still agrees).
    state, key = replicas.broadcast((state, key))
    loop = _Loop(net, replicas, config, tx, replicas.replicate(state),
                 replicas.replicate(key), ck, history, lr, step_losses)
    return loop.run(parts, num_epochs, progress, max_steps, pos, skip, saved, batch,
                    peer_timeout)


class _Loop:
    """The epochs of one data-parallel ``train`` call (train.py's ``_Loop``, on a mesh)."""

    def __init__(self, net, replicas, config, tx, state, key, ck, history, lr, step_losses):
        self.net, self.replicas, self.config, self.tx = net, replicas, config, tx
        self.state, self.key, self.ck, self.history, self.lr = state, key, ck, history, lr
        self.step_losses = step_losses
        self.saved = None
        self.role = replicas.role

    def step_of(self, X, y, w, count):
        """(the compiled step for these global arrays, seconds spent compiling now)."""
        r = self.replicas
        make = lambda: jax.jit(_step_fn(self.net.module, self.tx),  # noqa: E731
                               in_shardings=(r.repl, r.data, r.data, r.data, r.repl, r.repl),
                               out_shardings=(r.repl, r.repl, r.repl))
        return _compiled("step", self.net.module, self.config, r.mesh, make,
                         (self.state, X, y, w, self.key, count))

    def evaluate(self, test_part, watchdog) -> float:
        r = self.replicas
        variables = self.state["variables"]
        rows = math.ceil(test_part.batches.batch_size / r.count)
        make = lambda: jax.jit(_eval_fn(self.net.module),  # noqa: E731
                               in_shardings=(r.repl, r.data, r.data, r.data),
                               out_shardings=r.repl)
        hits = total = 0
        for X, y in test_part:
            Xg, yg, wg = r.batch(X, y, rows)
            watchdog.pause()                        # the first batch compiles
            run, _ = _compiled("eval", self.net.module, None, r.mesh, make,
                               (variables, Xg, yg, wg))
            watchdog.resume()
            hits += int(run(variables, Xg, yg, wg))
            total += test_part.batches.global_size
            watchdog.beat()
        return hits / max(total, 1)

    def save(self, epoch, batch, step, partial):
        if self.saved is not None and self.saved[1] == (epoch, batch, step):
            return self.saved[0]
        path = None
        if self.role.is_chief:                      # rank 0 writes; the others go on
            state = checkpoint.TrainState(epoch=epoch, batch=batch, step=step,
                                          history=self.history.to_records(),
                                          rng={"dropout_key": np.asarray(self.key).tolist()},
                                          partial=partial)
            snapshot = self.state
            path = self.ck.save(state, lambda tmp: _write(snapshot, Path(tmp)))
        self.saved = (path, (epoch, batch, step))
        return path

    def run(self, parts, num_epochs, progress, max_steps, pos, skip, saved, batch,
            peer_timeout):
        train_part, test_part = parts
        r, ck, history, chief = self.replicas, self.ck, self.history, self.role.is_chief
        self.saved = saved
        progress = (progress_default() if progress is None else progress) and chief
        # Training batches: every device holds `rows` rows of every global batch (the same
        # shape always); a BN net's batches split evenly (checked), so they need no filler.
        bn = _has_batch_norm(self.net)
        rows = math.ceil(batch / r.count)
        step, done, sums = pos.step, pos.batch, pos.partial or {}
        loss_sum, correct = sums.get("loss_sum", 0.0), sums.get("correct", 0)
        seen, seconds = sums.get("seen", 0), sums.get("seconds", 0.0)
        stepping = False
        per_epoch = (len(train_part) if max_steps is None
                     else min(len(train_part), max_steps))
        if skip:
            raise AssertionError("d2lport loaders resume by position")

        def partial():
            return dict(loss_sum=loss_sum, correct=correct, seen=seen,
                        seconds=time.perf_counter() - start if stepping else seconds)

        guard = checkpoint.InterruptGuard()
        watch = (StepWatchdog(DEFAULT_PEER_TIMEOUT if peer_timeout is None else peer_timeout,
                              self.role.rank) if self.role.world > 1 else None)
        watchdog = watch if watch is not None else _NoWatchdog()
        epoch, start = pos.epoch, time.perf_counter() - seconds
        try:
            with guard.installed(), (watch or contextlib.nullcontext()):
                for epoch in range(pos.epoch, num_epochs):
                    bar = Progress(progress, len(train_part), f"epoch {epoch + 1}/{num_epochs}")
                    bar.update(done)
                    start, stepping = time.perf_counter() - seconds, True
                    for i, (X, y) in enumerate(train_part, start=done):
                        if max_steps is not None and i >= max_steps:
                            break
                        n = train_part.batches.global_size
                        check_input(self.net.spec, np.shape(X))
                        Xg, yg, wg = r.batch(X, y, n // r.count if bn else rows)
                        count = r.replicate(np.int32(step))
                        watchdog.pause()
                        run, compiling = self.step_of(Xg, yg, wg, count)
                        watchdog.resume()
                        start += compiling                          # not training time
                        with guard.hold():
                            new, loss, right = run(self.state, Xg, yg, wg, self.key, count)
                            value, right = float(loss), int(right)
                            self.state, step, done = new, step + 1, i + 1
                            loss_sum, correct, seen = (loss_sum + value * n, correct + right,
                                                       seen + n)
                        watchdog.beat()
                        if self.step_losses is not None:
                            self.step_losses.append(value)
                        checkpoint.check_loss(value, step, epoch + 1, self.lr, ck)
                        checkpoint.after_step(step)
                        bar.update(1, loss=loss_sum / seen)
                        if ck is not None and done < per_epoch and ck.due(step):
                            saving = time.perf_counter()
                            watchdog.pause()
                            self.save(epoch, done, step, partial())
                            watchdog.resume()
                            start += time.perf_counter() - saving   # not training time
                    seconds, stepping = time.perf_counter() - start, False
                    bar.close()
                    test_acc = self.evaluate(test_part, watchdog)
                    history.append(epoch=epoch + 1, loss=loss_sum / max(seen, 1),
                                   train_acc=correct / max(seen, 1), test_acc=test_acc,
                                   examples_per_sec=seen / max(seconds, 1e-9), seconds=seconds)
                    done, loss_sum, correct, seen, seconds = 0, 0.0, 0, 0, 0.0
                    if ck is not None:
                        watchdog.pause()
                        self.save(epoch + 1, 0, step, {})
                        watchdog.resume()
        except KeyboardInterrupt:
            if ck is None:
                raise
            finished = len(history.epochs)
            path = (self.save(finished, 0, step, {}) if finished > epoch
                    else self.save(epoch, done, step, partial()))
            if chief:
                print(checkpoint.interrupted_message(path, step, epoch + 1))
            raise
        finally:
            self.net.variables = r.to_local(self.state["variables"])
        return history


class _NoWatchdog:
    def beat(self):
        pass

    pause = resume = beat


# ------------------------------------------------------------------------- commands
def command(argv: Sequence[str], devices, nodes: int = 1, node_rank: int = 0,
            master: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """This machine's command: one process drives this machine's devices (:func:`d2lport.distributed.machine_command`)."""
    return machine_command(argv, devices, nodes, node_rank, master, python)


def node_processes(role: Role, devices: int) -> list:
    """None needed: ``jax.distributed``'s coordination service runs inside process 0."""
    return []


def multinode_hint(argv: Sequence[str], devices: int, nodes: int) -> str:
    """The commands to type on each of ``nodes`` machines."""
    args = " ".join(strip_options(argv))
    lines = [f"JAX, {nodes} machine(s) x {devices} device(s): one process per machine; "
             "on machine K (K = 0 ... "
             f"{nodes - 1}), with HOST:PORT the first machine's address and a port free there:"]
    for k in range(nodes):
        lines.append(f"  machine {k}: d2lport {args} --devices {devices} --nodes {nodes} "
                     f"--node-rank {k} --master HOST:PORT")
    lines.append("(on one machine, for a try: HOST 127.0.0.1 and a free port, e.g. "
                 f"{free_port()}; every machine needs the data and a --checkpoint-dir "
                 "they all see)")
    return "\n".join(lines)
