"""Helpers and fixtures for the cluster manager's end-to-end tests
(`test_cluster.py`, which loads this module as a pytest plugin).

- `ClusterNode`: one `shoal node` process in a cluster (`--init-cluster`,
  `--join <url>` or bare), on ports chosen once and kept, so a node killed
  with -9 can be restarted on the same ports from the same data dir.
- `Cluster`: nodes formed into one cluster (the first initialises it, the
  others join it), with the REST calls the tests make: who leads, create
  and delete buckets, wait until every node serves the same config.
- `ShoalUp`: `shoal up` in its own process group, so a failed test can
  never leave its nodes and proxy behind.
- `ConfigStream`: a raw reader of `/pools/default/bucketsStreaming/<b>`.
- `rest()`: one REST request; the `Reply` it returns describes itself
  (request and response) for failure messages.
- Binary data-port helpers: bucket selection (SELECT_BUCKET, SASL PLAIN)
  and direct GETs carrying the vbucket id.
- `ClusterHarness` (fixtures `cluster_harness`, `module_cluster_harness`):
  owns every process a test starts, stops them at teardown, and attaches
  their logs to a failing test's report.

Ports: a node's ports are fixed on its command line and must stay the same
across restarts (they are its address in the Raft membership), so they are
picked from below the kernel's ephemeral range (32768+ here), where no
outgoing connection can take them between a kill and a restart, and each
is checked free by binding it. Everything is polled with deadlines, never
slept for (STYLE.md rule 25). A missing binary or flag fails the test: a
suite that skips itself proves nothing.
"""

import array
import bisect
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from typing import NamedTuple

import pytest
from pymemcache.client.base import Client as PymemcacheClient

from proxyfixtures import (
    OP_GET,
    OP_GET_VBUCKET,
    OP_SET,
    SOCKET_TIMEOUT_S,
    STATUS_OK,
    STREAM_SEPARATOR,
    VB_ACTIVE,
    BinaryConn,
    Child,
    ShoalProxy,
    addr_of,
    encode_request,
    read_response,
    shoal_binary,
    store_extras,
    vbucket_of,
)

# Deadlines bound a hang; they are not waits.
START_DEADLINE_S = 30.0
# Forming a cluster: elections (1.5-3 s timeouts), joins retried every 0.5 s.
FORM_DEADLINE_S = 60.0
# `shoal up` forms a cluster, creates a bucket and starts a proxy (its own
# limit for forming is 60 s).
UP_DEADLINE_S = 120.0
# A metadata change reaching every node's applied state.
CONVERGE_DEADLINE_S = 20.0
STOP_DEADLINE_S = 30.0
POLL_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 30.0

OP_SASL_AUTH = 0x21
OP_STAT = 0x10
OP_SELECT_BUCKET = 0x89

# Ports for nodes: below the ephemeral range (net.ipv4.ip_local_port_range
# starts at 32768 here), above the well-known services.
PORT_RANGE = (20000, 32000)
_ports_handed_out = set()
_ports_lock = threading.Lock()


def _bindable(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def fixed_ports(count, consecutive=False):
    """`count` loopback ports, free now and never handed out before in this
    test session; `consecutive` makes them one run (for `shoal up`'s
    `--base-port`)."""
    with _ports_lock:
        for _attempt in range(1000):
            if consecutive:
                start = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
                ports = list(range(start, start + count))
            else:
                ports = random.sample(range(*PORT_RANGE), count)
            if any(p in _ports_handed_out for p in ports):
                continue
            if all(_bindable(p) for p in ports):
                _ports_handed_out.update(ports)
                return ports
    pytest.fail(f"no {count} free ports in {PORT_RANGE}", pytrace=False)


def poll(condition, deadline_s, what):
    """Calls `condition` until it returns a true value (returned) or the
    deadline passes; the failure names `what` and, if `condition` has a
    `last` attribute, what it saw last."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            last = getattr(condition, "last", None)
            seen = f"; last seen: {last}" if last is not None else ""
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}{seen}", pytrace=False)
        time.sleep(POLL_INTERVAL_S)


class Watch:
    """A poll condition that keeps what it saw last, for the failure
    message: `Watch(fn)` where `fn(watch)` sets `watch.last` and returns
    truthy when done."""

    def __init__(self, fn):
        self.fn = fn
        self.last = None

    def __call__(self):
        return self.fn(self)


# === REST ===


class Reply(NamedTuple):
    method: str
    url: str
    sent: bytes
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def describe(self):
        sent = f" body {self.sent[:300]!r}" if self.sent else ""
        return f"{self.method} {self.url}{sent} -> HTTP {self.status} {self.body[:600]!r}"


def rest(addr, method, path, form=None, body=None, content_type=None, timeout=HTTP_TIMEOUT_S):
    """One request on a fresh connection. `form` (a dict) is sent
    form-encoded; `body` as is. Raises OSError if the node cannot be
    reached."""
    headers = {"Connection": "close"}
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
        content_type = content_type or "application/x-www-form-urlencoded"
    if body is not None:
        headers["Content-Type"] = content_type or "application/octet-stream"
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return Reply(method, "http://%s:%d%s" % (*addr, path), body or b"", response.status,
                     {k.lower(): v for k, v in response.getheaders()}, data)  # fmt: skip
    finally:
        conn.close()


def error_message(reply):
    """The `error` string of a JSON error body (a failure if it is not
    one)."""
    try:
        doc = reply.json()
    except ValueError:
        pytest.fail(f"error body is not JSON: {reply.describe()}", pytrace=False)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], (
        f'error body is not {{"error": "<message>"}}: {reply.describe()}'
    )
    return doc["error"]


def node_id_of(otp_node):
    """`ns_<id>@host` → id."""
    assert otp_node.startswith("ns_") and "@" in otp_node, f"bad otpNode {otp_node!r}"
    return int(otp_node[3:].split("@", 1)[0])


# === binary data port ===


def select_bucket(conn, bucket):
    return conn.call(OP_SELECT_BUCKET, key=bucket.encode())


def sasl_plain(conn, bucket):
    """SASL PLAIN with the bucket as the user and no password."""
    return conn.call(OP_SASL_AUTH, key=b"PLAIN", value=b"\0" + bucket.encode() + b"\0")


def direct_get(addr, key, vbucket, bucket=None):
    """A binary GET straight to a node's data port with the vbucket id in
    the header (on `bucket`, selected first, if given)."""
    with BinaryConn(addr) as conn:
        if bucket is not None:
            r = select_bucket(conn, bucket)
            assert r.status == STATUS_OK, f"SELECT_BUCKET {bucket} on {addr}: status {r.status:#x} {r.value!r}"
        return conn.call(OP_GET, key=key, vbucket=vbucket)


def direct_set(addr, key, value, vbucket, bucket=None):
    with BinaryConn(addr) as conn:
        if bucket is not None:
            r = select_bucket(conn, bucket)
            assert r.status == STATUS_OK, f"SELECT_BUCKET {bucket} on {addr}: status {r.status:#x} {r.value!r}"
        return conn.call(OP_SET, key=key, value=value, extras=store_extras(), vbucket=vbucket)


def wait_data_ready(nodes, bucket, config, deadline_s=None):
    """Waits until every node lets a connection select `bucket` and, for a
    membase bucket, reports (GET_VBUCKET) every vbucket its map makes
    active there as active: the REST config can run ahead of the data
    port, whose buckets and vbucket states follow the applied metadata.
    Returns the seconds it took."""
    started = time.monotonic()
    vbmap = config.get("vBucketServerMap")

    def ready(w):
        pending = {}
        for node in nodes:
            with BinaryConn(node.addr) as conn:
                r = select_bucket(conn, bucket)
                if r.status != STATUS_OK:
                    pending[node.name] = f"SELECT_BUCKET {r.status:#x} {r.value!r}"
                    continue
                if vbmap is None:
                    continue
                index = vbmap["serverList"].index(node.data_str)
                for vb, chain in enumerate(vbmap["vBucketMap"]):
                    if chain[0] != index:
                        continue
                    r = conn.call(OP_GET_VBUCKET, vbucket=vb)
                    state = struct.unpack(">I", r.value[:4])[0] if r.status == STATUS_OK and len(r.value) >= 4 else None
                    if state != VB_ACTIVE:
                        pending[node.name] = f"vbucket {vb}: status {r.status:#x} state {state}"
                        break
        w.last = pending
        return not pending

    poll(Watch(ready), deadline_s or CONVERGE_DEADLINE_S, f"every node's data port to serve bucket {bucket!r} as mapped")
    return time.monotonic() - started


def active_addr(config, key):
    """(vbucket, data (host, port) of the active) for `key` per `config`."""
    vbmap = config["vBucketServerMap"]
    vb = vbucket_of(key, len(vbmap["vBucketMap"]))
    active = vbmap["vBucketMap"][vb][0]
    assert active >= 0, f"vbucket {vb} has no active in rev {config['rev']}"
    return vb, addr_of(vbmap["serverList"][active])


# === processes ===


class ClusterChild(Child):
    """A `Child` whose stdout lines can be waited for with any deadline
    and whose stdout record restarts with each spawn."""

    def wait_for_line(self, prefix, deadline_s):
        deadline = time.monotonic() + deadline_s
        with self._line_seen:
            while True:
                for line in self.lines:
                    if line is not None and line.startswith(prefix):
                        return line[len(prefix) :]
                if None in self.lines:
                    self.proc.wait(timeout=STOP_DEADLINE_S)
                    self.fail(f"exited (code {self.proc.returncode}) before printing {prefix!r}; stdout {self.lines}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.fail(f"printed no {prefix!r} line in {deadline_s}s; stdout {self.lines}")
                self._line_seen.wait(left)

    def _respawn(self, cmd, **popen):
        # A fresh list per process: the previous process's drain thread may
        # still be about to record its EOF, into its own list.
        lines = []
        with self._line_seen:
            self.lines = lines
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, **popen)
        threading.Thread(target=self._drain_into, args=(self.proc, lines), daemon=True).start()

    def _drain_into(self, proc, lines):
        for raw in proc.stdout:
            with self._line_seen:
                lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._line_seen.notify_all()
        with self._line_seen:
            lines.append(None)  # EOF
            self._line_seen.notify_all()


class ClusterNode(ClusterChild):
    """`shoal node` on fixed ports with its own data dir."""

    def __init__(self, name):
        super().__init__(name)
        self.data_dir = tempfile.mkdtemp(prefix=f"shoal-{name}-")
        self.port, self.admin_port = fixed_ports(2)
        self.addr = ("127.0.0.1", self.port)
        self.admin = ("127.0.0.1", self.admin_port)
        self._id = None

    @property
    def admin_url(self):
        return "http://127.0.0.1:%d" % self.admin_port

    @property
    def hostname(self):
        """Its `hostname` in node lists: the admin host:port."""
        return "127.0.0.1:%d" % self.admin_port

    @property
    def data_str(self):
        return "127.0.0.1:%d" % self.port

    def start(self, *flags):
        """Starts the process with `flags` (`--init-cluster`, `--join URL`,
        or none) and waits for both ports to be announced."""
        cmd = [
            str(shoal_binary()), "node",
            "--data-dir", self.data_dir,
            "--port", str(self.port), "--admin-port", str(self.admin_port),
            *flags,
        ]  # fmt: skip
        self._respawn(cmd)
        data = self.wait_for_line("data ", START_DEADLINE_S)
        admin = self.wait_for_line("admin ", START_DEADLINE_S)
        assert addr_of(data) == self.addr, f"{self.name} announced data {data}, asked for {self.data_str}"
        assert addr_of(admin) == self.admin, f"{self.name} announced admin {admin}, asked for {self.hostname}"
        return self

    # --- REST on this node ---

    def get(self, path):
        return rest(self.admin, "GET", path)

    def post(self, path, form=None, **kw):
        return rest(self.admin, "POST", path, form=form, **kw)

    def delete(self, path):
        return rest(self.admin, "DELETE", path)

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
        return f"ns_{self.id}@127.0.0.1"

    def cleanup(self):
        super().cleanup()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ShoalUp(ClusterChild):
    """`shoal up` in its own process group (its children share it), so
    cleanup can end the whole group by its id."""

    def __init__(self, nodes=3, replicas=1, vbuckets=None, name="shoal-up"):
        super().__init__(name)
        self.dir = tempfile.mkdtemp(prefix="shoal-up-")
        self.nodes = nodes
        self.replicas = replicas
        self.vbuckets = vbuckets
        self.proxy_port, _proxy_admin = fixed_ports(2, consecutive=True)
        self.proxy_admin = ("127.0.0.1", self.proxy_port + 1)
        self.base_port = fixed_ports(2 * nodes, consecutive=True)[0]
        self.pgid = None

    @property
    def proxy(self):
        return ("127.0.0.1", self.proxy_port)

    def node_data(self, i):
        return ("127.0.0.1", self.base_port + 2 * i)

    def node_admin(self, i):
        return ("127.0.0.1", self.base_port + 2 * i + 1)

    def start(self):
        cmd = [
            str(shoal_binary()), "up",
            "--nodes", str(self.nodes), "--replicas", str(self.replicas),
            "--port", str(self.proxy_port), "--base-port", str(self.base_port),
            "--dir", self.dir,
        ]  # fmt: skip
        if self.vbuckets is not None:
            cmd += ["--vbuckets", str(self.vbuckets)]
        self._respawn(cmd, start_new_session=True)
        self.pgid = self.proc.pid
        self.wait_for_line("ready", UP_DEADLINE_S)
        return self

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
        are its to stop."""
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

    def cleanup(self):
        super().cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


# === a cluster of separate node processes ===


class Cluster:
    """`size` nodes: the first starts the cluster, the others join it."""

    def __init__(self, harness, size, prefix="node"):
        self.harness = harness
        self.nodes = [harness.node(f"{prefix}-{i}") for i in range(size)]
        first = self.nodes[0].start("--init-cluster")
        for node in self.nodes[1:]:
            node.start("--join", first.admin_url)
        self.wait_formed(self.nodes)

    # --- views ---

    def views(self, nodes=None):
        """{node name: /pools/default} of every node in `nodes` that
        answers."""
        out = {}
        for node in nodes or self.nodes:
            view = node.try_pools()
            if view is not None:
                out[node.name] = view
        return out

    def wait_formed(self, members, listed=None, deadline_s=FORM_DEADLINE_S):
        """Waits until every node of `members` lists exactly the nodes of
        `listed` (default: `members`), all active and healthy, exactly one
        of them the leader, and every one names the same `raftLeader`;
        returns {node name: view}."""
        listed = listed or members
        want = sorted(n.hostname for n in listed)

        def formed(w):
            views = self.views(members)
            w.last = {name: summarize(v) for name, v in views.items()}
            if len(views) != len(members):
                return None
            leaders = set()
            for view in views.values():
                nodes = view["nodes"]
                if sorted(n["hostname"] for n in nodes) != want:
                    return None
                if any(n["clusterMembership"] != "active" or n["status"] != "healthy" for n in nodes):
                    return None
                roles = [n for n in nodes if n["raftRole"] == "leader"]
                if len(roles) != 1 or view["raftLeader"] is None:
                    return None
                if node_id_of(roles[0]["otpNode"]) != view["raftLeader"]:
                    return None
                leaders.add(view["raftLeader"])
            return views if len(leaders) == 1 else None

        return poll(Watch(formed), deadline_s, f"{len(members)} nodes to agree on {len(listed)} active members and one leader")

    def leader(self, nodes=None):
        """The node every node of `nodes` names as leader."""
        views = self.views(nodes)
        leaders = {v["raftLeader"] for v in views.values()}
        assert len(leaders) == 1 and None not in leaders, f"no agreed leader: { {k: summarize(v) for k, v in views.items()} }"
        (leader_id,) = leaders
        (node,) = [n for n in self.nodes if n.id == leader_id]
        return node

    def followers(self, nodes=None):
        leader = self.leader(nodes)
        return [n for n in (nodes or self.nodes) if n is not leader]

    # --- buckets ---

    def create_bucket(self, via, name, **params):
        form = {"name": name, "ramQuotaMB": "64", **{k: str(v) for k, v in params.items()}}
        r = via.post("/pools/default/buckets", form)
        assert r.status == 202, r.describe()
        assert r.body == b"", f"202 with a body: {r.describe()}"
        return r

    def wait_bucket(self, name, nodes=None, deadline_s=CONVERGE_DEADLINE_S):
        """Waits until every node of `nodes` serves bucket `name` with one
        and the same rev and map; returns that config."""
        nodes = nodes or self.nodes

        def same(w):
            configs = {}
            for node in nodes:
                try:
                    configs[node.name] = node.bucket(name)
                except OSError:
                    configs[node.name] = "unreachable"
            w.last = {k: (v if not isinstance(v, dict) else f"rev {v.get('rev')}") for k, v in configs.items()}
            docs = list(configs.values())
            if any(not isinstance(d, dict) for d in docs):
                return None
            first = docs[0]
            if all(d["rev"] == first["rev"] and d.get("vBucketServerMap") == first.get("vBucketServerMap")
                   and d.get("nodes") is not None for d in docs):  # fmt: skip
                return first
            return None

        return poll(Watch(same), deadline_s, f"every node to serve bucket {name!r} at one rev")

    def wait_bucket_gone(self, name, nodes=None, deadline_s=CONVERGE_DEADLINE_S):
        nodes = nodes or self.nodes

        def gone(w):
            statuses = {}
            for node in nodes:
                statuses[node.name] = (
                    node.get(f"/pools/default/buckets/{name}").status,
                    node.get(f"/pools/default/b/{name}").status,
                )
            w.last = statuses
            return all(s == (404, 404) for s in statuses.values())

        poll(Watch(gone), deadline_s, f"bucket {name!r} to be 404 on every node")

    def bucket_names(self, node):
        r = node.get("/pools/default/buckets")
        assert r.status == 200, r.describe()
        return {b["name"]: b["rev"] for b in r.json()}


def summarize(view):
    """A short form of /pools/default for failure messages."""
    return {
        "raftLeader": view.get("raftLeader"),
        "raftTerm": view.get("raftTerm"),
        "nodes": [
            (n.get("hostname"), n.get("clusterMembership"), n.get("status"), n.get("raftRole"))
            for n in view.get("nodes", [])
        ],
    }


# === config streams ===


class ConfigStream:
    """`GET` of a streaming config path, read as it arrives."""

    def __init__(self, addr, path):
        self.conn = http.client.HTTPConnection(*addr, timeout=SOCKET_TIMEOUT_S)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        self.buf = b""
        self.ended = False

    def next(self, timeout_s):
        """The next document (bytes), b"" for a keep-alive, or None once the
        stream has ended; raises socket.timeout if nothing completes within
        `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while STREAM_SEPARATOR not in self.buf:
            if self.ended:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"nothing within {timeout_s}s")
            self.conn.sock.settimeout(left)
            try:
                chunk = self.response.read1(65536)
            except http.client.IncompleteRead:
                # Closed without the last chunk: ended all the same.
                chunk = b""
            if not chunk:
                self.ended = True
                continue
            self.buf += chunk
        doc, _, self.buf = self.buf.partition(STREAM_SEPARATOR)
        return doc

    def close(self):
        self.conn.close()


# === harness ===


class ClusterHarness:
    """Everything one test (or module) started; stopped at teardown."""

    def __init__(self):
        self.children = []

    def add(self, child):
        self.children.append(child)
        return child

    def node(self, name):
        return self.add(ClusterNode(name))

    def cluster(self, size, prefix="node"):
        return Cluster(self, size, prefix)

    def proxy(self, *args, name="shoal-proxy"):
        return self.add(ShoalProxy(*args, name=name)).start()

    def up(self, **kw):
        return self.add(ShoalUp(**kw))

    def report_sections(self):
        for child in self.children:
            text = child.stderr_text()
            if text:
                yield (f"{child.name} stderr (last 8000 chars)", text[-8000:])
            if isinstance(child, ShoalUp):
                for name, log in child.logs():
                    yield (f"{child.name} {name} (last 6000 chars)", log)

    def close(self):
        for child in self.children:
            child.stop()
        for child in self.children:
            if isinstance(child, ShoalUp):
                child.kill_group()
            child.cleanup()


@pytest.fixture
def cluster_harness():
    h = ClusterHarness()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def module_cluster_harness():
    h = ClusterHarness()
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
            if isinstance(harness, ClusterHarness):
                for title, text in harness.report_sections():
                    report.sections.append((title, text))


# === rebalance and load helpers (test_rebalance.py) ===

# A client request through the proxy: the proxy retries NOT_MY_VBUCKET and
# holds requests for a node that is down ~2 s; well past both only a hang.
CLIENT_TIMEOUT_S = 15.0


def otp_nodes(node):
    """{hostname: otpNode} of every node `node` lists in /pools/nodes."""
    r = node.get("/pools/nodes")
    assert r.status == 200, r.describe()
    return {n["hostname"]: n["otpNode"] for n in r.json()["nodes"]}


def memberships(node):
    """{hostname: clusterMembership} of every node `node` lists in
    /pools/nodes."""
    r = node.get("/pools/nodes")
    assert r.status == 200, r.describe()
    return {n["hostname"]: n["clusterMembership"] for n in r.json()["nodes"]}


def start_rebalance(via, known, ejected=()):
    """`POST /controller/rebalance` through `via` with `knownNodes` and
    `ejectedNodes` (otpNode names, comma-separated); the `Reply`."""
    return via.post("/controller/rebalance", {"knownNodes": ",".join(known), "ejectedNodes": ",".join(ejected)})


def rebalance_progress(node):
    """GET /pools/default/rebalanceProgress as JSON (a failure unless 200
    with a `status`)."""
    r = node.get("/pools/default/rebalanceProgress")
    assert r.status == 200, r.describe()
    doc = r.json()
    assert isinstance(doc, dict) and isinstance(doc.get("status"), str), f"no status: {r.describe()}"
    return doc


def rebalance_task(node):
    """The `rebalance` task of GET /pools/default/tasks (a failure unless
    there is exactly one)."""
    r = node.get("/pools/default/tasks")
    assert r.status == 200, r.describe()
    tasks = [t for t in r.json() if isinstance(t, dict) and t.get("type") == "rebalance"]
    assert len(tasks) == 1, f"want one task of type rebalance: {r.describe()}"
    return tasks[0]


def proxy_rev(proxy):
    """The rev of the map the proxy routes with (its admin `/config`)."""
    status, body = proxy.http_get("/config")
    assert status == 200, f"proxy /config: HTTP {status} {body[:200]!r}"
    return json.loads(body)["rev"]


def wait_proxy_rev(proxy, rev, deadline_s=CONVERGE_DEADLINE_S):
    poll(lambda: proxy_rev(proxy) >= rev, deadline_s, f"{proxy.name} to use rev {rev} or later")


def node_stats(addr, group, bucket):
    """`stats <group>` of `bucket` on a node's data port (binary STAT after
    SELECT_BUCKET): {name: value} as strings."""
    with BinaryConn(addr) as conn:
        r = select_bucket(conn, bucket)
        assert r.status == STATUS_OK, f"SELECT_BUCKET {bucket} on {addr}: status {r.status:#x} {r.value!r}"
        conn.sock.sendall(encode_request(OP_STAT, key=group.encode()))
        stats = {}
        while True:
            r = read_response(conn.sock)
            assert r.status == STATUS_OK, f"STAT {group!r} on {addr} ({bucket}): status {r.status:#x} {r.value[:200]!r}"
            if not r.key:
                return stats
            stats[r.key.decode()] = r.value.decode()


def pipelined(addr, opcode, items, bucket, batch=500):
    """One binary request per (key, vbucket) of `items` to `addr` on
    `bucket`, `batch` at a time in one write, replies matched by opaque;
    the responses in `items` order."""
    out = []
    with BinaryConn(addr, timeout=CLIENT_TIMEOUT_S) as conn:
        r = select_bucket(conn, bucket)
        assert r.status == STATUS_OK, f"SELECT_BUCKET {bucket} on {addr}: status {r.status:#x} {r.value!r}"
        for start in range(0, len(items), batch):
            part = items[start : start + batch]
            conn.sock.sendall(b"".join(
                encode_request(opcode, key=key, vbucket=vb, opaque=start + i) for i, (key, vb) in enumerate(part)
            ))  # fmt: skip
            replies = {}
            for _ in part:
                r = read_response(conn.sock)
                replies[r.opaque] = r
            assert len(replies) == len(part), f"{len(part)} requests to {addr}, {len(replies)} distinct replies"
            out.extend(replies[start + i] for i in range(len(part)))
    return out


def wait_replicas_caught_up(nodes, config, bucket, deadline_s):
    """Waits until the `replication_streams` of `nodes` add up to one per
    vbucket per replica of `config` and `replication_lag_total` is 0 on
    every node; returns the seconds it took."""
    vbmap = config["vBucketServerMap"]
    want_streams = len(vbmap["vBucketMap"]) * vbmap["numReplicas"]
    started = time.monotonic()

    def caught_up(w):
        seen = {}
        for node in nodes:
            try:
                s = node_stats(node.addr, "replication", bucket)
            except OSError as e:
                seen[node.name] = repr(e)[:100]
                continue
            seen[node.name] = (s.get("replication_streams"), s.get("replication_lag_total"))
        w.last = seen
        if any(not isinstance(v, tuple) or None in v for v in seen.values()):
            return False
        streams = sum(int(v[0]) for v in seen.values())
        return streams == want_streams and all(int(v[1]) == 0 for v in seen.values())

    poll(Watch(caught_up), deadline_s, f"{want_streams} replica streams open and replication_lag_total 0 on every node")
    return time.monotonic() - started


class MixedLoad:
    """One client thread looping through the memcached endpoint at `addr`
    at full speed, replies awaited: set a random key to a new value, get
    that key back, get another random key. `values` is every key's value
    now; the load keeps each key's last acknowledged value and checks every
    get against it. A set that failed may or may not have been applied, so
    its value is also accepted for the key until the next acknowledged set.

    Records when each operation completed (`done_at`, in order), every
    error (`errors`: (time, op, key, text)) and every get that answered
    anything but an acceptable value (`wrong`: (time, key, got, want))."""

    def __init__(self, addr, values, seed=1):
        self.addr = addr
        self.expected = dict(values)
        self.maybe = {}  # key -> values of failed sets since its last acknowledged one
        self.keys = sorted(values)
        self.done_at = array.array("d")
        self.errors = []
        self.wrong = []
        self.crashed = None
        self.seed = seed
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="mixed-load")

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        """Stops the thread and waits for it (its last request may take up
        to the client timeout); `stopped()` says whether it did."""
        self.stopping.set()
        self.thread.join(CLIENT_TIMEOUT_S + 5)

    def stopped(self):
        """None if the thread ended cleanly, else what went wrong."""
        if self.thread.is_alive():
            return "the load thread did not stop"
        return None if self.crashed is None else f"the load thread crashed: {self.crashed}"

    def ops(self):
        return len(self.done_at)

    def ops_between(self, start, end):
        return bisect.bisect_right(self.done_at, end) - bisect.bisect_left(self.done_at, start)

    def acceptable(self, key):
        return {self.expected[key], *self.maybe.get(key, ())}

    def _run(self):
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 — reported by stop()
            self.crashed = repr(e)

    def _loop(self):
        rng = random.Random(self.seed)
        c = PymemcacheClient(self.addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)
        version = 0
        try:
            while not self.stopping.is_set():
                written = rng.choice(self.keys)
                version += 1
                value = versioned_value(written, version)
                try:
                    ok = c.set(written, value, noreply=False)
                    failure = None if ok is True else f"set answered {ok!r}"
                except Exception as e:  # noqa: BLE001 — every failure is a recorded outcome
                    failure = f"{type(e).__name__}: {e}"[:200]
                    c.close()  # a fresh connection for the next request
                now = time.monotonic()
                if failure is None:
                    self.expected[written] = value
                    self.maybe.pop(written, None)
                else:
                    self.errors.append((now, "set", written, failure))
                    self.maybe.setdefault(written, set()).add(value)
                self.done_at.append(now)
                for key in (written, rng.choice(self.keys)):
                    try:
                        got = c.get(key)
                    except Exception as e:  # noqa: BLE001
                        now = time.monotonic()
                        self.errors.append((now, "get", key, f"{type(e).__name__}: {e}"[:200]))
                        self.done_at.append(now)
                        c.close()
                        continue
                    now = time.monotonic()
                    if got not in self.acceptable(key):
                        self.wrong.append((now, key, got, self.expected[key]))
                    self.done_at.append(now)
        finally:
            c.close()


def versioned_value(key, version):
    """The value `MixedLoad` writes: names the key and the version, so a
    stale value can be told from a foreign one."""
    return f"{key}@{version}|".encode().ljust(64, b".")


def read_back(addr, expected, maybe=None, batch=500):
    """Reads every key of `expected` through the memcached endpoint at
    `addr` (get_many); returns (missing, stale, foreign): keys that are
    gone, that hold an older value of their own, or that hold anything
    else. `maybe` (key -> values) lists other acceptable values."""
    maybe = maybe or {}
    missing, stale, foreign = [], [], []
    c = PymemcacheClient(addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)
    try:
        keys = sorted(expected)
        for start in range(0, len(keys), batch):
            part = keys[start : start + batch]
            got = c.get_many(part)
            for key in part:
                value = got.get(key)
                if value == expected[key] or value in maybe.get(key, ()):
                    continue
                if value is None:
                    missing.append(key)
                elif value.startswith(f"{key}@".encode()):
                    stale.append(key)
                else:
                    foreign.append(key)
    finally:
        c.close()
    return missing, stale, foreign
