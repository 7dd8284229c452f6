"""Security end to end, with real clients against real clusters.

- REST: what is open (`/pools`, an open bucket's config and stream) stays
  open to anyone; everything else needs credentials (401 with a challenge
  without them or with wrong ones); a bucket's password opens its own
  config. Every route of the router is walked in `node/tests/security.rs`.
- The data port: SET_VBUCKET, DEL_VBUCKET, DCP_OPEN and a DCP seqno
  acknowledgement from a client that is not the cluster are refused
  (NO_ACCESS) and change nothing: keys stay readable, replication between
  the real nodes goes on, and a durable write still waits for the real
  replica (it fails while the replica is stopped).
- A bucket with a password: pymemcache and pylibmc without credentials get
  errors and store nothing; python-binary-memcached with SASL PLAIN works
  (through a proxy: it knows no vbuckets, and the proxy checks its login
  against the cluster); SCRAM-SHA512/256/1 driven by `scramp` (a real SCRAM
  client) works on a node's data port; wrong passwords fail for every
  mechanism. Through a proxy holding the password
  the legacy clients work; with a wrong password the proxy says so on
  `/health` and to every client.
- `shoal up` makes, prints and keeps the admin credentials; no password
  shows on a child's command line or in a log.
"""

import os
import signal
import socket
import stat

import bmemcached
import pylibmc
import pytest
import scramp
from pymemcache.client.base import Client as PyClient
from pymemcache.exceptions import MemcacheError

from harness.cluster import active_addr, wait_data_ready
from harness.credentials import ADMIN, Credentials
from harness.poll import Watch, poll
from harness.process import ShoalNode
from harness.rest import rest
from harness.wire import (
    OP_GET,
    OP_SET,
    STATUS_AUTH_ERROR,
    STATUS_NO_ACCESS,
    STATUS_OK,
    BinaryConn,
    ascii_call,
    sasl_plain,
    select_bucket,
    store_extras,
    vbucket_of,
)

OP_SASL_AUTH = 0x21
OP_SASL_STEP = 0x22
OP_SET_VBUCKET = 0x3D
OP_GET_VBUCKET = 0x3E
OP_DEL_VBUCKET = 0x3F
OP_DCP_OPEN = 0x50
OP_DCP_SEQNO_ACKNOWLEDGED = 0x61
OP_GET_REPLICA = 0x83
STATUS_AUTH_CONTINUE = 0x21
STATUS_TEMPORARY_FAILURE = 0x86

BUCKET_PASSWORD = "bucket-pw-0123"
DEADLINE_S = 30.0


def anonymous(node, path, method="GET"):
    return rest(node.admin, method, path, auth=None)


# --- REST ---


def test_rest_needs_credentials_and_open_configs_stay_open(harness):
    cluster = harness.cluster(1)
    node = cluster.nodes[0]
    cluster.create_bucket(node, "open", numVBuckets=16, replicaNumber=0)
    cluster.create_bucket(node, "locked", numVBuckets=16, replicaNumber=0, authType="sasl", saslPassword=BUCKET_PASSWORD)
    cluster.wait_bucket("open")
    cluster.wait_bucket("locked")

    pools = anonymous(node, "/pools")
    assert pools.status == 200 and pools.json()["isAdminCreds"] is False, pools.describe()
    assert node.get("/pools").json()["isAdminCreds"] is True
    for path in ["/pools/default", "/pools/default/buckets", "/settings/rbac/users", "/pools/default/tasks"]:
        r = anonymous(node, path)
        assert r.status == 401, r.describe()
        assert r.headers.get("www-authenticate", "").startswith("Basic"), r.describe()
        wrong = rest(node.admin, "GET", path, auth=Credentials(ADMIN.user, "not-it"))
        assert wrong.status == 401, wrong.describe()

    # Configs: an open bucket's for anyone, a locked one's for its own
    # credentials or an admin's.
    open_config = anonymous(node, "/pools/default/buckets/open")
    assert open_config.status == 200, open_config.describe()
    assert open_config.json()["authType"] == "none"
    assert anonymous(node, "/pools/default/buckets/locked").status == 401
    as_bucket = rest(node.admin, "GET", "/pools/default/buckets/locked", auth=Credentials("locked", BUCKET_PASSWORD))
    assert as_bucket.status == 200, as_bucket.describe()
    assert as_bucket.json()["authType"] == "sasl"
    assert BUCKET_PASSWORD not in as_bucket.body.decode(), "the password is never served"
    wrong = rest(node.admin, "GET", "/pools/default/buckets/locked", auth=Credentials("locked", "nope"))
    assert wrong.status == 401, wrong.describe()
    # A bucket's credentials open nothing else.
    other = rest(node.admin, "GET", "/pools/default", auth=Credentials("locked", BUCKET_PASSWORD))
    assert other.status == 403, other.describe()

    # The streams: the open one starts with a config; the locked one asks.
    with socket.create_connection(node.admin, timeout=5) as s:
        s.sendall(b"GET /pools/default/bucketsStreaming/open HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 200"), "the open stream starts"
    with socket.create_connection(node.admin, timeout=5) as s:
        s.sendall(b"GET /pools/default/bucketsStreaming/locked HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 401"), "the locked stream asks for credentials"

    # Changes: refused without credentials, and nothing changes.
    before = node.get("/pools/default/buckets").json()
    for method, path in [("DELETE", "/pools/default/buckets/open"), ("POST", "/controller/addNode"), ("POST", "/settings/autoFailover")]:
        r = anonymous(node, path, method)
        assert r.status == 401, r.describe()
    assert node.get("/pools/default/buckets").json() == before


# --- the data port: the cluster's own commands ---


def raw_call(addr, opcode, key=b"", value=b"", extras=b"", vbucket=0, bucket=None):
    with BinaryConn(addr) as conn:
        if bucket is not None:
            assert select_bucket(conn, bucket).status == STATUS_OK
        return conn.call(opcode, key, value, extras, vbucket)


def test_only_the_cluster_changes_vbuckets_or_streams(harness):
    cluster = harness.cluster(2)
    leader = cluster.leader()
    cluster.create_bucket(leader, "dur", numVBuckets=64, replicaNumber=1, durabilityMinLevel="majority")
    config = cluster.wait_bucket("dur")
    wait_data_ready(cluster.nodes, "dur", config)
    servers = config["vBucketServerMap"]["serverList"]
    vbmap = config["vBucketServerMap"]["vBucketMap"]
    by_addr = {n.addr_str: n for n in cluster.nodes}

    def set_key(key, value):
        vb = vbucket_of(key, len(vbmap))
        _, addr = active_addr(config, key)
        with BinaryConn(addr) as conn:
            assert select_bucket(conn, "dur").status == STATUS_OK
            return conn.call(OP_SET, key, value, store_extras(0), vb)

    def get_key(key):
        vb = vbucket_of(key, len(vbmap))
        return raw_call(active_addr(config, key)[1], OP_GET, key, vbucket=vb, bucket="dur")

    for i in range(50):
        assert set_key(f"k{i}".encode(), b"v%d" % i).status == STATUS_OK

    # Nobody, or a bucket's client, asking for the cluster's commands.
    for node in cluster.nodes:
        for bucket in (None, "dur"):
            refused = [
                raw_call(node.addr, OP_SET_VBUCKET, extras=(4).to_bytes(4, "big"), vbucket=0, bucket=bucket),
                raw_call(node.addr, OP_DEL_VBUCKET, vbucket=0, bucket=bucket),
                raw_call(node.addr, OP_DCP_OPEN, key=b"replica:forged", extras=b"\0\0\0\0\0\0\0\1", bucket=bucket),
                raw_call(node.addr, OP_DCP_SEQNO_ACKNOWLEDGED, extras=(10**6).to_bytes(8, "big"), vbucket=0, bucket=bucket),
            ]
            assert [r.status for r in refused] == [STATUS_NO_ACCESS] * 4, [hex(r.status) for r in refused]

    # Nothing changed: every vbucket keeps its state, every key its value.
    for vb, chain in enumerate(vbmap):
        active = by_addr[servers[chain[0]]]
        state = raw_call(active.addr, OP_GET_VBUCKET, vbucket=vb, bucket="dur")
        assert state.status == STATUS_OK and int.from_bytes(state.value, "big") == 1, f"vb {vb}"
    for i in range(50):
        got = get_key(f"k{i}".encode())
        assert (got.status, got.value) == (STATUS_OK, b"v%d" % i)

    # Replication between the real nodes goes on.
    assert set_key(b"after", b"still replicated").status == STATUS_OK
    vb = vbucket_of(b"after", len(vbmap))
    replica = by_addr[servers[vbmap[vb][1]]]

    def replicated(w):
        w.last = raw_call(replica.addr, OP_GET_REPLICA, b"after", vbucket=vb, bucket="dur")
        return w.last.status == STATUS_OK and w.last.value == b"still replicated"

    poll(Watch(replicated), DEADLINE_S, "the replica to receive a write made after the forged requests")

    # A durable write waits for the real replica: with it stopped, the
    # write is not confirmed; with it back, writes are.
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        assert set_key(b"after", b"needs the replica").status == STATUS_TEMPORARY_FAILURE
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)

    def durable(w):
        w.last = set_key(b"after", b"replica back")
        return w.last.status == STATUS_OK

    poll(Watch(durable), DEADLINE_S, "durable writes once the replica is back")


# --- a bucket with a password, and real clients ---


@pytest.fixture(scope="module")
def locked_default(module_harness):
    """A one-node cluster whose `default` bucket has a password (so a
    client that does not authenticate lands on no bucket)."""
    cluster = module_harness.cluster(1, prefix="locked")
    node = cluster.nodes[0]
    cluster.create_bucket(node, "default", numVBuckets=64, replicaNumber=0, authType="sasl", saslPassword=BUCKET_PASSWORD)
    config = cluster.wait_bucket("default")
    wait_data_ready(cluster.nodes, "default", config, credentials=Credentials("default", BUCKET_PASSWORD))
    return node


def addr_text(node):
    return "%s:%d" % node.addr


def read_as_bucket(node, key):
    """`key` read straight from the node, logged in as the bucket and with
    the key's own vbucket (a one-node cluster: every vbucket active here);
    its value or None."""
    with BinaryConn(node.addr, credentials=Credentials("default", BUCKET_PASSWORD)) as conn:
        got = conn.call(OP_GET, key.encode(), vbucket=vbucket_of(key.encode(), 64))
    assert got.status in (STATUS_OK, 0x01), hex(got.status)
    return got.value if got.status == STATUS_OK else None


def test_legacy_clients_without_credentials_store_nothing(locked_default):
    node = locked_default
    client = PyClient(node.addr, connect_timeout=5, timeout=5)
    with pytest.raises(MemcacheError, match="unauthenticated"):
        client.set("py-key", "value", noreply=False)
    with pytest.raises(MemcacheError, match="unauthenticated"):
        client.get("py-key")
    client.close()
    mc = pylibmc.Client([addr_text(node)])
    with pytest.raises(pylibmc.Error):
        mc.set("lib-key", "value")
    # Logged in as the bucket, nothing is there.
    assert read_as_bucket(node, "py-key") is None
    assert read_as_bucket(node, "lib-key") is None


def test_sasl_plain_with_a_real_binary_client(harness, locked_default):
    """python-binary-memcached knows no vbuckets, so it goes through a
    proxy (holding the bucket's password), which checks the client's own
    SASL PLAIN login against the cluster."""
    node = locked_default
    proxy = harness.proxy("--cluster", node.admin_url, "--bucket", "default", bucket_password=BUCKET_PASSWORD)
    proxy.wait_healthy()
    client = bmemcached.Client([proxy.addr_str], "default", BUCKET_PASSWORD)
    assert client.set("bin-key", "through SASL PLAIN")
    assert client.get("bin-key") == "through SASL PLAIN"
    client.disconnect_all()
    assert read_as_bucket(node, "bin-key") == b"through SASL PLAIN"
    # A wrong password is refused by the cluster, and so by the proxy.
    for user, password in [("default", "not-the-password"), ("someone", BUCKET_PASSWORD)]:
        wrong = bmemcached.Client([proxy.addr_str], user, password)
        with pytest.raises(bmemcached.exceptions.MemcachedException, match="Auth failure") as refused:
            wrong.get("bin-key")
        assert refused.value.code == STATUS_AUTH_ERROR
        wrong.disconnect_all()


def scram_login(addr, mechanism, user, password):
    """A SCRAM exchange driven by scramp; returns (final status, conn)."""
    iana = {"SCRAM-SHA512": "SCRAM-SHA-512", "SCRAM-SHA256": "SCRAM-SHA-256", "SCRAM-SHA1": "SCRAM-SHA-1"}[mechanism]
    client = scramp.ScramClient([iana], user, password)
    conn = BinaryConn(addr)
    first = conn.call(OP_SASL_AUTH, mechanism.encode(), client.get_client_first().encode())
    if first.status != STATUS_AUTH_CONTINUE:
        return first.status, conn
    client.set_server_first(first.value.decode())
    last = conn.call(OP_SASL_STEP, mechanism.encode(), client.get_client_final().encode())
    if last.status == STATUS_OK:
        client.set_server_final(last.value.decode())  # raises if the server's signature is wrong
    return last.status, conn


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA512", "SCRAM-SHA256", "SCRAM-SHA1"])
def test_scram_with_a_real_scram_client(locked_default, mechanism):
    node = locked_default
    status, conn = scram_login(node.addr, mechanism, "default", BUCKET_PASSWORD)
    with conn:
        assert status == STATUS_OK
        key = f"scram-{mechanism}".encode()
        vb = vbucket_of(key, 64)
        assert conn.call(OP_SET, key, b"scram", store_extras(0), vb).status == STATUS_OK
        got = conn.call(OP_GET, key, vbucket=vb)
        assert (got.status, got.value) == (STATUS_OK, b"scram")
    for user, password in [("default", "wrong-password"), ("nobody", BUCKET_PASSWORD)]:
        status, conn = scram_login(node.addr, mechanism, user, password)
        with conn:
            assert status == STATUS_AUTH_ERROR, (user, hex(status))
            got = conn.call(OP_GET, b"scram-SCRAM-SHA512", vbucket=vbucket_of(b"scram-SCRAM-SHA512", 64))
            assert got.status == STATUS_AUTH_ERROR, "still not authenticated"


def test_wrong_passwords_fail_for_plain_too(locked_default):
    node = locked_default
    with BinaryConn(node.addr) as conn:
        for password in ["", "wrong", BUCKET_PASSWORD + " "]:
            assert sasl_plain(conn, "default", password).status == STATUS_AUTH_ERROR, password
        assert select_bucket(conn, "default").status == STATUS_NO_ACCESS
        assert sasl_plain(conn, "default", BUCKET_PASSWORD).status == STATUS_OK


def test_a_proxy_holding_the_password_serves_legacy_clients(harness, locked_default):
    node = locked_default
    proxy = harness.proxy("--cluster", node.admin_url, "--bucket", "default", bucket_password=BUCKET_PASSWORD)
    proxy.wait_healthy()
    client = PyClient(proxy.addr, connect_timeout=5, timeout=5)
    assert client.set("via-proxy", "pymemcache")
    assert client.get("via-proxy") == b"pymemcache"
    mc = pylibmc.Client([proxy.addr_str])
    assert mc.set("via-proxy-lib", "pylibmc")
    assert mc.get("via-proxy-lib") == "pylibmc"
    client.close()
    # Logged in as the bucket, straight to the node: the same data.
    assert read_as_bucket(node, "via-proxy") == b"pymemcache"


def test_a_proxy_with_a_wrong_password_says_so(harness, locked_default, tmp_path):
    node = locked_default
    password_file = tmp_path / "bucket.pw"
    password_file.write_text("not-the-password\n")
    proxy = harness.proxy(
        "--cluster", node.admin_url, "--bucket", "default", "--bucket-password-file", password_file
    )

    def unhealthy(w):
        w.last = proxy.http_get("/health")
        return w.last[0] == 503 and b"credentials" in w.last[1]

    poll(Watch(unhealthy), DEADLINE_S, "the proxy to report refused credentials on /health")
    reply = ascii_call(proxy.addr, b"set k 0 0 1\r\nv\r\n", b"\r\n")
    assert reply == b"SERVER_ERROR the cluster refuses the proxy's bucket credentials\r\n"
    assert read_as_bucket(node, "k") is None, "nothing was stored"


# --- binding ---


def test_the_admin_port_binds_apart_and_no_node_advertises_every_address(harness):
    node = harness.node("apart", "--standalone", "--admin-host", "127.0.0.2").start()
    assert node.addr[0] == "127.0.0.1" and node.admin[0] == "127.0.0.2", (node.addr, node.admin)
    config = rest(node.admin, "GET", "/pools/default/buckets/default", auth=None).json()
    assert config["vBucketServerMap"]["serverList"] == [node.addr_str]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.admin[1]), timeout=2).close()
    everywhere = harness.add(ShoalNode("everywhere", "--standalone", "--host", "0.0.0.0"))
    everywhere.launch()
    assert everywhere.proc.wait(timeout=30) != 0
    assert "--advertise" in everywhere.stderr_text()


# --- shoal up ---


def test_shoal_up_makes_prints_and_keeps_the_credentials(harness):
    up = harness.up(credentials=None).start()
    creds = up.credentials
    assert creds.user == "Administrator" and len(creds.password) >= 20
    path = os.path.join(up.dir, "credentials")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    node_admin = up.node_admin(0)
    assert rest(node_admin, "GET", "/pools/default", auth=None).status == 401
    assert rest(node_admin, "GET", "/pools/default", auth=creds).status == 200
    # Memcached clients need nothing, and `flush_all` works on `default`.
    client = PyClient(up.proxy, connect_timeout=5, timeout=5)
    assert client.set("up-key", "v")
    assert client.flush_all()
    assert client.get("up-key") is None
    client.close()
    # No password on any child's command line, none in any log; only the
    # nodes have it in their environment.
    children = [pid for pid in os.listdir("/proc") if pid.isdigit() and parent_of(int(pid)) == up.proc.pid]
    assert len(children) >= 4, children
    secret = creds.password.encode()
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        assert secret not in cmdline, cmdline
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        if b"proxy" in cmdline.split(b"\0")[1:2]:
            assert secret not in environ, "the proxy needs no admin password"
    for name in os.listdir(up.dir):
        full = os.path.join(up.dir, name)
        if name.endswith(".log"):
            with open(full, "rb") as f:
                assert secret not in f.read(), f"password in {name}"


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
