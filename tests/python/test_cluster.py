"""End-to-end tests of the cluster manager: real `shoal node` processes
forming a Raft cluster, its Couchbase-shaped REST API, `shoal up`, and
proxies following the cluster's config streams. Everything on loopback.

- `shoal up`: 10,000 keys through its proxy; every node serves the same
  map, and every sampled key is on the node the map names (the others
  answer NOT_MY_VBUCKET); a restart from the same --dir keeps every key;
- formation (one node initialises, two join): every node lists the same
  three active nodes and the same leader; a fourth, bare node added through
  a follower is `inactiveAdded` and a voter everywhere, then ejected;
- buckets: created through a follower, served by every node at one rev,
  reachable by bucket selection on the data port, isolated from `default`
  through proxies, deleted everywhere; a proxy keeps working when its
  bucket is deleted and created again; memcached buckets are ketama configs;
- config streams: first document, keep-alives, a new document when the
  config changes, the end of the stream when the bucket is deleted;
- every REST error: status and a JSON `{"error": ...}` naming the bad
  parameter, both on the leader and forwarded by a follower;
- the leader killed: a new one is elected, changes work through either
  survivor, the old leader catches up from its data dir; a majority lost:
  changes are refused with 503 and never appear later;
- a proxy told about one node only keeps serving when that node dies and
  follows the config through the nodes it learned.

Measured figures (election time, keep-alive gap…) are printed; run with
`-s` to see them.
"""

import json
import os
import random
import signal
import socket
import time
from types import SimpleNamespace

import pytest
from bmemcached import Client as BinaryClient
from pymemcache.client.base import Client as PyClient
from pymemcache.exceptions import MemcacheServerError

from harness import figure
from harness.cluster import CONVERGE_DEADLINE_S, active_addr, summarize, wait_data_ready
from harness.poll import Watch, poll
from harness.process import free_port
from harness.rest import ConfigStream, error_message, node_id_of, rest
from harness.wire import (
    OP_GET,
    OP_SET,
    STATUS_KEY_NOT_FOUND,
    STATUS_NOT_MY_VBUCKET,
    STATUS_OK,
    VB_DEAD,
    BinaryConn,
    addr_of,
    direct_get,
    direct_set,
    sasl_plain,
    select_bucket,
    store_extras,
)

# python-binary-memcached 0.31.2 calls a deprecated urllib helper.
pytestmark = pytest.mark.filterwarnings("ignore:urllib.parse.splitport:DeprecationWarning")

# Small maps keep bucket creation cheap where the count does not matter.
VBUCKETS = 64

# Raft election timeouts are 1.5-3 s: a new leader well within this.
ELECTION_DEADLINE_S = 20.0
# Streams carry a keep-alive every 3 s.
KEEPALIVE_DEADLINE_S = 5.0
# A change refused for want of a majority is answered within this.
REFUSAL_DEADLINE_S = 15.0


def py_client(addr):
    return PyClient(addr, default_noreply=False, connect_timeout=10, timeout=15)


def chunks(items, size):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def set_and_get_all(addr, values, batch=500):
    """Sets every key through the memcached endpoint at `addr` and reads all
    back; returns the keys that came back wrong or missing."""
    c = py_client(addr)
    try:
        keys = list(values)
        for part in chunks(keys, batch):
            failed = c.set_many({k: values[k] for k in part})
            assert failed == [], f"set_many through {addr} failed for {failed[:10]}"
        return get_all_wrong(c, values, batch)
    finally:
        c.close()


def get_all_wrong(c, values, batch=500):
    got = {}
    for part in chunks(list(values), batch):
        got.update(c.get_many(part))
    return sorted(k for k, v in values.items() if got.get(k) != v)


@pytest.fixture(scope="module")
def shared(module_harness):
    """Three nodes (one initialised the cluster, two joined) and bucket
    `default` with 64 vbuckets and one replica. Tests that change the
    cluster leave it as they found it."""
    cluster = module_harness.cluster(3, prefix="shared")
    cluster.create_bucket(cluster.nodes[0], "default", numVBuckets=VBUCKETS, replicaNumber=1)
    cluster.wait_bucket("default")
    return SimpleNamespace(cluster=cluster, harness=module_harness)


# === shoal up ===


def test_up_serves_10k_keys_and_keeps_them_across_a_restart(harness):
    started = time.monotonic()
    up = harness.up(nodes=3, replicas=1).start()
    at_ready = warmup_states(up)
    figure(f"shoal up: ready after {time.monotonic() - started:.1f}s; nodes' warmup then: {at_ready}")
    values = {f"up:{i}": f"value {i} of shoal up".encode() for i in range(10_000)}
    try:
        wrong = set_and_get_all(up.proxy, values)
    except MemcacheServerError as e:
        pytest.fail(f"right after `ready`, the proxy answered {e}; the nodes' warmup when `ready` was "
                    f"printed: {at_ready}", pytrace=False)  # fmt: skip
    assert wrong == [], f"{len(wrong)} of 10000 keys read back wrong through the proxy: {wrong[:10]}"

    # Every node serves the same revision of the same map.
    configs = []
    for i in range(3):
        r = rest(up.node_admin(i), "GET", "/pools/default/buckets/default")
        assert r.status == 200, r.describe()
        configs.append(r.json())
    revs = [c["rev"] for c in configs]
    assert len(set(revs)) == 1, f"nodes serve revs {revs}"
    maps = [c["vBucketServerMap"] for c in configs]
    assert all(m == maps[0] for m in maps), "nodes serve different vBucketServerMaps"
    vbmap = maps[0]
    assert len(vbmap["vBucketMap"]) == 1024, "the default vbucket count is 1024"
    assert vbmap["numReplicas"] == 1 and vbmap["hashAlgorithm"] == "CRC"
    assert sorted(vbmap["serverList"]) == sorted("%s:%d" % up.node_data(i) for i in range(3))
    for vb, chain in enumerate(vbmap["vBucketMap"]):
        assert len(chain) == 2 and chain[0] != chain[1] and min(chain) >= 0, f"vbucket {vb}: chain {chain}"

    # Each sampled key is on the active the map names, and only there.
    config = configs[0]
    servers = [addr_of(s) for s in vbmap["serverList"]]
    conns = {addr: BinaryConn(addr) for addr in servers}
    owners = set()
    try:
        for key in random.Random(7).sample(sorted(values), 300):
            vb, owner = active_addr(config, key)
            owners.add(owner)
            r = conns[owner].call(OP_GET, key=key, vbucket=vb)
            assert (r.status, r.value) == (STATUS_OK, values[key]), (
                f"GET {key} vb {vb} on its active {owner}: status {r.status:#x} {r.value[:100]!r}"
            )
            for other in servers:
                if other == owner:
                    continue
                r = conns[other].call(OP_GET, key=key, vbucket=vb)
                assert r.status == STATUS_NOT_MY_VBUCKET, (
                    f"GET {key} vb {vb} on non-active {other} (chain {vbmap['vBucketMap'][vb]}): "
                    f"status {r.status:#x}, want NOT_MY_VBUCKET"
                )
    finally:
        for conn in conns.values():
            conn.close()
    assert owners == set(servers), f"the sample only hit {owners}"

    # SIGTERM stops `up` and every child; the same --dir brings it all back.
    code = up.stop()
    assert code == 0, f"shoal up exited with {code} on SIGTERM"
    poll(lambda: not up.group_alive(), 30, "every process `shoal up` started to exit")
    started = time.monotonic()
    up.start()
    at_ready = warmup_states(up)
    figure(f"shoal up: ready again after {time.monotonic() - started:.1f}s; nodes' warmup then: {at_ready}")
    c = py_client(up.proxy)
    try:
        wrong = get_all_wrong(c, values)
    except MemcacheServerError as e:
        pytest.fail(f"right after `ready` (restart), the proxy answered {e}; the nodes' warmup when `ready` "
                    f"was printed: {at_ready}", pytrace=False)  # fmt: skip
    finally:
        c.close()
    if wrong:
        owners = sorted({"%s:%d" % active_addr(config, k)[1] for k in wrong})
        pytest.fail(f"right after `ready` (restart) {len(wrong)} of 10000 keys are wrong or missing "
                    f"(e.g. {wrong[:5]}), active on {owners}; the nodes' warmup when `ready` was "
                    f"printed: {at_ready}", pytrace=False)  # fmt: skip
    code = up.stop()
    assert code == 0, f"shoal up exited with {code} on SIGTERM"


def warmup_states(up):
    """{node data port: its `stats warmup` state lines} right now."""
    states = {}
    for i in range(up.nodes):
        reply = b""
        try:
            with socket.create_connection(up.node_data(i), timeout=5) as s:
                s.sendall(b"stats warmup\r\n")
                # END after the stats, or one error line (no bucket yet).
                while not (reply.endswith(b"END\r\n") or (reply.endswith(b"\r\n") and b"ERROR" in reply)):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as e:
            reply = repr(e).encode()
        lines = reply.decode(errors="replace").split("\r\n")
        states[up.node_data(i)[1]] = " ".join(l[5:] for l in lines if "warmup_thread" in l) or lines[0]
    return states


# === formation and membership ===


def test_formation_lists_three_active_nodes_and_one_leader(shared):
    cluster = shared.cluster
    views = cluster.wait_formed(cluster.nodes)
    for node in cluster.nodes:
        view = views[node.name]
        me = [n for n in view["nodes"] if n["thisNode"]]
        assert len(me) == 1 and me[0]["hostname"] == node.hostname, f"{node.name}: thisNode {me}"
        for entry in view["nodes"]:
            (owner,) = [n for n in cluster.nodes if n.hostname == entry["hostname"]]
            assert entry["ports"]["direct"] == owner.port, f"{node.name} lists {entry}"
            assert entry["otpNode"] == f"ns_{node_id_of(entry['otpNode'])}@127.0.0.1"
            assert entry["raftRole"] in ("leader", "voter"), f"{node.name} lists {entry}"
        assert view["balanced"] is True and view["rebalanceStatus"] == "none", summarize(view)
        assert isinstance(view["raftTerm"], int) and view["raftTerm"] >= 1
        # /pools/nodes is the same list.
        r = node.get("/pools/nodes")
        assert r.status == 200, r.describe()
        assert sorted(n["hostname"] for n in r.json()["nodes"]) == sorted(n.hostname for n in cluster.nodes)
    ids = sorted(n.id for n in cluster.nodes)
    assert len(set(ids)) == 3, f"node ids {ids}"


def test_added_node_is_listed_everywhere_then_ejected(shared, harness):
    cluster = shared.cluster
    assert cluster.nodes[0].bucket("default") is not None, "bucket default must exist for this test"
    fourth = harness.node("bare-node").start()  # no --init-cluster, no --join
    via = cluster.followers()[0]
    r = via.post("/controller/addNode", {"hostname": fourth.hostname})
    assert r.status == 200, r.describe()
    otp = r.json().get("otpNode")
    assert isinstance(otp, str), r.describe()

    everyone = cluster.nodes + [fourth]

    def listed(w):
        views = cluster.views(everyone)
        w.last = {k: summarize(v) for k, v in views.items()}
        if len(views) != 4:
            return False
        for view in views.values():
            entries = {n["hostname"]: n for n in view["nodes"]}
            if set(entries) != {n.hostname for n in everyone}:
                return False
            new = entries[fourth.hostname]
            if (new["otpNode"], new["clusterMembership"], new["raftRole"]) != (otp, "inactiveAdded", "voter"):
                return False
            if any(entries[n.hostname]["clusterMembership"] != "active" for n in cluster.nodes):
                return False
        return True

    poll(Watch(listed), CONVERGE_DEADLINE_S, f"every node to list {fourth.hostname} as inactiveAdded voter {otp}")
    assert node_id_of(otp) == fourth.id

    r = via.post("/controller/ejectNode", {"otpNode": otp})
    assert r.status == 200, r.describe()

    def gone(w):
        views = cluster.views(cluster.nodes)
        w.last = {k: summarize(v) for k, v in views.items()}
        return len(views) == 3 and all(
            sorted(n["hostname"] for n in v["nodes"]) == sorted(n.hostname for n in cluster.nodes)
            for v in views.values()
        )

    poll(Watch(gone), CONVERGE_DEADLINE_S, f"{fourth.hostname} to be gone from every node's list")
    fourth.stop()
    cluster.wait_formed(cluster.nodes)


# === buckets ===


def check_membase_config(config, name, cluster, vbuckets, replicas):
    assert config["name"] == name
    assert config["bucketType"] == "membase" and config["nodeLocator"] == "vbucket", config
    assert isinstance(config["uuid"], str) and config["uuid"]
    assert config["replicaNumber"] == replicas
    assert config["durabilityMinLevel"] == "none"
    assert config["quota"]["ram"] == 64 * 1024 * 1024
    assert sorted(n["hostname"] for n in config["nodes"]) == sorted(n.hostname for n in cluster.nodes)
    vbmap = config["vBucketServerMap"]
    assert vbmap["hashAlgorithm"] == "CRC" and vbmap["numReplicas"] == replicas
    assert sorted(vbmap["serverList"]) == sorted(n.addr_str for n in cluster.nodes)
    assert len(vbmap["vBucketMap"]) == vbuckets
    for vb, chain in enumerate(vbmap["vBucketMap"]):
        assert len(chain) == replicas + 1 and len(set(chain)) == len(chain), f"vbucket {vb}: {chain}"
        assert all(0 <= i < len(vbmap["serverList"]) for i in chain), f"vbucket {vb}: {chain}"
    assert {chain[0] for chain in vbmap["vBucketMap"]} == set(range(len(cluster.nodes))), "a node has no active"


def test_bucket_created_via_follower_is_served_everywhere_then_deleted(shared):
    cluster = shared.cluster
    follower = cluster.followers()[0]
    cluster.create_bucket(follower, "b2", numVBuckets=VBUCKETS, replicaNumber=1)
    config = cluster.wait_bucket("b2")
    check_membase_config(config, "b2", cluster, VBUCKETS, 1)
    took = wait_data_ready(cluster.nodes, "b2", config)
    figure(f"b2: data ports ready {took:.2f}s after every node served its config")
    for node in cluster.nodes:
        r = node.get("/pools/default/b/b2")
        assert r.status == 200 and r.json()["rev"] == config["rev"], r.describe()
        listed = cluster.bucket_names(node)
        assert {"default", "b2"} <= set(listed) and listed["b2"] == config["rev"], f"{node.name} lists {listed}"

    # The data port: SELECT_BUCKET or SASL PLAIN picks b2; `default` on the
    # same node does not see its keys.
    default = cluster.wait_bucket("default")
    for i in range(20):
        key = f"b2:direct:{i}"
        vb, owner = active_addr(config, key)
        with BinaryConn(owner) as conn:
            r = select_bucket(conn, "b2") if i % 2 else sasl_plain(conn, "b2")
            assert r.status == STATUS_OK, f"{'SELECT_BUCKET' if i % 2 else 'SASL PLAIN'} b2 on {owner}: {r.status:#x} {r.value!r}"
            r = conn.call(OP_SET, key=key, value=b"in b2", extras=store_extras(), vbucket=vb)
            assert r.status == STATUS_OK, f"SET {key} vb {vb} on b2 at {owner}: {r.status:#x} {r.value!r}"
        r = direct_get(owner, key, vb, bucket="b2")
        assert (r.status, r.value) == (STATUS_OK, b"in b2")
        dvb, downer = active_addr(default, key)
        r = direct_get(downer, key, dvb)  # a fresh connection starts on `default`
        assert r.status == STATUS_KEY_NOT_FOUND, f"{key} written to b2 found in default on {downer}: {r.status:#x} {r.value!r}"

    r = cluster.followers()[-1].delete("/pools/default/buckets/b2")
    assert r.status == 200, r.describe()
    cluster.wait_bucket_gone("b2")
    for node in cluster.nodes:
        assert "b2" not in cluster.bucket_names(node)

    # No node lets a connection select it any more.
    def refused(w):
        statuses = {}
        for node in cluster.nodes:
            with BinaryConn(node.addr) as conn:
                statuses[node.name] = (select_bucket(conn, "b2").status, sasl_plain(conn, "b2").status)
        w.last = {k: tuple(hex(s) for s in v) for k, v in statuses.items()}
        return all(s != STATUS_OK for v in statuses.values() for s in v)

    poll(Watch(refused), CONVERGE_DEADLINE_S, "SELECT_BUCKET and SASL PLAIN of deleted b2 to fail on every node")


def test_proxy_serves_only_its_bucket(shared, harness):
    cluster = shared.cluster
    cluster.create_bucket(cluster.followers()[0], "b2p", numVBuckets=VBUCKETS, replicaNumber=1)
    config = cluster.wait_bucket("b2p")
    wait_data_ready(cluster.nodes, "b2p", config)
    urls = ",".join(n.admin_url for n in cluster.nodes)
    proxy_b = harness.proxy("--cluster", urls, "--bucket", "b2p", name="proxy-b2p").wait_healthy()
    proxy_d = harness.proxy("--cluster", urls, "--bucket", "default", name="proxy-default").wait_healthy()
    try:
        values = {f"b2p:{i}": f"value {i} in b2p".encode() for i in range(200)}
        wrong = set_and_get_all(proxy_b.addr, values)
        assert wrong == [], f"through the b2p proxy {len(wrong)} keys read back wrong: {wrong[:10]}"
        # A binary client too (it reads flags-0 values back as text).
        binary = BinaryClient([proxy_b.addr_str], socket_timeout=15)
        some = list(values)[:50]
        assert binary.get_multi(some) == {k: values[k].decode() for k in some}
        extra = {f"b2p:bin:{i}": f"binary {i}".encode() for i in range(50)}
        assert binary.set_multi(extra) == []
        assert binary.get_multi(list(extra)) == extra
        binary.disconnect_all()
        values.update(extra)

        # On the nodes: in b2p on the active its map names, not in default.
        default = cluster.wait_bucket("default")
        misplaced = []
        for key in list(values)[:40]:
            vb, owner = active_addr(config, key)
            in_b2p = direct_get(owner, key, vb, bucket="b2p")
            dvb, downer = active_addr(default, key)
            in_default = direct_get(downer, key, dvb, bucket="default")
            if (in_b2p.status, in_b2p.value) != (STATUS_OK, values[key]) or in_default.status != STATUS_KEY_NOT_FOUND:
                misplaced.append(f"{key}: b2p on {owner} vb {vb} -> {in_b2p.status:#x}; "
                                 f"default on {downer} vb {dvb} -> {in_default.status:#x} {in_default.value[:40]!r}")  # fmt: skip
        assert misplaced == [], (
            f"keys written through the proxy for b2p are not (only) in b2p on the nodes "
            f"({len(misplaced)} of 40): {misplaced[:5]}"
        )

        c = py_client(proxy_d.addr)
        try:
            seen = c.get_many(list(values))
        finally:
            c.close()
        assert seen == {}, f"the default proxy sees {len(seen)} of b2p's keys, e.g. {sorted(seen)[:5]}"
    finally:
        proxy_b.stop()
        proxy_d.stop()
        r = cluster.nodes[0].delete("/pools/default/buckets/b2p")
        assert r.status == 200, r.describe()
        cluster.wait_bucket_gone("b2p")


@pytest.mark.parametrize("bucket", ["default", "other"])
def test_proxy_recovers_when_its_bucket_is_recreated(harness, bucket):
    """Requests while the bucket is gone make the proxy open fresh node
    connections then, before the bucket is back; once it is recreated
    (and the proxy has its config) they must work again."""
    cluster = harness.cluster(1, prefix=f"recreate-{bucket}")
    (node,) = cluster.nodes
    cluster.create_bucket(node, bucket, numVBuckets=VBUCKETS, replicaNumber=0)
    wait_data_ready(cluster.nodes, bucket, cluster.wait_bucket(bucket))
    proxy = harness.proxy("--cluster", node.admin_url, "--bucket", bucket).wait_healthy()
    c = py_client(proxy.addr)
    try:
        assert c.set("rc:before", b"old")
        r = node.delete(f"/pools/default/buckets/{bucket}")
        assert r.status == 200, r.describe()
        cluster.wait_bucket_gone(bucket)

        def unselectable():
            with BinaryConn(node.addr) as conn:
                return select_bucket(conn, bucket).status != STATUS_OK

        poll(unselectable, CONVERGE_DEADLINE_S, f"bucket {bucket} to be gone from the data port")
        for _ in range(3):
            try:
                got = c.get("rc:before")
            except MemcacheServerError:
                got = None
            assert got is None, f"a deleted bucket's key read back: {got!r}"

        cluster.create_bucket(node, bucket, numVBuckets=VBUCKETS, replicaNumber=0)
        config = cluster.wait_bucket(bucket)
        wait_data_ready(cluster.nodes, bucket, config)
        poll(lambda: json.loads(proxy.http_get("/config")[1])["rev"] == config["rev"], CONVERGE_DEADLINE_S,
             f"the proxy to install the recreated bucket's rev {config['rev']}")  # fmt: skip
        answers = []

        def stored(w):
            try:
                ok = c.set("rc:after", b"new")
            except MemcacheServerError as e:
                ok = e
            answers.append(ok)
            w.last = f"{len(answers)} sets answered {sorted({repr(a) for a in answers})}"
            return ok is True

        poll(Watch(stored), 10, f"a set through the proxy for recreated bucket {bucket!r} to succeed")
        assert c.get("rc:after") == b"new"
        assert c.get("rc:before") is None
    finally:
        c.close()


def test_memcached_bucket_is_a_ketama_config(shared):
    cluster = shared.cluster
    cluster.create_bucket(cluster.followers()[0], "mc1", bucketType="memcached", ramQuotaMB=16)
    config = cluster.wait_bucket("mc1")
    wait_data_ready(cluster.nodes, "mc1", config)
    assert config["bucketType"] == "memcached" and config["nodeLocator"] == "ketama", config
    assert "vBucketServerMap" not in config, f"a memcached bucket has a vBucketServerMap: {config}"
    assert config["replicaNumber"] == 0 and config["quota"]["ram"] == 16 * 1024 * 1024
    assert sorted(n["hostname"] for n in config["nodes"]) == sorted(n.hostname for n in cluster.nodes)
    assert sorted(n["ports"]["direct"] for n in config["nodes"]) == sorted(n.port for n in cluster.nodes)
    # Any node takes any key once the bucket is selected.
    for node in cluster.nodes:
        r = direct_set(node.addr, f"mc1:{node.name}", b"m", vbucket=0, bucket="mc1")
        assert r.status == STATUS_OK, f"SET on mc1 at {node.name}: {r.status:#x} {r.value!r}"
        r = direct_get(node.addr, f"mc1:{node.name}", vbucket=0, bucket="mc1")
        assert (r.status, r.value) == (STATUS_OK, b"m")
    r = cluster.nodes[2].delete("/pools/default/buckets/mc1")
    assert r.status == 200, r.describe()
    cluster.wait_bucket_gone("mc1")

def test_proxy_serves_a_memcached_bucket_on_its_ketama_ring(shared, harness):
    """The proxy follows a memcached bucket's config: keys placed on the
    ketama ring over the nodes, each stored only on the node the ring names."""
    cluster = shared.cluster
    cluster.create_bucket(cluster.followers()[0], "mc2", bucketType="memcached", ramQuotaMB=16)
    config = cluster.wait_bucket("mc2")
    wait_data_ready(cluster.nodes, "mc2", config)
    urls = ",".join(n.admin_url for n in cluster.nodes)
    proxy = harness.proxy("--cluster", urls, "--bucket", "mc2", name="proxy-mc2").wait_healthy()
    try:
        values = {f"mc2:{i}": f"ketama {i}".encode() for i in range(300)}
        wrong = set_and_get_all(proxy.addr, values)
        assert wrong == [], f"through the memcached-bucket proxy {len(wrong)} keys read back wrong: {wrong[:10]}"
        # Spread over the nodes, each key on exactly one of them.
        holders = {}
        for key in list(values)[:60]:
            found = [n.name for n in cluster.nodes
                     if direct_get(n.addr, key, vbucket=0, bucket="mc2").status == STATUS_OK]  # fmt: skip
            assert len(found) == 1, f"{key} is held by {found}, not by exactly one node"
            holders[found[0]] = holders.get(found[0], 0) + 1
        assert len(holders) == len(cluster.nodes), f"keys are not spread over every node: {holders}"
    finally:
        proxy.stop()
        r = cluster.nodes[0].delete("/pools/default/buckets/mc2")
        assert r.status == 200, r.describe()
        cluster.wait_bucket_gone("mc2")



# === config streams ===


@pytest.mark.parametrize("path", ["bucketsStreaming", "bs"])
def test_stream_sends_config_then_keepalives_and_ends_when_bucket_deleted(shared, path):
    cluster = shared.cluster
    name = f"b3{path}"
    cluster.create_bucket(cluster.nodes[0], name, numVBuckets=VBUCKETS, replicaNumber=1)
    config = cluster.wait_bucket(name)
    stream = ConfigStream(cluster.nodes[1].admin, f"/pools/default/{path}/{name}")
    try:
        assert stream.response.status == 200, stream.response.read()
        assert stream.response.getheader("Transfer-Encoding") == "chunked"
        first = json.loads(stream.next(10))
        assert (first["name"], first["rev"]) == (name, config["rev"])
        assert first["vBucketServerMap"] == config["vBucketServerMap"]
        started = time.monotonic()
        try:
            keepalive = stream.next(KEEPALIVE_DEADLINE_S)
        except socket.timeout:
            pytest.fail(f"no keep-alive within {KEEPALIVE_DEADLINE_S}s of the first document", pytrace=False)
        figure(f"{path}: keep-alive {time.monotonic() - started:.2f}s after the first document")
        assert keepalive == b"", f"a second document with nothing changed: {keepalive[:200]!r}"

        r = cluster.nodes[2].delete(f"/pools/default/buckets/{name}")
        assert r.status == 200, r.describe()
        deleted = time.monotonic()
        deadline = deleted + CONVERGE_DEADLINE_S
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the stream of deleted bucket {name} did not end in {CONVERGE_DEADLINE_S}s"
            try:
                doc = stream.next(left)
            except socket.timeout:
                continue
            if doc is None:
                break
            assert doc == b"", f"a document after the bucket was deleted: {doc[:200]!r}"
        figure(f"{path}: stream ended {time.monotonic() - deleted:.2f}s after the delete")
    finally:
        stream.close()
    cluster.wait_bucket_gone(name)


def test_stream_sends_new_document_when_the_config_changes(harness):
    """A memcached bucket spans the active nodes: ejecting one changes its
    config, which the stream must carry."""
    cluster = harness.cluster(2, prefix="stream")
    leader = cluster.leader()
    (other,) = cluster.followers()
    cluster.create_bucket(leader, "mc", bucketType="memcached", ramQuotaMB=16)
    config = cluster.wait_bucket("mc")
    assert sorted(n["hostname"] for n in config["nodes"]) == sorted(n.hostname for n in cluster.nodes)
    stream = ConfigStream(leader.admin, "/pools/default/bucketsStreaming/mc")
    try:
        first = json.loads(stream.next(10))
        assert first["rev"] == config["rev"]
        r = leader.post("/controller/ejectNode", {"otpNode": other.otp_node})
        assert r.status == 200, r.describe()
        ejected = time.monotonic()
        while True:
            doc = stream.next(CONVERGE_DEADLINE_S)
            assert doc is not None, "the stream ended instead of sending the new config"
            if doc:
                break
        changed = json.loads(doc)
        figure(f"new document {time.monotonic() - ejected:.2f}s after the eject")
        assert changed["rev"] > first["rev"], f"rev {first['rev']} -> {changed['rev']}"
        assert [n["hostname"] for n in changed["nodes"]] == [leader.hostname], changed["nodes"]
        assert leader.bucket("mc")["rev"] == changed["rev"]
    finally:
        stream.close()
    other.stop()


# === REST errors ===

# (id, method, path, form or raw body, status, words the error must contain)
JSON_BODY = ("application/json", b'{"json":true}')
REST_ERRORS = [
    ("missing name", "POST", "/pools/default/buckets", {"ramQuotaMB": "64"}, 400, ["name"]),
    ("empty name", "POST", "/pools/default/buckets", {"name": "", "ramQuotaMB": "64"}, 400, ["name"]),
    ("bad name", "POST", "/pools/default/buckets", {"name": "a/b", "ramQuotaMB": "64"}, 400, ["name"]),
    ("missing ramQuotaMB", "POST", "/pools/default/buckets", {"name": "err1"}, 400, ["ramQuotaMB"]),
    ("ramQuotaMB not a number", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "lots"}, 400, ["ramQuotaMB"]),
    ("ramQuotaMB 0", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "0"}, 400, ["ramQuotaMB"]),
    ("replicaNumber 4", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "64", "replicaNumber": "4"}, 400, ["replicaNumber"]),
    ("replicaNumber -1", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "64", "replicaNumber": "-1"}, 400, ["replicaNumber"]),
    ("unknown bucketType", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "64", "bucketType": "ephemeral"}, 400, ["bucketType"]),
    ("numVBuckets 1000", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "64", "numVBuckets": "1000"}, 400, ["numVBuckets"]),
    ("numVBuckets 8192", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "64", "numVBuckets": "8192"}, 400, ["numVBuckets"]),
    ("numVBuckets 0", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "64", "numVBuckets": "0"}, 400, ["numVBuckets"]),
    ("bad durabilityMinLevel", "POST", "/pools/default/buckets", {"name": "err1", "ramQuotaMB": "64", "durabilityMinLevel": "sometimes"}, 400, ["durabilityMinLevel"]),
    ("memcached with replicas", "POST", "/pools/default/buckets",
     {"name": "err1", "ramQuotaMB": "64", "bucketType": "memcached", "replicaNumber": "1"}, 400, ["replicaNumber"]),
    ("memcached with numVBuckets", "POST", "/pools/default/buckets",
     {"name": "err1", "ramQuotaMB": "64", "bucketType": "memcached", "numVBuckets": "64"}, 400, ["numVBuckets"]),
    ("JSON body", "POST", "/pools/default/buckets", JSON_BODY, 400, ["name"]),
    ("duplicate name", "POST", "/pools/default/buckets", {"name": "default", "ramQuotaMB": "64"}, 409, []),
    ("delete unknown bucket", "DELETE", "/pools/default/buckets/nosuch", None, 404, []),
    ("get unknown bucket", "GET", "/pools/default/buckets/nosuch", None, 404, []),
    ("get unknown bucket (b)", "GET", "/pools/default/b/nosuch", None, 404, []),
    ("stream unknown bucket", "GET", "/pools/default/bucketsStreaming/nosuch", None, 404, []),
    ("addNode without hostname", "POST", "/controller/addNode", {}, 400, ["hostname"]),
    ("addNode unreachable", "POST", "/controller/addNode", {"hostname": "127.0.0.1:{dead_port}"}, 400, []),
    ("ejectNode without otpNode", "POST", "/controller/ejectNode", {}, 400, ["otpNode"]),
    ("ejectNode unknown otpNode", "POST", "/controller/ejectNode", {"otpNode": "ns_1@127.0.0.1"}, 404, []),
    ("ejectNode unknown host", "POST", "/controller/ejectNode", {"otpNode": "127.0.0.1:{dead_port}"}, 404, []),
    ("ejectNode active with vbuckets", "POST", "/controller/ejectNode", {"otpNode": "{active_otp}"}, 409, []),
    ("ejectNode active by host", "POST", "/controller/ejectNode", {"otpNode": "{active_host}"}, 409, []),
    ("unknown path", "GET", "/pools/default/nothingHere", None, 404, []),
]  # fmt: skip


@pytest.fixture(scope="module")
def dead_port():
    """A port nothing listens on."""
    return free_port()


@pytest.mark.parametrize("via", ["leader", "follower"])
@pytest.mark.parametrize("case", REST_ERRORS, ids=[c[0] for c in REST_ERRORS])
def test_rest_error(shared, dead_port, via, case):
    _, method, path, payload, status, words = case
    cluster = shared.cluster
    node = cluster.leader() if via == "leader" else cluster.followers()[0]
    # An active node holding vbuckets of `default` (not the one asked).
    target = [n for n in cluster.nodes if n is not node][0]
    subst = {"dead_port": dead_port, "active_otp": target.otp_node, "active_host": target.hostname}
    if isinstance(payload, tuple):
        content_type, body = payload
        r = node.post(path, body=body, content_type=content_type)
    elif method == "POST":
        r = node.post(path, {k: v.format(**subst) for k, v in payload.items()})
    elif method == "DELETE":
        r = node.delete(path)
    else:
        r = node.get(path)
    assert r.status == status, f"want HTTP {status}: {r.describe()}"
    message = error_message(r)
    for word in words:
        assert word in message, f"the error does not name {word!r}: {r.describe()}"
    # A refused change changed nothing.
    if path == "/pools/default/buckets" and isinstance(payload, dict) and payload.get("name") == "err1":
        assert node.bucket("err1") is None


def test_tasks_list_no_rebalance(shared):
    for node in shared.cluster.nodes:
        r = node.get("/pools/default/tasks")
        assert r.status == 200 and r.json() == [{"type": "rebalance", "status": "notRunning"}], r.describe()


# === failures ===


def wait_new_leader(cluster, survivors, old_id):
    """Waits until every survivor names one leader other than `old_id`;
    returns its id."""

    def elected(w):
        views = cluster.views(survivors)
        w.last = {k: summarize(v) for k, v in views.items()}
        leaders = {v["raftLeader"] for v in views.values()}
        if len(views) == len(survivors) and len(leaders) == 1 and None not in leaders and old_id not in leaders:
            return leaders.pop()
        return None

    return poll(Watch(elected), ELECTION_DEADLINE_S, "the survivors to elect a new leader")


def test_leader_failure_then_lost_majority(harness):
    cluster = harness.cluster(3, prefix="lf")
    old = cluster.leader()
    old_term = old.pools()["raftTerm"]
    survivors = [n for n in cluster.nodes if n is not old]
    old.kill()
    killed = time.monotonic()

    new_id = wait_new_leader(cluster, survivors, old.id)
    figure(f"new leader agreed by both survivors {time.monotonic() - killed:.2f}s after kill -9 of the leader")
    assert new_id in {n.id for n in survivors}
    assert all(v["raftTerm"] > old_term for v in cluster.views(survivors).values())

    # Changes work through either survivor (the leader, and a follower
    # forwarding to it).
    for i, node in enumerate(survivors):
        cluster.create_bucket(node, f"after{i}", numVBuckets=VBUCKETS, replicaNumber=1)
    for i in range(2):
        cluster.wait_bucket(f"after{i}", survivors)

    # The old leader restarts bare from its data dir and catches up.
    old.start()
    restarted = time.monotonic()
    for i in range(2):
        cluster.wait_bucket(f"after{i}", cluster.nodes)
    cluster.wait_formed(cluster.nodes)
    figure(f"restarted old leader caught up {time.monotonic() - restarted:.2f}s after its restart")

    # Two of three gone: the survivor (the leader) refuses changes.
    lone = cluster.leader()
    gone = [n for n in cluster.nodes if n is not lone]
    for node in gone:
        node.kill()
    started = time.monotonic()
    r = lone.post("/pools/default/buckets", {"name": "refused", "ramQuotaMB": "64", "numVBuckets": str(VBUCKETS)})
    took = time.monotonic() - started
    figure(f"change without a majority refused after {took:.2f}s: {r.body[:200]!r}")
    assert r.status == 503, f"want 503 without a majority: {r.describe()}"
    error_message(r)
    assert took < REFUSAL_DEADLINE_S, f"the refusal took {took:.1f}s"
    # The same through a follower once the survivor is alone is covered by
    # the forwarding path; the lone node must not have applied it.
    assert lone.bucket("refused") is None

    for node in gone:
        node.start()
    cluster.wait_formed(cluster.nodes)
    # A later change applied everywhere proves every node has the whole log.
    cluster.create_bucket(cluster.nodes[0], "final", numVBuckets=VBUCKETS, replicaNumber=1)
    cluster.wait_bucket("final")
    lists = {node.name: cluster.bucket_names(node) for node in cluster.nodes}
    assert all(v == lists[cluster.nodes[0].name] for v in lists.values()), f"nodes disagree: {lists}"
    assert set(lists[cluster.nodes[0].name]) == {"after0", "after1", "final"}, f"buckets: {lists}"


def test_proxy_follows_the_config_through_a_surviving_node(harness):
    cluster = harness.cluster(3, prefix="pf")
    first, rest_nodes = cluster.nodes[0], cluster.nodes[1:]
    cluster.create_bucket(rest_nodes[0], "default", numVBuckets=VBUCKETS, replicaNumber=1)
    config = cluster.wait_bucket("default")
    wait_data_ready(cluster.nodes, "default", config)
    # The proxy is told about the first node only.
    proxy = harness.proxy("--cluster", first.admin_url, "--bucket", "default").wait_healthy()

    def proxy_rev():
        status, body = proxy.http_get("/config")
        assert status == 200, f"proxy /config: HTTP {status} {body[:200]!r}"
        return json.loads(body)["rev"]

    poll(lambda: proxy_rev() == config["rev"], 10, f"the proxy to use rev {config['rev']}")

    def survivors_keys(cfg, prefix, count):
        keys = []
        i = 0
        while len(keys) < count:
            key = f"{prefix}{i}"
            if active_addr(cfg, key)[1] != first.addr:
                keys.append(key)
            i += 1
        return keys

    before = {k: b"before" for k in survivors_keys(config, "pf:a:", 100)}
    assert set_and_get_all(proxy.addr, before) == []

    old_leader = cluster.leader().id
    first.kill()
    health = []

    def healthy_probe():
        status, body = proxy.http_get("/health")
        health.append(status)
        assert status == 200, f"proxy /health {status} {body!r} after the node it was given died"

    # Keys whose active survives keep working.
    healthy_probe()
    after = {k: b"after" for k in survivors_keys(config, "pf:b:", 100)}
    assert set_and_get_all(proxy.addr, after) == []
    healthy_probe()

    # A config change made through the survivors reaches the proxy: bucket
    # `default` deleted and created again (a new rev and uuid). If the dead
    # node led, changes wait for the survivors' election.
    if old_leader == first.id:
        wait_new_leader(cluster, rest_nodes, old_leader)
    r = rest_nodes[0].delete("/pools/default/buckets/default")
    assert r.status == 200, r.describe()
    cluster.wait_bucket_gone("default", rest_nodes)
    cluster.create_bucket(rest_nodes[1], "default", numVBuckets=VBUCKETS, replicaNumber=1)
    new = cluster.wait_bucket("default", rest_nodes)
    wait_data_ready(rest_nodes, "default", new)
    assert new["rev"] > config["rev"] and new["uuid"] != config["uuid"]
    changed = time.monotonic()

    def follows():
        healthy_probe()
        return proxy_rev() == new["rev"]

    poll(follows, CONVERGE_DEADLINE_S, f"the proxy (given only the dead node) to install rev {new['rev']}")
    figure(f"proxy installed the new config {time.monotonic() - changed:.2f}s after it was made; "
           f"/health answered 200 to all {len(health)} probes")  # fmt: skip
    fresh = {k: b"fresh" for k in survivors_keys(new, "pf:c:", 100)}
    assert set_and_get_all(proxy.addr, fresh) == []


# === failover ===



def serves_nothing(node, bucket):
    """Whether `node` holds `bucket` with every vbucket dead (a failed-over
    node keeps the data for a delta recovery) or not at all, and a client's
    GET there is refused."""
    r = node.get(f"/internal/vbuckets/{bucket}", auth=node.cluster_credentials())
    if r.status == 404:
        return True
    assert r.status == 200, r.describe()
    if any(state != VB_DEAD for _, state, _ in r.json()):
        return False
    with BinaryConn(node.addr, bucket=bucket) as conn:
        return conn.call(OP_GET, key=b"any", vbucket=0).status == STATUS_NOT_MY_VBUCKET


def test_failover_promotes_replicas_and_drops_the_failed_node(harness):
    """A manual failover takes the node out of every chain in one map change
    (rev bumps, every vbucket keeps an active), marks it inactiveFailed, the
    failed node stops serving the bucket, and a proxy keeps working on the
    new map. A bucket without replicas refuses it (its vbuckets would have no
    copy left) unless allowUnsafe=true."""
    cluster = harness.cluster(3, prefix="failover")
    leader = cluster.leader()
    cluster.create_bucket(leader, "fo", numVBuckets=VBUCKETS, replicaNumber=1)
    before = cluster.wait_bucket("fo")
    wait_data_ready(cluster.nodes, "fo", before)
    victim = cluster.followers()[0]
    server_list = before["vBucketServerMap"]["serverList"]
    victim_idx = server_list.index(victim.addr_str)

    cluster.create_bucket(leader, "fo0", numVBuckets=VBUCKETS, replicaNumber=0)
    wait_data_ready(cluster.nodes, "fo0", cluster.wait_bucket("fo0"))
    r = leader.post("/controller/failOver", {"otpNode": victim.otp_node})
    assert r.status == 409, f"failover that loses vbuckets of fo0 was not refused: {r.describe()}"
    assert "allowUnsafe" in error_message(r), r.describe()
    r = leader.delete("/pools/default/buckets/fo0")
    assert r.status == 200, r.describe()
    cluster.wait_bucket_gone("fo0")

    # What a failover asks the survivors: each vbucket's high seqno (asked
    # as the cluster, as nodes ask each other).
    as_cluster = leader.cluster_credentials()
    r = leader.get("/internal/seqnos/fo", auth=as_cluster)
    assert r.status == 200, r.describe()
    seqnos = dict(map(tuple, json.loads(r.body)))
    assert sorted(seqnos) == list(range(VBUCKETS)) and all(s >= 0 for s in seqnos.values()), seqnos
    assert leader.get("/internal/seqnos/nope", auth=as_cluster).status == 404

    r = cluster.followers()[-1].post("/controller/failOver", {"otpNode": victim.otp_node})
    assert r.status == 200, r.describe()

    def failed_over(w):
        configs = [n.bucket("fo") for n in cluster.nodes if n is not victim]
        w.last = [c and c["rev"] for c in configs]
        if any(c is None or c["rev"] <= before["rev"] for c in configs):
            return None
        return configs[0] if all(c == configs[0] for c in configs) else None

    after = poll(Watch(failed_over), CONVERGE_DEADLINE_S, "the survivors to serve the failed-over map")
    chains = after["vBucketServerMap"]["vBucketMap"]
    assert all(chain[0] >= 0 for chain in chains), "a vbucket lost its active in the failover"
    assert all(victim_idx not in chain for chain in chains), "the failed node is still in a chain"
    for vb, (old, new) in enumerate(zip(before["vBucketServerMap"]["vBucketMap"], chains)):
        if old[0] == victim_idx:
            assert new[0] == old[1], f"vbucket {vb}: {old} -> {new}, not the replica promoted"
        elif victim_idx not in old:
            assert new == old, f"vbucket {vb} changed without naming the failed node: {old} -> {new}"
    for view in cluster.views([n for n in cluster.nodes if n is not victim]).values():
        (node,) = [n for n in view["nodes"] if n["otpNode"] == victim.otp_node]
        assert node["clusterMembership"] == "inactiveFailed", summarize(view)

    # The failed node serves none of its stale vbuckets (it keeps their
    # data, dead, for a delta recovery).
    poll(lambda: serves_nothing(victim, "fo"), CONVERGE_DEADLINE_S, "every vbucket of fo dead on the failed node")
    r = victim.post("/controller/failOver", {"otpNode": victim.otp_node})
    assert r.status == 409, f"a second failover of one node: {r.describe()}"

    survivors = ",".join(n.admin_url for n in cluster.nodes if n is not victim)
    proxy = harness.proxy("--cluster", survivors, "--bucket", "fo", name="proxy-fo").wait_healthy()
    values = {f"fo:{i}": f"after failover {i}".encode() for i in range(300)}
    wrong = set_and_get_all(proxy.addr, values)
    assert wrong == [], f"{len(wrong)} keys wrong through the proxy after the failover: {wrong[:10]}"


def test_auto_failover_of_a_hung_node_and_no_stale_data_after_it_resumes(harness):
    """Auto-failover on (2 s): a node stopped with SIGSTOP is failed over by
    the leader; after SIGCONT every vbucket of the bucket is dead there, so
    clients never read its stale vbuckets. The settings are validated and
    readable."""
    cluster = harness.cluster(3, prefix="autofo")
    leader = cluster.leader()
    follower = cluster.followers()[0]
    for bad in ({"enabled": "maybe"}, {"enabled": "true", "timeout": "0"}, {"enabled": "true", "timeout": "x"}):
        r = follower.post("/settings/autoFailover", bad)
        assert r.status == 400 and error_message(r), f"{bad}: {r.describe()}"
    r = follower.post("/settings/autoFailover", {"enabled": "true", "timeout": "2"})
    assert r.status == 200, r.describe()
    poll(lambda: all(json.loads(n.get("/settings/autoFailover").body) == {"enabled": True, "timeout": 2, "maxCount": 1}
                     for n in cluster.nodes), CONVERGE_DEADLINE_S, "every node to show the auto-failover setting")  # fmt: skip

    cluster.create_bucket(leader, "afo", numVBuckets=VBUCKETS, replicaNumber=1)
    before = cluster.wait_bucket("afo")
    wait_data_ready(cluster.nodes, "afo", before)
    victim = follower
    victim_idx = before["vBucketServerMap"]["serverList"].index(victim.addr_str)
    survivors = [n for n in cluster.nodes if n is not victim]
    stopped_at = time.monotonic()
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:

        def failed_over(w):
            configs = [n.bucket("afo") for n in survivors]
            w.last = [c and c["rev"] for c in configs]
            ok = all(c and c["rev"] > before["rev"] for c in configs) and configs[0] == configs[1]
            return configs[0] if ok else None

        after = poll(Watch(failed_over), 30, "the hung node to be failed over automatically")
        figure(f"auto-failover of a SIGSTOPped node after {time.monotonic() - stopped_at:.1f} s (timeout 2 s)")
        chains = after["vBucketServerMap"]["vBucketMap"]
        assert all(c[0] >= 0 and victim_idx not in c for c in chains), "the hung node is still in the map"
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)

    poll(lambda: serves_nothing(victim, "afo"), CONVERGE_DEADLINE_S, "every vbucket dead on the resumed node")
    view = cluster.views(survivors)[survivors[0].name]
    (node,) = [n for n in view["nodes"] if n["otpNode"] == victim.otp_node]
    assert node["clusterMembership"] == "inactiveFailed", summarize(view)
