"""Project plumbing: the pins agree everywhere, the CLI is installed, CI runs make test."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.core
ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"not an exact pin: {line!r}"
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_parses_and_agrees_with_the_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    required = _pins((ROOT / "requirements/all.txt").read_text().splitlines())
    assert _pins(pip) == required
    # the measured set of the developers' guide (MXNet's environment: test_environments.py)
    for name, version in {"numpy": "2.4.6", "torch": "2.13.0", "tensorflow-cpu": "2.21.0",
                          "keras": "3.15.1", "jax": "0.10.2", "flax": "0.12.8"}.items():
        assert required[name] == version


def test_lock_file_agrees_with_the_direct_pins():
    lock = {}
    for line in (ROOT / "requirements/lock.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            lock[name.lower().replace("_", "-")] = version.split("+")[0].strip()
    for name, version in _pins((ROOT / "requirements/all.txt").read_text().splitlines()).items():
        assert lock.get(name.replace("_", "-")) == version.split("+")[0], name


def test_pyproject_declares_extras_and_the_console_script():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(meta["optional-dependencies"]) >= {"torch", "tensorflow", "mxnet", "notebooks", "dev"}
    assert meta["scripts"]["d2lport"] == "d2lport.cli:main"
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert {m.split(":")[0] for m in markers} >= {"core", "torch", "tensorflow", "mxnet"}


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    make = (ROOT / "Makefile").read_text()
    for target in ("setup", "data", "demo", "test", "test-torch", "test-tf", "test-mxnet",
                   "notebooks", "bench"):
        assert re.search(rf"^{re.escape(target)}:", make, re.M), target
    assert '-m "tensorflow and not killloop"' in make and 'or mxnet) and not killloop"' in make
