"""Training and evaluation for the PyTorch backend (D2L's ``train_ch6``, grown up)."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch.nn import functional as F

from .. import checkpoint
from ..common import AuxOutputs, History, Progress, combined_loss_weights, progress_default


def try_gpu(i: int = 0) -> torch.device:
    """CUDA device ``i`` if present, else Apple's MPS, else the CPU."""
    if torch.cuda.device_count() > i:
        return torch.device(f"cuda:{i}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def loss_fn(outputs, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; with auxiliary heads ``main + 0.3 * (aux1 + aux2)`` (GoogLeNet v1)."""
    if isinstance(outputs, AuxOutputs):
        heads = (outputs.logits,) + tuple(outputs.aux)
        weights = combined_loss_weights(len(outputs.aux))
        return sum(w * F.cross_entropy(o.float(), y) for w, o in zip(weights, heads))
    return F.cross_entropy(outputs.float(), y)


def _logits(outputs):
    return outputs.logits if isinstance(outputs, AuxOutputs) else outputs


def _prepare(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _model_device(net) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _is_channels_last(net) -> bool:
    """Whether ``net``'s convolutions hold their weights channels-last (``train`` puts them
    so): the input should then be channels-last too, or every conv converts it."""
    for p in net.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


@torch.no_grad()
def evaluate(net, data_iter, device=None, channels_last: Optional[bool] = None) -> float:
    """Accuracy of ``net`` over ``data_iter`` in evaluation mode.  ``channels_last``:
    default, the layout of the net's own weights."""
    device = device or _model_device(net)
    if channels_last is None:
        channels_last = _is_channels_last(net)
    was_training = net.training
    net.eval()
    correct = total = 0
    for X, y in data_iter:
        y = y.to(device)
        pred = _logits(net(_prepare(X, device, channels_last))).argmax(dim=1)
        correct += int((pred == y).sum())
        total += y.numel()
    net.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def predict(net, X: torch.Tensor) -> torch.Tensor:
    """Class indices for a batch, in evaluation mode."""
    was_training = net.training
    net.eval()
    out = _logits(net(X.to(_model_device(net)))).argmax(dim=1).cpu()
    net.train(was_training)
    return out


def train(net, train_iter, test_iter, num_epochs: int = 10, lr: float = 0.1,
          optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
          device=None, seed: Optional[int] = None, channels_last: Optional[bool] = None,
          amp: Optional[bool] = None, progress: Optional[bool] = None,
          max_steps: Optional[int] = None, checkpoint_dir=None, resume: bool = False,
          checkpoint_every=None, keep: int = 3, settings: Optional[dict] = None) -> History:
    """Train with SGD (D2L's default) or Adam; returns a per-epoch :class:`History`.

    ``device``: default :func:`try_gpu`.  ``channels_last`` (default on) is about 2x faster
    for these convnets on CPU and uses tensor cores on GPU.  ``amp`` (default: on CUDA)
    runs the forward pass in bfloat16 autocast.  ``seed`` fixes dropout and weight-update
    randomness (build the model and the loader with seeds too for a repeatable run).
    ``max_steps`` stops each epoch early (smoke runs).

    ``checkpoint_dir``: save a checkpoint (weights, optimizer state, RNG state, position,
    history) at the end of every epoch and every ``checkpoint_every`` (steps ``200``, time
    ``"5m"``/``"90s"``; default 5 minutes) within one, keeping the last ``keep``.
    ``resume=True`` continues from the newest intact checkpoint there (or starts afresh if
    there is none).  Ctrl-C saves one and re-raises :class:`KeyboardInterrupt`; a NaN or
    infinite loss raises :class:`~d2lport.checkpoint.DivergenceError`.
    """
    checkpoint.check_train_args(num_epochs, lr, optimizer, momentum, weight_decay, max_steps)
    if seed is not None:
        torch.manual_seed(seed)
    device = torch.device(device) if device is not None else try_gpu()
    channels_last = True if channels_last is None else channels_last
    amp = (device.type == "cuda") if amp is None else amp
    progress = progress_default() if progress is None else progress
    if device.type == "cpu":
        # Tiny activations and gradients become denormal floats as training goes on; x86
        # handles those ~100x slower (measured here: 227 vs 1464 examples/s for
        # inception_a_net).  Flushing them to zero changes nothing visible in the results.
        torch.set_flush_denormal(True)
        # numpy notices the flush the next time it looks at float limits (matplotlib does)
        # and warns that the smallest subnormal is zero: true, and expected here.
        warnings.filterwarnings("ignore", message="The value of the smallest subnormal",
                                category=UserWarning)
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    opt = _optimizer(optimizer, net.parameters(), lr, momentum, weight_decay)
    model_name = getattr(getattr(net, "spec", None), "name", type(net).__name__)
    history = History(framework="torch", device=str(device), model=model_name)

    ck = checkpoint.open_run(checkpoint_dir, resume, "torch", model_name, train_iter,
                             optimizer, lr, momentum, weight_decay, seed, settings, keep,
                             checkpoint_every)

    # Where the run is; only ever changed inside `guard.hold()`, so a Ctrl-C always finds
    # a consistent position (after a finished step) to save.
    pos = checkpoint.Position()
    skip = 0                    # batches to skip by hand (a loader without resume_at)
    if resume:
        found = ck.latest()
        if found is None:
            print(f"no checkpoint in {ck.directory} yet: starting from scratch")
        else:
            path, state = found
            _load_payload(path, net, opt, device, lr, momentum, weight_decay)
            history.epochs = [dict(e) for e in state.history]
            pos.epoch, pos.batch, pos.step = state.epoch, state.batch, state.step
            pos.set_partial(state.partial)
            skip = checkpoint.resume_position(ck, path, state, train_iter)

    def save() -> Path:
        state = checkpoint.TrainState(
            epoch=pos.epoch, batch=pos.batch, step=pos.step, history=history.to_records(),
            rng={"torch": f"{_PAYLOAD}: rng_cpu" + (", rng_cuda" if device.type == "cuda" else "")},
            partial=pos.partial(time.perf_counter()))
        return ck.save(state, lambda tmp: _write_payload(tmp, net, opt, device))

    try:
        n_batches = len(train_iter)
    except TypeError:
        n_batches = None
    guard = checkpoint.InterruptGuard()
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
                    if skip:
                        skip -= 1
                        continue
                    if max_steps is not None and pos.batch >= max_steps:
                        break
                    X, y = _prepare(X, device, channels_last), y.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        outputs = net(X)
                    loss = loss_fn(outputs, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    loss_value = float(loss.detach())
                    n = y.numel()
                    hits = float((_logits(outputs).argmax(dim=1) == y).sum())
                    with guard.hold():          # the update and its bookkeeping, or neither
                        opt.step()
                        pos.step += 1
                        pos.batch += 1
                        pos.loss_sum += loss_value * n
                        pos.correct += hits
                        pos.seen += n
                    checkpoint.check_loss(loss_value, pos.step, epoch, lr, ck)
                    checkpoint.after_step(pos.step)
                    bar.update(1, loss=pos.loss_sum / pos.seen)
                    last = ((max_steps is not None and pos.batch >= max_steps)
                            or (n_batches is not None and pos.batch >= n_batches))
                    # (the last batch's checkpoint is the end-of-epoch one, just below)
                    if ck is not None and not last and ck.due(pos.step):
                        save()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = pos.seconds + time.perf_counter() - pos.start
                bar.close()
                test_acc = evaluate(net, test_iter, device, channels_last)
                with guard.hold():
                    history.append(epoch=epoch, loss=pos.loss_sum / max(pos.seen, 1),
                                   train_acc=pos.correct / max(pos.seen, 1), test_acc=test_acc,
                                   examples_per_sec=pos.seen / max(elapsed, 1e-9),
                                   seconds=elapsed)
                    pos.next_epoch()
                if ck is not None:
                    save()
    except KeyboardInterrupt:
        if ck is not None:
            path = save()
            print(checkpoint.interrupted_message(path, pos.step, pos.epoch + 1))
        raise
    return history


# The payload is torch's own format: state dicts of the model and the optimizer (momentum
# buffers, Adam moments) and the RNG states, written with torch.save and read back with
# weights_only=True (no pickled code runs on load).  The checkpoint's MANIFEST.json holds
# its size and SHA-256, so a truncated or corrupt file is found before torch reads it.
_PAYLOAD = "torch.pt"


def _write_payload(tmp: Path, net, opt, device) -> None:
    rng = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["rng_cuda"] = torch.cuda.get_rng_state(device)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), **rng},
               tmp / _PAYLOAD)


def _load_payload(path: Path, net, opt, device, lr, momentum, weight_decay) -> None:
    file = path / _PAYLOAD
    try:
        payload = torch.load(file, map_location=device, weights_only=True)
    except Exception as err:        # noqa: BLE001 - any unreadable file gets one message
        raise checkpoint.CheckpointError(
            f"{file} cannot be read by torch.load ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}): start afresh without --resume, "
            "or with another --checkpoint-dir") from None
    if not isinstance(payload, dict) or "model" not in payload or "optimizer" not in payload:
        raise checkpoint.CheckpointError(f"{file} is not a d2lport torch checkpoint payload")
    own = net.state_dict()
    for key, value in payload["model"].items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise checkpoint.CheckpointError(
                f"checkpoint {path} does not fit this model: layer {key} has shape "
                f"{tuple(value.shape)} there, {tuple(own[key].shape)} here (other model "
                "keyword arguments?): resume with the same model, or use another "
                "--checkpoint-dir")
    missing = sorted(set(own) - set(payload["model"]))
    extra = sorted(set(payload["model"]) - set(own))
    if missing or extra:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} does not fit this model: "
            + "; ".join(part for part in (
                f"missing layers {', '.join(missing[:5])}" if missing else "",
                f"unexpected layers {', '.join(extra[:5])}" if extra else "") if part)
            + ": resume with the same model, or use another --checkpoint-dir")
    net.load_state_dict(payload["model"])
    try:
        opt.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as err:
        raise checkpoint.CheckpointError(
            f"{file}: the optimizer state does not fit this run ({err}): resume with the "
            "same --optimizer, or use another --checkpoint-dir") from None
    # The arguments of this call rule (a resumed run may lower the learning rate).
    for group in opt.param_groups:
        group["lr"], group["weight_decay"] = lr, weight_decay
        if "momentum" in group:
            group["momentum"] = momentum
    if "rng_cpu" in payload:
        torch.set_rng_state(payload["rng_cpu"].cpu())
    if "rng_cuda" in payload and device.type == "cuda":
        torch.cuda.set_rng_state(payload["rng_cuda"].cpu(), device)


def _optimizer(name: str, params, lr, momentum, weight_decay):
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use 'sgd' or 'adam'")
