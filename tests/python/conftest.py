"""Fixtures that start real servers for the Python end-to-end tests.

- `memcached_server`: Debian's memcached 1.6.18, the reference the
  differential test compares Shoal against.
- `shoal_node`: `shoal node --standalone` from the release build (env
  `SHOAL_BIN`, default `target/release/shoal` in this repository).

Both are module-scoped (tests in a module share one server; every test uses
its own keys) and both bind loopback ports only. Readiness is polled, never
slept for (STYLE.md rule 25). A missing binary fails the test with a clear
message: a compatibility suite that skips itself proves nothing.

A failing test that used `shoal_node` gets the node's stderr (its tracing
log) attached to its report.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Generous deadlines: they bound a hang, they are not waits. Everything below
# returns as soon as the condition holds.
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.02

# Both servers refuse values above 1 MiB, so "too large" means the same on
# each side of the differential test.
MAX_VALUE_BYTES = 1024 * 1024


def free_port():
    """A loopback port that was free a moment ago (memcached needs a number
    on its command line; the node binds port 0 and reports its port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_until(addr, request, terminator, deadline_s=2.0):
    """Sends `request` on a fresh connection and reads until the reply ends
    with `terminator`; returns the reply, or None if the connection failed
    or closed first."""
    try:
        with socket.create_connection(addr, timeout=deadline_s) as s:
            s.sendall(request)
            buf = b""
            while not buf.endswith(terminator):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            return buf
    except OSError:
        return None


class Server:
    """A child process with its stderr kept in a temp file."""

    def __init__(self, name):
        self.name = name
        self.proc = None
        self.addr = None
        self._stderr = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".stderr", delete=False)

    def stderr_text(self):
        try:
            return Path(self._stderr.name).read_text(errors="replace")
        except OSError:
            return ""

    def _died(self, what):
        pytest.fail(
            f"{self.name} {what} (exit code {self.proc.returncode}); its stderr:\n{self.stderr_text()}",
            pytrace=False,
        )

    def _wait_ready(self, probe, terminator, is_ready):
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                self._died("exited while starting")
            reply = request_until(self.addr, probe, terminator)
            if reply is not None and is_ready(reply):
                return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"{self.name} not ready after {START_DEADLINE_S}s (last reply {reply!r}); "
                    f"stderr:\n{self.stderr_text()}",
                    pytrace=False,
                )
            time.sleep(POLL_INTERVAL_S)

    def stop(self):
        """SIGTERM, then wait; a server that does not stop is a failure."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"{self.name} did not exit within {STOP_DEADLINE_S}s of SIGTERM; stderr:\n{self.stderr_text()}",
                pytrace=False,
            )

    def cleanup(self):
        self._stderr.close()
        try:
            os.unlink(self._stderr.name)
        except OSError:
            pass


class Memcached(Server):
    """Debian's memcached on a free loopback port, item size limit 1 MiB."""

    def __init__(self):
        super().__init__("memcached")

    def start(self):
        binary = shutil.which("memcached")
        if binary is None:
            pytest.fail(
                "memcached is not installed (the differential tests need Debian's memcached 1.6.18; "
                "scripts/setup installs it)",
                pytrace=False,
            )
        port = free_port()
        cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-I", f"{MAX_VALUE_BYTES // 1024}k"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr)
        self.addr = ("127.0.0.1", port)
        self._wait_ready(b"version\r\n", b"\r\n", lambda r: r.startswith(b"VERSION "))
        return self


class ShoalNode(Server):
    """`shoal node --standalone` with a fresh data dir; ports chosen by the
    node (0), the data port read back from its stdout."""

    def __init__(self, *extra_args):
        super().__init__("shoal-node")
        self.extra_args = list(extra_args)
        self.data_dir = tempfile.mkdtemp(prefix="shoal-node-")
        self._stdout_lines = []
        self._data_line = threading.Event()

    def _read_stdout(self):
        # A thread drains stdout for the whole life of the process, so the
        # pipe can never fill and block the node.
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._stdout_lines.append(line)
            if line.startswith("data "):
                self._data_line.set()
        self._data_line.set()

    def start(self):
        binary = Path(os.environ.get("SHOAL_BIN", REPO / "target" / "release" / "shoal"))
        if not binary.is_file() or not os.access(binary, os.X_OK):
            pytest.fail(
                f"shoal binary not found at {binary}: run `cargo build --release` or set SHOAL_BIN",
                pytrace=False,
            )
        cmd = [
            str(binary), "node", "--standalone",
            "--data-dir", self.data_dir,
            "--port", "0", "--admin-port", "0",
            "--max-value-bytes", str(MAX_VALUE_BYTES),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not self._data_line.wait(START_DEADLINE_S):
            self.stop()
            pytest.fail(f"shoal node printed no `data` line in {START_DEADLINE_S}s; stderr:\n{self.stderr_text()}")
        data = [line for line in self._stdout_lines if line.startswith("data ")]
        if not data:
            self.proc.wait(timeout=STOP_DEADLINE_S)
            self._died("exited before listening")
        host, _, port = data[0].split()[1].rpartition(":")
        self.addr = (host, int(port))
        self._wait_ready(b"stats warmup\r\n", b"END\r\n", lambda r: b"STAT ep_warmup_thread complete\r\n" in r)
        return self

    def cleanup(self):
        super().cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _serve(server):
    try:
        yield server.start()
        code = server.stop()
        # A graceful stop is part of the contract (DESIGN.md: graceful drain
        # on SIGTERM): a crash at shutdown fails the module's last test.
        assert code in (0, -signal.SIGTERM), f"{server.name} exited with {code}; stderr:\n{server.stderr_text()}"
    finally:
        server.stop()
        server.cleanup()


@pytest.fixture(scope="module")
def memcached_server():
    """A running memcached: `.addr` is its (host, port)."""
    yield from _serve(Memcached())


@pytest.fixture(scope="module")
def shoal_node():
    """A running, warmed-up standalone node: `.addr` is its data (host, port)."""
    yield from _serve(ShoalNode())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ShoalNode):
                report.sections.append((f"shoal node stderr ({value.data_dir})", value.stderr_text()))
