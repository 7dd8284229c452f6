"""Speaking to a node, a proxy or memcached on the data port.

- The binary protocol: the header, opcodes, statuses and vbucket states the
  tests use, `encode_request`, `read_response` (a `Response`),
  `BinaryConn` (one blocking connection, optionally logged in and on a
  selected bucket), `vbucket_of` (libvbucket's key → vbucket rule).
- Logging in (SASL PLAIN): `sasl_plain` (any user, a bucket's name or
  `@cluster`; the answer), `login` (a failure unless it succeeds). Only
  a connection logged in as the cluster (`ShoalNode.cluster_credentials`)
  may send SET_VBUCKET, DEL_VBUCKET or DCP: anyone else gets NO_ACCESS.
- Node data-port helpers carrying the vbucket id: `select_bucket`,
  `direct_get`, `direct_set`, `node_stats` (binary STAT of a bucket),
  `pipelined` (many requests in one write, replies matched by opaque).
- ASCII: `ascii_call` (one request on a fresh connection, read up to a
  terminator), `parse_stats`.
- `addr_of`: "host:port" → (host, port).
"""

import socket
import struct
import zlib
from typing import NamedTuple

from .credentials import Credentials

# A direct request to a node or memcached: only a hang takes longer.
SOCKET_TIMEOUT_S = 10.0
# A client request through the proxy: the proxy retries NOT_MY_VBUCKET and
# holds requests for a node that is down ~2 s; well past both only a hang.
CLIENT_TIMEOUT_S = 15.0

# === binary protocol ===

HEADER = struct.Struct(">BBHBBHIIQ")
REQUEST_MAGIC = 0x80
RESPONSE_MAGIC = 0x81

OP_GET = 0x00
OP_SET = 0x01
OP_ADD = 0x02
OP_DELETE = 0x04
OP_NOOP = 0x0A
OP_GETK = 0x0C
OP_GETKQ = 0x0D
OP_APPEND = 0x0E
OP_STAT = 0x10
OP_TOUCH = 0x1C
OP_SASL_LIST_MECHS = 0x20
OP_SASL_AUTH = 0x21
OP_SET_VBUCKET = 0x3D
OP_GET_VBUCKET = 0x3E
OP_GET_REPLICA = 0x83
OP_SELECT_BUCKET = 0x89

STATUS_OK = 0x00
STATUS_KEY_NOT_FOUND = 0x01
STATUS_NOT_MY_VBUCKET = 0x07
STATUS_AUTH_ERROR = 0x20
STATUS_NO_ACCESS = 0x24
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
    """One blocking binary connection (request, then its reply): logged in
    as `credentials` (SASL PLAIN), then on `bucket` (SELECT_BUCKET), each
    first if given and a failure if the node refuses."""

    def __init__(self, addr, timeout=SOCKET_TIMEOUT_S, bucket=None, credentials=None):
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if credentials is not None:
                login(self, credentials)
            if bucket is not None:
                r = select_bucket(self, bucket)
                assert r.status == STATUS_OK, f"SELECT_BUCKET {bucket} on {addr}: status {r.status:#x} {r.value!r}"
        except BaseException:
            self.close()
            raise

    def call(self, opcode, key=b"", value=b"", extras=b"", vbucket=0, opaque=0, cas=0):
        self.sock.sendall(encode_request(opcode, key, value, extras, vbucket, opaque, cas))
        return read_response(self.sock)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# === a node's data port ===


def select_bucket(conn, bucket):
    return conn.call(OP_SELECT_BUCKET, key=bucket.encode())


def sasl_plain(conn, user, password=""):
    """SASL_AUTH PLAIN as `user` (a bucket's name, an admin user or
    `@cluster`) with `password` (a bucket without one needs the empty
    password); the `Response`."""
    message = b"\0" + user.encode() + b"\0" + password.encode()
    return conn.call(OP_SASL_AUTH, key=b"PLAIN", value=message)


def login(conn, credentials):
    """SASL PLAIN as `credentials`; a failure unless the node accepts."""
    assert isinstance(credentials, Credentials), f"credentials must be Credentials, not {credentials!r}"
    r = sasl_plain(conn, credentials.user, credentials.password)
    assert r.status == STATUS_OK, f"SASL PLAIN as {credentials.user} on {conn.addr}: status {r.status:#x} {r.value!r}"
    return r


def direct_get(addr, key, vbucket, bucket=None):
    """A binary GET straight to a node's data port with the vbucket id in
    the header (on `bucket`, selected first, if given)."""
    with BinaryConn(addr, bucket=bucket) as conn:
        return conn.call(OP_GET, key=key, vbucket=vbucket)


def direct_set(addr, key, value, vbucket, bucket=None):
    with BinaryConn(addr, bucket=bucket) as conn:
        return conn.call(OP_SET, key=key, value=value, extras=store_extras(), vbucket=vbucket)


def node_stats(addr, group, bucket, credentials=None):
    """`stats <group>` of `bucket` on a node's data port (binary STAT after
    SELECT_BUCKET, logged in as `credentials` if given): {name: value} as
    strings."""
    with BinaryConn(addr, bucket=bucket, credentials=credentials) as conn:
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
    with BinaryConn(addr, timeout=CLIENT_TIMEOUT_S, bucket=bucket) as conn:
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


# === ASCII ===


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
    """`STAT name value` lines → {name: value}."""
    stats = {}
    for line in reply.decode(errors="replace").split("\r\n"):
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            stats[parts[1]] = parts[2]
    return stats


def addr_of(text):
    """"host:port" → (host, port)."""
    host, _, port = text.strip().rpartition(":")
    return (host, int(port))
