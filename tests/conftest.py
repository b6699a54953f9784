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
    forbidden = [m for m in session.config.getoption("--forbid-imports").split(",") if m]
    leaked = [m for m in forbidden if m in sys.modules]
    if leaked:
        session.config.get_terminal_writer().line(
            f"FAILED: this session imported {', '.join(leaked)}, which it must not "
            "(a framework's tests import only that framework)", red=True)
        session.exitstatus = 1
