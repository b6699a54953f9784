"""Test plumbing: one framework per pytest process (see the Makefile), enforced here."""
import ipaddress
import os
import signal
import socket
import sys

import pytest

# A test run started in the background by a non-interactive shell (`nohup make test &`)
# inherits SIGINT ignored, and Python leaves it ignored: Ctrl-C could not reach training at
# all, and the tests that send one (D2LPORT_TEST_KILL=int:K) would see nothing happen.
# Python's own handler again, for this process and (as the default) for its children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("D2LPORT_PROGRESS", "0")

FRAMEWORK_MARKERS = ("torch", "tensorflow", "mxnet", "jax")


def pytest_addoption(parser):
    parser.addoption("--forbid-imports", default="",
                     help="comma-separated modules this session must not import "
                          "(e.g. `make test-torch` forbids tensorflow,mxnet)")


def _forbidden(config):
    return [m for m in config.getoption("--forbid-imports").split(",") if m]


def pytest_ignore_collect(collection_path, config):
    # A test file named after a forbidden framework imports it at module level: skip it
    # before it is imported (test_tensorflow*.py, test_distributed_tensorflow.py when
    # tensorflow is forbidden, ...).
    name = collection_path.name
    return any(name.startswith((f"test_{m}", f"test_distributed_{m}"))
               for m in _forbidden(config)) or None


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


# --------------------------------------------------------------------------- no network
class NetworkBlockedError(OSError):
    """A test tried to reach a host other than this machine."""


def _loopback(host) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False             # a host name: never resolved here (that is a lookup too)
    return ip.is_loopback or ip.is_unspecified or (
        ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _refuse(address):
    raise NetworkBlockedError(
        f"network access blocked in tests: connect to {address!r} refused before any packet "
        "was sent (only loopback is allowed; a hidden download? inject a fetch or use "
        "local files)")


def _guard(address, family=None):
    if family == getattr(socket, "AF_UNIX", object()):
        return
    if isinstance(address, (tuple, list)) and address and not _loopback(address[0]):
        _refuse(address)


@pytest.fixture(autouse=True, scope="session")
def block_network():
    """Every test runs with sockets able to reach loopback only (multi-process training on
    localhost works; a download, a DNS-free connect to a remote address, ... fails at once
    with NetworkBlockedError).  ``getaddrinfo`` of a remote name is refused too."""
    mp = pytest.MonkeyPatch()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def connect(self, address):
        _guard(address, self.family)
        return real_connect(self, address)

    def connect_ex(self, address):
        _guard(address, self.family)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        _guard(address)
        return real_create(address, *args, **kwargs)

    own = {socket.gethostname()}     # this machine under its own name

    def getaddrinfo(host, *args, **kwargs):
        host = host.decode() if isinstance(host, bytes) else host
        if host not in own and not _loopback(host):
            _refuse((host,) + tuple(args[:1]))
        return real_getaddrinfo(host, *args, **kwargs)

    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket.socket, "connect_ex", connect_ex)
    mp.setattr(socket, "create_connection", create_connection)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    mp.undo()
