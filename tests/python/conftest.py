"""Fixtures of the Python end-to-end tests (the harness they use is the
`harness` package beside this file).

- `memcached_server`, `shoal_node` (module-scoped; tests in a module share
  one server and use their own keys): Debian's memcached 1.6.18, the
  reference the differential tests compare against, and `shoal node
  --standalone`; both refuse values above 1 MiB. A crash at shutdown fails
  the module's last test.
- `shoal_cluster`, `vbucket_proxy`, `ketama_proxy` (module-scoped): three
  nodes formed into a cluster, refusing values above 1 MiB too, with a
  couchbase bucket `default` and a memcached bucket `mc`, and a `shoal
  proxy` in front of each (vbucket mode for `default`, ketama mode for
  `mc`): the same memcached-compatible store, reached through a proxy.
- `harness`, `module_harness`: a `Harness` that stops everything the test
  (or module) started.
- The report hook: a failing test's report gets the logs of every process
  its fixtures started.
"""

import signal
from types import SimpleNamespace

import pytest

# Assertions in the harness get pytest's rewriting too (registered before
# anything imports it).
pytest.register_assert_rewrite("harness")

from harness import Harness, report_sections  # noqa: E402
from harness.cluster import wait_data_ready  # noqa: E402

# Both servers refuse values above 1 MiB, so "too large" means the same on
# each side of the differential test.
MAX_VALUE_BYTES = 1024 * 1024


def serve(start):
    """The one server `start(harness)` starts, for a module; a graceful stop
    on SIGTERM is part of the contract (DESIGN.md: graceful drain)."""
    with Harness() as h:
        server = start(h)
        yield server
        code = server.stop()
        # -9: it did not exit in time and was killed.
        assert code in (0, -signal.SIGTERM), f"{server.name} exited with {code} on SIGTERM; stderr:\n{server.stderr_text()}"


@pytest.fixture(scope="module")
def memcached_server():
    """A running memcached: `.addr` is its (host, port)."""
    yield from serve(lambda h: h.memcached("memcached", "-I", f"{MAX_VALUE_BYTES // 1024}k"))


@pytest.fixture(scope="module")
def shoal_node():
    """A running, warmed-up standalone node: `.addr` is its data (host, port)."""
    yield from serve(
        lambda h: h.node("shoal-node", "--standalone", "--max-value-bytes", MAX_VALUE_BYTES).start().wait_warm()
    )


# The cluster's buckets: `default` (couchbase: a vbucket map) and a
# memcached bucket (a ketama ring over the nodes). Few vbuckets: the map's
# size changes nothing a client sees, and a small one is ready sooner.
CLUSTER_VBUCKETS = 64
KETAMA_BUCKET = "mc"


def stop_gracefully(children):
    """Stops each child with SIGTERM, in order; a crash at shutdown fails."""
    codes = {child.name: child.stop() for child in children}
    bad = {name: code for name, code in codes.items() if code not in (0, -signal.SIGTERM)}
    assert not bad, "exited badly on SIGTERM: " + "; ".join(
        f"{child.name} {bad[child.name]}: {child.stderr_text()[-2000:]}" for child in children if child.name in bad
    )


@pytest.fixture(scope="module")
def shoal_cluster():
    """Three nodes formed into a cluster, each refusing values above 1 MiB,
    serving bucket `default` (couchbase, one replica) and bucket `mc`
    (memcached type), both with flush enabled: memcached always obeys
    `flush_all`, and so must the store the proxies stand in for.
    `.harness` owns the nodes and the proxies started on it, so a failing
    test's report has all their logs."""
    with Harness() as h:
        cluster = h.cluster(3, prefix="diff", args=("--max-value-bytes", MAX_VALUE_BYTES))
        first = cluster.nodes[0]
        cluster.create_bucket(first, "default", numVBuckets=CLUSTER_VBUCKETS, replicaNumber=1, flushEnabled=1)
        cluster.create_bucket(first, KETAMA_BUCKET, bucketType="memcached", ramQuotaMB=16, flushEnabled=1)
        for bucket in ("default", KETAMA_BUCKET):
            wait_data_ready(cluster.nodes, bucket, cluster.wait_bucket(bucket))
        shared = SimpleNamespace(cluster=cluster, harness=h, proxies=[],
                                 urls=",".join(n.admin_url for n in cluster.nodes))  # fmt: skip
        yield shared
        stop_gracefully(shared.proxies + cluster.nodes)


def cluster_proxy(shared, bucket, name):
    """A healthy `shoal proxy` for `bucket`, started on the cluster's
    harness, refusing what the nodes' `--max-value-bytes` (and memcached's
    `-I 1024k`) refuse, before it crosses the network."""
    proxy = shared.harness.proxy(
        "--cluster", shared.urls, "--bucket", bucket, "--max-value-bytes", MAX_VALUE_BYTES, name=name
    ).wait_healthy()
    shared.proxies.append(proxy)
    return SimpleNamespace(addr=proxy.addr, name=name, harness=shared.harness)


@pytest.fixture(scope="module")
def vbucket_proxy(shoal_cluster):
    """A proxy in vbucket mode for the cluster's bucket `default`."""
    return cluster_proxy(shoal_cluster, "default", "proxy-vbucket")


@pytest.fixture(scope="module")
def ketama_proxy(shoal_cluster):
    """A proxy in ketama mode: the cluster's memcached bucket `mc`."""
    return cluster_proxy(shoal_cluster, KETAMA_BUCKET, "proxy-ketama")


@pytest.fixture(scope="module")
def static_proxy():
    """A proxy in static ketama mode (twemproxy's job) over three
    memcached, each with memcached's `-I 1024k` like the reference."""
    with Harness() as h:
        servers = [h.memcached(f"memcached-ring-{i}", "-I", f"{MAX_VALUE_BYTES // 1024}k") for i in range(3)]
        spec = ",".join(s.addr_str for s in servers)
        proxy = h.proxy("--servers", spec, "--max-value-bytes", MAX_VALUE_BYTES, name="proxy-static").wait_healthy()
        yield SimpleNamespace(addr=proxy.addr, name="proxy-static", harness=h)
        stop_gracefully([proxy, *servers])


@pytest.fixture
def harness():
    with Harness() as h:
        yield h


@pytest.fixture(scope="module")
def module_harness():
    with Harness() as h:
        yield h


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.extend(report_sections(getattr(item, "funcargs", {}).values()))
