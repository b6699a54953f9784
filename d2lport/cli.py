"""The ``d2lport`` command line.

Each command imports at most one framework in this process (``--framework``); commands that
need several frameworks run each in its own worker process (``d2lport.worker``).
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Dict, List, Optional

from . import registry, specs
from .common import format_table, Row


def _parse_kv(items: List[str]) -> Dict[str, object]:
    """``-k width_ratio=4 -k batch_norm=true`` -> {"width_ratio": 4, "batch_norm": True}."""
    out: Dict[str, object] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"d2lport: -k takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
            continue
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _parse_shape(text: Optional[str]):
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise SystemExit(f"d2lport: --input takes NxCxHxW, e.g. 1x1x96x96; got {text!r}")
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise SystemExit(f"d2lport: --input takes NxCxHxW (or CxHxW), got {text!r}")
    return shape


def cmd_models(args) -> int:
    rows = []
    for name in registry.list_models():
        entry = registry.describe(name)
        spec = registry.get_spec(name)
        rows.append((name, entry.kind, "x".join(map(str, spec.input_shape)),
                     f"{specs.count_params(spec):,}", entry.summary))
    widths = [max(len(r[i]) for r in rows + [("model", "kind", "input", "params", "")])
              for i in range(4)]
    print(f"{'model':<{widths[0]}}  {'kind':<{widths[1]}}  {'input':<{widths[2]}}  "
          f"{'params':>{widths[3]}}  description")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
              f"{r[3]:>{widths[3]}}  {r[4]}")
    print("aliases: " + ", ".join(f"{a} = {m}({', '.join(f'{k}={v}' for k, v in kw.items())})"
                                  for a, (m, kw) in registry.ALIASES.items()))
    return 0


def cmd_shapes(args) -> int:
    shape = _parse_shape(args.input)
    # build the model for the input asked about
    kwargs = registry.fit_kwargs(args.model, shape, **_parse_kv(args.k))
    if args.framework == "spec":
        spec = registry.get_spec(args.model, **kwargs)
        shape = shape or (1,) + spec.input_shape
        rows = [Row(r.name, r.out_shape, r.params) for r in specs.infer(spec, shape)]
        print(format_table(rows, f"{spec.name} (from the spec), input {shape}"))
        return 0
    backend = registry.backend(args.framework)
    net = backend.create_model(args.model, **kwargs)
    backend.summary(net, shape)
    return 0


def _check_train_args(args) -> tuple:
    """Every ``d2lport train`` argument checked before a framework is imported or any work
    is done: ``(kwargs, side, every)``; a ValueError (one line, exit status 2) otherwise."""
    from . import checkpoint
    registry.resolve(args.model)                      # unknown model: the closest names
    registry.normalize_framework(args.framework)      # unknown framework: the known ones
    checkpoint.check_train_args(args.epochs, args.lr, args.optimizer, args.momentum,
                                max_steps=None, batch_size=args.batch_size)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of examples, got {args.limit}")
    if args.resize is not None and args.resize < 1:
        raise ValueError(f"--resize must be a positive image side in pixels, got {args.resize}")
    # Fashion-MNIST: one channel, ten classes; fixed-size nets are built for the resize.
    kv = _parse_kv(args.k)
    if "image_size" in kv:                  # the network is built for the images it sees
        size = kv.pop("image_size")
        if args.resize not in (None, size):
            raise ValueError(f"-k image_size={size} and --resize {args.resize} differ: the "
                             "network is built for the side it trains on; give only --resize")
        args.resize = size
    kwargs, side = registry.kwargs_for_data(args.model, args.resize, channels=1,
                                            num_classes=10, **kv)
    least = specs.min_input_size(registry.get_spec(args.model, **kwargs))
    if side < least:
        raise ValueError(f"--resize {side} is too small for {args.model}: it needs images of "
                         f"at least {least}x{least} pixels (e.g. --resize {least})")
    if args.keep < 1:
        raise ValueError(f"--keep must be >= 1 (checkpoints kept), got {args.keep}")
    every = checkpoint.parse_every(args.checkpoint_every)
    if args.checkpoint_every is not None and not args.checkpoint_dir:
        raise ValueError("--checkpoint-every needs --checkpoint-dir DIR (where to write them)")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir DIR (the directory of the run to "
                         "resume)")
    return kwargs, side, every


# The settings a recipe fixes (``d2lport train --recipe``), as ``args`` attributes.
_RECIPE_ARGS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "resize", "seed",
                "init", "limit", "k")


def _apply_recipe(args) -> None:
    """``--recipe NAME``: the model and settings from the recipe; a setting given as well is
    an error (the record would claim a recipe it did not run)."""
    from .results import get
    recipe = get(args.recipe)
    defaults = vars(build_parser().parse_args(["train", "-"]))
    given = [f"--{name.replace('_', '-')}" if name != "k" else "-k" for name in _RECIPE_ARGS
             if getattr(args, name) != defaults[name]]
    if given:
        raise ValueError(f"--recipe {recipe.name} sets the model and every training setting: "
                         f"drop {', '.join(given)} (or drop --recipe to choose them)")
    if args.model not in (None, recipe.model):
        raise ValueError(f"recipe {recipe.name} trains {recipe.model}, not {args.model}: "
                         f"drop the model name or the --recipe")
    args.model = recipe.model
    for key, value in recipe.settings().items():
        setattr(args, key, value)
    args.k = [f"{k}={v}" for k, v in recipe.model_kwargs.items()]


def cmd_train(args) -> int:
    from . import results
    if args.recipe:
        _apply_recipe(args)
    elif args.model is None:
        raise ValueError("name the model to train (d2lport models lists them), or a --recipe")
    kwargs, resize, _ = _check_train_args(args)
    extra = _parallel_args(args)
    if extra.pop("launched", False):
        return extra.pop("status")
    if args.checkpoint_dir:
        extra.update(checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                     checkpoint_every=args.checkpoint_every, keep=args.keep)
    net, history, _ = results.train(
        args.model, args.framework, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, momentum=args.momentum, resize=resize,
        limit=args.limit, seed=args.seed, init=args.init,
        model_kwargs=_parse_kv(args.k),
        device=args.device, data_root=args.data, record=args.record, recipe=args.recipe,
        **extra)
    from .distributed import Role
    if not Role.from_env().is_chief:
        return 0                  # rank 0 prints, saves and plots
    print(history)
    backend = registry.backend(args.framework)
    if args.save:
        # The meta must rebuild the model: an alias (vgg_d2l) expands to its fixed kwargs.
        path = backend.save_weights(net, args.save, kwargs=registry.expand(args.model, kwargs)[1])
        print(f"weights saved to {path}")
    if args.plot:
        from .common import plot_history
        plot_history(history).savefig(args.plot)
        print(f"plot saved to {args.plot}")
    return 0


def _parallel_args(args) -> dict:
    """The data-parallel part of ``d2lport train``: checked before any framework is imported.
    Returns the keyword arguments of :func:`d2lport.results.train`, or, where this process
    only starts the run's processes (PyTorch, MXNet's parameter servers), ``launched`` and
    the run's exit ``status``."""
    from . import distributed as dist
    if args.devices is None and args.nodes == 1:
        for flag, value in (("--sync-bn", args.sync_bn), ("--scale-lr", args.scale_lr),
                            ("--peer-timeout", args.peer_timeout),
                            ("--master", args.master), ("--node-rank", args.node_rank or None)):
            if value:
                raise ValueError(f"{flag} is a data-parallel setting: add --devices N (and "
                                 "--nodes M for several machines), or drop it")
        if dist.Role.from_env().world == 1:
            return {}
    role = dist.Role.from_env()
    # a process that a launcher started (torchrun) without --devices: one of its devices
    devices = args.devices if args.devices is not None else (
        role.local_world if role.world > 1 else 1)
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, got {devices}")
    if args.nodes < 1 or not 0 <= args.node_rank < args.nodes:
        raise ValueError(f"--node-rank {args.node_rank} of --nodes {args.nodes}: a machine's "
                         f"rank is 0..{args.nodes - 1}")
    if args.nodes > 1 and not args.master:
        raise ValueError("--nodes > 1 needs --master HOST:PORT (where machine 0 listens; the "
                         "same on every machine)")
    if args.device:
        raise ValueError("--device names one device; with --devices the engine places the "
                         "replicas: drop --device")
    if args.warmup_steps < 0 or (args.warmup_steps and args.scale_lr is None):
        raise ValueError("--warmup-steps W (>= 0) goes with --scale-lr BASE_BATCH")
    if args.peer_timeout is not None and not args.peer_timeout > 0:
        raise ValueError(f"--peer-timeout must be > 0 seconds, got {args.peer_timeout}")
    host, port = dist.parse_master(args.master) if args.master else ("127.0.0.1", None)
    scaling = (dist.LinearScaling(args.scale_lr, args.warmup_steps)
               if args.scale_lr is not None else None)
    kw = dict(devices=devices, sync_bn=args.sync_bn, lr_scaling=scaling,
              peer_timeout=args.peer_timeout)
    if role.world > 1:                          # a process of a run started for us
        return kw
    import importlib
    engine = importlib.import_module(f"d2lport.{registry.normalize_framework(args.framework)}"
                                     ".distributed")
    argv = [a for a in args.argv]
    if getattr(engine, "MODE", "devices") == "processes":
        # this machine's processes, started by the engine's launcher (torchrun's machinery)
        cmd = engine.command(_strip_node_args(argv), devices, nodes=args.nodes,
                             node_rank=args.node_rank, master=args.master)
        if args.nodes == 1:
            print(engine.multinode_hint(_strip_node_args(argv), devices, 2), flush=True)
        import subprocess
        return dict(launched=True, status=subprocess.call(cmd))
    if args.nodes > 1:
        # one process per machine, each driving --devices devices: torchrun's variables
        # tell the engine its place (TF_CONFIG, DMLC_*, jax.distributed come from them)
        import os
        os.environ.update(dist.Role(rank=args.node_rank, world=args.nodes, master_addr=host,
                                    master_port=port).env())
    elif devices > 1:
        print(engine.multinode_hint(_strip_node_args(argv), devices, 2), flush=True)
    return kw


def _strip_node_args(argv: List[str]) -> List[str]:
    """``argv`` without --nodes/--node-rank/--master (the launcher adds its own)."""
    from .distributed import strip_options
    return strip_options(argv, ("--nodes", "--node-rank", "--master"))


def cmd_results(args) -> int:
    from .results import runner
    frameworks = _frameworks_arg(args.frameworks)
    if args.action == "status":
        print(runner.status(args.recipes or None, frameworks))
        if args.readme:
            runner.update_readme(args.readme)
            print(f"updated the results section of {args.readme}")
        return 0
    if args.action == "check":
        from . import results
        from .data import load_arrays
        _, labels = load_arrays("test", root=args.data)
        bad = 0
        for recipe, fw, st, reasons in runner.plan(args.recipes or None, frameworks):
            path = results.path_for(recipe.run_name(fw))
            problems = list(reasons) if st in ("missing", "stale", "broken") else []
            if st == "missing":
                problems = [f"no record at {path}"]
            elif st != "broken":
                problems += results.internal_problems(results.load(path), labels)
            bad += bool(problems)
            print(f"{recipe.run_name(fw):<26} " + ("ok" + (" (code changed since)"
                  if st == "code changed" else "") if not problems else "; ".join(problems)))
        if bad:
            print(f"{bad} record(s) missing, stale or inconsistent: `make results` makes them")
        return 1 if bad else 0
    return runner.run(args.recipes or None, frameworks, commit=args.commit,
                      dry_run=args.dry_run, readme=args.readme)


def _frameworks_arg(text: str) -> List[str]:
    return [registry.normalize_framework(f) for f in text.split(",") if f.strip()]


def cmd_compare(args) -> int:
    from .compare import compare
    if args.plot and not args.train:
        raise SystemExit("d2lport: --plot draws the --train curves; add --train N")
    result = compare(args.model, frameworks=_frameworks_arg(args.frameworks),
                     input_shape=_parse_shape(args.input), seed=args.seed,
                     reference=args.reference, rtol=args.rtol, train=args.train, lr=args.lr,
                     batch_size=args.batch_size, speed=args.speed, threads=args.threads,
                     data_root=args.data, **_parse_kv(args.k))
    print(result)
    if args.plot and result.train is not None:
        result.train.plot(args.plot)
        print(f"loss curves saved to {args.plot}")
    # differ / a framework that broke: a failing exit status, so scripts and CI notice
    return 1 if result.verdict in ("differ", "incomplete") else 0


def cmd_bench(args) -> int:
    from pathlib import Path

    from .bench import bench, update_readme
    report = bench(args.models or ["googlenet", "vgg_d2l"], _frameworks_arg(args.frameworks),
                   paths=[p.strip() for p in args.paths.split(",") if p.strip()],
                   batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
                   rounds=args.rounds,
                   warmup=args.warmup, lr=args.lr, seed=args.seed, threads=args.threads,
                   matmul_size=args.matmul_size, device=args.device)
    print(report)
    markdown = report.to_markdown()
    for path, text in ((args.json, report.to_json()), (args.markdown, markdown)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
            print(f"wrote {path}")
    if args.readme:
        update_readme(args.readme, markdown)
        print(f"updated the benchmark section of {args.readme}")
    return 0 if report.runs else 1


def cmd_export(args) -> int:
    from .compare import export_weights
    meta = export_weights(args.model, args.framework, args.out, seed=args.seed,
                          **_parse_kv(args.k))
    print(f"{args.model} ({registry.normalize_framework(args.framework)}, seed {args.seed}): "
          f"{meta['tensors']} tensors, {meta['params']:,} trainable parameters -> {meta['path']}")
    return 0


def cmd_import(args) -> int:
    from .compare import format_import, import_weights
    result = import_weights(args.weights, args.framework, evaluate=args.evaluate,
                            limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                            data_root=args.data)
    print(format_import(result))
    return 0


def cmd_data(args) -> int:
    from .data import fashion_mnist
    argv = ["--download"] if args.download else ["--status"]
    if args.root:
        argv += ["--root", args.root]
    return fashion_mnist.main(argv)


TRAIN_EPILOG = """exit status:
  0    trained (and saved what --save / --plot asked for)
  2    bad arguments or input (one-line message; nothing was trained), bad data files,
       or a checkpoint that cannot be resumed (another model, framework, batch size...)
  3    training diverged: the loss became NaN or infinite (the message names the step and
       the learning rate; the last good checkpoint is kept)
  4    data-parallel run: another replica (process or machine) died or stalled; the last
       checkpoint resumes the whole run (--resume)
  130  interrupted (Ctrl-C); with --checkpoint-dir a checkpoint was saved first and the
       line printed says how to resume (--checkpoint-dir DIR --resume)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2lport", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the registered networks and blocks")
    s.set_defaults(func=cmd_models)

    kw_help = "model keyword argument, e.g. -k width_ratio=4 -k batch_norm=true (repeatable)"
    s = sub.add_parser("shapes", help="print a model's per-block output shapes and parameters")
    s.add_argument("model")
    s.add_argument("--framework", "-f", default="torch",
                   help="torch | tensorflow | mxnet | spec (no framework: from the spec)")
    s.add_argument("--input", help="input shape NxCxHxW, e.g. 1x1x96x96 (default: the model's)")
    s.add_argument("-k", action="append", metavar="KEY=VALUE", help=kw_help)
    s.set_defaults(func=cmd_shapes)

    s = sub.add_parser("train", help="train a model on Fashion-MNIST",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=TRAIN_EPILOG)
    s.add_argument("model", nargs="?", help="a registered network (or give --recipe)")
    s.add_argument("--framework", "-f", default="torch")
    s.add_argument("--recipe", help="train a recorded run's recipe (d2lport results status "
                   "lists them): its model and all its settings")
    s.add_argument("--record", metavar="PATH", help="write the run's record (settings, "
                   "versions, machine, history, test predictions) to this JSON file")
    s.add_argument("--init", default="framework", choices=("framework", "xavier"),
                   help="initial weights: the framework's own initialiser (default) or the "
                        "canonical Xavier weights, the same in every framework")
    s.add_argument("--epochs", type=int, default=10, help="number of epochs, >= 1 (default 10)")
    s.add_argument("--batch-size", type=int, default=128, help="examples per step, >= 1 "
                                                                "(default 128)")
    s.add_argument("--lr", type=float, default=0.1, help="learning rate, finite and > 0 "
                                                         "(default 0.1)")
    s.add_argument("--optimizer", default="sgd", help="sgd (default) or adam")
    s.add_argument("--momentum", type=float, default=0.0, help="SGD momentum in [0, 1)")
    s.add_argument("--resize", type=int, help="image side (default: the model's input size; "
                                              "at least the network's minimum)")
    s.add_argument("--limit", type=int, help="use a seeded subset of N examples per split")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="e.g. cpu, cuda:0 (default: the first GPU, else CPU)")
    s.add_argument("--data", help="directory holding the four Fashion-MNIST files")
    s.add_argument("--save", help="write the trained weights to this .npz (canonical form)")
    s.add_argument("--plot", help="save the training curves to this image file")
    s.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write checkpoints here (end of every epoch, and --checkpoint-every)")
    s.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in --checkpoint-dir "
                        "(starts from scratch when there is none yet)")
    s.add_argument("--checkpoint-every", metavar="MINUTES|STEPS",
                   help="also checkpoint within an epoch: every N steps (200) or minutes (5m) "
                        "or seconds (90s); default 5m")
    s.add_argument("--keep", type=int, default=3, help="checkpoints kept (default 3)")
    s.add_argument("-k", action="append", metavar="KEY=VALUE", help=kw_help)
    d = s.add_argument_group(
        "data parallelism", "train on several devices or machines with the framework's own "
        "engine (DistributedDataParallel, tf.distribute, a kvstore, jax.sharding); "
        "--batch-size is the global batch, split among the replicas")
    d.add_argument("--devices", type=int, metavar="N",
                   help="devices on this machine (PyTorch: one process each, started by "
                        "torchrun's machinery; the others: N devices in one process; a CPU "
                        "is split into N)")
    d.add_argument("--nodes", type=int, default=1, metavar="M",
                   help="machines in the run (default 1); each runs the same command with "
                        "its own --node-rank")
    d.add_argument("--node-rank", type=int, default=0, metavar="K", help="this machine, 0..M-1")
    d.add_argument("--master", metavar="HOST:PORT",
                   help="where machine 0 listens (with --nodes > 1)")
    d.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over the global batch, where the engine can")
    d.add_argument("--scale-lr", type=int, metavar="BASE_BATCH",
                   help="linear scaling rule: --lr was tuned for batches of BASE_BATCH; use "
                        "lr * batch / BASE_BATCH (Goyal et al. 2017)")
    d.add_argument("--warmup-steps", type=int, default=0, metavar="W",
                   help="with --scale-lr: reach the scaled rate linearly over W steps")
    d.add_argument("--peer-timeout", type=float, metavar="SECONDS",
                   help="end this replica when another has died or stalled this long "
                        "(default: the engine's own)")
    s.set_defaults(func=cmd_train)

    fws = ",".join(registry.FRAMEWORKS)
    threads_help = ("CPU threads of every framework (default: each framework's own); 1 gives "
                    "steadier timings on a busy machine")
    s = sub.add_parser("compare", help="one model in several frameworks, block by block "
                                       "(each framework in its own process)")
    s.add_argument("model")
    s.add_argument("--frameworks", default=fws, help=f"comma-separated (default {fws})")
    s.add_argument("--reference", default="torch", help="framework the others are measured "
                                                        "against (default torch)")
    s.add_argument("--input", help="input shape NxCxHxW, e.g. 2x1x96x96 (default: 2 x the "
                                   "model's)")
    s.add_argument("--seed", type=int, default=0, help="seed of the weights, input, batches")
    s.add_argument("--rtol", type=float, default=1e-4,
                   help="largest relative difference that agrees (default 1e-4)")
    s.add_argument("--train", type=int, default=0, metavar="N",
                   help="also train N plain-SGD steps on the same Fashion-MNIST batches")
    s.add_argument("--lr", type=float, default=0.01, help="learning rate of --train")
    s.add_argument("--batch-size", type=int, default=32, help="batch of --train and --speed")
    s.add_argument("--speed", action="store_true",
                   help="also measure inference and training examples/s")
    s.add_argument("--threads", type=int, help=threads_help)
    s.add_argument("--plot", help="save the --train loss curves to this image (.png/.svg)")
    s.add_argument("--data", help="directory holding the four Fashion-MNIST files")
    s.add_argument("-k", action="append", metavar="KEY=VALUE", help=kw_help)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("bench", help="training and inference examples/s per framework, "
                       "against the book's own code and each framework's fast path")
    s.add_argument("models", nargs="*", help="networks (default googlenet vgg_d2l)")
    s.add_argument("--frameworks", default=fws, help=f"comma-separated (default {fws})")
    s.add_argument("--paths", default="d2lport,book,fast",
                   help="what to run: d2lport, book (the book's model and loop), fast "
                        "(the book's model on the framework's fast path); default all three")
    s.add_argument("--batch-size", type=int, default=128, help="default 128 (the book's)")
    s.add_argument("--steps", type=int, default=3, help="batches per timed pass (default 3)")
    s.add_argument("--rounds", type=int, default=3, help="processes per path, the paths "
                   "taking turns (default 3); the median of all timed passes is reported "
                   "with min and max")
    s.add_argument("--repeats", type=int, default=1, help="timed passes per process "
                   "(default 1)")
    s.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--threads", type=int, help=threads_help)
    s.add_argument("--device", help="e.g. cuda:0 / /GPU:0 / gpu:0: where every path and the "
                   "matmul run (default: each framework's first GPU, else the CPU)")
    s.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n float32 "
                   "matrix product whose rate is measured on that device (default 2048)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="write the report as JSON here")
    s.add_argument("--markdown", help="write the table as Markdown here")
    s.add_argument("--readme", help="replace this README's benchmark section with the table")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("export", help="write a framework's freshly initialised weights "
                                      "(canonical .npz)")
    s.add_argument("model")
    s.add_argument("--framework", "-f", default="torch")
    s.add_argument("--out", "-o", required=True, help="the .npz file to write")
    s.add_argument("--seed", type=int, default=0, help="seed of the initialisation")
    s.add_argument("-k", action="append", metavar="KEY=VALUE", help=kw_help)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("import", help="load a canonical weight file (d2lport export, "
                                      "train --save) into a framework and check it")
    s.add_argument("weights", help="the .npz weight file")
    s.add_argument("--framework", "-f", default="torch")
    s.add_argument("--evaluate", action="store_true",
                   help="also measure test accuracy on Fashion-MNIST")
    s.add_argument("--limit", type=int, help="with --evaluate: a seeded subset of N test images")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0, help="seed of the checksum input and subset")
    s.add_argument("--data", help="directory holding the four Fashion-MNIST files")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("results", help="the recorded runs: status, check, run (make results)")
    s.add_argument("action", choices=("status", "check", "run"))
    s.add_argument("recipes", nargs="*", help="recipes (default all)")
    s.add_argument("--frameworks", default=fws, help=f"comma-separated (default {fws})")
    s.add_argument("--commit", action="store_true", help="run: git-commit each record as it "
                   "is written")
    s.add_argument("--dry-run", action="store_true", help="run: say what would be trained")
    s.add_argument("--readme", help="rewrite this README's results section (run: after each "
                   "record)")
    s.add_argument("--data", help="check: directory holding the four Fashion-MNIST files")
    s.set_defaults(func=cmd_results)

    s = sub.add_parser("data", help="where Fashion-MNIST is, verified or not; --download")
    s.add_argument("--download", action="store_true", help="download into the user cache")
    s.add_argument("--root", help="check this directory instead of searching")
    s.set_defaults(func=cmd_data)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from . import checkpoint, distributed
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args) or 0
    except checkpoint.DivergenceError as err:
        print(f"d2lport: error: {err}", file=sys.stderr)
        return checkpoint.EXIT_DIVERGED
    except distributed.PeerLostError as err:
        print(f"d2lport: error: {err}", file=sys.stderr)
        return distributed.EXIT_PEER_LOST
    except KeyboardInterrupt:
        # The backend has saved a checkpoint and printed how to resume, when it had a
        # --checkpoint-dir; otherwise nothing was saved.  `results run` trains in child
        # processes, each with its checkpoint folder.
        if args.command == "results":
            print("d2lport: interrupted: the run being trained keeps its checkpoints in "
                  "results/.checkpoints/; `d2lport results run` (make results) resumes it",
                  file=sys.stderr)
        elif not getattr(args, "checkpoint_dir", None):
            print("d2lport: interrupted (nothing saved: pass --checkpoint-dir DIR to be able "
                  "to resume)", file=sys.stderr)
        return checkpoint.EXIT_INTERRUPTED
    except (registry.UnknownModelError, registry.FrameworkNotInstalledError,
            specs.InputShapeError, checkpoint.CheckpointError, distributed.DistributedError,
            ValueError, TypeError) as err:
        print(f"d2lport: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from .data import DataError
        from .worker import WorkerError
        if isinstance(err, (DataError, WorkerError)):
            print(f"d2lport: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
