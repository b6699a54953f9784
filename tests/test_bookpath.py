"""The bench's reference points (issue 10): each backend's ``bookpath`` holds D2L's chapter
models as the book writes them, trained on the book path and the framework's fast path.

Each case is marked with its framework, so ``make test-torch`` / ``test-tf`` / ``test-mxnet``
run it in their own process and no process imports two frameworks.  No speed is asserted:
a book model is the same network as the spec (parameter count), trains two steps on two
real images with a finite loss, and runs inference.  Two: the shapes of tests/test_bench.py,
which then reads JAX's compiled programs back from the cache (Makefile) instead of compiling.
"""
import math

import pytest

from d2lport import registry, specs

FRAMEWORKS = registry.FRAMEWORKS
BOOK_MODELS = ("googlenet", "vgg_d2l")      # registry.BOOK_MODELS, every bookpath's


def _params():
    return [pytest.param(fw, path, model, marks=getattr(pytest.mark, fw),
                         id=f"{fw}-{path}-{model}")
            for fw in FRAMEWORKS for path in ("book", "fast") for model in BOOK_MODELS]


def _count_params(fw, runner):
    net = runner.net
    if fw == "jax":      # linen: the parameters live in the runner's TrainState
        import jax
        return sum(p.size for p in jax.tree_util.tree_leaves(runner.state.params))
    if fw == "torch":
        return sum(p.numel() for p in net.parameters())
    if fw == "tensorflow":
        return net.count_params()
    return sum(p.data().size for p in net.collect_params().values())


@pytest.fixture
def array_mode_restored(fw):
    """MXNet's book path switches the process to numpy mode (npx.set_np()); the tests after
    this one expect MXNet's default legacy mode back."""
    yield
    if fw == "mxnet":
        from mxnet import npx
        npx.reset_np()


@pytest.mark.parametrize("fw,path,model", _params())
def test_book_model_trains_on_both_paths(fw, path, model, array_mode_restored):
    d2p = pytest.importorskip(f"d2lport.{fw}")
    bookpath = pytest.importorskip(f"d2lport.{fw}.bookpath")
    assert bookpath.BOOK_MODELS == BOOK_MODELS
    spec = registry.get_spec(model)
    runner = bookpath.Runner(path, model, lr=0.01)   # MXNet: numpy mode before the loader
    assert _count_params(fw, runner) == specs.count_params(spec)
    assert runner.describe().startswith(f"{path}:")
    train_iter, _ = d2p.load_data_fashion_mnist(2, resize=spec.input_shape[1], limit=2)
    X, y = next(iter(train_iter))
    losses = [runner.train_step(X, y) for _ in range(2)]
    assert all(isinstance(loss, float) and math.isfinite(loss) for loss in losses), losses
    total = runner.infer(X)
    assert isinstance(total, float) and math.isfinite(total)
