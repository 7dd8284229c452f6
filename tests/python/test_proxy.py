"""End-to-end tests of `shoal proxy`: real nodes, a real proxy, real client
libraries, all on loopback.

The cluster manager's part is played by a config server in the test
(`harness.configserver.ConfigServer`): the test sets vbucket states on the
nodes with SET_VBUCKET and publishes the bucket config the proxy streams, so
it decides exactly when the map changes relative to the nodes' states.

- vbucket mode with four clients (pymemcache; pylibmc binary and ASCII;
  python-binary-memcached): every operation, and every key is on the node
  the map names;
- vbuckets moving under load, in both orders (new map first; old owner
  dead first, so the node answers NOT_MY_VBUCKET and the proxy retries):
  no client-visible error, every key written reads back;
- a node killed with -9: its requests wait for a new map and succeed when
  one arrives, or fail with a temporary failure at the retry deadline —
  never a miss — while every other key keeps working;
- static ketama mode in front of three memcached: placement agrees with
  libmemcached's libketama-compatible mode; with one memcached down, a
  multi-get returns the other keys in the client's order, or fails as a
  whole with `--strict-multiget`;
- bad input on one connection does not disturb another.

Measured figures (waits, counts) are printed; run with `-s` to see them.
"""

import http.client
import json
import random
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pylibmc
import pytest
from bmemcached import Client as BinaryClient
from pymemcache.client.base import Client as PyClient

from harness import figure
from harness.configserver import bucket_config
from harness.poll import poll
from harness.rest import STREAM_SEPARATOR
from harness.wire import (
    HEADER,
    OP_APPEND,
    OP_GET,
    OP_SET,
    OP_TOUCH,
    REQUEST_MAGIC,
    STATUS_KEY_NOT_FOUND,
    STATUS_OK,
    STATUS_TEMPORARY_FAILURE,
    VB_ACTIVE,
    VB_DEAD,
    VB_REPLICA,
    BinaryConn,
    encode_request,
    read_response,
    store_extras,
)

# python-binary-memcached 0.31.2 calls a deprecated urllib helper.
pytestmark = pytest.mark.filterwarnings("ignore:urllib.parse.splitport:DeprecationWarning")

NODES = 3
VBUCKETS = 64

# The shared proxy's retry deadline: long enough that a vbucket move on a
# loaded 2-core machine never runs into it (the move test asserts how long
# its NOT_MY_VBUCKET windows really were).
SHARED_RETRY_DEADLINE_MS = 5000

# The node-kill test's deadline: the proxy's default.
KILL_RETRY_DEADLINE_MS = 2000


def py_client(proxy):
    return PyClient(proxy.addr, default_noreply=False, connect_timeout=10, timeout=15)


@pytest.fixture(scope="module")
def vb(module_harness):
    """Three nodes with 64 vbuckets, actives assigned round-robin, and a
    proxy streaming the map from the config server."""
    cluster = module_harness.manual_cluster(nodes=NODES, vbuckets=VBUCKETS)
    cluster.assign_round_robin()
    proxy = module_harness.proxy(
        "--cluster", cluster.config_server.url, "--bucket", "default",
        "--retry-deadline-ms", SHARED_RETRY_DEADLINE_MS,
    )  # fmt: skip
    rev = cluster.publish()
    proxy.wait_healthy()
    proxy.wait_rev(rev)
    return SimpleNamespace(cluster=cluster, proxy=proxy, harness=module_harness)


# === the config server fixture itself ===


class StreamReader:
    """A raw HTTP client of the streaming endpoint: the documents and
    keep-alives as they arrive."""

    def __init__(self, addr, path):
        self.conn = http.client.HTTPConnection(*addr, timeout=10)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        self.buf = b""

    def next_document(self):
        """The next chunk of the stream up to a separator ("" for a
        keep-alive)."""
        while STREAM_SEPARATOR not in self.buf:
            chunk = self.response.read1(65536)
            assert chunk, "stream ended"
            self.buf += chunk
        doc, _, self.buf = self.buf.partition(STREAM_SEPARATOR)
        return doc

    def close(self):
        self.conn.close()


def test_config_server_streams_each_published_config(harness):
    server = harness.config_server()
    config = bucket_config(1, ["127.0.0.1:1"], [[0]] * 4, server.hostport)
    server.publish(config)
    stream = StreamReader(server.addr, "/pools/default/bucketsStreaming/default")
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("Transfer-Encoding") == "chunked"
        assert json.loads(stream.next_document())["rev"] == 1
        server.publish({**config, "rev": 2})
        assert json.loads(stream.next_document())["rev"] == 2
        # Nothing new: a bare separator within the keep-alive period.
        started = time.monotonic()
        assert stream.next_document() == b""
        figure(f"keep-alive after {time.monotonic() - started:.2f}s")
    finally:
        stream.close()
    conn = http.client.HTTPConnection(*server.addr, timeout=10)
    conn.request("GET", "/pools/default/buckets/default")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["rev"] == 2
    conn.request("GET", "/pools/default/buckets/other")
    assert conn.getresponse().status == 404
    conn.close()


# === vbucket mode, four clients ===


def check_placement(cluster, expected, flags):
    """Every key is on the node the map names, under its vbucket id, with
    the value and flags the client wrote; the keys cover every node."""
    owners = set()
    for key, value in expected.items():
        r = cluster.direct_get(key)
        assert r.status == STATUS_OK, f"{key!r}: node {cluster.owner_of(key)} answered {r.status:#x}"
        assert r.value == value, f"{key!r}: node has {r.value!r}, wrote {value!r}"
        assert r.flags == flags, f"{key!r}: flags {r.flags} on the node, client writes {flags}"
        owners.add(cluster.owner_of(key))
    assert owners == set(range(NODES)), f"keys landed on nodes {owners} only"


def hundred(prefix):
    return {f"{prefix}many:{i}": f"value {i} of {prefix}".encode() for i in range(100)}


def test_pymemcache_through_proxy(vb):
    c = py_client(vb.proxy)
    p = "pm:"
    many = hundred(p)
    assert c.set_many(many) == []
    assert c.get_many(list(many) + [p + "missing"]) == many
    # gets + cas
    assert c.set(p + "cas", b"a")
    value, cas = c.gets(p + "cas")
    assert value == b"a" and cas
    assert c.cas(p + "cas", b"b", cas) is True
    assert c.cas(p + "cas", b"c", cas) is False, "a stale CAS must be refused"
    assert c.cas(p + "cas-missing", b"x", cas) is None
    # incr / decr
    assert c.incr(p + "n-missing", 1) is None
    assert c.set(p + "n", b"10")
    assert c.incr(p + "n", 5) == 15
    assert c.decr(p + "n", 20) == 0
    # delete
    assert c.set(p + "del", b"x")
    assert c.delete(p + "del") is True
    assert c.delete(p + "del") is False
    assert c.get(p + "del") is None
    # touch
    assert c.touch(p + "touch-missing", 10) is False
    assert c.set(p + "touch", b"t")
    assert c.touch(p + "touch", 100) is True
    # add / replace / append
    assert c.replace(p + "ar", b"r") is False
    assert c.add(p + "ar", b"a") is True
    assert c.add(p + "ar", b"b") is False
    assert c.replace(p + "ar", b"c") is True
    assert c.append(p + "ar", b">") is True
    assert c.append(p + "ar-missing", b">") is False
    c.close()
    expected = {**many, p + "cas": b"b", p + "n": b"0", p + "touch": b"t", p + "ar": b"c>"}
    check_placement(vb.cluster, expected, flags=0)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_pylibmc_through_proxy(vb, binary):
    c = pylibmc.Client([vb.proxy.addr_str], binary=binary, behaviors={"cas": True})
    p = "lm:%s:" % ("bin" if binary else "txt")
    many = hundred(p)
    assert c.set_multi(many) == []
    assert c.get_multi(list(many) + [p + "missing"]) == many
    assert c.set(p + "cas", b"a")
    value, cas = c.gets(p + "cas")
    assert value == b"a" and cas
    assert c.cas(p + "cas", b"b", cas) is True
    assert c.cas(p + "cas", b"c", cas) is False
    with pytest.raises(pylibmc.NotFound):
        c.incr(p + "n")
    assert c.set(p + "n", b"10")
    assert c.incr(p + "n", 5) == 15
    assert c.decr(p + "n", 20) == 0
    assert c.set(p + "del", b"x")
    assert c.delete(p + "del") is True
    assert c.delete(p + "del") is False
    assert c.get(p + "del") is None
    assert c.touch(p + "touch-missing", 10) is False
    assert c.set(p + "touch", b"t")
    if not binary:
        # libmemcached's binary touch of a present key stalls for its 5 s
        # poll timeout against memcached itself (test_clients.py): only the
        # ASCII one is quick enough for this suite.
        assert c.touch(p + "touch", 100) is True
    if binary:
        # Binary REPLACE of a missing key answers "not found", which
        # libmemcached raises (as against memcached).
        with pytest.raises(pylibmc.NotFound):
            c.replace(p + "ar", b"r")
    else:
        assert c.replace(p + "ar", b"r") is False
    assert c.add(p + "ar", b"a") is True
    assert c.add(p + "ar", b"b") is False
    assert c.replace(p + "ar", b"c") is True
    assert c.append(p + "ar", b">") is True
    c.disconnect_all()
    expected = {**many, p + "cas": b"b", p + "n": b"0", p + "touch": b"t", p + "ar": b"c>"}
    check_placement(vb.cluster, expected, flags=0)


def test_bmemcached_through_proxy(vb):
    c = BinaryClient([vb.proxy.addr_str], socket_timeout=15)
    p = "bm:"
    many = hundred(p)
    assert c.set_multi(many) == []
    assert c.get_multi(list(many) + [p + "missing"]) == many
    assert c.set(p + "cas", b"a")
    value, cas = c.gets(p + "cas")
    assert value == b"a" and cas
    assert c.cas(p + "cas", b"b", cas) is True
    assert c.cas(p + "cas", b"c", cas) is False
    # A missing counter is created with the binary initial value.
    assert c.incr(p + "n", 5, default=10) == 10
    assert c.incr(p + "n", 5) == 15
    assert c.decr(p + "n", 20) == 0
    assert c.set(p + "del", b"x")
    assert c.delete(p + "del") is True
    assert c.get(p + "del") is None
    assert c.replace(p + "ar", b"r") is False
    assert c.add(p + "ar", b"a") is True
    assert c.add(p + "ar", b"b") is False
    assert c.replace(p + "ar", b"c") is True
    c.disconnect_all()
    # The library has no touch or append: send those as raw binary frames
    # through the proxy, with the proxy's own vbucket (0) in the header.
    with BinaryConn(vb.proxy.addr) as raw:
        r = raw.call(OP_TOUCH, key=p + "touch-missing", extras=struct.pack(">I", 10), opaque=7)
        assert (r.status, r.opaque) == (STATUS_KEY_NOT_FOUND, 7)
        assert raw.call(OP_SET, key=p + "touch", value=b"t", extras=store_extras(16)).status == STATUS_OK
        assert raw.call(OP_TOUCH, key=p + "touch", extras=struct.pack(">I", 100)).status == STATUS_OK
        assert raw.call(OP_APPEND, key=p + "ar", value=b">").status == STATUS_OK
        r = raw.call(OP_GET, key=p + "ar", opaque=0xDEADBEEF)
        assert (r.status, r.value, r.opaque) == (STATUS_OK, b"c>", 0xDEADBEEF)
    # python-binary-memcached flags bytes values as "binary" (16); the
    # counter was created by the node (flags 0), so it is checked apart.
    expected = {**many, p + "cas": b"b", p + "touch": b"t", p + "ar": b"c>"}
    check_placement(vb.cluster, expected, flags=16)
    counter = vb.cluster.direct_get(p + "n")
    assert (counter.status, counter.value) == (STATUS_OK, b"0")


# === vbuckets moving under load ===


class Writer(threading.Thread):
    """Sets unique keys through the proxy and reads each back at once,
    re-reads older ones (one by one and in multi-gets), and records every
    client-visible error. Skips new keys in `frozen` vbuckets; `lock` is
    held around each write so the test can wait out a write in flight."""

    def __init__(self, name, make_client, cluster, frozen, stop):
        super().__init__(name=name, daemon=True)
        self.make_client = make_client
        self.cluster = cluster
        self.frozen = frozen
        self.stop = stop
        self.lock = threading.Lock()
        self.written = {}
        self.errors = []
        self.ops = 0
        self.slowest = 0.0
        self.random = random.Random(name)

    def check(self, what, got, want):
        self.ops += 1
        if got != want:
            self.errors.append(f"{what}: got {got!r}, want {want!r}")

    def timed(self, call, *args):
        started = time.monotonic()
        try:
            return call(*args)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)

    def run(self):
        client = self.make_client()
        i = 0
        while not self.stop.is_set():
            key = f"mv:{self.name}:{i}"
            value = f"value of {key}".encode()
            i += 1
            try:
                with self.lock:
                    if self.cluster.vbucket_of(key) in self.frozen:
                        continue
                    self.written[key] = value
                    self.check(f"set {key}", self.timed(client.set, key, value), True)
                self.check(f"get {key}", self.timed(client.get, key), value)
                if i % 3 == 0:
                    old = self.random.choice(list(self.written))
                    self.check(f"re-get {old}", self.timed(client.get, old), self.written[old])
                if i % 20 == 0:
                    sample = self.random.sample(list(self.written), min(10, len(self.written)))
                    want = {k: self.written[k] for k in sample}
                    self.check(f"multi-get {sample}", self.timed(client.get_multi, sample), want)
            except Exception as e:  # every exception is a client-visible error
                self.errors.append(f"{key}: {e!r}")
                client = self.make_client()


class PyMulti:
    """pymemcache with the `get_multi` name the other libraries use."""

    def __init__(self, proxy):
        self.client = py_client(proxy)
        self.set = self.client.set
        self.get = self.client.get
        self.get_multi = self.client.get_many


def copy_vbuckets(cluster, writers, vbuckets, src, dst, read_replica):
    """Copies every written key of `vbuckets` from node `src` to node `dst`
    (the data movement a rebalance does before the takeover); returns how
    many keys were copied."""
    copied = 0
    for w in writers:
        for key in list(w.written):
            vb = cluster.vbucket_of(key)
            if vb not in vbuckets:
                continue
            r = (src.binary_get_replica if read_replica else src.binary_get)(vb, key)
            if r.status == STATUS_OK:
                dst.binary_set(vb, key, r.value, flags=r.flags)
                copied += 1
            else:
                # Registered but not applied (it met NOT_MY_VBUCKET and is
                # being retried): the proxy writes it to the new owner.
                assert r.status == STATUS_KEY_NOT_FOUND, f"copy {key}: status {r.status:#x}"
    return copied


def test_vbucket_moves_under_load(vb):
    cluster, proxy = vb.cluster, vb.proxy
    stop = threading.Event()
    frozen = set()
    writers = [
        Writer("ascii", lambda: PyMulti(proxy), cluster, frozen, stop),
        Writer("binary", lambda: BinaryClient([proxy.addr_str], socket_timeout=15), cluster, frozen, stop),
    ]
    before = proxy.stats()
    for w in writers:
        w.start()
    poll(lambda: all(len(w.written) >= 50 for w in writers), 30, "writers under way")

    # Six steps of four vbuckets each, alternating the order; some
    # vbuckets move twice.
    rng = random.Random(1)
    moving = rng.sample(range(VBUCKETS), 20) + rng.sample(range(VBUCKETS), 4)
    steps = [("new-first" if i % 2 == 0 else "dead-first", moving[4 * i : 4 * i + 4]) for i in range(6)]
    for order, vbs in steps:
        nmvb_before = int(proxy.stats()["proxy_not_my_vbucket"])
        fetches_before = cluster.config_server.count("buckets")
        moves = [(v, cluster.owner[v], (cluster.owner[v] + 1) % NODES) for v in vbs]
        if order == "new-first":
            # New keys in these vbuckets wait (a write landing on the old
            # owner after the copy would have no replication to carry it);
            # reads of the copied keys go on throughout.
            frozen.update(vbs)
            for w in writers:
                with w.lock:
                    pass
            for v, old, new in moves:
                cluster.nodes[new].set_vbucket(v, VB_ACTIVE)
            copied = sum(copy_vbuckets(cluster, writers, {v}, cluster.nodes[old], cluster.nodes[new], False)
                         for v, old, new in moves)  # fmt: skip
            for v, old, new in moves:
                cluster.owner[v] = new
            rev = cluster.publish()
            proxy.wait_rev(rev)
            for v, old, new in moves:
                cluster.nodes[old].set_vbucket(v, VB_DEAD)
            frozen.difference_update(vbs)
            window = 0.0
        else:
            # The old owner stops taking requests first (replica: it answers
            # NOT_MY_VBUCKET but still lets the test read the data out),
            # the data moves, the old owner goes dead — and only then is
            # the new map published. Requests meanwhile get NOT_MY_VBUCKET
            # and must be held and retried by the proxy.
            started = time.monotonic()
            for v, old, new in moves:
                cluster.nodes[old].set_vbucket(v, VB_REPLICA)
            for v, old, new in moves:
                cluster.nodes[new].set_vbucket(v, VB_ACTIVE)
            copied = sum(copy_vbuckets(cluster, writers, {v}, cluster.nodes[old], cluster.nodes[new], True)
                         for v, old, new in moves)  # fmt: skip
            for v, old, new in moves:
                cluster.nodes[old].set_vbucket(v, VB_DEAD)
                cluster.owner[v] = new
            # Let the writers meet the dead vbuckets before the map moves.
            poll(lambda: int(proxy.stats()["proxy_not_my_vbucket"]) > nmvb_before, 10,
                 "a request to meet NOT_MY_VBUCKET")  # fmt: skip
            rev = cluster.publish()
            proxy.wait_rev(rev)
            window = time.monotonic() - started
        nmvb = int(proxy.stats()["proxy_not_my_vbucket"]) - nmvb_before
        fetches = cluster.config_server.count("buckets") - fetches_before
        figure(f"{order} move of vbuckets {vbs} (rev {rev}): copied {copied} keys, "
               f"NOT_MY_VBUCKET seen {nmvb}, refresh fetches {fetches}, old owner refusing for {window:.3f}s")  # fmt: skip
        if order == "dead-first":
            assert nmvb > 0
            assert window * 1000 < SHARED_RETRY_DEADLINE_MS, "the move outlasted the retry deadline"
        # Some traffic on the new map before the next step.
        ops = sum(w.ops for w in writers)
        poll(lambda: sum(w.ops for w in writers) >= ops + 100, 30, "writers progressing")

    stop.set()
    for w in writers:
        w.join(timeout=30)
        assert not w.is_alive(), f"writer {w.name} hung"
    errors = [e for w in writers for e in w.errors]
    after = proxy.stats()
    figure(f"move test: {sum(w.ops for w in writers)} client operations, "
           f"{sum(len(w.written) for w in writers)} keys written, "
           f"slowest operation {max(w.slowest for w in writers) * 1000:.0f} ms, "
           f"proxy retries {int(after['proxy_retries']) - int(before['proxy_retries'])}")  # fmt: skip
    assert errors == [], f"{len(errors)} client-visible errors, first: {errors[:5]}"
    assert int(after["proxy_errors"]) == int(before["proxy_errors"])

    # Every key written reads back, through the proxy and on its owner.
    written = {k: v for w in writers for k, v in w.written.items()}
    c = py_client(proxy)
    keys = list(written)
    for i in range(0, len(keys), 200):
        chunk = keys[i : i + 200]
        got = c.get_many(chunk)
        assert got == {k: written[k] for k in chunk}
    c.close()
    for key, value in written.items():
        r = cluster.direct_get(key)
        assert (r.status, r.value) == (STATUS_OK, value), key


# === a node killed ===


def ascii_request(addr, request, sent=None):
    """One ASCII request on a fresh connection: (whole reply, seconds).
    Releases `sent` once the request is on the wire."""
    started = time.monotonic()
    retrieval = request.startswith(b"get ")
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(request)
        if sent is not None:
            sent.release()
        buf = b""
        while not reply_complete(buf, retrieval):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf, time.monotonic() - started


def reply_complete(buf, retrieval):
    if not buf.endswith(b"\r\n"):
        return False
    if retrieval:
        return buf.endswith(b"END\r\n") or buf.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR"))
    return True


def binary_get(addr, key, sent=None):
    """A binary GET on a fresh connection: (status, value, seconds)."""
    started = time.monotonic()
    with BinaryConn(addr, timeout=30) as conn:
        conn.sock.sendall(encode_request(OP_GET, key=key, opaque=42))
        if sent is not None:
            sent.release()
        r = read_response(conn.sock)
    assert r.opaque == 42
    return r.status, r.value, time.monotonic() - started


class Steady(threading.Thread):
    """Get/set on keys of the surviving nodes until stopped, recording
    errors and the slowest request."""

    def __init__(self, proxy, keys):
        super().__init__(daemon=True)
        self.proxy, self.keys = proxy, keys
        self.stop = threading.Event()
        self.errors = []
        self.slowest = 0.0
        self.slowest_at = 0.0
        self.ops = 0

    def run(self):
        c = py_client(self.proxy)
        while not self.stop.is_set():
            for key in self.keys:
                started = time.monotonic()
                try:
                    value = f"steady {self.ops}".encode()
                    if not c.set(key, value) or c.get(key) != value:
                        self.errors.append(f"{key}: lost")
                except Exception as e:
                    self.errors.append(f"{key}: {e!r}")
                    c = py_client(self.proxy)
                took = time.monotonic() - started
                if took > self.slowest:
                    self.slowest, self.slowest_at = took, started
                self.ops += 1


def test_node_kill(harness):
    cluster = harness.manual_cluster(nodes=NODES, vbuckets=VBUCKETS)
    cluster.assign_round_robin()
    proxy = harness.proxy("--cluster", cluster.config_server.url, "--retry-deadline-ms", KILL_RETRY_DEADLINE_MS)
    cluster.publish()
    proxy.wait_healthy()
    victim = 2
    keys = {i: cluster.keys_on(i, "kill:", 12) for i in range(NODES)}
    values = {k: f"value of {k}".encode() for ks in keys.values() for k in ks}
    c = py_client(proxy)
    assert c.set_many(values) == []
    c.close()
    steady = Steady(proxy, cluster.keys_on(0, "steady:", 4) + cluster.keys_on(1, "steady:", 4))
    steady.start()
    poll(lambda: steady.ops > 20, 30, "steady traffic")

    killed = time.monotonic()
    cluster.nodes[victim].kill()
    deadline_s = KILL_RETRY_DEADLINE_MS / 1000
    reachable = {k: v for k, v in values.items() if cluster.owner_of(k) != victim}

    # No new map: the victim's requests fail at the deadline — a temporary
    # failure, never a miss — while a multi-get returns every key it can.
    lost = keys[victim]
    with ThreadPoolExecutor(8) as pool:
        get = pool.submit(ascii_request, proxy.addr, b"get %s\r\n" % lost[0].encode())
        store = pool.submit(ascii_request, proxy.addr, b"set %s 0 0 1\r\nx\r\n" % lost[1].encode())
        incr = pool.submit(ascii_request, proxy.addr, b"incr %s 1\r\n" % lost[2].encode())
        bget = pool.submit(binary_get, proxy.addr, lost[3])
        every = list(values)
        multi = pool.submit(ascii_request, proxy.addr, b"get %s\r\n" % " ".join(every).encode())
        # A multi-get with no reachable key at all is an error, not misses.
        multi_lost = pool.submit(ascii_request, proxy.addr, b"get %s %s\r\n" % (lost[4].encode(), lost[5].encode()))
        (get_reply, get_s), (set_reply, set_s), (incr_reply, _) = get.result(), store.result(), incr.result()
        bstatus, bvalue, bget_s = bget.result()
        multi_reply, multi_s = multi.result()
    figure(f"node down, no new map: ASCII get failed after {get_s:.2f}s, set after {set_s:.2f}s, "
           f"binary get after {bget_s:.2f}s, multi-get over all nodes answered after {multi_s:.2f}s "
           f"(deadline {deadline_s}s)")  # fmt: skip
    assert get_reply == b"SERVER_ERROR temporary failure\r\n"
    assert set_reply == b"SERVER_ERROR temporary failure\r\n"
    assert incr_reply == b"SERVER_ERROR temporary failure\r\n"
    assert (bstatus, bvalue) == (STATUS_TEMPORARY_FAILURE, b"Temporary failure")
    for seconds in (get_s, set_s, bget_s, multi_s):
        assert deadline_s * 0.9 <= seconds < deadline_s + 3.0
    assert multi_lost.result()[0] == b"SERVER_ERROR temporary failure\r\n"
    got = parse_values(multi_reply)
    assert got == reachable, "the multi-get must return exactly the reachable keys"

    # A new map moving the victim's vbuckets to the survivors (their
    # replicas promoted: the test writes the victim's keys there, as a
    # replica would have held them) releases the waiting requests.
    moved = [v for v in range(VBUCKETS) if cluster.owner[v] == victim]
    started = time.monotonic()
    sent = threading.Semaphore(0)
    with ThreadPoolExecutor(12) as pool:
        waiting_gets = {k: pool.submit(ascii_request, proxy.addr, b"get %s\r\n" % k.encode(), sent) for k in lost[:4]}
        waiting_bgets = {k: pool.submit(binary_get, proxy.addr, k, sent) for k in lost[4:8]}
        new_keys = cluster.keys_on(victim, "kill:new:", 4)
        waiting_sets = {k: pool.submit(ascii_request, proxy.addr, b"set %s 0 0 3\r\nnew\r\n" % k.encode(), sent)
                        for k in new_keys}  # fmt: skip
        # All twelve are on the wire, and the proxy is retrying (every
        # 50 ms per request): they are waiting for a map. None can succeed
        # before one arrives — their node is dead.
        for _ in range(12):
            assert sent.acquire(timeout=deadline_s / 2)
        retries_sent = int(proxy.stats()["proxy_retries"])
        poll(lambda: int(proxy.stats()["proxy_retries"]) >= retries_sent + 24, deadline_s / 2,
             "the requests to wait in the proxy")  # fmt: skip
        for i, v in enumerate(moved):
            new = i % 2
            cluster.nodes[new].set_vbucket(v, VB_ACTIVE)
            cluster.owner[v] = new
        for k in lost:
            cluster.node_of(k).binary_set(cluster.vbucket_of(k), k.encode(), values[k])
        published = time.monotonic()
        cluster.publish()
        gets = {k: f.result() for k, f in waiting_gets.items()}
        bgets = {k: f.result() for k, f in waiting_bgets.items()}
        sets = {k: f.result() for k, f in waiting_sets.items()}
    done = time.monotonic()
    waits = [s for _, s in gets.values()] + [s for *_, s in bgets.values()] + [s for _, s in sets.values()]
    figure(f"node down, new map published {published - started:.3f}s after the requests started: "
           f"they waited {min(waits):.3f}-{max(waits):.3f}s in all; the last finished "
           f"{done - published:.3f}s after the publish")  # fmt: skip
    for k, (reply, _) in gets.items():
        assert reply == b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k.encode(), len(values[k]), values[k])
    for k, (status, value, _) in bgets.items():
        assert (status, value) == (STATUS_OK, values[k])
    for k, (reply, _) in sets.items():
        assert reply == b"STORED\r\n"
        assert cluster.direct_get(k).value == b"new"
    assert max(waits) < deadline_s, "a request outlived the retry deadline"

    # Everything is reachable again.
    c = py_client(proxy)
    want = {**values, **{k: b"new" for k in new_keys}}
    assert c.get_many(list(want)) == want
    c.close()
    steady.stop.set()
    steady.join(timeout=30)
    figure(f"surviving nodes throughout: {steady.ops} get+set pairs, slowest {steady.slowest * 1000:.0f} ms "
           f"({steady.slowest_at - killed:+.2f}s from the kill)")  # fmt: skip
    assert steady.errors == []
    # A request held for the dead node would take the whole deadline.
    assert steady.slowest < deadline_s * 0.75, "requests to surviving nodes were held"


def parse_values(reply):
    """`VALUE k f n\\r\\ndata\\r\\n…END\\r\\n` → {k: data}."""
    got = {}
    rest = reply
    while not rest.startswith(b"END\r\n"):
        line, _, rest = rest.partition(b"\r\n")
        _, key, _flags, length = line.split(b" ")
        got[key.decode()] = rest[: int(length)]
        rest = rest[int(length) + 2 :]
    return got


# === static ketama mode ===


def test_static_ketama_agrees_with_libmemcached(harness):
    servers = [harness.memcached(f"memcached-{i}") for i in range(3)]
    spec = ",".join(s.addr_str for s in servers)
    proxy = harness.proxy("--servers", spec).wait_healthy()
    keys = {f"ketama:{i}": f"v{i}".encode() for i in range(1000)}
    c = py_client(proxy)
    assert c.set_many(keys) == []
    # One `get` line of 1000 keys (~12 KB), as memcached accepts it.
    assert c.get_many(list(keys)) == keys
    c.close()

    # libmemcached in its libketama-compatible mode finds every key.
    reference = pylibmc.Client([s.addr_str for s in servers], behaviors={"ketama_weighted": True})
    assert reference.get_multi(list(keys)) == keys
    # ... and the other way round.
    back = {f"ketama:lm:{i}": f"w{i}".encode() for i in range(300)}
    assert reference.set_multi(back) == []
    c = py_client(proxy)
    assert c.get_many(list(back)) == back
    c.close()

    # Each key is on exactly one server, and the servers share them.
    counts = []
    seen = {}
    for s in servers:
        direct = PyClient(s.addr, timeout=10)
        held = direct.get_many(list(keys))
        direct.close()
        counts.append(len(held))
        for k in held:
            assert k not in seen, f"{k} on two servers"
            seen[k] = s.addr_str
    figure(f"ketama: 1000 keys over three memcached: {counts}")
    assert sum(counts) == 1000
    assert min(counts) > 200


def test_static_ketama_multiget_order(harness):
    """Hits, misses (quiet ones, and the non-quiet request that ends each
    server's batch) and repeats come back in the client's order, for get
    and gat alike."""
    servers = [harness.memcached(f"memcached-{i}") for i in range(3)]
    proxy = harness.proxy("--servers", ",".join(s.addr_str for s in servers)).wait_healthy()
    values = {f"order:{i}": f"value {i}".encode() for i in range(30)}
    c = py_client(proxy)
    assert c.set_many(values) == []
    c.close()
    keys = sorted(values) + [f"order:absent:{i}" for i in range(12)]
    random.Random(11).shuffle(keys)
    keys += [keys[0], keys[1], keys[0]]
    want = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k.encode(), len(values[k]), values[k])
                    for k in keys if k in values) + b"END\r\n"  # fmt: skip
    hit = sorted(values)[0]
    hit_value = b"VALUE %s 0 %d\r\n%s\r\n" % (hit.encode(), len(values[hit]), values[hit])
    for verb in (b"get", b"gat 0"):
        reply, _ = ascii_request(proxy.addr, b"%s %s\r\n" % (verb, " ".join(keys).encode()))
        assert reply == want, f"{verb!r}: {reply[:200]!r}"
        # A key last in the client's order is last in its server's batch:
        # batches ending on a miss, and misses before a hit.
        for absent in (k for k in keys if k not in values):
            for pair in ((hit, absent), (absent, hit)):
                reply, _ = ascii_request(proxy.addr, b"%s %s %s\r\n" % (verb, pair[0].encode(), pair[1].encode()))
                assert reply == hit_value + b"END\r\n", f"{verb!r} {pair}: {reply!r}"


# The multi-get test's deadline: short, as no map will ever come to rescue
# the dead server's keys.
MULTIGET_RETRY_DEADLINE_MS = 300


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_multiget_with_a_server_down(harness, strict):
    servers = [harness.memcached(f"memcached-{i}") for i in range(3)]
    spec = ",".join(s.addr_str for s in servers)
    args = ["--servers", spec, "--retry-deadline-ms", MULTIGET_RETRY_DEADLINE_MS]
    proxy = harness.proxy(*args, *(["--strict-multiget"] if strict else [])).wait_healthy()
    values = {f"mget:{i}": f"value {i}".encode() for i in range(24)}
    c = py_client(proxy)
    assert c.set_many(values) == []
    c.close()
    victim = servers[1]
    direct = PyClient(victim.addr, timeout=10)
    lost = set(direct.get_many(list(values)))
    direct.close()
    assert 0 < len(lost) < len(values), "the victim must hold some keys, not all"

    # Every key once, shuffled (the dead server's keys among the others),
    # then a repeat of a reachable and of a lost key (memcached answers
    # each occurrence).
    keys = sorted(values)
    random.Random(7).shuffle(keys)
    keys += [next(k for k in keys if k not in lost), next(k for k in keys if k in lost)]
    before = proxy.stats()
    victim.kill()
    reply, seconds = ascii_request(proxy.addr, b"get %s\r\n" % " ".join(keys).encode())
    after = proxy.stats()
    figure(f"multi-get of {len(keys)} keys, {len(lost)} on a dead server "
           f"({'strict' if strict else 'lenient'}): answered after {seconds:.2f}s")  # fmt: skip
    errors = int(after["proxy_errors"]) - int(before["proxy_errors"])
    left_out = int(after["proxy_multiget_missing_keys"]) - int(before["proxy_multiget_missing_keys"])
    if strict:
        assert reply == b"SERVER_ERROR temporary failure\r\n"
        assert errors == 1
    else:
        want = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k.encode(), len(values[k]), values[k])
                        for k in keys if k not in lost)  # fmt: skip
        assert reply == want + b"END\r\n", "the reachable keys, in the client's order, repeats included"
        assert left_out == sum(1 for k in keys if k in lost)
        assert errors == 0
    # The dead server's keys were retried up to the deadline, not given up
    # on at the first refusal.
    assert seconds >= MULTIGET_RETRY_DEADLINE_MS / 1000 * 0.9


# === bad input ===


def huge_binary_body():
    return HEADER.pack(REQUEST_MAGIC, OP_GET, 3, 0, 0, 0, 0xFFFFFFFF, 9, 0) + b"key"


def key_beyond_body():
    return HEADER.pack(REQUEST_MAGIC, OP_GET, 10, 0, 0, 0, 2, 9, 0) + b"ab"


# name, bytes, what comes back: "ascii-error" (ERROR/CLIENT_ERROR lines,
# or a close), or "binary-error-close" (an error frame, then a close).
BAD_INPUT = [
    ("unknown verb", b"bogus command\r\n", "ascii-error"),
    ("control bytes", bytes(range(1, 32)) + bytes(range(0x81, 0x100)) + b"\r\n", "ascii-error"),
    ("key too long", b"get " + b"k" * 300 + b"\r\n", "ascii-error"),
    ("bad length", b"set k 0 0 notanumber\r\nabc\r\n", "ascii-error"),
    ("data longer than declared", b"set k 0 0 3\r\nabcdef\r\n", "ascii-error"),
    ("endless line", b"x" * (2 * 1024 * 1024), "ascii-error"),
    ("binary body length 0xFFFFFFFF", huge_binary_body(), "binary-error-close"),
    ("binary key beyond body", key_beyond_body(), "binary-error-close"),
]


def send_and_collect(addr, payload, then=b""):
    """Sends `payload` (then `then`); returns (bytes received, closed?)
    reading until the proxy closes or answers `then` (a version request)."""
    s = socket.create_connection(addr, timeout=10)
    closed = False
    try:
        s.sendall(payload + then)
    except OSError:
        closed = True
    buf = b""
    while not closed:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            closed = True
            break
        buf += chunk
        if then and b"VERSION " in buf and buf.endswith(b"\r\n"):
            break
    s.close()
    return buf, closed


@pytest.mark.parametrize("name,payload,expect", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_contained(vb, name, payload, expect):
    other = py_client(vb.proxy)
    key = "bad:" + name.replace(" ", "-")
    assert other.set(key, b"before")
    if expect == "ascii-error":
        buf, closed = send_and_collect(vb.proxy.addr, payload, then=b"version\r\n")
        lines = [line for line in buf.split(b"\r\n") if line]
        errors = [line for line in lines if not line.startswith(b"VERSION ")]
        assert errors or closed, f"no error and no close: {buf[:200]!r}"
        for line in errors:
            assert line == b"ERROR" or line.startswith(b"CLIENT_ERROR "), f"unexpected reply {line[:200]!r}"
        figure(f"{name}: {[e[:60] for e in errors]}, {'closed' if closed else 'connection kept'}")
    else:
        buf, closed = send_and_collect(vb.proxy.addr, payload)
        assert closed, "the connection must close after an unframeable binary request"
        assert len(buf) >= HEADER.size, f"no error frame before the close: {buf!r}"
        magic, _op, _kl, _el, _dt, status, bodylen, opaque, _cas = HEADER.unpack(buf[: HEADER.size])
        assert magic == 0x81 and status != STATUS_OK and opaque == 9
        figure(f"{name}: status {status:#x} {buf[HEADER.size : HEADER.size + bodylen]!r}, then closed")
    # The other client never noticed.
    assert other.get(key) == b"before"
    assert other.set(key, b"after") and other.get(key) == b"after"
    other.close()
    assert vb.proxy.alive()
