"""Data parallelism, the framework-free part: who is who, which examples each replica sees,
the learning-rate rule for a larger batch, and the processes of a run on one machine.

Every backend drives its own engine (``d2lport/<framework>/distributed.py``): PyTorch's
``DistributedDataParallel`` (one process per device, started by torchrun's machinery),
TensorFlow's ``MirroredStrategy`` / ``MultiWorkerMirroredStrategy``, MXNet's multi-context
Gluon ``Trainer`` with a kvstore, JAX's ``jax.sharding`` over a mesh of devices.  What they
share is here:

* **The data.**  A global batch of ``B`` examples, drawn from d2lport's seeded order exactly
  as on one device, is cut into ``world`` contiguous shards whose sizes differ by at most one
  (:func:`shard_bounds`): every example of the batch is seen once, none is repeated to pad a
  shard.  Each engine averages the replicas' gradients; with shards of unequal size that
  average is not the batch's mean gradient, so each replica scales its mean loss by
  :func:`loss_weight` (``n_local * world / B``) and the average becomes the mean over the
  batch again: a data-parallel step computes what one device computes on the whole batch.
* **Who is who.**  A replica's rank, the number of replicas and where the first one listens
  come in torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) in every framework; each backend
  translates them to its engine's own (``TF_CONFIG``, ``DMLC_*``,
  ``jax.distributed.initialize``).  :class:`Role` reads them.
* **The learning rate of a larger batch** (:class:`LinearScaling`): off by default, so that a
  data-parallel run and a one-device run with the same global batch compare like with like.
* **Processes on one machine** (:func:`launch`): starts them, prefixes their output, and when
  one fails stops the others (a rank whose peer died may otherwise wait forever inside the
  engine's collective); :class:`StepWatchdog` ends a replica that makes no progress for a
  stated time, for engines that never give up by themselves (MXNet's ``dist_sync``).

This module imports no framework.
"""
from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

EXIT_PEER_LOST = 4          # `d2lport train`: another replica of the run died or stalled
DEFAULT_PORT = 29500        # torchrun's default MASTER_PORT


class DistributedError(RuntimeError):
    """A data-parallel run cannot start or go on; the message says why and what to do."""


class PeerLostError(DistributedError):
    """Another replica of the run died or stalled (``d2lport train`` exits with
    :data:`EXIT_PEER_LOST`); the message names it where the engine says which."""


# ---------------------------------------------------------------------------- who is who
@dataclass(frozen=True)
class Role:
    """One replica's place in a run: ``rank`` of ``world`` replicas (processes), the
    ``local_rank`` among the ``local_world`` on its machine, and the address of rank 0."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise DistributedError(f"rank {self.rank} of {self.world} replicas: a rank is "
                                   f"0..{self.world - 1} (set RANK and WORLD_SIZE so)")
        if not 0 <= self.local_rank < max(self.local_world, 1):
            raise DistributedError(f"local rank {self.local_rank} of {self.local_world}: set "
                                   "LOCAL_RANK below LOCAL_WORLD_SIZE")

    @property
    def is_chief(self) -> bool:
        """Rank 0: the replica that logs, writes checkpoints and returns the history."""
        return self.rank == 0

    @property
    def master(self) -> str:
        return f"{self.master_addr}:{self.master_port}"

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Role":
        """The role torchrun's variables give this process; one replica when there are none."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()

        def number(name, default):
            value = env.get(name, str(default))
            try:
                return int(value)
            except ValueError:
                raise DistributedError(f"{name}={value!r} is not a whole number: set it to "
                                       "one (or unset it for a one-process run)") from None
        world = number("WORLD_SIZE", 1)
        return cls(rank=number("RANK", 0), world=world, local_rank=number("LOCAL_RANK", 0),
                   local_world=number("LOCAL_WORLD_SIZE", world),
                   master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=number("MASTER_PORT", DEFAULT_PORT))

    def env(self) -> Dict[str, str]:
        """This role as torchrun's environment variables (for a child process)."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world),
                "LOCAL_RANK": str(self.local_rank), "LOCAL_WORLD_SIZE": str(self.local_world),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def parse_master(value: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``--master``) as ``(host, port)``."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--master {value!r}: give the first machine's address as HOST:PORT, "
                         f"e.g. --master 10.0.0.1:{DEFAULT_PORT}")
    return host, int(port)


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a run on this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ the data
def shard_bounds(n: int, rank: int, world: int) -> Tuple[int, int]:
    """``[start, stop)`` of replica ``rank``'s contiguous part of ``n`` examples: the first
    ``n % world`` replicas get one more, so the sizes differ by at most one."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of {world} replicas")
    base, extra = divmod(int(n), world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def loss_weight(n_local: int, n_global: int, world: int) -> float:
    """The factor on a replica's mean loss that makes the engines' average of the replicas'
    gradients the mean gradient of the whole batch: ``n_local * world / n_global`` (1 when
    the shards are equal)."""
    if n_global < 1:
        raise ValueError("an empty global batch has no mean loss")
    return n_local * world / n_global


def check_batches(num_examples: int, batch_size: int, world: int, what: str = "training") -> None:
    """Every global batch must give every replica at least one example."""
    if batch_size < world:
        raise DistributedError(
            f"batch size {batch_size} is smaller than the {world} replicas: every replica needs "
            f"examples; use --batch-size {world} or more (it is the global batch, split "
            "among the replicas)")
    last = num_examples % batch_size
    if 0 < last < world:
        raise DistributedError(
            f"the last {what} batch has {last} example(s) for {world} replicas: choose a batch "
            f"size that leaves 0 or at least {world} (e.g. --batch-size "
            f"{_fitting_batch(num_examples, batch_size, world)}) or another --limit")


def _fitting_batch(n: int, batch: int, world: int) -> int:
    for b in range(batch + 1, batch + 10 * world + 2):
        if not 0 < n % b < world:
            return b
    return batch + world


class ShardedBatches:
    """One replica's part of an :class:`~d2lport.loader.ArrayBatches`: the same global
    batches in the same seeded order, each cut by :func:`shard_bounds`.  ``global_size`` is
    the size of the global batch whose shard was yielded last (for :func:`loss_weight`);
    ``len()`` and ``resume_at`` count global batches, so a position means the same on every
    replica and in a one-device run."""

    def __init__(self, batches, rank: int, world: int, what: str = "training"):
        check_batches(batches.num_examples, batches.batch_size, world, what)
        self.batches, self.rank, self.world = batches, rank, world
        self.global_size = 0

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_examples(self) -> int:
        """Examples of the whole split (all replicas together)."""
        return self.batches.num_examples

    @property
    def batch_size(self) -> int:
        """The global batch size."""
        return self.batches.batch_size

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    def resume_at(self, epoch: int, batch: int = 0) -> None:
        self.batches.resume_at(epoch, batch)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for images, labels in self.batches:
            start, stop = shard_bounds(len(labels), self.rank, self.world)
            self.global_size = len(labels)
            yield images[start:stop], labels[start:stop]


def shard_loader(loader, rank: int, world: int, what: str = "training"):
    """A copy of a backend's Fashion-MNIST loader (a :class:`~d2lport.loader.BatchLoader`)
    that yields replica ``rank``'s shard of every batch, converted by the backend as usual.
    The loader given is left as it is."""
    if not hasattr(loader, "batches"):
        raise TypeError(f"{type(loader).__name__} is not a d2lport loader: data-parallel "
                        "training shards the loaders of load_data_fashion_mnist")
    part = copy.copy(loader)
    part.batches = ShardedBatches(loader.batches, rank, world, what)
    return part


# ----------------------------------------------------------------- a larger batch's rate
@dataclass(frozen=True)
class LinearScaling:
    """The linear scaling rule with gradual warm-up (Goyal et al., 2017, "Accurate, Large
    Minibatch SGD: Training ImageNet in 1 Hour", sec. 2.1-2.2): a learning rate ``lr`` tuned
    for batches of ``base_batch`` becomes ``lr * global_batch / base_batch``, reached
    linearly from ``lr`` over the first ``warmup_steps`` steps (they warm up over 5 epochs).
    Off unless asked for (``--scale-lr BASE``): equality tests compare like with like."""
    base_batch: int
    warmup_steps: int = 0

    def __post_init__(self):
        if self.base_batch < 1 or self.warmup_steps < 0:
            raise ValueError(f"linear scaling needs a base batch >= 1 and warm-up steps >= 0, "
                             f"got {self.base_batch} and {self.warmup_steps}")

    def factor(self, global_batch: int) -> float:
        return global_batch / self.base_batch

    def lr_at(self, lr: float, step: int, global_batch: int) -> float:
        """The rate of optimizer step ``step`` (0-based)."""
        target = lr * self.factor(global_batch)
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return target
        return lr + (target - lr) * step / self.warmup_steps


# ------------------------------------------------------------- processes on one machine
class StepWatchdog:
    """Ends this process (exit status :data:`EXIT_PEER_LOST`) with a one-line message when
    no training step finishes for ``timeout`` seconds: the symptom of a peer that died while
    this replica waits in a collective the engine never abandons.  ``beat()`` after every
    step; ``pause()``/``resume()`` around work that may rightly take long (evaluation, a
    checkpoint, the first step's compilation)."""

    def __init__(self, timeout: float, rank: int = 0, what: str = "step"):
        self.timeout, self.rank, self.what = float(timeout), rank, what
        self._last, self._paused = time.monotonic(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="d2lport-watchdog", daemon=True)

    def __enter__(self):
        self._last = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def beat(self) -> None:
        self._last = time.monotonic()

    def pause(self) -> None:
        self._paused += 1

    def resume(self) -> None:
        self._paused = max(self._paused - 1, 0)
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            if not self._paused and time.monotonic() - self._last > self.timeout:
                print(f"d2lport: rank {self.rank}: no {self.what} finished in "
                      f"{self.timeout:g} s: another replica of this run has died or stalled; "
                      f"stopping (exit status {EXIT_PEER_LOST}). Resume the whole run with "
                      "--resume when all machines are back", file=sys.stderr, flush=True)
                os._exit(EXIT_PEER_LOST)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch(commands: Sequence[Sequence[str]], envs: Sequence[Mapping[str, str]] = (),
           grace: float = 30.0, prefix: bool = True, poll: float = 0.2) -> int:
    """Run one process per command (rank ``i`` gets ``commands[i]`` and ``envs[i]`` on top of
    this environment), their output prefixed ``[rank i]``; return 0 when all succeed.

    When one fails, the others get ``grace`` seconds to end by themselves (their engine
    notices the lost peer, or their :class:`StepWatchdog` does), then SIGTERM, then SIGKILL;
    the first failure's status is returned (:data:`EXIT_PEER_LOST` for a killed process)."""
    procs: List[subprocess.Popen] = []
    pumps: List[threading.Thread] = []
    try:
        for i, cmd in enumerate(commands):
            env = dict(os.environ)
            env.update(envs[i] if i < len(envs) else {})
            p = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            t = threading.Thread(target=_pump, args=(p, f"[rank {i}] " if prefix else ""),
                                 daemon=True)
            t.start()
            pumps.append(t)
        first: Optional[Tuple[int, int]] = None
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed and first is None:
                first = failed[0]
                others = [i for i, c in enumerate(codes) if c is None]
                print(f"d2lport: rank {first[0]} {_describe(first[1])}"
                      + (f"; ranks {', '.join(map(str, others))} get {grace:g} s to stop, then "
                         "are stopped" if others else ""), file=sys.stderr, flush=True)
                _stop_after(procs, grace, poll)
            if all(c is not None for c in codes) or first is not None:
                break
            time.sleep(poll)
        for t in pumps:
            t.join(timeout=5)
        if first is None:
            return 0
        return first[1] if first[1] > 0 else EXIT_PEER_LOST
    finally:
        for p in procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGKILL)
                p.wait()


def _stop_after(procs, grace: float, poll: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(poll)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            _signal_group(p, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end and any(p.poll() is None for p in alive):
            time.sleep(poll)


def _signal_group(p: subprocess.Popen, sig) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pump(p: subprocess.Popen, tag: str) -> None:
    for line in iter(p.stdout.readline, b""):
        sys.stdout.write(tag + line.decode(errors="replace"))
        sys.stdout.flush()
    p.stdout.close()


PLACEMENT_OPTIONS = ("--devices", "--nodes", "--node-rank", "--master")


def strip_options(argv: Sequence[str], names: Sequence[str] = PLACEMENT_OPTIONS) -> List[str]:
    """``argv`` without the options ``names`` and their values (``--opt V`` or
    ``--opt=V``): a launcher adds its own."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.split("=", 1)[0] in names:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def machine_command(argv: Sequence[str], devices, nodes: int = 1, node_rank: int = 0,
                    master: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """This machine's command where ONE process per machine drives its ``devices`` devices
    (TensorFlow, MXNet, JAX: no launcher): ``d2lport train ... --devices N``, with
    ``--nodes/--node-rank/--master`` for several machines.  ``argv``: the arguments after
    ``d2lport``; placement options in it are replaced."""
    cmd = [python or sys.executable, "-m", "d2lport.cli", *strip_options(argv), "--devices",
           str(devices)]
    if nodes > 1:
        if master is None:
            raise DistributedError(f"{nodes} machines need --master HOST:PORT (machine 0's "
                                   "address and a free port on it)")
        parse_master(master)
        cmd += ["--nodes", str(nodes), "--node-rank", str(node_rank), "--master", master]
    return cmd


def node_commands(argv: Sequence[str], nodes: int, port: Optional[int] = None,
                  python: Optional[str] = None) -> List[List[str]]:
    """The ``d2lport train`` command of each of ``nodes`` machines, all on this one (the
    loopback interface standing in for the network): ``argv`` are the arguments after
    ``d2lport``, without ``--nodes``/``--node-rank``/``--master``."""
    port = port or free_port()
    python = python or sys.executable
    return [[python, "-m", "d2lport.cli", *argv, "--nodes", str(nodes), "--node-rank",
             str(k), "--master", f"127.0.0.1:{port}"] for k in range(nodes)]

