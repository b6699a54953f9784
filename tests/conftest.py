"""Test plumbing: one framework per pytest process (see the Makefile), enforced here."""
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("D2LPORT_PROGRESS", "0")

FRAMEWORK_MARKERS = ("torch", "tensorflow", "mxnet")


def pytest_addoption(parser):
    parser.addoption("--forbid-imports", default="",
                     help="comma-separated modules this session must not import "
                          "(e.g. `make test-torch` forbids tensorflow,mxnet)")


def _forbidden(config):
    return [m for m in config.getoption("--forbid-imports").split(",") if m]


def pytest_ignore_collect(collection_path, config):
    # A test file named after a forbidden framework imports it at module level: skip it
    # before it is imported (test_tensorflow*.py when tensorflow is forbidden, ...).
    name = collection_path.name
    return any(name.startswith(f"test_{m}") for m in _forbidden(config)) or None


@pytest.hookimpl(trylast=True)   # after `-m` has deselected what this run does not need
def pytest_collection_modifyitems(config, items):
    # Importing TensorFlow before MXNet in one process segfaults (MXNet 1.9.1): refuse a
    # session that would run both instead of crashing halfway.
    present = {m for item in items for m in FRAMEWORK_MARKERS if item.get_closest_marker(m)}
    if {"tensorflow", "mxnet"} <= present:
        raise pytest.UsageError(
            "this selection runs TensorFlow and MXNet tests in one process, which can "
            "segfault; select one framework per run: make test-torch / test-tf / test-mxnet "
            "(make test runs them all), or pytest -m 'core or torch' / -m tensorflow / -m mxnet")


def pytest_sessionfinish(session, exitstatus):
    leaked = [m for m in _forbidden(session.config) if m in sys.modules]
    if leaked:
        session.config.get_terminal_writer().line(
            f"FAILED: this session imported {', '.join(leaked)}, which it must not "
            "(a framework's tests import only that framework)", red=True)
        session.exitstatus = 1
