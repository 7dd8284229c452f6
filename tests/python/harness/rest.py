"""Speaking HTTP to a node's or a proxy's admin port.

- `rest()`: one request on a fresh connection, with the harness's admin
  credentials (HTTP Basic) unless told otherwise (`auth`: other
  `Credentials`, None for none, or a raw `Authorization` value); the
  `Reply` it returns describes itself (request, who sent it, response) for
  failure messages.
- `error_message()`: the message of a JSON `{"error": ...}` body.
- `node_id_of()`: the Raft id in an `otpNode` name.
- `ConfigStream`: a raw reader of a streaming config path
  (`/pools/default/bucketsStreaming/<bucket>`), document by document.

Who may call what (node/src/admin/routes.rs): `/pools`,
`/internal/nodeInfo` and the config (and stream) of a bucket without a
password are open to anyone; other reads need an admin user, changes a
full admin, and the other `/internal/*` paths the cluster itself
(`harness.credentials.cluster_credentials`).
"""

import http.client
import json
import socket
import time
import urllib.parse
from typing import NamedTuple

import pytest

from .credentials import ADMIN, Credentials, basic_authorization

# A REST request: a change needs a Raft commit, so allow a slow one; only
# a hang takes longer.
HTTP_TIMEOUT_S = 30.0
# A config stream read: only a hang takes longer.
STREAM_TIMEOUT_S = 10.0

# Between two documents of a config stream (a bare one is a keep-alive).
STREAM_SEPARATOR = b"\n\n\n\n"


class Reply(NamedTuple):
    method: str
    url: str
    sent: bytes
    status: int
    headers: dict
    body: bytes
    # Who sent it: a user name, "no credentials" or "raw Authorization".
    who: str

    def json(self):
        return json.loads(self.body)

    def describe(self):
        sent = f" body {self.sent[:300]!r}" if self.sent else ""
        return f"{self.method} {self.url} as {self.who}{sent} -> HTTP {self.status} {self.body[:600]!r}"


def authorization(auth):
    """(headers, who) for `auth`: `Credentials` (HTTP Basic), None (no
    header), or a str sent as the `Authorization` value itself (malformed
    credentials)."""
    if auth is None:
        return {}, "no credentials"
    if isinstance(auth, Credentials):
        return {"Authorization": basic_authorization(auth)}, auth.user
    assert isinstance(auth, str), f"auth must be Credentials, None or a str, not {auth!r}"
    return {"Authorization": auth}, "raw Authorization"


def rest(addr, method, path, form=None, body=None, content_type=None, timeout=HTTP_TIMEOUT_S, auth=ADMIN):
    """One request on a fresh connection, as `auth` (see `authorization`;
    the harness's admin by default). `form` (a dict) is sent form-encoded;
    `body` as is. Raises OSError if the server cannot be reached."""
    credentials, who = authorization(auth)
    headers = {"Connection": "close", **credentials}
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
                     {k.lower(): v for k, v in response.getheaders()}, data, who)  # fmt: skip
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


class ConfigStream:
    """`GET` of a streaming config path, read as it arrives; as `auth`
    (see `authorization`; the harness's admin by default)."""

    def __init__(self, addr, path, auth=ADMIN):
        self.conn = http.client.HTTPConnection(*addr, timeout=STREAM_TIMEOUT_S)
        self.conn.request("GET", path, headers=authorization(auth)[0])
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
