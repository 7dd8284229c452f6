"""Helpers and fixtures for the smart proxy's end-to-end tests
(`test_proxy.py`, which loads this module as a pytest plugin).

- `ConfigServer`: a threaded HTTP server playing the cluster manager's part
  for the proxy: it streams `/pools/default/bucketsStreaming/default`
  (chunked; the current config, then every config `publish`ed, separated by
  "\\n\\n\\n\\n", with bare separators as keep-alives) and answers the
  one-shot `/pools/default/buckets/default`.
- `ShoalNode`: `shoal node` without `--standalone` (every vbucket starts
  dead); the test sets vbucket states with binary SET_VBUCKET and reads
  what a node holds with direct binary requests carrying the vbucket id.
- `ShoalProxy`: `shoal proxy`, in vbucket mode (`--cluster`) or static
  ketama mode (`--servers`).
- `Memcached`: Debian's memcached, for the static ketama mode.
- `Cluster`: nodes + config server + the vbucket → node map the test owns,
  with `publish()` building the Couchbase bucket config from it.
- `Harness` (fixture `harness`): owns every process a test starts, kills
  them at teardown, and attaches their logs to a failing test's report.

Everything binds 127.0.0.1 with ports chosen by the OS and is polled for
readiness, never slept for (STYLE.md rule 25). A missing binary fails the
test: a suite that skips itself proves nothing.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]

# Deadlines bound a hang; they are not waits. Everything returns as soon as
# its condition holds.
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0
POLL_INTERVAL_S = 0.01
SOCKET_TIMEOUT_S = 10.0

# The proxy abandons a stream silent for 10 s; Shoal nodes send a keep-alive
# at least every 5 s. The fixture sends one every second so a test never
# runs near that edge.
KEEPALIVE_S = 1.0

STREAM_SEPARATOR = b"\n\n\n\n"
BUCKET = "default"

# === binary protocol ===

HEADER = struct.Struct(">BBHBBHIIQ")
REQUEST_MAGIC = 0x80
RESPONSE_MAGIC = 0x81

OP_GET = 0x00
OP_SET = 0x01
OP_ADD = 0x02
OP_DELETE = 0x04
OP_APPEND = 0x0E
OP_NOOP = 0x0A
OP_GETK = 0x0C
OP_GETKQ = 0x0D
OP_TOUCH = 0x1C
OP_SET_VBUCKET = 0x3D
OP_GET_VBUCKET = 0x3E
OP_GET_REPLICA = 0x83

STATUS_OK = 0x00
STATUS_KEY_NOT_FOUND = 0x01
STATUS_NOT_MY_VBUCKET = 0x07
STATUS_TEMPORARY_FAILURE = 0x86

VB_ACTIVE = 1
VB_REPLICA = 2
VB_PENDING = 3
VB_DEAD = 4


def vbucket_of(key, num_vbuckets):
    """libvbucket's rule (shared/vectors/README.md)."""
    if isinstance(key, str):
        key = key.encode()
    return ((zlib.crc32(key) >> 16) & 0x7FFF) & (num_vbuckets - 1)


class Response(NamedTuple):
    opcode: int
    status: int
    extras: bytes
    key: bytes
    value: bytes
    cas: int
    opaque: int

    @property
    def flags(self):
        return struct.unpack(">I", self.extras[:4])[0] if len(self.extras) >= 4 else None


def encode_request(opcode, key=b"", value=b"", extras=b"", vbucket=0, opaque=0, cas=0):
    if isinstance(key, str):
        key = key.encode()
    body = len(extras) + len(key) + len(value)
    header = HEADER.pack(REQUEST_MAGIC, opcode, len(key), len(extras), 0, vbucket, body, opaque, cas)
    return header + extras + key + value


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_response(sock):
    magic, opcode, keylen, extlen, _dtype, status, bodylen, opaque, cas = HEADER.unpack(recv_exact(sock, HEADER.size))
    if magic != RESPONSE_MAGIC:
        raise ValueError(f"bad response magic {magic:#x}")
    body = recv_exact(sock, bodylen)
    return Response(opcode, status, body[:extlen], body[extlen : extlen + keylen], body[extlen + keylen :], cas, opaque)


def store_extras(flags=0, exptime=0):
    return struct.pack(">II", flags, exptime)


class BinaryConn:
    """One blocking binary connection (request, then its reply)."""

    def __init__(self, addr, timeout=SOCKET_TIMEOUT_S):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, opcode, key=b"", value=b"", extras=b"", vbucket=0, opaque=0, cas=0):
        self.sock.sendall(encode_request(opcode, key, value, extras, vbucket, opaque, cas))
        return read_response(self.sock)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ascii_call(addr, request, terminator, timeout=SOCKET_TIMEOUT_S):
    """Sends `request` on a fresh connection and reads until the reply ends
    with `terminator`; None if the connection failed or closed first."""
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
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


def parse_stats(reply):
    stats = {}
    for line in reply.decode(errors="replace").split("\r\n"):
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            stats[parts[1]] = parts[2]
    return stats


def poll(condition, deadline_s, what):
    """Calls `condition` until it returns a true value (returned) or the
    deadline passes (test failure naming `what`)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}", pytrace=False)
        time.sleep(POLL_INTERVAL_S)


def shoal_binary():
    binary = Path(os.environ.get("SHOAL_BIN", REPO / "target" / "release" / "shoal"))
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"shoal binary not found at {binary}: run `cargo build --release` or set SHOAL_BIN", pytrace=False)
    return binary


# === child processes ===


class Child:
    """A child process; stdout lines kept (drained by a thread so the pipe
    never fills), stderr in a temp file."""

    def __init__(self, name):
        self.name = name
        self.proc = None
        self.addr = None
        self.lines = []
        self._line_seen = threading.Condition()
        self._stderr = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".stderr", delete=False)

    def _spawn(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        threading.Thread(target=self._drain_stdout, daemon=True).start()

    def _drain_stdout(self):
        for raw in self.proc.stdout:
            with self._line_seen:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._line_seen.notify_all()
        with self._line_seen:
            self.lines.append(None)  # EOF
            self._line_seen.notify_all()

    def wait_line(self, prefix):
        """The first stdout line starting with `prefix` (without it)."""
        deadline = time.monotonic() + START_DEADLINE_S
        with self._line_seen:
            while True:
                for line in self.lines:
                    if line is not None and line.startswith(prefix):
                        return line[len(prefix) :]
                if None in self.lines:
                    self.proc.wait(timeout=STOP_DEADLINE_S)
                    self.fail(f"exited (code {self.proc.returncode}) before printing {prefix!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.fail(f"printed no {prefix!r} line in {START_DEADLINE_S}s")
                self._line_seen.wait(left)

    def fail(self, what):
        pytest.fail(f"{self.name} {what}; stderr:\n{self.stderr_text()[-4000:]}", pytrace=False)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        try:
            return Path(self._stderr.name).read_text(errors="replace")
        except OSError:
            return ""

    def kill(self):
        """kill -9, and reap."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=STOP_DEADLINE_S)

    def stop(self):
        """SIGTERM, then kill -9 if it does not exit in time."""
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def cleanup(self):
        self._stderr.close()
        try:
            os.unlink(self._stderr.name)
        except OSError:
            pass


def addr_of(text):
    host, _, port = text.strip().rpartition(":")
    return (host, int(port))


class ShoalNode(Child):
    """`shoal node --vbuckets N` with a fresh data dir; every vbucket starts
    dead until the test sets its state."""

    def __init__(self, vbuckets, name="shoal-node"):
        super().__init__(name)
        self.vbuckets = vbuckets
        self.data_dir = tempfile.mkdtemp(prefix="shoal-proxy-node-")
        self._conn = None
        self._conn_lock = threading.Lock()

    def launch(self):
        cmd = [
            str(shoal_binary()), "node",
            "--data-dir", self.data_dir,
            "--port", "0", "--admin-port", "0",
            "--vbuckets", str(self.vbuckets),
        ]  # fmt: skip
        self._spawn(cmd)
        return self

    def wait_ready(self):
        self.addr = addr_of(self.wait_line("data "))

        def warmed_up():
            if not self.alive():
                self.fail(f"exited (code {self.proc.returncode}) while warming up")
            reply = ascii_call(self.addr, b"stats\r\n", b"END\r\n")
            return reply is not None and b"STAT ep_warmup_thread complete\r\n" in reply

        poll(warmed_up, START_DEADLINE_S, f"{self.name} warmup")
        return self

    @property
    def addr_str(self):
        return "%s:%d" % self.addr

    def call(self, opcode, key=b"", value=b"", extras=b"", vbucket=0, cas=0):
        """One binary request on this node's (shared, locked) connection."""
        with self._conn_lock:
            if self._conn is None:
                self._conn = BinaryConn(self.addr)
            try:
                return self._conn.call(opcode, key, value, extras, vbucket, 0, cas)
            except Exception:
                self._conn.close()
                self._conn = None
                raise

    def set_vbucket(self, vbucket, state):
        # The state as 4-byte big-endian extras.
        r = self.call(OP_SET_VBUCKET, extras=struct.pack(">I", state), vbucket=vbucket)
        assert r.status == STATUS_OK, f"SET_VBUCKET {vbucket}={state} on {self.name}: status {r.status:#x} {r.value!r}"

    def get(self, vbucket, key):
        return self.call(OP_GET, key=key, vbucket=vbucket)

    def get_replica(self, vbucket, key):
        return self.call(OP_GET_REPLICA, key=key, vbucket=vbucket)

    def set(self, vbucket, key, value, flags=0):
        r = self.call(OP_SET, key=key, value=value, extras=store_extras(flags), vbucket=vbucket)
        assert r.status == STATUS_OK, f"direct SET {key!r} vb {vbucket} on {self.name}: status {r.status:#x}"

    def kill(self):
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        super().kill()

    def cleanup(self):
        super().cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ShoalProxy(Child):
    """`shoal proxy … --port 0 --admin-port 0`; both ports read back from
    its stdout."""

    def __init__(self, *args, name="shoal-proxy"):
        super().__init__(name)
        self.args = [str(a) for a in args]
        self.admin = None

    def start(self):
        self._spawn([str(shoal_binary()), "proxy", *self.args, "--port", "0", "--admin-port", "0"])
        self.addr = addr_of(self.wait_line("data "))
        self.admin = addr_of(self.wait_line("admin "))
        return self

    @property
    def addr_str(self):
        return "%s:%d" % self.addr

    def http_get(self, path):
        conn = http.client.HTTPConnection(*self.admin, timeout=SOCKET_TIMEOUT_S)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_healthy(self):
        def healthy():
            if not self.alive():
                self.fail(f"exited (code {self.proc.returncode})")
            try:
                return self.http_get("/health")[0] == 200
            except OSError:
                return False

        poll(healthy, START_DEADLINE_S, f"{self.name} /health 200")
        return self

    def stats(self):
        """`stats proxy`: the proxy's own counters."""
        reply = ascii_call(self.addr, b"stats proxy\r\n", b"END\r\n")
        assert reply is not None, "stats proxy: no reply"
        return parse_stats(reply)

    def wait_rev(self, rev, deadline_s=10.0):
        poll(lambda: self.stats().get("proxy_map_rev") == str(rev), deadline_s, f"proxy map rev {rev}")


class Memcached(Child):
    """Debian's memcached on a free loopback port (it needs a number on its
    command line: ask the OS for a free one, retry if another process takes
    it first)."""

    def __init__(self, name="memcached"):
        super().__init__(name)

    def start(self):
        binary = shutil.which("memcached")
        if binary is None:
            pytest.fail("memcached is not installed (scripts/setup installs Debian's 1.6.18)", pytrace=False)
        for _attempt in range(5):
            port = free_port()
            cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
            if os.geteuid() == 0:
                cmd += ["-u", "root"]
            self._spawn(cmd)
            self.addr = ("127.0.0.1", port)

            def ready():
                if not self.alive():
                    return "exited"
                reply = ascii_call(self.addr, b"version\r\n", b"\r\n", timeout=1.0)
                return reply is not None and reply.startswith(b"VERSION ")

            if poll(ready, START_DEADLINE_S, "memcached version") is True:
                return self
            self.proc.wait()
        self.fail("could not bind a free port in 5 attempts")

    @property
    def addr_str(self):
        return "%s:%d" % self.addr


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# === the config server ===


class ConfigServer:
    """The cluster manager's REST paths a proxy uses, serving whatever the
    test `publish`es."""

    def __init__(self, bucket=BUCKET):
        self.bucket = bucket
        self._cond = threading.Condition()
        self._doc = None
        self._version = 0
        self._closed = False
        # Paths requested, in order (streams and one-shot fetches).
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.addr = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self):
        return "http://%s:%d" % self.addr

    @property
    def hostport(self):
        return "%s:%d" % self.addr

    def publish(self, config):
        """Makes `config` (a dict) current: streams send it at once."""
        with self._cond:
            self._doc = json.dumps(config).encode()
            self._version += 1
            self._cond.notify_all()

    def count(self, kind):
        """How many requests for `kind` (`bucketsStreaming` or `buckets`)."""
        with self._cond:
            return sum(1 for p in self.requests if p == f"/pools/default/{kind}/{self.bucket}")

    def _handle(self, handler):
        path = handler.path.split("?", 1)[0]
        with self._cond:
            self.requests.append(path)
            doc = self._doc
        if path == f"/pools/default/bucketsStreaming/{self.bucket}":
            self._stream(handler)
        elif path == f"/pools/default/buckets/{self.bucket}" and doc is not None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(doc)))
            handler.end_headers()
            handler.wfile.write(doc)
        else:
            body = b"Requested resource not found.\r\n"
            handler.send_response(404)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

    def _stream(self, handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.close_connection = True
        sent = 0
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or (self._doc and self._version != sent), KEEPALIVE_S)
                    closed, doc, version = self._closed, self._doc, self._version
                if closed:
                    handler.wfile.write(b"0\r\n\r\n")
                    return
                payload = STREAM_SEPARATOR
                if doc is not None and version != sent:
                    payload = doc + STREAM_SEPARATOR
                    sent = version
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                handler.wfile.flush()
        except OSError:
            return  # the proxy went away

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()


def bucket_config(rev, servers, vbucket_map, hostname):
    """A Couchbase bucket config for `servers` (data `host:port`s) and
    `vbucket_map` (chain of server indices per vbucket). `hostname` is the
    admin `host:port` of every node: the config server's, so the admin URLs
    the proxy learns from the config all lead back to it."""
    return {
        "name": BUCKET,
        "bucketType": "membase",
        "rev": rev,
        "nodeLocator": "vbucket",
        "nodes": [
            {"hostname": hostname, "ports": {"direct": int(s.rpartition(":")[2])}, "status": "healthy"}
            for s in servers
        ],
        "vBucketServerMap": {
            "hashAlgorithm": "CRC",
            "numReplicas": max(len(chain) for chain in vbucket_map) - 1,
            "serverList": list(servers),
            "vBucketMap": [list(chain) for chain in vbucket_map],
        },
    }


# === harness ===


class Harness:
    """Everything one test (or module) started; stopped at teardown."""

    def __init__(self):
        self.children = []
        self.config_servers = []

    def add(self, child):
        self.children.append(child)
        return child

    def node(self, vbuckets, name):
        return self.add(ShoalNode(vbuckets, name=name))

    def proxy(self, *args, name="shoal-proxy"):
        return self.add(ShoalProxy(*args, name=name)).start()

    def memcached(self, name="memcached"):
        return self.add(Memcached(name=name)).start()

    def config_server(self):
        server = ConfigServer()
        self.config_servers.append(server)
        return server

    def cluster(self, nodes=3, vbuckets=64):
        return Cluster(self, nodes, vbuckets)

    def report_sections(self):
        for child in self.children:
            text = child.stderr_text()
            if text:
                yield (f"{child.name} stderr (last 8000 chars)", text[-8000:])

    def close(self):
        for child in self.children:
            child.stop()
        for server in self.config_servers:
            server.close()
        for child in self.children:
            child.cleanup()


class Cluster:
    """Nodes, the config server, and the vbucket → node map the test owns."""

    def __init__(self, harness, nodes, vbuckets):
        self.vbuckets = vbuckets
        self.config_server = harness.config_server()
        self.nodes = [harness.node(vbuckets, name=f"shoal-node-{i}").launch() for i in range(nodes)]
        for node in self.nodes:
            node.wait_ready()
        # owner[vb] = node index; every vbucket dead everywhere until assigned.
        self.owner = [None] * vbuckets
        self.rev = 0

    def assign_round_robin(self):
        for vb in range(self.vbuckets):
            self.owner[vb] = vb % len(self.nodes)
            self.nodes[self.owner[vb]].set_vbucket(vb, VB_ACTIVE)

    def config(self):
        servers = [n.addr_str for n in self.nodes]
        vbucket_map = [[-1 if o is None else o] for o in self.owner]
        return bucket_config(self.rev, servers, vbucket_map, self.config_server.hostport)

    def publish(self):
        """Publishes the current map with the next rev; returns the rev."""
        self.rev += 1
        self.config_server.publish(self.config())
        return self.rev

    def vbucket_of(self, key):
        return vbucket_of(key, self.vbuckets)

    def owner_of(self, key):
        return self.owner[self.vbucket_of(key)]

    def node_of(self, key):
        return self.nodes[self.owner_of(key)]

    def direct_get(self, key):
        """The key read straight from the node the map names, with its
        vbucket id."""
        if isinstance(key, str):
            key = key.encode()
        return self.node_of(key).get(self.vbucket_of(key), key)

    def keys_on(self, node_index, prefix, count, start=0):
        """`count` keys `prefix<i>` owned by node `node_index`."""
        keys = []
        i = start
        while len(keys) < count:
            key = f"{prefix}{i}"
            if self.owner_of(key) == node_index:
                keys.append(key)
            i += 1
        return keys


# === fixtures and report hook ===


@pytest.fixture
def harness():
    h = Harness()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def module_harness():
    h = Harness()
    try:
        yield h
    finally:
        h.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            harness = getattr(value, "harness", value)
            if isinstance(harness, Harness):
                for title, text in harness.report_sections():
                    report.sections.append((title, text))
