"""Data-parallel training for the PyTorch backend: ``DistributedDataParallel`` (DDP), one
process per device, started by torchrun's machinery (``python -m torch.distributed.run``).

``from d2lport.torch import distributed`` (the one-device path, :func:`d2lport.torch.train`,
never imports this module).  Each process runs :func:`train` on the same network and the same
loaders; DDP broadcasts rank 0's weights when it wraps the network and averages the gradients
over the processes during ``backward`` (an all-reduce per bucket of gradients: gloo between
CPU processes, NCCL between GPUs), so every replica makes the same update and the replicas
stay equal without ever exchanging weights again.

The data: ``train_iter``/``test_iter`` are the ordinary loaders of
``load_data_fashion_mnist(global_batch)``; every process cuts its own contiguous part out of
every global batch (:func:`d2lport.distributed.shard_loader`: the same seeded order as a
one-device run, shard sizes differing by at most one, no example repeated), and scales its
mean loss by :func:`d2lport.distributed.loss_weight`, so DDP's average of the replicas'
gradients is the mean gradient of the whole global batch, uneven last batch included: a
2-process step computes what one process computes on the whole batch.

Processes: on one machine ``python -m torch.distributed.run --standalone --nproc-per-node N
-m d2lport.cli train ...`` (:func:`command`; ``d2lport train ... --devices N`` runs it),
on M machines the same with ``--nnodes M --node-rank K --master-addr HOST --master-port
PORT`` on each (:func:`multinode_hint`).  torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` in every process it
starts; :class:`d2lport.distributed.Role` reads them.  Without them :func:`train` is one
replica (a DDP process group of one).

BatchNorm: by default DDP keeps BatchNorm local, each replica normalising with the mean and
variance of its own shard (per-device statistics), and broadcasts rank 0's running
statistics (buffers) to the others at every forward pass (``broadcast_buffers=True``), so the
running statistics kept are rank 0's.  ``sync_bn=True`` converts every BatchNorm layer to
``nn.SyncBatchNorm`` (statistics of the whole global batch, all-gathered every step), which
PyTorch implements for CUDA (and XPU/HPU) tensors only: on CPU processes (gloo) it raises
:class:`d2lport.distributed.DistributedError` before training.

A lost replica: gloo notices a peer whose connection closes (a killed process) at once and
raises inside the collective; a stalled peer is given up after ``peer_timeout`` seconds (the
process group's own timeout).  Either way this replica prints one line on stderr and exits
with status :data:`d2lport.distributed.EXIT_PEER_LOST`.  Under torchrun the agent also stops
the survivors itself (SIGTERM, its monitor looks every 0.1 s), which ends them with the same
line and status.  With NCCL (GPUs), which notices nothing by itself, a
:class:`~d2lport.distributed.StepWatchdog` of ``peer_timeout`` seconds between training steps
does it; during evaluation and checkpoint writing NCCL's own timeout (``peer_timeout`` + 30
s) ends the process with NCCL's message instead.  (The NCCL path is written from PyTorch's
documentation and has not run here: this machine has no GPU.)
"""
from __future__ import annotations

import datetime
import io
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import checkpoint
from .. import distributed as core
from ..common import History, Progress, progress_default
from ..distributed import EXIT_PEER_LOST, DistributedError, Role
from .train import (_PAYLOAD, _load_payload, _logits, _optimizer, _prepare, loss_fn)

MODE = "processes"
DEFAULT_PEER_TIMEOUT = 300.0     # seconds; also bounds a legitimately slow peer (first step,
                                 # a checkpoint being written by rank 0)
JOIN_TIMEOUT = 600.0             # seconds every process has to arrive at the start
ENGINE = "DistributedDataParallel"


# ---------------------------------------------------------------------------- set-up
def setup(devices) -> int:
    """PyTorch needs nothing set up before it initialises: every process drives one device
    chosen when :func:`train` runs (``cuda:LOCAL_RANK``, or the CPU).  Checks ``devices``
    (processes on this machine) and returns it, for the same interface as the backends that
    must configure devices first (TensorFlow, JAX)."""
    return _check_devices(devices)


def _check_devices(devices) -> int:
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise DistributedError(
            f"devices must be a whole number >= 1 (PyTorch: processes on this machine, one "
            f"per device), got {devices!r}")
    return devices


def _device_for(role: Role) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is there, else the CPU (``CUDA_VISIBLE_DEVICES=`` forces
    CPU processes on a GPU machine)."""
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        if role.local_world > n:
            raise DistributedError(
                f"{role.local_world} processes on this machine but CUDA sees {n} GPU(s): one "
                f"process per GPU (--devices {n}), or CPU processes with CUDA_VISIBLE_DEVICES=")
        return torch.device("cuda", role.local_rank)
    return torch.device("cpu")


# ---------------------------------------------------------------------------- commands
def command(argv: Sequence[str], devices: int, nodes: int = 1, node_rank: int = 0,
            master: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """The command that starts this machine's ``devices`` processes with torchrun's machinery
    (``python -m torch.distributed.run``, what the ``torchrun`` script runs), each running
    ``python -m d2lport.cli <argv>``.

    One machine (``nodes == 1``, no ``master``): ``--standalone`` (a local rendezvous on a
    free port).  Several: ``--nnodes M --node-rank K --master-addr HOST --master-port PORT``
    (torchrun's static rendezvous: machine 0's agent hosts the store on HOST:PORT).
    """
    devices = _check_devices(devices)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise DistributedError(f"nodes must be a whole number >= 1, got {nodes!r}")
    if not (isinstance(node_rank, int) and 0 <= node_rank < nodes):
        raise DistributedError(f"node rank {node_rank!r} of {nodes} machines: it is 0..{nodes - 1}")
    cmd = [python or sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1 and master is None:
        cmd += ["--standalone", "--nproc-per-node", str(devices)]
    else:
        if master is None:
            raise DistributedError(f"{nodes} machines need --master HOST:PORT (machine 0's "
                                   "address and a free port on it)")
        host, port = core.parse_master(master)
        cmd += ["--nnodes", str(nodes), "--node-rank", str(node_rank),
                "--nproc-per-node", str(devices), "--master-addr", host,
                "--master-port", str(port)]
    return cmd + ["-m", "d2lport.cli", *argv]


def node_processes(role: Role, devices) -> list:
    """PyTorch starts no extra processes (no scheduler or servers): torchrun's agent on
    machine 0 hosts the rendezvous store itself.  Always ``[]``."""
    return []


def multinode_hint(argv: Sequence[str], devices: int, nodes: int) -> str:
    """What to type on each of ``nodes`` machines (``devices`` processes each)."""
    lines = [f"# PyTorch DDP on {nodes} machines x {devices} process(es): on machine K "
             f"(K = 0..{nodes - 1}), with HOST = machine 0's address as the others reach it "
             f"and PORT free on it:"]
    for k in range(nodes):
        cmd = command(argv, devices, nodes, k, f"HOST:{core.DEFAULT_PORT}", python="python")
        lines.append(f"#   machine {k}:")
        lines.append("    " + " ".join(_quote(c) for c in cmd))
    lines.append("# The same code, data (or --limit) and settings on every machine; the "
                 "network between them open on PORT and on the ports gloo/NCCL pick; "
                 "GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME name the interface to use when a "
                 "machine has several. Checkpoints are written by rank 0 (machine 0) only, "
                 "and read only there on --resume.")
    return "\n".join(lines)


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s) if s != "HOST" else s


# ---------------------------------------------------------------------------- training
def train(net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0, *,
          devices=None, role: Optional[Role] = None, seed: Optional[int] = None,
          sync_bn: bool = False, lr_scaling: Optional[core.LinearScaling] = None,
          progress: Optional[bool] = None, max_steps: Optional[int] = None,
          checkpoint_dir=None, resume: bool = False, checkpoint_every=None, keep: int = 3,
          settings: Optional[dict] = None, step_losses: Optional[list] = None,
          peer_timeout: Optional[float] = None) -> History:
    """Train ``net`` data-parallel with ``DistributedDataParallel``; every process of the
    run calls this with the same arguments.  Returns the per-epoch :class:`History`, the
    same numbers on every replica (loss and accuracies over the whole global batches and
    the whole test set); ``history.device`` says what ran, e.g.
    ``"2 x cpu (DistributedDataParallel, gloo)"``.  The trained weights are in ``net``.

    ``train_iter``/``test_iter``: loaders of ``load_data_fashion_mnist(global_batch)``,
    sharded here.  ``devices``: the processes on this machine (torchrun's
    ``--nproc-per-node``; default ``LOCAL_WORLD_SIZE``); a value above 1 in a process that
    torchrun did not start is an error that names the command to use (:func:`command`).
    ``role``: default :meth:`Role.from_env` (torchrun's variables).  Device: ``cuda:LOCAL_RANK``
    with NCCL when CUDA is there, else the CPU with gloo; on CPU each process takes
    ``cpu_count // processes`` threads unless ``OMP_NUM_THREADS`` is set (torchrun sets 1).

    ``seed``: replica ``r`` seeds ``seed + r`` (dropout masks differ between shards; rank 0
    draws what a one-device run draws).  ``sync_bn``: see the module's docstring (default:
    per-replica BatchNorm statistics).  ``lr_scaling``: a
    :class:`d2lport.distributed.LinearScaling` (default off: ``lr`` as given).
    ``step_losses``: a list that receives the global mean loss of every step.

    Checkpoints (``checkpoint_dir``, ``resume``, ``checkpoint_every``, ``keep``) as
    :func:`d2lport.torch.train`, the same layout and payload: rank 0 writes them (with every
    replica's RNG state) and on resume reads them and sends them to the others, so only
    machine 0 needs the directory.  A checkpoint of a data-parallel run resumes in a
    one-device run and vice versa (same global batch).

    ``peer_timeout`` (default 300 s): see the module's docstring; a lost peer ends this
    process with exit status :data:`~d2lport.distributed.EXIT_PEER_LOST`.
    """
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    checkpoint.parse_every(checkpoint_every)            # a bad value fails on every rank
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir=...")
    if lr_scaling is not None and not isinstance(lr_scaling, core.LinearScaling):
        raise TypeError("lr_scaling must be a d2lport.distributed.LinearScaling or None")
    peer_timeout = DEFAULT_PEER_TIMEOUT if peer_timeout is None else float(peer_timeout)
    if not peer_timeout > 0:
        raise ValueError(f"peer_timeout must be a number of seconds > 0, got {peer_timeout!r}")
    role = Role.from_env() if role is None else role
    if devices is not None:
        _check_devices(devices)
        if role.world == 1 and devices > 1:
            raise DistributedError(
                f"devices={devices}: PyTorch's DDP runs one process per device, and this "
                "process is alone (no WORLD_SIZE): start them with torchrun's machinery, "
                f"e.g. `python -m torch.distributed.run --standalone --nproc-per-node "
                f"{devices} -m d2lport.cli train MODEL -f torch --devices {devices} ...` "
                "(`d2lport train ... --devices N` does it), or pass devices=1")
        if role.world > 1 and devices != role.local_world:
            raise DistributedError(
                f"devices={devices} but this run has {role.local_world} process(es) on this "
                f"machine (LOCAL_WORLD_SIZE): give --nproc-per-node and --devices the same "
                "number")
    part_train = core.shard_loader(train_iter, role.rank, role.world, "training")
    part_test = core.shard_loader(test_iter, role.rank, role.world, "test")
    device = _device_for(role)
    if sync_bn and device.type != "cuda":
        raise DistributedError(
            f"sync_bn: PyTorch {torch.__version__}'s nn.SyncBatchNorm works on GPUs only "
            "(its forward pass refuses CPU tensors); on CPU each replica normalises with its "
            "own shard's statistics: train without --sync-bn, or on GPUs")
    progress = (progress_default() if progress is None else progress) and role.is_chief

    if device.type == "cpu":
        torch.set_flush_denormal(True)     # as d2lport.torch.train (denormals are slow on x86)
        warnings.filterwarnings("ignore", message="The value of the smallest subnormal",
                                category=UserWarning)
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // role.local_world))
    else:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if seed is not None:
        torch.manual_seed(seed + role.rank)

    created, group = _init_group(role, device, peer_timeout)
    try:
        return _run(net, part_train, part_test, num_epochs, lr, optimizer, momentum,
                    weight_decay, role, device, group, seed, sync_bn, lr_scaling, progress,
                    max_steps, checkpoint_dir, resume, checkpoint_every, keep, settings,
                    step_losses, peer_timeout)
    finally:
        # One replica: the in-process group goes.  Several: the default group stays for
        # the life of the process (a later train() joins it again: re-creating it on the
        # same store, torchrun's or rank 0's, races with the peers' own teardown).
        if created and role.world == 1 and dist.is_initialized():
            dist.destroy_process_group()
        elif dist.is_initialized():
            dist.destroy_process_group(group)


def _init_group(role: Role, device: torch.device, timeout: float):
    """Join (or create) the default process group, then make the group training uses: the
    same processes, with ``timeout`` as the time a collective may wait for a peer.  (The
    default group waits up to JOIN_TIMEOUT for every process to arrive, which may rightly
    take long: another machine started later, torch imported slowly.)  Returns (whether
    this call created the default group, the training group)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    # NCCL's own timeout a little after the watchdog's, so that the watchdog's line comes.
    peer = datetime.timedelta(seconds=timeout + (30 if backend == "nccl" else 0))
    if dist.is_initialized():
        if dist.get_world_size() != role.world or dist.get_rank() != role.rank:
            raise DistributedError(
                f"a process group of {dist.get_world_size()} (rank {dist.get_rank()}) is "
                f"already initialised in this process, but this run is rank {role.rank} of "
                f"{role.world}: call torch.distributed.destroy_process_group() first")
        return False, dist.new_group(timeout=peer)
    join = datetime.timedelta(seconds=max(timeout, JOIN_TIMEOUT))
    kwargs = dict(backend=backend, rank=role.rank, world_size=role.world, timeout=join)
    if backend == "nccl":
        kwargs["device_id"] = device
    try:
        if role.world == 1:
            # One replica: an in-process store, no port.
            dist.init_process_group(store=dist.HashStore(), **kwargs)
        else:
            # tcp:// uses torchrun's agent store when torchrun started us
            # (TORCHELASTIC_USE_AGENT_STORE), else rank 0 hosts one on MASTER_PORT.
            dist.init_process_group(
                init_method=f"tcp://{role.master_addr}:{role.master_port}", **kwargs)
        return True, dist.new_group(timeout=peer)
    except (RuntimeError, ValueError) as err:   # DistNetworkError, DistStoreError too
        if dist.is_initialized():
            dist.destroy_process_group()
        raise DistributedError(
            f"rank {role.rank} of {role.world} could not join the run at {role.master} "
            f"({_first_line(err)}): start every process within {join.total_seconds():g} s, "
            "with the same --master, reachable from every machine") from None


def _is_dist_failure(err: BaseException) -> bool:
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe",
        "Timed out", "timed out", "NCCL", "Gloo", "gloo", "ProcessGroup"))


def _first_line(err: BaseException) -> str:
    """The engine's error, short: no source location, its first sentence or so."""
    text = (str(err).strip().splitlines() or [""])[0]
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text)
    text = text.split(". This is typically")[0]
    return (text[:157] + "...") if len(text) > 160 else text


def _peer_lost(role: Role, err: BaseException, what: str) -> None:
    print(f"d2lport: rank {role.rank}: {what}: another replica of this run has died or "
          f"stalled ({_first_line(err)}); stopping (exit status {EXIT_PEER_LOST}). Resume the "
          "whole run with --resume when all machines are back", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)


class _Terminated:
    """SIGTERM while training (torchrun's agent stops every replica when one fails, and so
    does d2lport.distributed.launch): one line and EXIT_PEER_LOST instead of a silent death."""

    def __init__(self, role: Role):
        self.role, self.previous = role, None

    def _handler(self, signum, frame):
        print(f"d2lport: rank {self.role.rank}: stopped by SIGTERM: the launcher (torchrun's "
              "agent) stops every replica when another one fails (its report names it), or "
              f"the run was stopped; exit status {EXIT_PEER_LOST}. Resume the whole run with "
              "--resume", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST)

    def __enter__(self):
        if (self.role.world > 1 and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _reduce(values, device, group) -> List[float]:
    """Sum ``values`` (floats) over the replicas."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return t.tolist()


@torch.no_grad()
def _count(net, loader, device, channels_last: bool):
    """(correct, examples) of this replica's shard of the test set, in evaluation mode."""
    was_training = net.training
    net.eval()
    correct = total = 0
    for X, y in loader:
        y = y.to(device)
        pred = _logits(net(_prepare(X, device, channels_last))).argmax(dim=1)
        correct += int((pred == y).sum())
        total += y.numel()
    net.train(was_training)
    return correct, total


def _run(net, train_iter, test_iter, num_epochs, lr, optimizer, momentum, weight_decay,
         role, device, group, seed, sync_bn, lr_scaling, progress, max_steps, checkpoint_dir,
         resume, checkpoint_every, keep, settings, step_losses, peer_timeout) -> History:
    backend = dist.get_backend()
    channels_last = True
    amp = device.type == "cuda"
    if sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net, process_group=group)
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    opt = _optimizer(optimizer, net.parameters(), lr, momentum, weight_decay)
    model_name = getattr(getattr(net, "spec", None), "name", type(net).__name__)
    nodes = max(role.world // max(role.local_world, 1), 1)
    where = f", {nodes} machines" if nodes > 1 else ""
    history = History(framework="torch", model=model_name,
                      device=f"{role.world} x {device.type} ({ENGINE}, {backend}{where})")
    global_batch = train_iter.batches.batch_size
    say = print if role.is_chief else (lambda *a, **k: None)

    with _Terminated(role):
        try:
            # Rank 0 owns the checkpoints: it opens the directory, finds and checks the
            # newest, and sends it to the others (a failure there stops every rank with the
            # same message instead of leaving them waiting).
            ck, pos = None, checkpoint.Position()
            outcome = None
            if role.is_chief:
                try:
                    ck = checkpoint.open_run(
                        checkpoint_dir, resume, "torch", model_name, train_iter, optimizer,
                        lr, momentum, weight_decay, seed,
                        {"replicas": role.world, **(settings or {})}, keep, checkpoint_every)
                    found = ck.latest() if (resume and ck is not None) else None
                    if resume and found is None:
                        say(f"no checkpoint in {ck.directory} yet: starting from scratch")
                    if found is not None:
                        path, state = found
                        _load_payload(path, net, opt, device, lr, momentum, weight_decay)
                        outcome = ("resume", str(path), asdict(state),
                                   (path / _PAYLOAD).read_bytes())
                except Exception as err:          # noqa: BLE001 - sent to the others first
                    outcome = ("error", type(err).__name__, str(err))
                    box = [outcome]
                    dist.broadcast_object_list(box, src=0, group=group)
                    raise
            box = [outcome]
            dist.broadcast_object_list(box, src=0, group=group)
            outcome = box[0]
            if outcome is not None and outcome[0] == "error":
                error = (checkpoint.CheckpointError if outcome[1] == "CheckpointError"
                         else DistributedError)
                raise error(f"(from rank 0) {outcome[2]}")
            if outcome is not None:
                _, path, state_d, payload = outcome
                state = checkpoint.TrainState(**state_d)
                if not role.is_chief:
                    with tempfile.TemporaryDirectory() as tmp:
                        Path(tmp, _PAYLOAD).write_bytes(payload)
                        _load_payload(Path(tmp), net, opt, device, lr, momentum, weight_decay)
                _set_replica_rng(payload, role, device)
                history.epochs = [dict(e) for e in state.history]
                pos.epoch, pos.batch, pos.step = state.epoch, state.batch, state.step
                pos.set_partial(state.partial)
                if ck is not None:
                    checkpoint.resume_position(ck, Path(path), state, train_iter)
                else:
                    train_iter.resume_at(state.epoch, state.batch)

            ddp = DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
                      process_group=group)
            watchdog = (core.StepWatchdog(peer_timeout, role.rank)
                        if backend == "nccl" and role.world > 1 else None)
            if watchdog is not None:
                watchdog.__enter__()
                watchdog.pause()             # the first step (cuDNN's search) may be long
            try:
                return _loop(net, ddp, opt, train_iter, test_iter, num_epochs, lr,
                             lr_scaling, global_batch, role, device, channels_last, amp,
                             progress, max_steps, ck, pos, history, step_losses, watchdog,
                             checkpoint_dir is not None, group)
            finally:
                if watchdog is not None:
                    watchdog.__exit__(None, None, None)
        except (checkpoint.DivergenceError, checkpoint.CheckpointError, DistributedError,
                KeyboardInterrupt):
            raise
        except RuntimeError as err:
            if role.world > 1 and _is_dist_failure(err):
                _peer_lost(role, err, "lost contact with the run")
            raise


def _loop(net, ddp, opt, train_iter, test_iter, num_epochs, lr, lr_scaling, global_batch,
          role, device, channels_last, amp, progress, max_steps, ck, pos, history,
          step_losses, watchdog, checkpointing, group) -> History:
    world = role.world

    def save(collective: bool = True) -> Optional[Path]:
        """Every rank takes part (their RNG states are gathered); rank 0 writes."""
        if watchdog is not None and collective:
            watchdog.pause()
            try:
                return _save(collective)
            finally:
                watchdog.resume()
        return _save(collective)

    def _save(collective: bool) -> Optional[Path]:
        rngs = None
        if collective:
            rngs = [None] * world
            dist.all_gather_object(rngs, torch.get_rng_state(), group=group)
        if ck is None:
            return None
        state = checkpoint.TrainState(
            epoch=pos.epoch, batch=pos.batch, step=pos.step, history=history.to_records(),
            rng={"torch": f"{_PAYLOAD}: rng_cpu (rank 0), rng_replicas (every rank)"},
            partial=pos.partial(time.perf_counter()))
        return ck.save(state, lambda tmp: _write_payload(tmp, net, opt, device, rngs))

    try:
        n_batches = len(train_iter)
    except TypeError:
        n_batches = None
    guard = checkpoint.InterruptGuard()
    first = True
    try:
        with guard.installed():
            while pos.epoch < num_epochs:
                epoch = pos.epoch + 1
                net.train()
                bar = Progress(progress, n_batches, f"epoch {epoch}/{num_epochs}")
                bar.update(pos.batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                pos.start = time.perf_counter()
                for X, y in train_iter:
                    if max_steps is not None and pos.batch >= max_steps:
                        break
                    n_global = train_iter.batches.global_size
                    X, y = _prepare(X, device, channels_last), y.to(device, non_blocking=True)
                    step_lr = (lr if lr_scaling is None
                               else lr_scaling.lr_at(lr, pos.step, global_batch))
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        outputs = ddp(X)
                    loss = loss_fn(outputs, y)
                    n = y.numel()
                    weight = core.loss_weight(n, n_global, world)
                    opt.zero_grad(set_to_none=True)
                    (loss * weight).backward()      # DDP averages the gradients here
                    hits = float((_logits(outputs).argmax(dim=1) == y).sum())
                    last = ((max_steps is not None and pos.batch + 1 >= max_steps)
                            or (n_batches is not None and pos.batch + 1 >= n_batches))
                    due = float(ck is not None and not last and ck.due(pos.step + 1))
                    # One small all-reduce: the global batch's loss and hits, and whether
                    # rank 0 will save a checkpoint after this step.
                    loss_sum, hits, seen, due = _reduce(
                        [float(loss.detach()) * n, hits, float(n), due], device, group)
                    loss_value = loss_sum / seen
                    if step_losses is not None:
                        step_losses.append(loss_value)
                    with guard.hold():          # the update and its bookkeeping, or neither
                        for param_group in opt.param_groups:
                            param_group["lr"] = step_lr
                        opt.step()
                        pos.step += 1
                        pos.batch += 1
                        pos.loss_sum += loss_sum
                        pos.correct += hits
                        pos.seen += int(seen)
                    if watchdog is not None:
                        if first:                   # the first step of this call is done
                            watchdog.resume()
                        watchdog.beat()
                    first = False
                    checkpoint.check_loss(loss_value, pos.step, epoch, step_lr, ck)
                    checkpoint.after_step(pos.step)
                    bar.update(1, loss=pos.loss_sum / pos.seen)
                    # (the last batch's checkpoint is the end-of-epoch one, just below)
                    if due:
                        save()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = pos.seconds + time.perf_counter() - pos.start
                bar.close()
                if watchdog is not None:
                    watchdog.pause()
                correct, total = _count(net, test_iter, device, channels_last)
                # every test example counted once; rank 0's clock for the epoch's time
                correct, total, elapsed = _reduce(
                    [float(correct), float(total), elapsed if role.is_chief else 0.0],
                    device, group)
                with guard.hold():
                    history.append(epoch=epoch, loss=pos.loss_sum / max(pos.seen, 1),
                                   train_acc=pos.correct / max(pos.seen, 1),
                                   test_acc=correct / max(total, 1),
                                   examples_per_sec=pos.seen / max(elapsed, 1e-9),
                                   seconds=elapsed)
                    pos.next_epoch()
                if checkpointing:           # every rank was given checkpoint_dir
                    save()
                if watchdog is not None:
                    watchdog.resume()
    except KeyboardInterrupt:
        if ck is not None:
            path = save(collective=False)
            print(checkpoint.interrupted_message(path, pos.step, pos.epoch + 1))
        raise
    return history


def _write_payload(tmp: Path, net, opt, device, rngs) -> None:
    """d2lport.torch.train's payload (model and optimizer state dicts, ``rng_cpu``) plus
    ``rng_replicas``, every rank's CPU RNG state: a one-device run reads it as its own."""
    payload = {"model": net.state_dict(), "optimizer": opt.state_dict(),
               "rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        payload["rng_cuda"] = torch.cuda.get_rng_state(device)
    if rngs is not None:
        payload["rng_replicas"] = [r.cpu() for r in rngs]
    torch.save(payload, tmp / _PAYLOAD)


def _set_replica_rng(payload_bytes: bytes, role: Role, device) -> None:
    """This rank's own RNG state when the checkpoint holds one per replica of a run as large
    as this one; else (a one-device checkpoint) ``rng_cpu`` as loaded, re-seeded per rank."""
    payload = torch.load(io.BytesIO(payload_bytes), map_location="cpu", weights_only=True)
    states = payload.get("rng_replicas")
    if states is not None and len(states) == role.world:
        torch.set_rng_state(states[role.rank])
    elif role.rank > 0:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, ())) + role.rank)
