"""A cluster of `shoal node` processes formed by its own cluster manager
(Raft), and the REST and data-port waits the cluster tests share.

- `Cluster`: nodes formed into one cluster (the first initialises it, the
  others join it), with who leads, bucket creation and deletion, and the
  waits until every node serves the same config.
- `summarize()`: a short form of /pools/default for failure messages.
- `wait_data_ready()`: every node's data port serving a bucket as mapped;
  `active_addr()`: where the map puts a key.
- Rebalance: `otp_nodes`, `memberships`, `start_rebalance`,
  `rebalance_progress`, `rebalance_task`, `wait_replicas_caught_up`.
- A proxy following the cluster: `proxy_rev`, `wait_proxy_rev`.
"""

import json
import struct
import time

from .poll import Watch, poll
from .rest import node_id_of
from .wire import OP_GET_VBUCKET, STATUS_OK, VB_ACTIVE, BinaryConn, addr_of, node_stats, select_bucket, vbucket_of

# Forming a cluster: elections (1.5-3 s timeouts), joins retried every 0.5 s.
FORM_DEADLINE_S = 60.0
# A metadata change reaching every node's applied state.
CONVERGE_DEADLINE_S = 20.0


class Cluster:
    """`size` nodes: the first starts the cluster, the others join it, all
    with the harness's admin user (`harness.credentials.ADMIN`, in their
    environment), which is the cluster's first admin and what the REST
    helpers send. `args` go on every node's command line."""

    def __init__(self, harness, size, prefix="node", args=()):
        self.harness = harness
        self.nodes = [harness.node(f"{prefix}-{i}", *args) for i in range(size)]
        first = self.nodes[0].start("--init-cluster")
        for node in self.nodes[1:]:
            node.start("--join", first.admin_url)
        self.wait_formed(self.nodes)

    # --- views ---

    def views(self, nodes=None):
        """{node name: /pools/default} of every node in `nodes` that
        answers."""
        out = {}
        for node in nodes or self.nodes:
            view = node.try_pools()
            if view is not None:
                out[node.name] = view
        return out

    def wait_formed(self, members, listed=None, deadline_s=FORM_DEADLINE_S):
        """Waits until every node of `members` lists exactly the nodes of
        `listed` (default: `members`), all active and healthy, exactly one
        of them the leader, and every one names the same `raftLeader`;
        returns {node name: view}."""
        listed = listed or members
        want = sorted(n.hostname for n in listed)

        def formed(w):
            views = self.views(members)
            w.last = {name: summarize(v) for name, v in views.items()}
            if len(views) != len(members):
                return None
            leaders = set()
            for view in views.values():
                nodes = view["nodes"]
                if sorted(n["hostname"] for n in nodes) != want:
                    return None
                if any(n["clusterMembership"] != "active" or n["status"] != "healthy" for n in nodes):
                    return None
                roles = [n for n in nodes if n["raftRole"] == "leader"]
                if len(roles) != 1 or view["raftLeader"] is None:
                    return None
                if node_id_of(roles[0]["otpNode"]) != view["raftLeader"]:
                    return None
                leaders.add(view["raftLeader"])
            return views if len(leaders) == 1 else None

        return poll(Watch(formed), deadline_s, f"{len(members)} nodes to agree on {len(listed)} active members and one leader")

    def leader(self, nodes=None):
        """The node every node of `nodes` names as leader."""
        views = self.views(nodes)
        leaders = {v["raftLeader"] for v in views.values()}
        assert len(leaders) == 1 and None not in leaders, f"no agreed leader: { {k: summarize(v) for k, v in views.items()} }"
        (leader_id,) = leaders
        (node,) = [n for n in self.nodes if n.id == leader_id]
        return node

    def followers(self, nodes=None):
        leader = self.leader(nodes)
        return [n for n in (nodes or self.nodes) if n is not leader]

    # --- buckets ---

    def create_bucket(self, via, name, **params):
        form = {"name": name, "ramQuotaMB": "64", **{k: str(v) for k, v in params.items()}}
        r = via.post("/pools/default/buckets", form)
        assert r.status == 202, r.describe()
        assert r.body == b"", f"202 with a body: {r.describe()}"
        return r

    def wait_bucket(self, name, nodes=None, deadline_s=CONVERGE_DEADLINE_S):
        """Waits until every node of `nodes` serves bucket `name` with one
        and the same rev and map; returns that config."""
        nodes = nodes or self.nodes

        def same(w):
            configs = {}
            for node in nodes:
                try:
                    configs[node.name] = node.bucket(name)
                except OSError:
                    configs[node.name] = "unreachable"
            w.last = {k: (v if not isinstance(v, dict) else f"rev {v.get('rev')}") for k, v in configs.items()}
            docs = list(configs.values())
            if any(not isinstance(d, dict) for d in docs):
                return None
            first = docs[0]
            if all(d["rev"] == first["rev"] and d.get("vBucketServerMap") == first.get("vBucketServerMap")
                   and d.get("nodes") is not None for d in docs):  # fmt: skip
                return first
            return None

        return poll(Watch(same), deadline_s, f"every node to serve bucket {name!r} at one rev")

    def wait_bucket_gone(self, name, nodes=None, deadline_s=CONVERGE_DEADLINE_S):
        nodes = nodes or self.nodes

        def gone(w):
            statuses = {}
            for node in nodes:
                statuses[node.name] = (
                    node.get(f"/pools/default/buckets/{name}").status,
                    node.get(f"/pools/default/b/{name}").status,
                )
            w.last = statuses
            return all(s == (404, 404) for s in statuses.values())

        poll(Watch(gone), deadline_s, f"bucket {name!r} to be 404 on every node")

    def bucket_names(self, node):
        r = node.get("/pools/default/buckets")
        assert r.status == 200, r.describe()
        return {b["name"]: b["rev"] for b in r.json()}


def summarize(view):
    """A short form of /pools/default for failure messages."""
    return {
        "raftLeader": view.get("raftLeader"),
        "raftTerm": view.get("raftTerm"),
        "nodes": [
            (n.get("hostname"), n.get("clusterMembership"), n.get("status"), n.get("raftRole"))
            for n in view.get("nodes", [])
        ],
    }


def wait_data_ready(nodes, bucket, config, deadline_s=None, credentials=None):
    """Waits until every node lets a connection (logged in as
    `credentials`, if given: a bucket with a password) select `bucket` and, for a
    membase bucket, reports (GET_VBUCKET) every vbucket its map makes
    active there as active: the REST config can run ahead of the data
    port, whose buckets and vbucket states follow the applied metadata.
    Returns the seconds it took."""
    started = time.monotonic()
    vbmap = config.get("vBucketServerMap")

    def ready(w):
        pending = {}
        for node in nodes:
            with BinaryConn(node.addr, credentials=credentials) as conn:
                r = select_bucket(conn, bucket)
                if r.status != STATUS_OK:
                    pending[node.name] = f"SELECT_BUCKET {r.status:#x} {r.value!r}"
                    continue
                if vbmap is None:
                    continue
                index = vbmap["serverList"].index(node.addr_str)
                for vb, chain in enumerate(vbmap["vBucketMap"]):
                    if chain[0] != index:
                        continue
                    r = conn.call(OP_GET_VBUCKET, vbucket=vb)
                    state = struct.unpack(">I", r.value[:4])[0] if r.status == STATUS_OK and len(r.value) >= 4 else None
                    if state != VB_ACTIVE:
                        pending[node.name] = f"vbucket {vb}: status {r.status:#x} state {state}"
                        break
        w.last = pending
        return not pending

    poll(Watch(ready), deadline_s or CONVERGE_DEADLINE_S, f"every node's data port to serve bucket {bucket!r} as mapped")
    return time.monotonic() - started


def active_addr(config, key):
    """(vbucket, data (host, port) of the active) for `key` per `config`."""
    vbmap = config["vBucketServerMap"]
    vb = vbucket_of(key, len(vbmap["vBucketMap"]))
    active = vbmap["vBucketMap"][vb][0]
    assert active >= 0, f"vbucket {vb} has no active in rev {config['rev']}"
    return vb, addr_of(vbmap["serverList"][active])


# === rebalance ===


def otp_nodes(node):
    """{hostname: otpNode} of every node `node` lists in /pools/nodes."""
    r = node.get("/pools/nodes")
    assert r.status == 200, r.describe()
    return {n["hostname"]: n["otpNode"] for n in r.json()["nodes"]}


def memberships(node):
    """{hostname: clusterMembership} of every node `node` lists in
    /pools/nodes."""
    r = node.get("/pools/nodes")
    assert r.status == 200, r.describe()
    return {n["hostname"]: n["clusterMembership"] for n in r.json()["nodes"]}


def start_rebalance(via, known, ejected=()):
    """`POST /controller/rebalance` through `via` with `knownNodes` and
    `ejectedNodes` (otpNode names, comma-separated); the `Reply`."""
    return via.post("/controller/rebalance", {"knownNodes": ",".join(known), "ejectedNodes": ",".join(ejected)})


def rebalance_progress(node):
    """GET /pools/default/rebalanceProgress as JSON (a failure unless 200
    with a `status`)."""
    r = node.get("/pools/default/rebalanceProgress")
    assert r.status == 200, r.describe()
    doc = r.json()
    assert isinstance(doc, dict) and isinstance(doc.get("status"), str), f"no status: {r.describe()}"
    return doc


def rebalance_task(node):
    """The `rebalance` task of GET /pools/default/tasks (a failure unless
    there is exactly one)."""
    r = node.get("/pools/default/tasks")
    assert r.status == 200, r.describe()
    tasks = [t for t in r.json() if isinstance(t, dict) and t.get("type") == "rebalance"]
    assert len(tasks) == 1, f"want one task of type rebalance: {r.describe()}"
    return tasks[0]


def proxy_rev(proxy):
    """The rev of the map the proxy routes with (its admin `/config`)."""
    status, body = proxy.http_get("/config")
    assert status == 200, f"proxy /config: HTTP {status} {body[:200]!r}"
    return json.loads(body)["rev"]


def wait_proxy_rev(proxy, rev, deadline_s=CONVERGE_DEADLINE_S):
    poll(lambda: proxy_rev(proxy) >= rev, deadline_s, f"{proxy.name} to use rev {rev} or later")


def wait_replicas_caught_up(nodes, config, bucket, deadline_s):
    """Waits until the `replication_streams` of `nodes` add up to one per
    vbucket per replica of `config` and `replication_lag_total` is 0 on
    every node; returns the seconds it took."""
    vbmap = config["vBucketServerMap"]
    want_streams = len(vbmap["vBucketMap"]) * vbmap["numReplicas"]
    started = time.monotonic()

    def caught_up(w):
        seen = {}
        for node in nodes:
            try:
                s = node_stats(node.addr, "replication", bucket)
            except OSError as e:
                seen[node.name] = repr(e)[:100]
                continue
            seen[node.name] = (s.get("replication_streams"), s.get("replication_lag_total"))
        w.last = seen
        if any(not isinstance(v, tuple) or None in v for v in seen.values()):
            return False
        streams = sum(int(v[0]) for v in seen.values())
        return streams == want_streams and all(int(v[1]) == 0 for v in seen.values())

    poll(Watch(caught_up), deadline_s, f"{want_streams} replica streams open and replication_lag_total 0 on every node")
    return time.monotonic() - started
