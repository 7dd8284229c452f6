"""The harness of the Python end-to-end tests: real Shoal, memcached and
proxy processes on loopback, and the helpers tests drive them with.
`conftest.py` holds the fixtures; the tests import what they use from the
modules below.

- `harness` (this file): `Harness`, which owns every process and config
  server a test (or module) starts, stops and cleans them up, and gives
  their logs to a failing test's report (`report_sections`); `figure()`
  prints a measured figure (run pytest with `-s` to see them).
- `harness.credentials`: who the harness is — `ADMIN`, the admin user of
  every cluster it forms (in the nodes' environment), `Credentials`,
  `CLUSTER_USER` and a node's cluster secret, `shoal up`'s credentials
  file, a child's environment.
- `harness.process`: the processes — `Child` (the base), `Memcached`,
  `ShoalNode` (standalone, bare, or in a cluster; its cluster secret),
  `ShoalProxy`, `ShoalUp` (and the credentials it printed) — and
  `shoal_binary`, `free_port`, `consecutive_ports`.
- `harness.wire`: the binary protocol (encode, decode, `BinaryConn`),
  SASL PLAIN logins, node data-port helpers carrying vbucket ids (bucket
  selection, direct get/set, STAT, pipelines), ASCII requests, `addr_of`.
- `harness.rest`: `rest()` (as the harness's admin unless told
  otherwise) and its self-describing `Reply`, error bodies, otpNode ids,
  `ConfigStream` (a streaming config reader).
- `harness.configserver`: the cluster manager's part played by the test
  for the proxy's tests — `ConfigServer`, `bucket_config`, `ManualCluster`.
- `harness.cluster`: `Cluster` (nodes formed by Shoal's own cluster
  manager) and the waits and REST helpers of the cluster, rebalance and
  replication tests.
- `harness.load`: `MixedLoad` and `read_back` (client load through a proxy).
- `harness.poll`: `poll` and `Watch`.

Conventions: everything binds loopback, on ports the OS chose wherever the
program allows it (see `harness.process` for the exceptions); readiness and
every other condition are polled, and deadlines bound hangs — they are
never waits (STYLE.md rule 25); a missing binary or tool fails the test,
since a suite that skips itself proves nothing.
"""

from .cluster import Cluster
from .configserver import ConfigServer, ManualCluster
from .credentials import ADMIN
from .process import Child, Memcached, ShoalNode, ShoalProxy, ShoalUp


class Harness:
    """Every process and config server one test (or module) started;
    `close()` (or leaving a `with` block) stops them all and removes
    their files."""

    def __init__(self):
        self.children = []
        self.config_servers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, child):
        self.children.append(child)
        return child

    def node(self, name, *args, credentials=ADMIN):
        """A `shoal node` (not started: `start(*flags)` it); `args` go on
        every start, `credentials` (the admin it forms or joins a cluster
        with; None for none) in its environment."""
        return self.add(ShoalNode(name, *args, credentials=credentials))

    def proxy(self, *args, name="shoal-proxy", bucket_password=None):
        """A started `shoal proxy *args` (with its bucket's password in
        its environment, if given)."""
        return self.add(ShoalProxy(*args, name=name, bucket_password=bucket_password)).start()

    def memcached(self, name="memcached", *args):
        """A started memcached; `args` are more of its options."""
        return self.add(Memcached(name, *args)).start()

    def up(self, **kw):
        """A `shoal up` (not started; `ShoalUp` for the options)."""
        return self.add(ShoalUp(**kw))

    def config_server(self):
        server = ConfigServer()
        self.config_servers.append(server)
        return server

    def cluster(self, size, prefix="node", args=()):
        """`size` nodes formed into a cluster by Shoal's cluster manager
        (`args` on every node's command line)."""
        return Cluster(self, size, prefix, args)

    def manual_cluster(self, nodes=3, vbuckets=64):
        """Bare nodes whose vbucket map the test sets and publishes."""
        return ManualCluster(self, nodes, vbuckets)

    def close(self):
        for child in self.children:
            child.stop()
        for server in self.config_servers:
            server.close()
        for child in self.children:
            child.cleanup()


def report_sections(values):
    """(title, text) of the logs of every process in `values` (a test's
    fixture values): processes themselves, harnesses, and anything with a
    `harness` attribute; each process once."""
    children = {}
    for value in values:
        value = getattr(value, "harness", value)
        if isinstance(value, Harness):
            for child in value.children:
                children.setdefault(id(child), child)
        elif isinstance(value, Child):
            children.setdefault(id(value), value)
    for child in children.values():
        yield from child.report_sections()


def figure(text):
    """Prints a measured figure (election time, keep-alive gap…) for the
    reader of a `-s` run; never an assertion."""
    print(f"[figure] {text}")
