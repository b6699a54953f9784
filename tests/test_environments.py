"""The two environments: the main one (.venv, numpy 2: PyTorch, TensorFlow/Keras, JAX/Flax,
Jupyter, the tests) and MXNet's own (.venv-mxnet, numpy 1.23.5), built by one `make setup`.

Framework-free (marker ``core``): runs in either environment.  The pins agree across the
requirement files, locks, conda files and the Makefile; d2lport finds MXNet's Python by
itself (``worker.python_for``); ``import d2lport.mxnet`` where MXNet is absent says in one
line where it lives; the MXNet notebooks run in the kernel of .venv-mxnet.  The tests that
look at a built environment skip when it is not there (before `make setup`).
"""
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from d2lport import worker

pytestmark = pytest.mark.core
ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
MAIN_PY = ROOT / ".venv" / "bin" / "python"
MX_PY = ROOT / ".venv-mxnet" / "bin" / "python"
KERNEL = "d2lport-mxnet"


def _pins(path: Path) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"{path.name}: not an exact pin: {line!r}"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def _version(v: str):
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:3])


MAIN = _pins(REQ / "all.txt")
MXNET = _pins(REQ / "mxnet.txt")


# --------------------------------------------------------------------------- the pins
def test_main_environment_is_the_measured_numpy_2_stack():
    assert _version(MAIN["numpy"]) >= (2, 0)
    for name, version in {"numpy": "2.4.6", "torch": "2.13.0", "tensorflow-cpu": "2.21.0",
                          "keras": "3.15.1", "jax": "0.10.2", "jaxlib": "0.10.2",
                          "flax": "0.12.8", "optax": "0.2.8"}.items():
        assert MAIN[name] == version, name
    assert "mxnet" not in MAIN and "d2l" not in MAIN     # d2l: no-deps.txt


def test_mxnet_environment_has_mxnet_and_an_old_numpy_only():
    assert MXNET["mxnet"] == "1.9.1" and MXNET["numpy"] == "1.23.5"
    assert _version(MXNET["numpy"]) < (1, 24)           # MXNet 1.9.1 reads numpy.bool
    assert not {"torch", "tensorflow", "tensorflow-cpu", "keras", "jax", "flax"} & set(MXNET)
    # what test-mxnet and the MXNet notebooks need
    assert {"pytest", "ipykernel", "nbval", "jupytext", "matplotlib", "pandas", "graphviz",
            "pyyaml"} <= set(MXNET)
    assert _version(MXNET["graphviz"]) < (0, 9)         # mxnet 1.9.1 requires graphviz<0.9


def test_both_environments_draw_with_the_same_graphviz_wrapper():
    """The chapters' .gv pictures are compared as text: one wrapper version writes them."""
    assert MAIN["graphviz"] == MXNET["graphviz"]


def test_d2l_is_installed_without_its_pins():
    """d2l 1.0.3 pins numpy==1.23.5: installed with --no-deps in both environments."""
    assert _pins(REQ / "no-deps.txt") == {"d2l": "1.0.3"}
    make = (ROOT / "Makefile").read_text()
    assert make.count("--no-deps -r requirements/no-deps.txt") == 2


@pytest.mark.parametrize("direct,lock", [("all.txt", "lock.txt"),
                                         ("mxnet.txt", "mxnet-lock.txt")])
def test_each_lock_pins_every_direct_pin_and_not_d2lport(direct, lock):
    locked = _pins(REQ / lock)
    for name, version in _pins(REQ / direct).items():
        assert locked.get(name, "").split("+")[0] == version.split("+")[0], (lock, name)
    assert "d2lport" not in locked and "pip" not in locked
    assert "mxnet" not in locked if lock == "lock.txt" else locked["numpy"] == "1.23.5"


def test_conda_files_agree_with_the_pins():
    yaml = pytest.importorskip("yaml")
    for name, pins in (("environment.yml", MAIN), ("environment-mxnet.yml", MXNET)):
        deps = yaml.safe_load((ROOT / name).read_text())["dependencies"]
        assert "python=3.11" in deps
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        assert {k.lower().replace("_", "-"): v for k, v in
                (p.split("==") for p in pip)} == pins, name


def test_pyproject_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    names = {re.split(r"[<>=!\[ ]", r)[0] for r in extras["jax"]}
    assert names == {"jax", "jaxlib", "flax", "optax"}
    assert "numpy<1.24" in extras["mxnet"]
    numpy_dep = next(d for d in meta["dependencies"] if d.startswith("numpy"))
    assert "<" not in numpy_dep, "the framework-free code runs on numpy 2 too"


# --------------------------------------------------------------------------- make
def test_make_setup_builds_both_environments_and_the_kernel():
    make = (ROOT / "Makefile").read_text()
    setup = re.search(r"^setup: (.*)$", make, re.M).group(1).split()
    # and MathJax for the book (npm), which the site serves itself
    assert setup == ["$(STAMP)", "$(MXSTAMP)", "$(KERNELSPEC)", "$(MATHJAX)"]
    assert re.search(r"^MXVENV \?= \.venv-mxnet$", make, re.M)
    assert "-r requirements/mxnet.txt -c requirements/mxnet-lock.txt" in make
    assert "-r requirements/all.txt -c requirements/lock.txt" in make
    assert f"ipykernel install --prefix \"$(abspath $(VENV))\" --name $(MXKERNEL)" in make
    assert f"MXKERNEL := {KERNEL}" in make


def _recipe(make: str, target: str) -> str:
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", make, re.M)
    assert m, target
    return m.group(1)


def test_make_test_runs_every_framework_in_its_environment():
    make = (ROOT / "Makefile").read_text()
    steps = re.findall(r"--no-print-directory (\S+)", _recipe(make, "test"))
    assert steps == ["test-torch", "test-tf", "test-mxnet", "test-jax", "test-compare",
                     "test-notebooks", "test-book"]
    assert _recipe(make, "test-book").lstrip().startswith("$(PYTEST) -m book")
    assert _recipe(make, "test-mxnet").lstrip().startswith("$(MXPYTEST) -m")
    assert "core and not parity" in _recipe(make, "test-mxnet")   # numpy 1.23 too
    assert '-m "jax and not killloop" --forbid-imports torch,tensorflow,mxnet' in \
        _recipe(make, "test-jax")
    assert "$(MXPYTEST) -m \"mxnet and killloop\"" in _recipe(make, "kill-loop")
    for target in ("test-torch", "test-tf", "test-jax", "test-compare"):
        assert _recipe(make, target).lstrip().startswith("$(PYTEST)"), target


# --------------------------------------------------------------------------- finding MXNet
@pytest.fixture
def fake_checkout(tmp_path, monkeypatch):
    """A checkout with both venvs (bare files standing for their Pythons); d2lport's
    worker module placed in it."""
    for venv in (".venv", ".venv-mxnet"):
        (tmp_path / venv / "bin").mkdir(parents=True)
        (tmp_path / venv / "bin" / "python").write_text("")
    (tmp_path / "d2lport").mkdir()
    monkeypatch.setattr(worker, "__file__", str(tmp_path / "d2lport" / "worker.py"))
    monkeypatch.delenv("D2LPORT_PYTHON_MXNET", raising=False)
    monkeypatch.delenv("D2LPORT_PYTHON_TORCH", raising=False)
    return tmp_path


def test_mxnet_workers_use_venv_mxnet_beside_the_checkout(fake_checkout, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(fake_checkout / ".venv"))
    assert worker.python_for("mxnet") == str(fake_checkout / ".venv-mxnet/bin/python")
    assert worker.python_for("MXNet") == str(fake_checkout / ".venv-mxnet/bin/python")
    assert worker.python_for("torch") == sys.executable
    monkeypatch.setenv("D2LPORT_PYTHON_MXNET", "/elsewhere/bin/python")    # the override
    assert worker.python_for("mxnet") == "/elsewhere/bin/python"


def test_from_venv_mxnet_the_other_frameworks_run_in_the_main_venv(fake_checkout, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(fake_checkout / ".venv-mxnet"))
    assert worker.python_for("mxnet") == sys.executable       # already there
    assert worker.python_for("torch") == str(fake_checkout / ".venv/bin/python")


def test_without_venv_mxnet_this_python_runs_mxnet(fake_checkout, monkeypatch):
    (fake_checkout / ".venv-mxnet/bin/python").unlink()
    monkeypatch.setattr(sys, "prefix", str(fake_checkout / ".venv"))
    assert worker.python_for("mxnet") == sys.executable
    assert worker.separate_env_python("mxnet") is None
    assert worker.separate_env_python("torch") is None


def test_beside_the_running_venv_counts_too(tmp_path, fake_checkout, monkeypatch):
    """d2lport installed (not editable) in <dir>/.venv: <dir>/.venv-mxnet is found."""
    elsewhere = tmp_path / "site"
    (elsewhere / ".venv-mxnet" / "bin").mkdir(parents=True)
    (elsewhere / ".venv-mxnet" / "bin" / "python").write_text("")
    (fake_checkout / ".venv-mxnet/bin/python").unlink()
    monkeypatch.setattr(sys, "prefix", str(elsewhere / ".venv"))
    assert worker.python_for("mxnet") == str(elsewhere / ".venv-mxnet/bin/python")


# --------------------------------------------------------------------------- the import guard
def _run(python, code):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("D2LPORT_PYTHON_MXNET", None)
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def _python_without_mxnet():
    import importlib.util
    if importlib.util.find_spec("mxnet") is None:
        return sys.executable
    if MAIN_PY.exists():
        return MAIN_PY
    pytest.skip("no Python without MXNet here")


def test_import_d2lport_mxnet_without_mxnet_names_its_environment_in_one_line():
    python = _python_without_mxnet()
    proc = _run(python, "import d2lport.mxnet")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("d2lport.mxnet.MXNetEnvironmentError: d2lport.mxnet: MXNet is not "
                           "installed in this Python")
    assert proc.stderr.count("MXNet is not installed") == 1      # a one-line message
    if MX_PY.exists():
        assert f"run it with {MX_PY}" in last and "make test-mxnet" in last
        assert KERNEL in last
    else:
        assert "`make setup`" in last and ".venv-mxnet" in last


def test_without_venv_mxnet_the_message_says_make_setup():
    proc = _run(_python_without_mxnet(),
                "import d2lport.worker as w\nw.separate_env_python = lambda fw: None\n"
                "try:\n    import d2lport.mxnet\nexcept ImportError as err:\n"
                "    print(type(err).__name__, err)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip()
    assert "\n" not in out and out.startswith("MXNetEnvironmentError")
    assert "`make setup` in the d2lport checkout builds .venv-mxnet" in out
    assert ".venv-mxnet/bin/python" in out and KERNEL in out


def test_registry_names_the_mxnet_environment(monkeypatch):
    from d2lport import registry
    monkeypatch.setattr(registry, "framework_available", lambda fw: fw != "mxnet")
    monkeypatch.setattr(worker, "separate_env_python", lambda fw: "/x/.venv-mxnet/bin/python")
    with pytest.raises(registry.FrameworkNotInstalledError,
                       match=r"d2lport\[mxnet\].*It is in /x/\.venv-mxnet/bin/python"):
        registry.require_framework("mxnet")


# --------------------------------------------------------------------------- built environments
needs_main = pytest.mark.skipif(not MAIN_PY.exists(), reason=".venv not built (make setup)")
needs_mxnet = pytest.mark.skipif(not MX_PY.exists(), reason=".venv-mxnet not built (make setup)")

_VERSIONS = ("import importlib.metadata as m, json, sys\n"
             "names = sys.argv[1:]\n"
             "def v(n):\n"
             "    try:\n        return m.version(n)\n"
             "    except m.PackageNotFoundError:\n        return None\n"
             "print(json.dumps({n: v(n) for n in names}))\n")


def _installed(python, *names):
    proc = subprocess.run([str(python), "-c", _VERSIONS, *names], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@needs_main
def test_the_main_venv_holds_its_pins():
    got = _installed(MAIN_PY, "numpy", "jax", "flax", "keras", "d2l", "mxnet", "d2lport")
    assert got["numpy"] == MAIN["numpy"] and got["jax"] == MAIN["jax"]
    assert got["flax"] == MAIN["flax"] and got["keras"] == MAIN["keras"]
    assert got["d2l"] == "1.0.3" and got["mxnet"] is None and got["d2lport"]


@needs_mxnet
def test_venv_mxnet_holds_mxnet_and_numpy_1_23():
    got = _installed(MX_PY, "numpy", "mxnet", "d2l", "d2lport", "torch", "tensorflow-cpu",
                     "jax")
    assert got["numpy"] == "1.23.5" and got["mxnet"] == "1.9.1" and got["d2l"] == "1.0.3"
    assert got["d2lport"] and not (got["torch"] or got["tensorflow-cpu"] or got["jax"])


@needs_main
@needs_mxnet
def test_the_mxnet_kernel_is_registered_in_the_main_venv():
    spec = ROOT / ".venv" / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json"
    assert spec.exists(), "make setup registers it"
    argv = json.loads(spec.read_text())["argv"]
    assert Path(argv[0]) == MX_PY.absolute() and "ipykernel_launcher" in argv


def test_mxnet_notebooks_name_the_mxnet_kernel_and_the_others_python3():
    notebooks = sorted((ROOT / "notebooks").glob("*/*.ipynb"))
    assert notebooks
    for path in notebooks:
        kernel = json.loads(path.read_text(encoding="utf-8"))["metadata"]["kernelspec"]["name"]
        assert kernel == (KERNEL if path.parent.name == "mxnet" else "python3"), path
