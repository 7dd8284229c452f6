"""TLS, as a user of `shoal up --tls` meets it: the CA `up` prints is all
a client needs. pymemcache with an `ssl` context stores and reads through
the proxy's and a node's TLS data ports, curl reads the REST API over
HTTPS with that CA (and refuses the server without it), and plaintext to
any TLS port gets no memcached or HTTP answer — only a closed connection,
counted as a failed handshake."""

import json
import os
import socket
import ssl
import stat
import struct
import subprocess

import pytest
from pymemcache.client.base import Client as PyClient

from harness.cluster import active_addr
from harness.poll import poll
from harness.rest import rest
from harness.wire import (
    OP_GET_VBUCKET,
    OP_SET_VBUCKET,
    STATUS_NO_ACCESS,
    STATUS_OK,
    VB_DEAD,
    ascii_call,
    encode_request,
    parse_stats,
    read_response,
)

TIMEOUT_S = 5


@pytest.fixture(scope="module")
def up(module_harness):
    return module_harness.up(nodes=2, vbuckets=64, tls=True).start()


def tls_context(up):
    return ssl.create_default_context(cafile=up.ca)


def general_stats(addr):
    reply = ascii_call(addr, b"stats\r\n", b"END\r\n")
    assert reply is not None, f"stats on {addr}: no reply"
    return parse_stats(reply)


def test_up_keeps_the_ca_and_a_private_key(up):
    tls_dir = os.path.join(up.dir, "tls")
    assert os.path.samefile(up.ca, os.path.join(tls_dir, "ca.pem"))
    for key in ("ca-key.pem", "node-key.pem"):
        assert stat.S_IMODE(os.stat(os.path.join(tls_dir, key)).st_mode) == 0o600, key


@pytest.mark.parametrize("port", ["proxy", "node"])
def test_pymemcache_over_tls(up, port):
    addr = up.proxy_tls if port == "proxy" else up.node_tls(0)
    # A node serves the keys whose vbucket is active on it.
    key = f"tls-{port}" if port == "proxy" else key_active_on(up, 0)
    client = PyClient(addr, tls_context=tls_context(up), connect_timeout=TIMEOUT_S, timeout=TIMEOUT_S)
    assert client.set(key, b"secret value")
    assert client.get(key) == b"secret value"
    if port == "proxy":
        assert client.get_many([key, "tls-missing"]) == {key: b"secret value"}
    client.close()
    # The same value over plaintext through the proxy: one store, every port.
    plain = PyClient(up.proxy, connect_timeout=TIMEOUT_S, timeout=TIMEOUT_S)
    assert plain.get(key) == b"secret value"
    plain.close()


def key_active_on(up, i):
    r = rest(up.node_admin(i), "GET", "/pools/default/buckets/default", auth=up.credentials)
    assert r.status == 200, r.describe()
    config = json.loads(r.body)
    for n in range(1000):
        key = f"tls-node-{n}"
        if active_addr(config, key)[1] == up.node_data(i):
            return key
    raise AssertionError(f"no key of 1000 is active on node {i}")


def test_the_tls_data_port_guards_what_the_plain_one_does(up):
    # Without the cluster's credentials, vbucket commands are refused over
    # TLS exactly as in plaintext, and the vbucket stays as it was.
    with socket.create_connection(up.node_tls(0), timeout=TIMEOUT_S) as raw:
        with tls_context(up).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(encode_request(OP_SET_VBUCKET, extras=struct.pack(">I", VB_DEAD), vbucket=0))
            assert read_response(sock).status == STATUS_NO_ACCESS
            sock.sendall(encode_request(OP_GET_VBUCKET, vbucket=0))
            reply = read_response(sock)
            assert reply.status == STATUS_OK, reply
            assert struct.unpack(">I", reply.value[:4])[0] != VB_DEAD


def test_a_client_that_does_not_trust_the_ca_is_refused(up):
    untrusting = ssl.create_default_context()
    client = PyClient(up.proxy_tls, tls_context=untrusting, connect_timeout=TIMEOUT_S, timeout=TIMEOUT_S)
    with pytest.raises(ssl.SSLCertVerificationError):
        client.get("anything")
    client.close()


def plaintext_answer(addr, request):
    """What a TLS port answers a plaintext request with: the bytes read
    until it closes the connection."""
    with socket.create_connection(addr, timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        got = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk


@pytest.mark.parametrize("port", ["proxy", "node"])
def test_plaintext_to_a_tls_data_port_is_refused(up, port):
    tls_addr, plain_addr = (up.proxy_tls, up.proxy) if port == "proxy" else (up.node_tls(0), up.node_data(0))
    counter = "proxy_tls_handshake_failures" if port == "proxy" else "tls_handshake_failures"

    def failures():
        stats = general_stats(plain_addr) if port == "node" else proxy_stats(up)
        return int(stats[counter])

    before = failures()
    answer = plaintext_answer(tls_addr, b"set k 0 0 1\r\nx\r\nget k\r\nversion\r\n")
    # At most a TLS alert record (type 21), never a memcached reply.
    assert b"STORED" not in answer and b"VERSION" not in answer and b"ERROR" not in answer, answer
    assert answer == b"" or answer[0] == 0x15, answer
    poll(lambda: failures() > before, TIMEOUT_S, f"{port} to count the failed handshake")


def proxy_stats(up):
    reply = ascii_call(up.proxy, b"stats proxy\r\n", b"END\r\n")
    assert reply is not None, "stats proxy: no reply"
    return parse_stats(reply)


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT_S), *args], capture_output=True, text=True)


def test_curl_over_https_with_the_printed_ca(up):
    host, port = up.node_https(0)
    url = f"https://{host}:{port}/pools/default"
    creds = f"{up.credentials.user}:{up.credentials.password}"
    ok = curl("--cacert", up.ca, "-u", creds, "-o", "/dev/null", "-w", "%{http_code}", url)
    assert ok.returncode == 0 and ok.stdout == "200", (ok.stdout, ok.stderr)
    # Credentials are still needed over HTTPS.
    anonymous = curl("--cacert", up.ca, "-o", "/dev/null", "-w", "%{http_code}", url)
    assert anonymous.stdout == "401", (anonymous.stdout, anonymous.stderr)
    # Without the CA curl refuses the certificate (exit 60).
    untrusted = curl("-u", creds, url)
    assert untrusted.returncode == 60, (untrusted.returncode, untrusted.stderr)
    # Plain HTTP to the HTTPS port gets no HTTP answer: at most a TLS
    # alert, which curl takes for garbage.
    plain = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{host}:{port}/pools")
    assert plain.returncode != 0 and plain.stdout == "000", (plain.returncode, plain.stdout, plain.stderr)
    answer = plaintext_answer((host, port), b"GET /pools HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"HTTP/" not in answer and (answer == b"" or answer[0] == 0x15), answer


def established_peers(pid):
    """(remote host, remote port) of every established TCP connection the
    process `pid` holds (from /proc: its socket inodes, then the kernel's
    TCP tables)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    peers = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes:
                host_hex, port_hex = remote.split(":")
                host = socket.inet_ntoa(bytes.fromhex(host_hex)[::-1])
                peers.append((host, int(port_hex, 16)))
    return peers


def test_nodes_and_proxy_talk_to_each_other_over_tls_only(up):
    # A write through the proxy (to a node) replicates (to the other).
    client = PyClient(up.proxy, connect_timeout=TIMEOUT_S, timeout=TIMEOUT_S)
    assert client.set("tls-replicated", b"copied")
    client.close()
    plain_ports = {p for i in range(up.nodes) for p in (up.node_data(i)[1], up.node_admin(i)[1])}
    tls_data_ports = {up.node_tls(i)[1] for i in range(up.nodes)}
    pids = up.child_pids()
    (proxy_pid,) = up.child_pids(b"proxy")
    assert len(pids) == up.nodes, pids

    def connections(of):
        return [peer for pid in of for peer in established_peers(pid)]

    # Each node streams its replicas from the other's TLS data port; the
    # proxy sends requests to the nodes' TLS data ports.
    poll(
        lambda: sum(port in tls_data_ports for _, port in connections(pids)) >= up.nodes,
        TIMEOUT_S,
        "replication streams to the nodes' TLS data ports",
    )
    assert any(port in tls_data_ports for _, port in connections([proxy_pid]))
    to_plain = [peer for peer in connections(pids + [proxy_pid]) if peer[1] in plain_ports]
    assert to_plain == [], f"plaintext connections between nodes and proxy: {to_plain}"
