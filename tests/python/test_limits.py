"""Limits against slow and hostile clients, against a real node and a real
proxy in front of it, with short deadlines so the tests run in seconds:

- 1,000 connections each holding a half-sent 60 KB `set` while a
  pymemcache client runs a get/set loop: the loop sees no error, the
  server closes every half-sent connection after the request deadline and
  counts it, and its memory stays bounded (the figure is printed);
- a client that asks for a large multi-get many times over and never
  reads the replies: the server's memory stays bounded, and it gives up on
  the client after the write deadline;
- a client flood up to the client limit of a two-node cluster: clients
  beyond it are told so and closed, while the cluster's own connections
  (replication streams, opened during the flood) have a budget of their
  own, so durable writes succeed and replicas catch up (latencies printed
  beside those of the idle cluster; their ratio is a figure, not a check).
"""

import selectors
import socket
import statistics
import threading
import time
from types import SimpleNamespace

import pytest
from pymemcache.client.base import Client as PyClient

from harness import figure
from harness.cluster import active_addr, wait_data_ready
from harness.poll import poll
from harness.wire import (
    OP_SET,
    STATUS_OK,
    BinaryConn,
    ascii_call,
    node_stats,
    parse_stats,
    store_extras,
    vbucket_of,
)

DEADLINE_S = 2
HALF_SENT = 1000
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def served(module_harness):
    deadlines = ("--request-timeout", DEADLINE_S, "--write-timeout", DEADLINE_S)
    node = module_harness.node("limits-node", "--standalone", *deadlines).start().wait_warm()
    proxy = module_harness.proxy("--cluster", node.admin_url, "--bucket", "default", *deadlines)
    proxy.wait_healthy()
    return SimpleNamespace(node=node, proxy=proxy)


def target(served, name):
    """(process, address, stats reader, counter prefix) of the node or proxy."""
    if name == "proxy":
        return served.proxy, served.proxy.addr, lambda: stats(served.proxy.addr, b"stats proxy\r\n"), "proxy_"
    return served.node, served.node.addr, lambda: stats(served.node.addr, b"stats\r\n"), ""


def stats(addr, request):
    reply = ascii_call(addr, request, b"END\r\n")
    assert reply is not None, f"{request!r} on {addr}: no reply"
    return parse_stats(reply)


def rss_bytes(child):
    with open(f"/proc/{child.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class GetSetLoop:
    """A pymemcache client setting and reading back its own keys until
    stopped, sampling the server's RSS as it goes."""

    def __init__(self, addr, server):
        self.client = PyClient(addr, connect_timeout=5, timeout=5)
        self.server = server
        self.ops = 0
        self.errors = []
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        n = 0
        while not self._stop.is_set():
            key, value = f"loop-{n % 100}", f"value-{n}".encode()
            try:
                if not self.client.set(key, value) or self.client.get(key) != value:
                    self.errors.append(f"{key}: wrong answer")
                self.ops += 1
            except Exception as e:  # noqa: BLE001 — any error is what the test looks for
                self.errors.append(f"{key}: {e!r}")
            self.peak_rss = max(self.peak_rss, rss_bytes(self.server))
            n += 1

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()


def wait_all_closed(socks, deadline_s):
    """Waits until the server has closed every socket (EOF or reset);
    returns how many it closed."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + deadline_s
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = key.fileobj.recv(4096)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
    sel.close()
    return closed


@pytest.mark.parametrize("name", ["proxy", "node"])
def test_half_sent_requests_are_closed_while_a_real_client_goes_on(served, name):
    server, addr, read_stats, prefix = target(served, name)
    timeouts_before = int(read_stats()[f"{prefix}request_timeouts"])
    rss_before = rss_bytes(server)
    loop = GetSetLoop(addr, server).start()
    socks = []
    try:
        for i in range(HALF_SENT):
            s = socket.create_connection(addr, timeout=5)
            # Half of a 60 KB value, then silence.
            s.sendall(b"set slow-%d 0 0 60000\r\n" % i + b"x" * 30000)
            socks.append(s)
        opened = time.monotonic()
        closed = wait_all_closed(socks, DEADLINE_S + 30)
        closed_after = time.monotonic() - opened
    finally:
        loop.stop()
        for s in socks:
            s.close()
    rss_after = rss_bytes(server)
    figure(
        f"{name}: {HALF_SENT} half-sent 60 KB sets; RSS {rss_before / MIB:.1f} MiB before, "
        f"peak {loop.peak_rss / MIB:.1f} MiB, {rss_after / MIB:.1f} MiB after; all closed "
        f"{closed_after:.1f} s after the last was opened (deadline {DEADLINE_S} s); "
        f"the get/set loop did {loop.ops} round trips meanwhile"
    )
    assert loop.errors == [], loop.errors[:5]
    assert loop.ops > 0
    assert closed == HALF_SENT, f"{HALF_SENT - closed} half-sent connections still open"
    assert int(read_stats()[f"{prefix}request_timeouts"]) - timeouts_before >= HALF_SENT
    # 1,000 × 30 KB were received: what the server holds is that and its
    # buffers, not more (the bound: 1,000 read buffers of the request's
    # size, 60 MiB, plus slack).
    assert loop.peak_rss - rss_before < 160 * MIB, f"RSS grew by {(loop.peak_rss - rss_before) / MIB:.0f} MiB"


@pytest.mark.parametrize("name", ["proxy", "node"])
def test_a_client_that_never_reads_cannot_grow_the_servers_memory(served, name):
    server, addr, read_stats, prefix = target(served, name)
    keys = [f"big-{name}-{i}".encode() for i in range(200)]
    value = b"v" * 100_000
    writer = PyClient(addr, connect_timeout=5, timeout=10)
    for key in keys:
        assert writer.set(key, value)
    writer.close()
    # One get asks for 20 MB; twenty of them, 400 MB, never read.
    get_all = b"get " + b" ".join(keys) + b"\r\n"
    write_timeouts_before = int(read_stats()[f"{prefix}write_timeouts"])
    rss_before = rss_bytes(server)
    peak = rss_before
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(addr)
    s.sendall(get_all * 20)
    deadline = time.monotonic() + DEADLINE_S + 30
    while time.monotonic() < deadline:
        peak = max(peak, rss_bytes(server))
        if int(read_stats()[f"{prefix}write_timeouts"]) > write_timeouts_before:
            break
        time.sleep(0.05)
    s.close()
    figure(
        f"{name}: a client asking for 20 x 20 MB of multi-get replies and reading none: "
        f"RSS {rss_before / MIB:.1f} MiB before, peak {peak / MIB:.1f} MiB"
    )
    assert int(read_stats()[f"{prefix}write_timeouts"]) == write_timeouts_before + 1
    # Bounded by a wave of values and the reply high-water mark, far below
    # one whole 20 MB reply, let alone twenty.
    assert peak - rss_before < 48 * MIB, f"RSS grew by {(peak - rss_before) / MIB:.0f} MiB"


# --- the cluster's own budget ---

CLIENT_LIMIT = 40
DURABLE_WRITES = 40


def cluster_stats(node, group, bucket):
    """`stats <group>` over a connection logged in as the cluster (which
    the reserve admits when the client seats are full)."""
    return node_stats(node.addr, group, bucket, credentials=node.cluster_credentials())


def durable_write_latencies(cluster, config, prefix):
    """Seconds each of DURABLE_WRITES majority-durable sets took, each on
    its active node over a connection logged in as the cluster."""
    vbuckets = len(config["vBucketServerMap"]["vBucketMap"])
    by_addr = {n.addr: n for n in cluster.nodes}
    conns = {}
    took = []
    try:
        for i in range(DURABLE_WRITES):
            key = f"{prefix}-{i}".encode()
            _, addr = active_addr(config, key.decode())
            if addr not in conns:
                conns[addr] = BinaryConn(addr, credentials=by_addr[addr].cluster_credentials(), bucket="dur")
            started = time.monotonic()
            r = conns[addr].call(OP_SET, key, b"durable", store_extras(), vbucket_of(key.decode(), vbuckets))
            took.append(time.monotonic() - started)
            assert r.status == STATUS_OK, f"durable set {key!r}: status {r.status:#x} {r.value!r}"
    finally:
        for conn in conns.values():
            conn.close()
    return took


def replicas_caught_up(cluster, vbuckets):
    """Seconds until every replica stream is open and lag is 0."""
    started = time.monotonic()

    def caught_up():
        seen = [cluster_stats(n, "replication", "dur") for n in cluster.nodes]
        streams = sum(int(s.get("replication_streams", 0)) for s in seen)
        return streams == vbuckets and all(int(s.get("replication_lag_total", 1)) == 0 for s in seen)

    poll(caught_up, 30, "replica streams open and lag 0")
    return time.monotonic() - started


def flood(node):
    """CLIENT_LIMIT served client connections to `node`, then three more
    it refuses (each told so, then closed); returns the served ones."""
    held = []
    for _ in range(CLIENT_LIMIT):
        s = socket.create_connection(node.addr, timeout=5)
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION"), "a client within the limit is served"
        held.append(s)
    for _ in range(3):
        with socket.create_connection(node.addr, timeout=5) as s:
            s.sendall(b"version\r\n")
            got = b""
            while chunk := s.recv(100):
                got += chunk
            assert got == b"SERVER_ERROR too many open connections\r\n", got
    return held


def test_a_client_flood_does_not_starve_the_clusters_own_connections(harness):
    cluster = harness.cluster(2, prefix="flooded", args=("--max-connections", CLIENT_LIMIT))
    held = []
    try:
        for node in cluster.nodes:
            held += flood(node)
        # The bucket is made during the flood: its replication streams open
        # while every client seat is taken.
        leader = cluster.leader()
        cluster.create_bucket(leader, "dur", numVBuckets=16, replicaNumber=1, durabilityMinLevel="majority")
        config = cluster.wait_bucket("dur")
        wait_data_ready(cluster.nodes, "dur", config, credentials=cluster.nodes[0].cluster_credentials())
        flooded_catch_up = replicas_caught_up(cluster, 16)
        flooded = durable_write_latencies(cluster, config, "flooded")
        rejected = sum(int(cluster_stats(n, "", "dur")["rejected_conns"]) for n in cluster.nodes)
        assert rejected >= 6, f"rejected_conns {rejected}"
        assert all(int(cluster_stats(n, "", "dur")["system_connections"]) >= 1 for n in cluster.nodes)
    finally:
        for s in held:
            s.close()
    idle = durable_write_latencies(cluster, config, "idle")
    idle_catch_up = replicas_caught_up(cluster, 16)
    ratio = statistics.median(flooded) / statistics.median(idle)
    figure(
        f"durable (majority) set, median: {statistics.median(idle) * 1000:.2f} ms idle, "
        f"{statistics.median(flooded) * 1000:.2f} ms with every client seat taken (x{ratio:.2f}); "
        f"replicas caught up in {idle_catch_up:.2f} s idle, {flooded_catch_up:.2f} s flooded"
    )
