"""The cluster manager's part, played by the test: for the proxy's tests,
which decide exactly when the map changes relative to the nodes' vbucket
states.

- `ConfigServer`: a threaded HTTP server answering the REST paths a proxy
  uses: it streams `/pools/default/bucketsStreaming/default` (chunked; the
  current config, then every config `publish`ed, separated by
  "\\n\\n\\n\\n", with bare separators as keep-alives) and answers the
  one-shot `/pools/default/buckets/default`.
- `bucket_config()`: a Couchbase bucket config for given servers and map.
- `ManualCluster`: bare nodes (`shoal node --vbuckets N`, every vbucket
  dead until the test sets its state with SET_VBUCKET, which only the
  cluster may send: `ShoalNode.set_vbucket` logs in with the node's
  cluster secret), a config server, and the vbucket → node map the test
  owns, `publish()`ed as a bucket config. The nodes' `default` bucket has
  no password, so the proxy needs none, for the config or the nodes.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .rest import STREAM_SEPARATOR
from .wire import VB_ACTIVE, vbucket_of

BUCKET = "default"

# The proxy abandons a stream silent for 10 s; Shoal nodes send a keep-alive
# at least every 5 s. The config server sends one every second so a test
# never runs near that edge.
KEEPALIVE_S = 1.0


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


class ManualCluster:
    """Bare nodes, a config server, and the vbucket → node map the test
    owns."""

    def __init__(self, harness, nodes, vbuckets):
        self.vbuckets = vbuckets
        self.config_server = harness.config_server()
        self.nodes = [harness.node(f"shoal-node-{i}", "--vbuckets", vbuckets).launch() for i in range(nodes)]
        for node in self.nodes:
            node.wait_listening().wait_warm()
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
        return self.node_of(key).binary_get(self.vbucket_of(key), key)

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
