"""The processes a test starts, one class each, all on one `Child` base.

- `Child`: spawn, drain stdout (a thread per process, so the pipe never
  fills) into `lines`, wait for a line, kill -9, stop (SIGTERM), clean up;
  stderr kept in a temp file for a failing test's report.
- `Memcached`: Debian's memcached, the reference and the static-mode
  backend.
- `ShoalNode`: `shoal node` in any mode — standalone (`--standalone`),
  bare with dead vbuckets for a test-owned map (`--vbuckets N`), or in a
  cluster (`--init-cluster`, `--join URL`, or bare to be added) — with the
  binary data-port calls (as a client, or as the cluster for SET_VBUCKET),
  the REST calls tests make on a node (as the harness's admin unless told
  otherwise) and its cluster secret.
- `ShoalProxy`: `shoal proxy`, vbucket (`--cluster`) or ketama
  (`--servers`) mode, with a bucket password if given.
- `ShoalUp`: `shoal up` in its own process group, and the admin
  credentials it printed and kept.
- `shoal_binary()`, `free_port()`, `consecutive_ports()`.

Ports: a node and a proxy bind port 0 and announce the addresses they
bound (`data host:port`, `admin host:port` on stdout). A node restarted
from its data dir asks for the ports it announced the first time: they
are its identity in the Raft membership. memcached and `shoal up` need
numbers on their command lines (see `free_port` and `consecutive_ports`).
A missing binary fails the test: a suite that skips itself proves nothing.

Credentials: every node and `shoal up` gets the harness's admin user
(`harness.credentials.ADMIN`) in its environment, which `--init-cluster`
and `--join` need (on a restart with them too); a proxy gets a bucket
password the same way when it has one. No child sees Shoal credentials
from the shell running the tests.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from .credentials import (
    ADMIN,
    Credentials,
    child_env,
    cluster_credentials,
    read_cluster_secret,
    read_credentials_file,
)
from .poll import LONGEST_INTERVAL_S, Watch, poll
from .rest import node_id_of, rest
from .wire import (
    OP_GET,
    OP_GET_REPLICA,
    OP_SET,
    OP_SET_VBUCKET,
    SOCKET_TIMEOUT_S,
    STATUS_OK,
    BinaryConn,
    addr_of,
    ascii_call,
    parse_stats,
    store_extras,
)

REPO = Path(__file__).resolve().parents[3]

# Deadlines bound a hang; they are not waits.
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0
# `shoal up` forms a cluster, creates a bucket and starts a proxy (its own
# limit for forming is 60 s).
UP_DEADLINE_S = 120.0

# What a process says on stderr when its port is taken (memcached and
# Shoal alike).
ADDRESS_IN_USE = "Address already in use"


def shoal_binary():
    """The release build (env `SHOAL_BIN`, default `target/release/shoal`
    in this repository); a failure if there is none."""
    binary = Path(os.environ.get("SHOAL_BIN", REPO / "target" / "release" / "shoal"))
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"shoal binary not found at {binary}: run `cargo build --release` or set SHOAL_BIN", pytrace=False)
    return binary


def free_port():
    """A loopback port that was free a moment ago, for a server that needs
    a number on its command line (memcached; a port nothing listens on).
    Another socket may take it before it is used: callers that bind it
    retry on "address in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `shoal up --base-port B` puts node i on B+2i and B+2i+1, and its proxy on
# `--port P` and P+1, so it needs runs of free ports chosen by the test. They
# come from below the kernel's ephemeral range (net.ipv4.ip_local_port_range
# starts at 32768 here), where no outgoing connection can take them between
# the check and the use or between a stop and a restart, and are never
# handed out twice in one session.
UP_PORT_RANGE = (20000, 32000)
_ports_handed_out = set()
_ports_lock = threading.Lock()


def _bindable(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def consecutive_ports(count):
    """`count` consecutive loopback ports, free now and never handed out
    before in this session. Only for `shoal up`, whose command line takes
    port numbers; everything else binds port 0."""
    with _ports_lock:
        for _attempt in range(1000):
            start = random.randrange(UP_PORT_RANGE[0], UP_PORT_RANGE[1] - count)
            ports = list(range(start, start + count))
            if any(p in _ports_handed_out for p in ports):
                continue
            if all(_bindable(p) for p in ports):
                _ports_handed_out.update(ports)
                return ports
    pytest.fail(f"no {count} consecutive free ports in {UP_PORT_RANGE}", pytrace=False)


# === the base ===


class Child:
    """A child process. Its stdout lines are kept in `lines` (drained by a
    thread, so the pipe never fills; a fresh list for each process spawned,
    ended by None at EOF), its stderr in a temp file across restarts."""

    def __init__(self, name):
        self.name = name
        self.proc = None
        # The data (host, port), once known.
        self.addr = None
        self.lines = []
        self._line_seen = threading.Condition()
        self._stderr = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".stderr", delete=False)
        self._stderr_at_spawn = 0

    @property
    def addr_str(self):
        return "%s:%d" % self.addr

    def spawn(self, cmd, **popen):
        # A fresh list per process: the previous process's drain thread may
        # still be about to record its EOF, into its own list.
        lines = []
        with self._line_seen:
            self.lines = lines
        self._stderr_at_spawn = os.path.getsize(self._stderr.name)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, **popen)
        threading.Thread(target=self._drain, args=(self.proc, lines), daemon=True).start()

    def _drain(self, proc, lines):
        for raw in proc.stdout:
            with self._line_seen:
                lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._line_seen.notify_all()
        with self._line_seen:
            lines.append(None)  # EOF
            self._line_seen.notify_all()

    def next_line(self, prefix, deadline_s):
        """The first stdout line of the current process starting with
        `prefix` (without it), or None if the process exited without one;
        a failure if neither happens within `deadline_s`."""
        deadline = time.monotonic() + deadline_s
        with self._line_seen:
            while True:
                for line in self.lines:
                    if line is None:
                        return None
                    if line.startswith(prefix):
                        return line[len(prefix) :]
                left = deadline - time.monotonic()
                if left <= 0:
                    self.fail(f"printed no {prefix!r} line in {deadline_s}s; stdout {self.lines}")
                self._line_seen.wait(left)

    def wait_line(self, prefix, deadline_s=START_DEADLINE_S):
        """`next_line`, and a failure if the process exited first."""
        line = self.next_line(prefix, deadline_s)
        if line is None:
            self.proc.wait(timeout=STOP_DEADLINE_S)
            self.fail(f"exited (code {self.proc.returncode}) before printing {prefix!r}; stdout {self.lines}")
        return line

    def fail(self, what):
        pytest.fail(f"{self.name} {what}; stderr:\n{self.stderr_text()[-4000:]}", pytrace=False)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self):
        try:
            return Path(self._stderr.name).read_text(errors="replace")
        except OSError:
            return ""

    def bind_failed(self):
        """Whether the current process said its port was taken."""
        return ADDRESS_IN_USE in self.stderr_text()[self._stderr_at_spawn :]

    def report_sections(self):
        """(title, text) of its logs for a failing test's report."""
        text = self.stderr_text()
        if text:
            yield (f"{self.name} stderr (last 8000 chars)", text[-8000:])

    def kill(self):
        """kill -9, and reap."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=STOP_DEADLINE_S)

    def stop(self):
        """SIGTERM, then kill -9 if it does not exit within
        STOP_DEADLINE_S; returns the exit code (-9 after a kill; None if it
        never ran)."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def cleanup(self):
        self._stderr.close()
        try:
            os.unlink(self._stderr.name)
        except OSError:
            pass


# === memcached ===


class Memcached(Child):
    """Debian's memcached on a loopback port. It needs a number on its
    command line: ask the OS for a free one, and take another if some other
    socket took it first. `args` are more memcached options."""

    ATTEMPTS = 5

    def __init__(self, name="memcached", *args):
        super().__init__(name)
        self.args = [str(a) for a in args]

    def start(self):
        binary = shutil.which("memcached")
        if binary is None:
            pytest.fail("memcached is not installed (scripts/setup installs Debian's 1.6.18)", pytrace=False)
        for _attempt in range(self.ATTEMPTS):
            port = free_port()
            cmd = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", *self.args]
            if os.geteuid() == 0:
                cmd += ["-u", "root"]
            self.spawn(cmd)
            self.addr = ("127.0.0.1", port)

            def ready(w):
                if not self.alive():
                    return "exited"
                w.last = ascii_call(self.addr, b"version\r\n", b"\r\n", timeout=1.0)
                return w.last is not None and w.last.startswith(b"VERSION ")

            if poll(Watch(ready), START_DEADLINE_S, f"{self.name} to answer `version`") is True:
                return self
            self.proc.wait()
            if not self.bind_failed():
                self.fail(f"exited (code {self.proc.returncode}) while starting")
        self.fail(f"found its port taken {self.ATTEMPTS} times")


# === shoal node ===


class ShoalNode(Child):
    """`shoal node` with its own data dir. `args` go on every start (the
    mode: `--standalone`, `--vbuckets N`, `--max-value-bytes N`…), the
    `flags` of one start only on that one (`--init-cluster`, `--join URL`);
    `credentials` (default the harness's admin; None for none) are in its
    environment on every start.

    The first start binds port 0 for both ports and reads back the
    addresses the node announces; every later start (a restart from the
    same data dir) asks for those same ports, which a cluster's membership
    knows the node by. Between a kill and a restart another socket (an
    outgoing connection's ephemeral port) may hold one of them for a
    moment: a restart told "address in use" is launched again until the
    start deadline."""

    def __init__(self, name="shoal-node", *args, credentials=ADMIN):
        super().__init__(name)
        self.args = [str(a) for a in args]
        self.credentials = credentials
        self.data_dir = tempfile.mkdtemp(prefix=f"{name}-")
        # The admin (REST) (host, port), once known.
        self.admin = None
        self._flags = []
        self._id = None
        # The binary connections of `call`, shared by the test's threads:
        # one as an ordinary client, one logged in as the cluster.
        self._conns = {}
        self._conn_lock = threading.Lock()

    # --- addresses ---

    @property
    def port(self):
        return self.addr[1]

    @property
    def admin_port(self):
        return self.admin[1]

    @property
    def hostname(self):
        """Its `hostname` in node lists: the admin host:port."""
        return "%s:%d" % self.admin

    @property
    def admin_url(self):
        return "http://%s:%d" % self.admin

    # --- the process ---

    def launch(self, *flags):
        """Spawns the process without waiting (start several nodes, then
        `wait_listening` on each)."""
        self._drop_connection()
        self._flags = [str(f) for f in flags]
        port, admin_port = (self.port, self.admin_port) if self.addr is not None else (0, 0)
        self.spawn([
            str(shoal_binary()), "node",
            "--data-dir", self.data_dir,
            "--port", str(port), "--admin-port", str(admin_port),
            *self.args, *self._flags,
        ], env=child_env(self.credentials))  # fmt: skip
        return self

    def wait_listening(self):
        """Waits until the node announces both addresses (the same ones as
        before, on a restart)."""
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            data = self.next_line("data ", max(deadline - time.monotonic(), 0.0))
            if data is not None:
                break
            self.proc.wait(timeout=STOP_DEADLINE_S)
            restart_blocked = self.addr is not None and self.bind_failed()
            if not restart_blocked or time.monotonic() > deadline:
                self.fail(f"exited (code {self.proc.returncode}) before listening")
            time.sleep(LONGEST_INTERVAL_S)
            self.launch(*self._flags)
        data, admin = addr_of(data), addr_of(self.wait_line("admin "))
        if self.addr is not None:
            assert (data, admin) == (self.addr, self.admin), (
                f"{self.name} restarted on data {data}, admin {admin}; it was {self.addr}, {self.admin}"
            )
        self.addr, self.admin = data, admin
        return self

    def start(self, *flags):
        """Spawns the process and waits until it listens."""
        return self.launch(*flags).wait_listening()

    def wait_warm(self):
        """Waits until `stats warmup` says `ep_warmup_thread complete`."""

        def warm(w):
            if not self.alive():
                self.fail(f"exited (code {self.proc.returncode}) while warming up")
            w.last = ascii_call(self.addr, b"stats warmup\r\n", b"END\r\n", timeout=2.0)
            return w.last is not None and b"STAT ep_warmup_thread complete\r\n" in w.last

        poll(Watch(warm), START_DEADLINE_S, f"{self.name} to warm up")
        return self

    def kill(self):
        self._drop_connection()
        super().kill()

    def cleanup(self):
        super().cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- the cluster secret ---

    def cluster_secret(self):
        """The cluster secret in its data dir now (its own until it joins
        a cluster, the cluster's after)."""
        return read_cluster_secret(self.data_dir)

    def cluster_credentials(self):
        """`@cluster` with its cluster secret: for the `/internal/*`
        endpoints (`auth=`) and a data-port login (SET_VBUCKET, DCP)."""
        return cluster_credentials(self.data_dir)

    # --- binary requests with a vbucket id ---

    def call(self, opcode, key=b"", value=b"", extras=b"", vbucket=0, cas=0, as_cluster=False):
        """One binary request on this node's (shared, locked) connection:
        an ordinary client's, or with `as_cluster` one logged in as the
        cluster."""
        with self._conn_lock:
            conn = self._conns.get(as_cluster)
            if conn is None:
                login = self.cluster_credentials() if as_cluster else None
                conn = self._conns[as_cluster] = BinaryConn(self.addr, credentials=login)
            try:
                return conn.call(opcode, key, value, extras, vbucket, 0, cas)
            except Exception:
                conn.close()
                del self._conns[as_cluster]
                raise

    def _drop_connection(self):
        with self._conn_lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()

    def set_vbucket(self, vbucket, state):
        """SET_VBUCKET, as the cluster (the only one allowed to)."""
        # The state as 4-byte big-endian extras.
        r = self.call(OP_SET_VBUCKET, extras=state.to_bytes(4, "big"), vbucket=vbucket, as_cluster=True)
        assert r.status == STATUS_OK, f"SET_VBUCKET {vbucket}={state} on {self.name}: status {r.status:#x} {r.value!r}"

    def binary_get(self, vbucket, key):
        return self.call(OP_GET, key=key, vbucket=vbucket)

    def binary_get_replica(self, vbucket, key):
        return self.call(OP_GET_REPLICA, key=key, vbucket=vbucket)

    def binary_set(self, vbucket, key, value, flags=0):
        r = self.call(OP_SET, key=key, value=value, extras=store_extras(flags), vbucket=vbucket)
        assert r.status == STATUS_OK, f"direct SET {key!r} vb {vbucket} on {self.name}: status {r.status:#x}"

    # --- REST (as the harness's admin unless `auth` says otherwise) ---

    def get(self, path, **kw):
        return rest(self.admin, "GET", path, **kw)

    def post(self, path, form=None, **kw):
        return rest(self.admin, "POST", path, form=form, **kw)

    def delete(self, path, **kw):
        return rest(self.admin, "DELETE", path, **kw)

    def pools(self):
        """GET /pools/default as JSON (a failure unless 200)."""
        r = self.get("/pools/default")
        assert r.status == 200, r.describe()
        return r.json()

    def try_pools(self):
        """GET /pools/default, or None while the node cannot answer."""
        try:
            r = self.get("/pools/default")
        except OSError:
            return None
        return r.json() if r.status == 200 else None

    def bucket(self, name):
        """GET /pools/default/buckets/<name>: the config, or None on 404."""
        r = self.get(f"/pools/default/buckets/{name}")
        if r.status == 404:
            return None
        assert r.status == 200, r.describe()
        return r.json()

    @property
    def id(self):
        """Its Raft id (from its own entry in /pools/default)."""
        if self._id is None:
            me = [n for n in self.pools()["nodes"] if n.get("thisNode")]
            assert len(me) == 1, f"{self.name}: {len(me)} nodes with thisNode true"
            self._id = node_id_of(me[0]["otpNode"])
        return self._id

    @property
    def otp_node(self):
        return f"ns_{self.id}@{self.admin[0]}"


# === shoal proxy ===


class ShoalProxy(Child):
    """`shoal proxy … --port 0 --admin-port 0`; both addresses read back
    from its stdout. `bucket_password` (the password of its bucket, if it
    has one) goes in its environment."""

    def __init__(self, *args, name="shoal-proxy", bucket_password=None):
        super().__init__(name)
        self.args = [str(a) for a in args]
        self.bucket_password = bucket_password
        self.admin = None

    def start(self):
        self.spawn([str(shoal_binary()), "proxy", *self.args, "--port", "0", "--admin-port", "0"],
                   env=child_env(bucket_password=self.bucket_password))  # fmt: skip
        self.addr = addr_of(self.wait_line("data "))
        self.admin = addr_of(self.wait_line("admin "))
        return self

    def http_get(self, path):
        """(status, body) of a GET on the admin port (which asks for no
        credentials)."""
        r = rest(self.admin, "GET", path, timeout=SOCKET_TIMEOUT_S, auth=None)
        return r.status, r.body

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


# === shoal up ===


# `shoal up`'s line naming the admin user (src/up.rs `print_endpoints`),
# without its "admin " prefix.
UP_ADMIN_LINE = re.compile(r"^\s*user (?P<user>\S+)\s+password (?P<password>\S+)\s+\(kept in (?P<file>.+)\)$")


class ShoalUp(Child):
    """`shoal up` in its own process group (its children share it), so
    cleanup can end the whole group by its id. Its ports are numbers on its
    command line (`consecutive_ports`), the same for a restart from the
    same --dir.

    `credentials` (default the harness's admin) go in its environment; with
    None it makes its own. Either way `start()` reads back what it printed
    and kept in `<dir>/credentials` (a failure if the two disagree) into
    `self.credentials`."""

    def __init__(self, nodes=3, replicas=1, vbuckets=None, name="shoal-up", credentials=ADMIN, tls=False):
        super().__init__(name)
        # With `tls`, its TLS ports (proxy, then node i's TLS data port at
        # base+2i and HTTPS port at base+2i+1) and, once started, the CA
        # it printed.
        self.tls = tls
        self.ca = None
        if tls:
            self.proxy_tls_port = consecutive_ports(1)[0]
            self.tls_base_port = consecutive_ports(2 * nodes)[0]
        self.dir = tempfile.mkdtemp(prefix="shoal-up-")
        self.nodes = nodes
        self.replicas = replicas
        self.vbuckets = vbuckets
        self.given_credentials = credentials
        # What it printed and kept, once started.
        self.credentials = None
        self.proxy_port, proxy_admin_port = consecutive_ports(2)
        self.proxy_admin = ("127.0.0.1", proxy_admin_port)
        self.base_port = consecutive_ports(2 * nodes)[0]
        self.pgid = None

    @property
    def proxy(self):
        return ("127.0.0.1", self.proxy_port)

    def node_data(self, i):
        return ("127.0.0.1", self.base_port + 2 * i)

    def node_admin(self, i):
        return ("127.0.0.1", self.base_port + 2 * i + 1)

    @property
    def proxy_tls(self):
        return ("127.0.0.1", self.proxy_tls_port)

    def node_tls(self, i):
        return ("127.0.0.1", self.tls_base_port + 2 * i)

    def node_https(self, i):
        return ("127.0.0.1", self.tls_base_port + 2 * i + 1)

    def start(self):
        cmd = [
            str(shoal_binary()), "up",
            "--nodes", str(self.nodes), "--replicas", str(self.replicas),
            "--port", str(self.proxy_port), "--base-port", str(self.base_port),
            "--dir", self.dir,
        ]  # fmt: skip
        if self.vbuckets is not None:
            cmd += ["--vbuckets", str(self.vbuckets)]
        if self.tls:
            cmd += ["--tls", "--tls-port", str(self.proxy_tls_port), "--tls-base-port", str(self.tls_base_port)]
        self.spawn(cmd, start_new_session=True, env=child_env(self.given_credentials))
        self.pgid = self.proc.pid
        self.wait_line("ready", UP_DEADLINE_S)
        self.credentials = self._read_credentials()
        if self.tls:
            self.ca = self.wait_line("tls CA").split()[0]
        return self

    def _read_credentials(self):
        """The admin credentials `up` printed, checked against the file it
        says it kept them in (and against those it was given)."""
        line = self.wait_line("admin ")
        printed = UP_ADMIN_LINE.match(line)
        if printed is None:
            self.fail(f"printed an admin line the harness cannot read: {line!r}")
        kept_in = Path(printed["file"])
        if kept_in.resolve() != (Path(self.dir) / "credentials").resolve():
            self.fail(f"kept its credentials in {kept_in}, not in {self.dir}/credentials")
        kept = read_credentials_file(kept_in)
        if kept != Credentials(printed["user"], printed["password"]):
            self.fail(f"printed user {printed['user']!r} with a password other than the one kept in {kept_in}")
        if self.given_credentials is not None and kept != self.given_credentials:
            self.fail(f"kept user {kept.user!r} and a password other than the ones it was given")
        return kept

    def children(self):
        """[(pid, argv)] of the processes `up` runs now (its direct
        children: nodes and proxy)."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{pid}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if parent == self.proc.pid:
                out.append((int(pid), argv))
        return out

    def child_pids(self, role=b"node"):
        """The pids of its node (or proxy) processes."""
        return [pid for pid, argv in self.children() if argv[1:2] == [role]]

    def node_pid(self, i):
        """The pid of node `i` (its command line names its data dir)."""
        want = f"{self.dir}/node-{i}".encode()
        pids = [pid for pid, argv in self.children() if argv[1:2] == [b"node"] and want in argv]
        assert len(pids) == 1, f"{len(pids)} processes of node-{i} under {self.dir}"
        return pids[0]

    def group_alive(self):
        if self.pgid is None:
            return False
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self):
        """SIGTERM to `shoal up` only; returns its exit code. Its children
        are its to stop; one that does not stop in time is a failure."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE_S + 10)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.fail(f"did not exit within {STOP_DEADLINE_S + 10}s of SIGTERM")

    def kill_group(self):
        if self.group_alive():
            os.killpg(self.pgid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=STOP_DEADLINE_S)

    def logs(self):
        """The nodes' and proxy's logs `up` keeps under --dir."""
        out = []
        for name in sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else []:
            if name.endswith(".log"):
                try:
                    with open(os.path.join(self.dir, name), errors="replace") as f:
                        out.append((name, f.read()[-6000:]))
                except OSError:
                    pass
        return out

    def report_sections(self):
        yield from super().report_sections()
        for name, log in self.logs():
            yield (f"{self.name} {name} (last 6000 chars)", log)

    def cleanup(self):
        self.kill_group()
        super().cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
