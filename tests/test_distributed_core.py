"""The framework-free part of data parallelism (d2lport.distributed) and `d2lport train`'s
data-parallel arguments: shards, loss weights, roles, the learning-rate rule, the launcher
and the watchdog.  No framework is imported here."""
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from d2lport import cli, distributed as dist
from d2lport.loader import ArrayBatches

pytestmark = pytest.mark.core


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_a_batch_once_in_order_and_differ_by_at_most_one(world):
    for n in range(world, 70):
        bounds = [dist.shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_loss_weights_make_the_average_of_shard_means_the_batch_mean():
    rng = np.random.default_rng(0)
    for n, world in ((7, 2), (51, 2), (10, 3), (64, 4)):
        losses = rng.random(n)
        parts = [losses[slice(*dist.shard_bounds(n, r, world))] for r in range(world)]
        engine_average = np.mean([dist.loss_weight(len(p), n, world) * p.mean() for p in parts])
        assert engine_average == pytest.approx(losses.mean(), rel=1e-12)
    # equal shards: the weight is 1 (nothing changes where no change is needed)
    assert dist.loss_weight(32, 64, 2) == 1.0


def test_sharded_batches_are_the_global_batches_cut_between_replicas():
    images = np.arange(99 * 2 * 2, dtype=np.uint8).reshape(99, 2, 2)
    labels = np.arange(99)
    whole = list(ArrayBatches(images, labels, 16, shuffle=True, seed=3))
    parts = [dist.ShardedBatches(ArrayBatches(images, labels, 16, shuffle=True, seed=3), r, 2)
             for r in range(2)]
    assert len(parts[0]) == len(whole) == 7 and parts[0].num_examples == 99
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
        np.testing.assert_array_equal(np.concatenate([x0, x1]), x)
    assert parts[0].global_size == 99 - 6 * 16           # the last, uneven batch (2 + 1)
    # a position counts global batches: resuming at batch 5 skips the same examples
    part = dist.ShardedBatches(ArrayBatches(images, labels, 16, shuffle=True, seed=3), 1, 2)
    part.resume_at(0, 5)
    np.testing.assert_array_equal(next(iter(part))[1], whole[5][1][8:])


def test_a_batch_too_small_for_the_replicas_is_refused_with_a_batch_size_that_works():
    with pytest.raises(dist.DistributedError, match=r"smaller than the 4 replicas.*--batch-size 4"):
        dist.check_batches(100, 3, 4)
    with pytest.raises(dist.DistributedError, match=r"last training batch has 1 example") as err:
        dist.check_batches(65, 64, 2)
    fix = int(str(err.value).split("--batch-size ")[1].split(")")[0])
    dist.check_batches(65, fix, 2)                      # the suggested size is accepted
    dist.check_batches(60000, 128, 2)


def test_role_comes_from_torchruns_variables():
    assert dist.Role.from_env({}) == dist.Role()
    role = dist.Role.from_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
                               "MASTER_PORT": "1234", "LOCAL_RANK": "0",
                               "LOCAL_WORLD_SIZE": "1"})
    assert (role.rank, role.world, role.master, role.is_chief) == (1, 2, "10.0.0.1:1234", False)
    assert dist.Role.from_env(role.env()) == role
    with pytest.raises(dist.DistributedError, match="RANK and WORLD_SIZE"):
        dist.Role.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(dist.DistributedError, match="WORLD_SIZE='two' is not a whole number"):
        dist.Role.from_env({"WORLD_SIZE": "two"})


def test_linear_scaling_warms_up_to_lr_times_batch_over_base():
    rule = dist.LinearScaling(base_batch=128, warmup_steps=4)
    assert [rule.lr_at(0.1, s, 512) for s in range(6)] == pytest.approx(
        [0.1, 0.175, 0.25, 0.325, 0.4, 0.4])
    assert dist.LinearScaling(64).lr_at(0.1, 0, 128) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="base batch >= 1"):
        dist.LinearScaling(0)


def _py(code: str):
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_launch_prefixes_output_and_stops_the_survivors_when_a_rank_fails(capfd):
    t0 = time.monotonic()
    status = dist.launch([_py("import time; print('up', flush=True); time.sleep(120)"),
                          _py("import sys; print('failing', flush=True); sys.exit(3)")],
                         grace=2)
    took = time.monotonic() - t0
    out, err = capfd.readouterr()
    assert status == 3 and took < 20
    assert "[rank 0] up" in out and "[rank 1] failing" in out
    assert "rank 1 exited with status 3; ranks 0 get 2 s to stop" in err


def test_launch_reports_a_killed_rank_as_a_lost_peer_and_passes_the_environment(capfd):
    status = dist.launch([_py("import os; print('rank', os.environ['RANK'], flush=True)"),
                          _py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")],
                         envs=[{"RANK": "0"}, {"RANK": "1"}], grace=2)
    out, err = capfd.readouterr()
    assert status == dist.EXIT_PEER_LOST
    assert "[rank 0] rank 0" in out and "rank 1 was killed by SIGKILL" in err
    assert dist.launch([_py("pass"), _py("pass")]) == 0


def test_the_watchdog_ends_a_replica_that_makes_no_progress():
    code = """
        import time
        from d2lport.distributed import StepWatchdog
        with StepWatchdog(1.5, rank=1) as dog:
            for _ in range(3):
                time.sleep(0.3); dog.beat()        # progress: no alarm
            dog.pause(); time.sleep(2.5); dog.resume()   # long, but paused: no alarm
            time.sleep(30)                         # a peer is gone: the alarm
    """
    t0 = time.monotonic()
    p = subprocess.run(_py(code), capture_output=True, text=True, timeout=60)
    assert p.returncode == dist.EXIT_PEER_LOST and time.monotonic() - t0 < 15
    assert "rank 1: no step finished in 1.5 s: another replica of this run has died" in p.stderr


def test_node_commands_put_every_machine_on_the_loopback_interface():
    cmds = dist.node_commands(["train", "residual_net", "-f", "jax", "--devices", "1"], 2,
                              port=1234, python="py")
    assert cmds[1][-6:] == ["--nodes", "2", "--node-rank", "1", "--master", "127.0.0.1:1234"]
    assert cmds[0][:3] == ["py", "-m", "d2lport.cli"]


@pytest.mark.parametrize("argv, message", [
    (["--sync-bn"], "--sync-bn is a data-parallel setting: add --devices N"),
    (["--devices", "0"], "--devices must be >= 1, got 0"),
    (["--devices", "2", "--nodes", "2"], "--nodes > 1 needs --master HOST:PORT"),
    (["--devices", "2", "--nodes", "2", "--master", "h:1", "--node-rank", "2"],
     "--node-rank 2 of --nodes 2"),
    (["--devices", "2", "--master", "nohost"], "give the first machine's address as HOST:PORT"),
    (["--devices", "2", "--device", "cpu"], "drop --device"),
    (["--devices", "2", "--warmup-steps", "5"], "--warmup-steps W (>= 0) goes with --scale-lr"),
    (["--devices", "2", "--peer-timeout", "0"], "--peer-timeout must be > 0"),
])
def test_bad_data_parallel_arguments_get_one_line(argv, message, capsys):
    assert cli.main(["train", "residual_net", "-f", "torch", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_data_parallel_arguments_are_refused_before_a_framework_is_imported():
    code = """
        import sys
        from d2lport import cli
        assert cli.main(["train", "residual_net", "-f", "jax", "--devices", "2",
                         "--scale-lr", "0"]) == 2
        loaded = [m for m in ("torch", "tensorflow", "mxnet", "jax") if m in sys.modules]
        assert not loaded, loaded
    """
    p = subprocess.run(_py(code), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "base batch >= 1" in p.stderr


def test_the_launchers_own_node_arguments_are_dropped_from_the_command():
    argv = ["train", "m", "--nodes", "2", "--node-rank=1", "--master", "h:1", "--devices", "2"]
    assert cli._strip_node_args(argv) == ["train", "m", "--devices", "2"]


def _imports(path):
    import ast
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names |= {base} | {f"{base}.{a.name}".replace("..", ".") if node.module else
                               base + a.name for a in node.names}
    return names


def test_a_one_device_run_never_imports_a_backends_data_parallel_trainer():
    """The records' code digest leaves d2lport/<framework>/distributed.py out because the
    recorded (one-device) runs never import it: no other module of a backend does."""
    from pathlib import Path
    from d2lport import registry
    from d2lport.results import record
    assert "distributed.py" in record._NOT_RUN
    pkg = Path(dist.__file__).parent
    for fw in registry.FRAMEWORKS:
        for path in sorted((pkg / fw).glob("*.py")):
            if path.name == "distributed.py":
                continue
            bad = {n for n in _imports(path) if n in (".distributed", f"d2lport.{fw}.distributed")
                   or n.startswith((".distributed.", f"d2lport.{fw}.distributed."))}
            assert not bad, f"{path.relative_to(pkg.parent)} imports {bad}"
