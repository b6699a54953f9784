"""Train one network in one framework on Fashion-MNIST and, when asked, record the run.

This process imports one framework (the one asked for); ``make results`` starts one such
process per run (:mod:`d2lport.results.runner`).
"""
from __future__ import annotations

import shlex
import time
from typing import Dict, Optional, Tuple

import numpy as np

from .. import registry, specs
from . import init as _init
from . import record as _record
from .recipes import Recipe, get, settings_digest


def train(model: str, framework: str = "torch", *, epochs: int = 10, batch_size: int = 128,
          lr: float = 0.1, optimizer: str = "sgd", momentum: float = 0.0,
          weight_decay: float = 0.0, resize: Optional[int] = None, limit: Optional[int] = None,
          seed: int = 0, init: str = "framework", model_kwargs: Optional[dict] = None,
          device=None, data_root=None, checkpoint_dir=None, resume: bool = False,
          checkpoint_every=None, keep: int = 3, record=None, recipe: Optional[str] = None,
          command: Optional[str] = None, progress: Optional[bool] = None,
          verbose: bool = True, devices: Optional[int] = None, sync_bn: bool = False,
          lr_scaling=None, peer_timeout: Optional[float] = None,
          step_losses: Optional[list] = None) -> Tuple[object, object, Optional[dict]]:
    """Train ``model`` in ``framework`` on Fashion-MNIST: ``(net, history, record)``.

    ``init``: ``"framework"`` (the framework's own initialiser, seeded) or ``"xavier"`` (the
    canonical weights of :func:`~d2lport.results.init.initial_weights`, the same in every
    framework).  ``record``: a path; the run is then written there as one JSON record
    (settings, versions, machine, per-epoch history, test-set predictions), atomically.
    The checkpoint arguments are those of the backend's ``train``.

    Data parallelism: ``devices`` (or a process started with torchrun's variables, see
    :class:`d2lport.distributed.Role`) trains with ``d2lport.<framework>.distributed.train``
    instead (``batch_size`` is then the global batch; ``sync_bn``, ``lr_scaling``,
    ``peer_timeout`` and ``step_losses`` are its arguments).  A record is written by rank 0
    only.
    """
    from .. import distributed as _dist
    role = _dist.Role.from_env()
    parallel = devices is not None or role.world > 1
    if not parallel and (sync_bn or lr_scaling is not None or peer_timeout is not None):
        raise ValueError("sync_bn, lr_scaling and peer_timeout are data-parallel settings: "
                         "give devices= (--devices N) too, or drop them")
    if init not in _init.SCHEMES:
        raise ValueError(f"init must be one of {', '.join(_init.SCHEMES)}, got {init!r}")
    framework = registry.require_framework(framework)
    model_kwargs = dict(model_kwargs or {})
    for key, value in (("num_classes", 10), ("in_channels", 1)):
        if model_kwargs.pop(key, value) != value:
            raise ValueError(f"Fashion-MNIST has 10 classes of 1-channel images: drop "
                             f"{key}= (it is {value} for these images)")
    if "image_size" in model_kwargs:        # the network is built for the images it sees
        size = model_kwargs.pop("image_size")
        if resize not in (None, size):
            raise ValueError(f"image_size={size} but resize={resize}: the network is built "
                             "for the image side it is trained on; give one of them")
        resize = size
    kwargs, side = registry.kwargs_for_data(model, resize, channels=1, num_classes=10,
                                            **model_kwargs)
    spec = registry.get_spec(model, **kwargs)
    least = specs.min_input_size(spec)
    if side < least:
        raise ValueError(f"resize {side} is too small for {model}: it needs images of at "
                         f"least {least}x{least} pixels (e.g. resize={least})")
    settings = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                    momentum=momentum, weight_decay=weight_decay, resize=side, limit=limit,
                    seed=seed, init=init)
    full_kwargs = registry.expand(model, kwargs)[1]
    if recipe is None:
        digest = settings_digest(model, full_kwargs, settings)
    else:
        # a record that names a recipe was made with exactly its settings
        r = get(recipe)
        if (r.model, r.settings()) != (model, settings):
            raise ValueError(f"these settings are not recipe {recipe!r}'s: train it with "
                             f"run_recipe({recipe!r}, ...) or `d2lport train --recipe {recipe}`")
        digest = r.digest()
    d2p = registry.backend(framework)
    engine = None
    if parallel:
        if device is not None:
            raise ValueError("device= names one device; with devices= the engine places "
                             "the replicas: drop device (--device)")
        import importlib
        engine = importlib.import_module(f"d2lport.{framework}.distributed")
        # before the framework first computes (create_model does): JAX's CPU devices and
        # jax.distributed, TensorFlow's logical devices are fixed then
        engine.setup(devices)
    started, t0 = _record.now(), time.perf_counter()
    net = d2p.create_model(model, seed=seed, **kwargs)
    init_sha = None
    if init == "xavier":
        weights = _init.initial_weights(spec, seed)
        init_sha = _init.digest(weights)
        d2p.set_weights(net, weights)
    train_iter, test_iter = d2p.load_data_fashion_mnist(
        batch_size, resize=None if side == 28 else side, limit=limit, seed=seed, root=data_root)
    if verbose and role.is_chief:
        print(f"training {model} ({framework}) on Fashion-MNIST: {train_iter.num_examples} "
              f"train / {test_iter.num_examples} test examples at {side}x{side}, batch "
              f"{batch_size}, lr {lr}, {optimizer}" + (f", recipe {recipe}" if recipe else ""),
              flush=True)
    extra = {}
    if checkpoint_dir:
        # The model's keyword arguments and the settings' digest go with every checkpoint,
        # so a resume with another configuration is refused instead of loading wrongly.
        extra = dict(checkpoint_dir=checkpoint_dir, resume=resume,
                     checkpoint_every=checkpoint_every, keep=keep,
                     settings={"model_kwargs": full_kwargs, "init": init,
                               "settings_sha256": digest})
    if parallel:
        history = engine.train(net, train_iter, test_iter, num_epochs=epochs, lr=lr,
                               optimizer=optimizer, momentum=momentum,
                               weight_decay=weight_decay, devices=devices, role=role,
                               seed=seed, sync_bn=sync_bn, lr_scaling=lr_scaling,
                               progress=progress, step_losses=step_losses,
                               peer_timeout=peer_timeout, **extra)
    else:
        history = d2p.train(net, train_iter, test_iter, num_epochs=epochs, lr=lr,
                            optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                            device=device, seed=seed, progress=progress, **extra)
    rec = None
    if record is not None and role.is_chief:
        from ..notebook import predictions
        _, labels, predicted = predictions(d2p, net, test_iter)
        rec = {
            "format": _record.FORMAT,
            "run": f"{recipe}-{framework}" if recipe else f"{model}-{framework}",
            "recipe": recipe, "recipe_sha256": digest,
            "model": model, "model_kwargs": full_kwargs, "framework": framework,
            "num_classes": 10, "settings": settings, "init_sha256": init_sha,
            "spec_sha256": _record.spec_digest(spec), "params": int(d2p.count_params(net)),
            "params_spec": specs.count_params(spec),
            "command": command or _command(model, framework, settings, kwargs, recipe, record),
            "code": {**_record.git_state(), "backend_sha256": _record.code_digest(framework)},
            "versions": _record.versions(framework),
            "machine": _record.machine(framework, history.device),
            "started": started, "finished": _record.now(),
            "wall_seconds_last_process": round(time.perf_counter() - t0, 1),
            "history": history.to_records(),
            "test": {"examples": int(len(labels)), "labels_sha256": _record.labels_digest(labels),
                     "accuracy": float((predicted == labels).mean()),
                     "predictions": [int(p) for p in predicted]},
        }
        path = _record.write(record, rec)
        if verbose:
            print(f"record written to {path}", flush=True)
    return net, history, rec


def run_recipe(name: str, framework: str = "torch", record=None, **kwargs):
    """Train the CPU recipe ``name`` (:mod:`d2lport.results.recipes`) in ``framework``;
    ``record`` (default ``results/<name>-<framework>.json``) receives the record."""
    r: Recipe = get(name)
    framework = registry.normalize_framework(framework)
    record = record if record is not None else _record.path_for(r.run_name(framework))
    settings = r.settings()
    return train(r.model, framework, model_kwargs=dict(r.model_kwargs), recipe=r.name,
                 record=record, **settings, **kwargs)


def _command(model, framework, settings, kwargs, recipe, record) -> str:
    """The ``d2lport train`` command line that makes this run again."""
    if recipe:
        args = ["d2lport", "train", "--recipe", recipe, "-f", framework]
    else:
        args = ["d2lport", "train", model, "-f", framework, "--epochs", settings["epochs"],
                "--batch-size", settings["batch_size"], "--lr", settings["lr"],
                "--optimizer", settings["optimizer"], "--momentum", settings["momentum"],
                "--resize", settings["resize"], "--seed", settings["seed"],
                "--init", settings["init"]]
        if settings["limit"] is not None:
            args += ["--limit", settings["limit"]]
        for key, value in registry.resolve(model)[1].items():
            kwargs = {k: v for k, v in kwargs.items() if not (k == key and v == value)}
        for key, value in kwargs.items():
            if key in ("num_classes", "in_channels") or (key == "image_size"
                                                           and value == settings["resize"]):
                continue
            args += ["-k", f"{key}={value}"]
    args += ["--record", str(record)]
    return " ".join(shlex.quote(str(a)) for a in args)
