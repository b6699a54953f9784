"""Where d2lport's PyTorch GoogLeNet step spends its time on a GPU (run once on an H100,
see the README's GPU section).  Needs CUDA and Fashion-MNIST (``D2LPORT_DATA``)::

    python benchmarks/h100/torch_step.py knobs            # host syncs, AMP, channels-last, copies
    python benchmarks/h100/torch_step.py compile eager default reduce-overhead

``knobs`` times d2lport's loop with each choice on and off; ``compile`` times the forward
and backward pass eager and under ``torch.compile`` (the SGD update eager in every mode).
Rates are examples/s over 40 or 60 steps of batch 128 at 96 px, after warm-up steps.
"""
import itertools
import sys
import time

import torch
import torch.nn.functional as F

from d2lport import torch as d2p

DEV = torch.device("cuda:0")
torch.backends.cudnn.benchmark = True


def batches():
    train_iter, _ = d2p.load_data_fashion_mnist(128, resize=96, limit=128 * 40, seed=0)
    host = [(X, y) for X, y in train_iter][:39]          # full batches only
    return host, [(X.to(DEV), y.to(DEV)) for X, y in host]


def net_and_opt(channels_last=True):
    torch.manual_seed(0)
    net = d2p.create_model("googlenet", seed=0).to(DEV)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net, torch.optim.SGD(net.parameters(), lr=0.01)


def rate(go, warmup, steps):
    """examples/s of ``go(steps)`` after ``go(warmup)``; also the warm-up's seconds."""
    t0 = time.perf_counter()
    go(warmup)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t = time.perf_counter()
    go(steps)
    torch.cuda.synchronize()
    return steps * 128 / (time.perf_counter() - t), warm


def knobs():
    host, gpu = batches()
    for sync, amp, cl, on_gpu in itertools.product([True, False], repeat=4):
        net, opt = net_and_opt(cl)
        data = gpu if on_gpu else host

        def go(n):
            total = torch.zeros((), device=DEV)
            for i in range(n):
                X, y = data[i % len(data)]
                X, y = X.to(DEV, non_blocking=True), y.to(DEV, non_blocking=True)
                if cl:
                    X = X.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    out = net(X)
                loss = F.cross_entropy(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if sync:              # what d2lport's train does: the loss and hits as floats
                    float(loss.detach()), float((out.argmax(1) == y).sum())
                else:                 # kept on the device
                    total += loss.detach() + (out.argmax(1) == y).sum()
                opt.step()
        r, _ = rate(go, 8, 40)
        print(f"sync={sync!s:5} amp={amp!s:5} channels_last={cl!s:5} data_on_gpu={on_gpu!s:5}: "
              f"{r:8.0f} ex/s", flush=True)


def compiled(modes):
    _, gpu = batches()
    for mode in modes:
        net, opt = net_and_opt()

        def step(X, y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(X), y)
            loss.backward()
            return loss.detach()
        f = step if mode == "eager" else torch.compile(step, mode=mode)

        def go(n):
            for i in range(n):
                X, y = gpu[i % len(gpu)]
                opt.zero_grad(set_to_none=True)
                f(X.contiguous(memory_format=torch.channels_last), y)
                opt.step()
        r, warm = rate(go, 5, 60)
        print(f"{mode:16}: {r:8.0f} ex/s (first 5 steps {warm:.0f} s)", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["knobs"]:
        knobs()
    elif sys.argv[1:2] == ["compile"]:
        compiled(sys.argv[2:] or ["eager", "reduce-overhead"])
    else:
        sys.exit(__doc__)
