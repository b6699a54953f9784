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
    kwargs = _parse_kv(args.k)
    shape = _parse_shape(args.input)
    if shape is not None:   # build the model for the input asked about
        if registry.accepts(args.model, "in_channels"):
            kwargs.setdefault("in_channels", shape[1])
        if registry.accepts(args.model, "image_size") and not registry.get_spec(args.model).any_size:
            kwargs.setdefault("image_size", shape[2])
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


def cmd_train(args) -> int:
    backend = registry.backend(args.framework)
    kwargs = _parse_kv(args.k)
    spec0 = registry.get_spec(args.model, **{k: v for k, v in kwargs.items()
                                             if k not in ("num_classes", "in_channels")})
    resize = args.resize or spec0.input_shape[1]
    # Fashion-MNIST: one channel, ten classes; fixed-size nets are built for the resize.
    for key, value in (("num_classes", 10), ("in_channels", 1)):
        if registry.accepts(args.model, key):
            kwargs.setdefault(key, value)
    if not spec0.any_size and registry.accepts(args.model, "image_size"):
        kwargs.setdefault("image_size", resize)
    net = backend.create_model(args.model, seed=args.seed, **kwargs)
    train_iter, test_iter = backend.load_data_fashion_mnist(
        args.batch_size, resize=None if resize == 28 else resize, limit=args.limit,
        seed=args.seed, root=args.data)
    print(f"training {args.model} ({args.framework}) on Fashion-MNIST: "
          f"{train_iter.num_examples} train / {test_iter.num_examples} test examples at "
          f"{resize}x{resize}, batch {args.batch_size}, lr {args.lr}, {args.optimizer}",
          flush=True)
    history = backend.train(net, train_iter, test_iter, num_epochs=args.epochs, lr=args.lr,
                            optimizer=args.optimizer, momentum=args.momentum,
                            device=args.device, seed=args.seed)
    print(history)
    if args.save:
        path = backend.save_weights(net, args.save, kwargs=kwargs)
        print(f"weights saved to {path}")
    if args.plot:
        from .common import plot_history
        plot_history(history).savefig(args.plot)
        print(f"plot saved to {args.plot}")
    return 0


def cmd_data(args) -> int:
    from .data import fashion_mnist
    argv = ["--download"] if args.download else ["--status"]
    if args.root:
        argv += ["--root", args.root]
    return fashion_mnist.main(argv)


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

    s = sub.add_parser("train", help="train a model on Fashion-MNIST")
    s.add_argument("model")
    s.add_argument("--framework", "-f", default="torch")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--lr", type=float, default=0.1)
    s.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    s.add_argument("--momentum", type=float, default=0.0)
    s.add_argument("--resize", type=int, help="image side (default: the model's input size)")
    s.add_argument("--limit", type=int, help="use a seeded subset of N examples per split")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="e.g. cpu, cuda:0 (default: the first GPU, else CPU)")
    s.add_argument("--data", help="directory holding the four Fashion-MNIST files")
    s.add_argument("--save", help="write the trained weights to this .npz (canonical form)")
    s.add_argument("--plot", help="save the training curves to this image file")
    s.add_argument("-k", action="append", metavar="KEY=VALUE", help=kw_help)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("data", help="where Fashion-MNIST is, verified or not; --download")
    s.add_argument("--download", action="store_true", help="download into the user cache")
    s.add_argument("--root", help="check this directory instead of searching")
    s.set_defaults(func=cmd_data)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (registry.UnknownModelError, registry.FrameworkNotInstalledError,
            specs.InputShapeError, ValueError, TypeError) as err:
        print(f"d2lport: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from .data import DataError
        if isinstance(err, DataError):
            print(f"d2lport: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
