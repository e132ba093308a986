"""Fixtures for the kvtier Python tests: a real kvtierd on a temporary socket and directory,
started the way tests/lib/daemon.c starts it (same flags; it dies with the test process), and
clients of it. The daemon binary is $KVT_BUILD/kvtierd (KVT_BUILD defaults to <repo>/build)."""

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import kvtier

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BUILD = os.path.join(REPO, os.environ.get("KVT_BUILD", "build"))
KVTIERD = os.path.join(BUILD, "kvtierd")

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # A test that fails must not leave a daemon behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Daemon:
    """A kvtierd of the test's own: start, stop (SIGTERM), kill (SIGKILL), restart on the same
    socket and data, pause (SIGSTOP) and resume."""

    def __init__(self, extra_args=()):
        self.dir = tempfile.mkdtemp(prefix="kvtier-py-")
        self.socket = os.path.join(self.dir, "kvtier.sock")
        self.log = os.path.join(self.dir, "kvtierd.log")
        self.extra_args = list(extra_args)
        self.proc = None

    def start(self, timeout_s=10.0):
        args = [KVTIERD, f"--socket={self.socket}", f"--data_dir={self.dir}",
                "--cpu.arena_bytes=256M", "--cpu.hugepages=false", *self.extra_args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvtierd exited at start ({self.proc.returncode}):\n"
                                   + self.tail())
            if os.path.exists(self.socket):
                try:
                    with kvtier.Client(self.socket, timeout=1.0, arena_bytes=4096) as c:
                        c.ping()
                    return self
                except kvtier.KvtierError:
                    pass
            time.sleep(0.01)
        self.kill()
        raise RuntimeError("kvtierd did not answer within %.0f s:\n%s" % (timeout_s, self.tail()))

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
                rc = -9
            self.proc = None
            return rc
        return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self):
        self.kill()
        return self.start()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def tail(self, n=40):
        try:
            with open(self.log, "r", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def pytest_configure(config):
    if not os.access(KVTIERD, os.X_OK):
        raise pytest.UsageError(f"{KVTIERD} not built: run `make` first (or set KVT_BUILD)")


@pytest.fixture(scope="session")
def shared_daemon():
    """One daemon for the tests that do not stop or pause it."""
    d = Daemon().start()
    yield d
    d.cleanup()


@pytest.fixture
def daemon():
    """A daemon of the test's own, for tests that kill, restart or pause it."""
    d = Daemon().start()
    yield d
    d.cleanup()


@pytest.fixture
def client(shared_daemon):
    with kvtier.Client(shared_daemon.socket, timeout=5.0) as c:
        yield c


_ns_serial = [0]


@pytest.fixture
def ns(client):
    """A namespace of its own per test (a fresh model id), small chunks: 2 layers x 2 heads x
    64 dims fp16 x 16 tokens = 16 KiB."""
    _ns_serial[0] += 1
    return client.register(f"pytest-{os.getpid()}-{_ns_serial[0]}", layers=2, kv_heads=2,
                           head_dim=64, dtype="fp16", tokens_per_chunk=16)
