"""A stand-in for a cluster's REST port, for `shoal proxy --cluster`.

Usage: config_server.py BUCKET DATA_ADDR [DATA_ADDR ...] [--vbuckets N]

Serves one vbucket bucket config naming the given data servers (host:port),
with the vbuckets dealt round-robin over them (vbucket v on server
v % servers; with one server every vbucket is on it) and no replicas:

  GET /pools/default/bucketsStreaming/BUCKET  the config, then "\\n\\n\\n\\n",
                                              then a bare "\\n\\n\\n\\n"
                                              keep-alive every 2 s, chunked,
                                              until the client hangs up
  GET /pools/default/buckets/BUCKET           the config once

Every node entry's `hostname` is this server's own address, so a proxy
that fails over between the nodes it learns comes back here. Binds
127.0.0.1 on a port from the OS and prints `http 127.0.0.1:PORT` on stdout
once it accepts connections. Exists because the shoal node does not serve
REST yet; the benchmark only needs the map, not a real cluster manager.

Standard library only.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEEPALIVE_SECS = 2.0
SEPARATOR = b"\n\n\n\n"


def bucket_config(bucket, admin, data_addrs, vbuckets):
    nodes = []
    for addr in data_addrs:
        _, port = addr.rsplit(":", 1)
        nodes.append({"hostname": admin, "ports": {"direct": int(port)}, "status": "healthy"})
    return {
        "rev": 1,
        "name": bucket,
        "bucketType": "membase",
        "nodeLocator": "vbucket",
        "nodes": nodes,
        "vBucketServerMap": {
            "hashAlgorithm": "CRC",
            "numReplicas": 0,
            "serverList": list(data_addrs),
            "vBucketMap": [[v % len(data_addrs)] for v in range(vbuckets)],
        },
    }


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bucket")
    parser.add_argument("data", nargs="+", metavar="DATA_ADDR")
    parser.add_argument("--vbuckets", type=int, default=1024)
    args = parser.parse_args(argv[1:])
    if args.vbuckets <= 0 or args.vbuckets & (args.vbuckets - 1):
        parser.error("--vbuckets must be a power of two")

    document = {}
    stream_path = f"/pools/default/bucketsStreaming/{args.bucket}"
    fetch_path = f"/pools/default/buckets/{args.bucket}"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *fmt_args):  # quiet: one line per request
            sys.stderr.write("config_server: " + (fmt % fmt_args) + "\n")

        def do_GET(self):
            body = document["bytes"]
            if self.path == fetch_path:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == stream_path:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self.chunk(body + SEPARATOR)
                    while True:
                        time.sleep(KEEPALIVE_SECS)
                        self.chunk(SEPARATOR)
                except OSError:
                    return  # the proxy went away
            else:
                self.send_error(404)

        def chunk(self, data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    host, port = server.server_address
    admin = f"{host}:{port}"
    document["bytes"] = json.dumps(
        bucket_config(args.bucket, admin, args.data, args.vbuckets)
    ).encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"http {admin}", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
