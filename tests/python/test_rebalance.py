"""End-to-end tests of online rebalance: real `shoal node` processes on
loopback, bucket `default` (1024 vbuckets, one replica, 100,000 keys), a
`shoal proxy` in front, and one pymemcache client looping set / get of the
same key / get of another key through the proxy at full speed while the
cluster changes shape.

- scale out under load: two nodes, two bare nodes added (`inactiveAdded`
  until the rebalance), a rebalance over all four;
- scale in under load: four nodes, one ejected by the rebalance (it leaves
  /pools/nodes and drops its data, then is killed while the load goes on);
- swap: one node added and one ejected in one rebalance;
- several buckets: two membase buckets moved one after the other, a
  memcached bucket spanning the new nodes;
- stop and restart: stopRebalance after the first batch, then a second
  rebalance finishes the job;
- a node killed mid-rebalance (a follower, or the leader driving it): the
  rebalance stops with an error saying why, the node is failed over and a
  second rebalance finishes the job;
- the REST errors: an unknown node in `knownNodes` or `ejectedNodes` is
  400, `stopRebalance` when idle is 200, `rebalanceProgress` when idle is
  `none`.

After each rebalance: not one client error and not one wrong get during it
(the proxy retries NOT_MY_VBUCKET during takeovers), a second rebalance
was refused with 409 while it ran, every key reads back with its last
acknowledged value, the map is balanced (each node active for
vbuckets/nodes ± 1, every chain with its replica on another node), every
active and every replica holds what the map says it does, and every node
is `active`.

The client keeps each key's last acknowledged value; a set that failed may
or may not have been applied, so its value is accepted too (any failure
fails the test anyway). Figures (rebalance time, operations during it,
the longest stall) are printed with `[figure]`; run with `-s` to see them.

Run: `SHOAL_BIN=$PWD/target/release/shoal python3 -m pytest -s tests/python/test_rebalance.py`
"""

import itertools
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from pymemcache.client.base import Client as PyClient

from harness import figure
from harness.cluster import (
    CONVERGE_DEADLINE_S,
    memberships,
    otp_nodes,
    rebalance_progress,
    rebalance_task,
    start_rebalance,
    summarize,
    wait_data_ready,
    wait_proxy_rev,
    wait_replicas_caught_up,
)
from harness.load import MixedLoad, read_back, versioned_value
from harness.poll import Watch, poll
from harness.rest import error_message, node_id_of
from harness.wire import (
    CLIENT_TIMEOUT_S,
    OP_GET,
    OP_GET_REPLICA,
    STATUS_OK,
    BinaryConn,
    addr_of,
    node_stats,
    pipelined,
    select_bucket,
    vbucket_of,
)

BUCKET = "default"
# Small maps keep the file's runtime down; 64 still moves dozens of
# vbuckets per rebalance.
VBUCKETS = 1024
KEYS = 100_000
# Bounds a hung rebalance; not a wait.
REBALANCE_DEADLINE_S = 120.0
REPLICA_CATCH_UP_DEADLINE_S = 30.0
# Operations the load must complete once the proxy routes with the final
# map (and again once an ejected node is killed): it serves on it.
OPS_AFTER = 1000
OPS_AFTER_DEADLINE_S = 30.0


# === setting up ===


def create_bucket_and_proxy(harness, cluster, prefix, proxy_nodes, durability="none", **params):
    """Bucket `default` on every node of `cluster` (more creation
    parameters in `params`), its data ports ready, and a proxy given the
    admin URLs of `proxy_nodes` (in that order) routing with its first
    map."""
    cluster.create_bucket(
        cluster.leader(), BUCKET, numVBuckets=VBUCKETS, replicaNumber=1, durabilityMinLevel=durability, **params
    )
    config = cluster.wait_bucket(BUCKET)
    assert config["durabilityMinLevel"] == durability, f"bucket durability {config['durabilityMinLevel']!r}"
    assert len(config["vBucketServerMap"]["vBucketMap"]) == VBUCKETS
    wait_data_ready(cluster.nodes, BUCKET, config)
    urls = ",".join(n.admin_url for n in proxy_nodes)
    proxy = harness.proxy("--cluster", urls, "--bucket", BUCKET, name=f"proxy-{prefix}").wait_healthy()
    wait_proxy_rev(proxy, config["rev"])
    return config, proxy


def load_keys(proxy, prefix, batch=500):
    """`KEYS` keys set through the proxy (version 0 of each); {key: value}."""
    values = {}
    for i in range(KEYS):
        key = f"{prefix}:{i}"
        values[key] = versioned_value(key, 0)
    c = PyClient(proxy.addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)
    try:
        keys = list(values)
        for start in range(0, len(keys), batch):
            part = keys[start : start + batch]
            failed = c.set_many({k: values[k] for k in part})
            assert failed == [], f"loading {KEYS} keys through the proxy: set_many failed for {failed[:10]}"
    finally:
        c.close()
    return values


# === the rebalance ===


def run_rebalance(via, leader, known, ejected, load):
    """Starts a rebalance through `via`, checks that a second one is
    refused with 409 while it runs, and polls the leader's
    rebalanceProgress (and tasks) until it is `none`. Fails if the
    rebalance ended with an errorMessage. Returns what it saw."""
    started = time.monotonic()
    ops_before = load.ops()
    r = start_rebalance(via, known, ejected)
    assert r.status == 200, f"rebalance not started: {r.describe()}"
    again = start_rebalance(via, known, ejected)
    assert again.status == 409, (
        f"a second rebalance while one runs was not refused with 409: {again.describe()}; "
        f"rebalanceProgress now {rebalance_progress(leader)}"
    )
    error_message(again)

    progress_seen = Counter()
    tasks_seen = Counter()

    def finished(w):
        doc = rebalance_progress(leader)
        w.last = doc
        progress_seen[doc["status"]] += 1
        if doc["status"] == "none":
            return doc
        assert doc["status"] == "running", f"rebalanceProgress status is neither running nor none: {doc}"
        tasks_seen[rebalance_task(leader).get("status")] += 1
        return None

    final = poll(Watch(finished), REBALANCE_DEADLINE_S, "the rebalance to finish (rebalanceProgress status none)")
    ended = time.monotonic()
    assert "errorMessage" not in final, (
        f"the rebalance ended with an error: {final}; the load saw {len(load.errors)} errors {error_kinds(load.errors)}"
    )
    assert progress_seen["running"] >= 1, f"rebalanceProgress never said running after a 409: {dict(progress_seen)}"
    assert tasks_seen["running"] >= 1, (
        f"/pools/default/tasks never listed the rebalance as running while rebalanceProgress did: {dict(tasks_seen)}"
    )
    task = rebalance_task(leader)
    assert task.get("status") == "notRunning", f"after the rebalance, the rebalance task is {task}"
    return SimpleNamespace(
        started=started,
        ended=ended,
        took=ended - started,
        ops=load.ops_between(started, ended),
        ops_before=ops_before,
    )


def add_node(cluster, leader, node):
    """Adds the bare `node` through `leader` and waits until it is listed."""
    r = leader.post("/controller/addNode", {"hostname": node.hostname})
    assert r.status == 200, r.describe()
    cluster.nodes.append(node)

    def listed(w):
        w.last = otp_nodes(leader)
        return node.hostname in w.last

    poll(Watch(listed), CONVERGE_DEADLINE_S, f"the leader to list the added {node.name}")


def add_two_and_start(harness, cluster, leader, prefix):
    """Adds two bare nodes (`<prefix>-2`, `<prefix>-3`) through `leader` and
    starts a rebalance over every node; returns (every node, {hostname:
    otpNode})."""
    for i in (2, 3):
        add_node(cluster, leader, harness.node(f"{prefix}-{i}").start())
    otps = otp_nodes(leader)
    r = start_rebalance(leader, list(otps.values()), [])
    assert r.status == 200, r.describe()
    return list(cluster.nodes), otps


def wait_idle_everywhere(nodes):
    """Every node of `nodes` answers rebalanceProgress `none` without an
    errorMessage (a follower's answer may lag the leader's)."""

    def idle(w):
        docs = {n.name: rebalance_progress(n) for n in nodes}
        w.last = docs
        return all(d["status"] == "none" and "errorMessage" not in d for d in docs.values())

    poll(Watch(idle), CONVERGE_DEADLINE_S, "every node to report rebalanceProgress none")


def wait_ops(load, more, what):
    """Waits until the load has completed `more` operations past now."""
    want = load.ops() + more

    def done(w):
        w.last = f"{load.ops() - (want - more)} done, {len(load.errors)} errors {error_kinds(load.errors)}"
        return load.ops() >= want

    poll(Watch(done), OPS_AFTER_DEADLINE_S, f"{more} operations through the proxy {what}")


# === checks ===


def error_kinds(errors, top=5):
    return dict(Counter(f"{op}: {text[:80]}" for _, op, _, text in errors).most_common(top))


def check_balanced(config, members, vbuckets=VBUCKETS):
    """The map spans exactly `members`, every chain has an active and a
    replica on another node, and each node is active for vbuckets/nodes ±
    1 vbuckets. Returns ({node name: actives}, {node name: replicas})."""
    vbmap = config["vBucketServerMap"]
    servers = vbmap["serverList"]
    assert sorted(servers) == sorted(n.addr_str for n in members), (
        f"rev {config['rev']}: serverList {servers}, the cluster is {sorted(n.addr_str for n in members)}"
    )
    assert sorted(n["hostname"] for n in config["nodes"]) == sorted(n.hostname for n in members), (
        f"rev {config['rev']}: the bucket's nodes are {[n['hostname'] for n in config['nodes']]}"
    )
    chains = vbmap["vBucketMap"]
    assert len(chains) == vbuckets and vbmap["numReplicas"] == 1, f"rev {config['rev']}: {len(chains)} chains"
    bad = [(vb, chain) for vb, chain in enumerate(chains)
           if len(chain) != 2 or not all(0 <= i < len(servers) for i in chain) or chain[0] == chain[1]]  # fmt: skip
    assert bad == [], (
        f"rev {config['rev']}: {len(bad)} vbuckets without an active and a replica on another node: {bad[:10]}"
    )
    by_server = {n.addr_str: n.name for n in members}
    actives = Counter(by_server[servers[chain[0]]] for chain in chains)
    replicas = Counter(by_server[servers[chain[1]]] for chain in chains)
    counts = {n.name: actives.get(n.name, 0) for n in members}
    ideal = vbuckets / len(members)
    assert max(counts.values()) - min(counts.values()) <= 1 and all(abs(c - ideal) <= 1 for c in counts.values()), (
        f"rev {config['rev']}: actives per node {counts} are not {vbuckets}/{len(members)} ± 1"
    )
    return counts, {n.name: replicas.get(n.name, 0) for n in members}


def moved_actives(before, after):
    """How many vbuckets have a different active (by data address) in
    `after` than in `before`."""
    b, a = before["vBucketServerMap"], after["vBucketServerMap"]
    return sum(
        b["serverList"][cb[0]] != a["serverList"][ca[0]] for cb, ca in zip(b["vBucketMap"], a["vBucketMap"])
    )


def wrong_on_nodes(config, load, position, opcode):
    """Every key of the load fetched straight from the node at `position`
    (0 the active, 1 the replica) of its vbucket's chain in `config`, with
    GET or GET_REPLICA: the keys whose value is not acceptable, with what
    the node answered."""
    vbmap = config["vBucketServerMap"]
    by_node = {}
    for key in load.expected:
        vb = vbucket_of(key, VBUCKETS)
        addr = addr_of(vbmap["serverList"][vbmap["vBucketMap"][vb][position]])
        by_node.setdefault(addr, []).append((key, vb))
    wrong = []
    for addr, items in by_node.items():
        for (key, vb), r in zip(items, pipelined(addr, opcode, items, BUCKET)):
            if r.status != STATUS_OK or r.value not in load.acceptable(key):
                wrong.append(f"{key} vb {vb} on {addr[1]}: status {r.status:#x} {r.value[:40]!r}")
    return wrong


def longest_stall(load, start, end):
    """The longest time between two completed operations of the load in
    [start, end] (from `start` to the first one, too)."""
    times = [start] + [t for t in load.done_at if start <= t <= end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


def check_after_rebalance(cluster, members, before, proxy, load, run):
    """What every rebalance must leave, while the load still runs: every
    member active and listed (no one else), every node idle, the map
    balanced on every node and served as mapped by the data ports, and the
    proxy serving on it. Returns the final config."""
    wait_idle_everywhere(members)
    cluster.wait_formed(members)  # exactly `members`, every one active and healthy
    for node in members:
        listed = memberships(node)
        assert listed == {n.hostname: "active" for n in members}, f"{node.name} /pools/nodes: {listed}"
    views = cluster.views(members)
    assert all(v["balanced"] is True for v in views.values()), {k: v.get("balanced") for k, v in views.items()}
    after = cluster.wait_bucket(BUCKET, members)
    assert after["rev"] > before["rev"], f"the map's rev did not move: {before['rev']} -> {after['rev']}"
    actives, replicas = check_balanced(after, members)
    wait_data_ready(members, BUCKET, after)
    wait_proxy_rev(proxy, after["rev"])
    wait_ops(load, OPS_AFTER, f"after the proxy installed rev {after['rev']}")
    figure(f"rebalance {run.took:.2f}s (POST to rebalanceProgress none); {run.ops} operations during it "
           f"({run.ops / run.took:.0f}/s; {run.ops_before} before it); longest stall "
           f"{longest_stall(load, run.started, run.ended):.3f}s; {moved_actives(before, after)} of {VBUCKETS} "
           f"actives moved; actives per node {actives}, replicas {replicas}")  # fmt: skip
    return after


def check_data(proxy, members, after, load):
    """Once the load has stopped: every key reads back through the proxy
    with its last acknowledged value, and straight from its active and
    (once replication caught up) its replica per the final map."""
    missing, stale, foreign = read_back(proxy.addr, load.expected, load.maybe)
    assert (missing, stale, foreign) == ([], [], []), (
        f"read back through the proxy after the rebalance: {len(missing)} of {KEYS} keys lost {missing[:5]}, "
        f"{len(stale)} stale {stale[:5]}, {len(foreign)} with a foreign value {foreign[:5]}"
    )
    wrong = wrong_on_nodes(after, load, 0, OP_GET)
    assert wrong == [], f"{len(wrong)} of {KEYS} keys wrong on their active per rev {after['rev']}: {wrong[:10]}"
    took = wait_replicas_caught_up(members, after, BUCKET, REPLICA_CATCH_UP_DEADLINE_S)
    wrong = wrong_on_nodes(after, load, 1, OP_GET_REPLICA)
    assert wrong == [], (
        f"{len(wrong)} of {KEYS} keys wrong on their replica (GET_REPLICA on chain[1]) per rev {after['rev']}, "
        f"every stream open with lag 0: {wrong[:10]}"
    )
    figure(f"every replica stream open with lag 0 {took:.2f}s after the load stopped; all {KEYS} keys right "
           f"through the proxy, on their active and on their replica")  # fmt: skip


def wait_moved_copies_dropped(members, copies):
    """Nodes drop the vbuckets that moved away from them (after a grace
    period): in the end the members hold exactly `copies` items between
    them, one per key and copy."""

    def dropped(w):
        items = {n.name: int(node_stats(n.addr, "", BUCKET)["curr_items"]) for n in members}
        w.last = items
        return sum(items.values()) == copies

    started = time.monotonic()
    poll(Watch(dropped), 45.0, f"the members to hold {copies} items in all (moved-away vbuckets dropped)")
    figure(f"moved-away copies dropped {time.monotonic() - started:.1f}s after the checks began")


def check_load(load):
    problem = load.stopped()
    assert problem is None, problem
    assert load.errors == [], (
        f"{len(load.errors)} client errors through the proxy during the rebalance: {error_kinds(load.errors)}; "
        f"first {load.errors[:3]}"
    )
    assert load.wrong == [], (
        f"{len(load.wrong)} gets answered a value other than the last acknowledged one: first {load.wrong[:3]}"
    )


# === tests ===


def test_scale_out_under_load(harness):
    cluster = harness.cluster(2, prefix="out")
    first = list(cluster.nodes)
    before, proxy = create_bucket_and_proxy(harness, cluster, "out", first)
    values = load_keys(proxy, "out")

    load = MixedLoad(proxy.addr, values, seed=11).start()
    try:
        added = [harness.node(f"out-{i}").start() for i in (2, 3)]  # bare: no --init-cluster, no --join
        via = cluster.followers()[0]
        for node in added:
            r = via.post("/controller/addNode", {"hostname": node.hostname})
            assert r.status == 200, r.describe()
        cluster.nodes.extend(added)
        everyone = list(cluster.nodes)
        want = {**{n.hostname: "active" for n in first}, **{n.hostname: "inactiveAdded" for n in added}}

        def listed(w):
            seen = {}
            for node in everyone:
                r = node.get("/pools/nodes")
                seen[node.name] = (
                    {n["hostname"]: n["clusterMembership"] for n in r.json()["nodes"]} if r.status == 200 else r.status
                )
            w.last = seen
            return all(s == want for s in seen.values())

        poll(Watch(listed), CONVERGE_DEADLINE_S, f"every node to list the added nodes as inactiveAdded: {want}")
        leader = cluster.leader(first)
        assert leader.bucket(BUCKET)["vBucketServerMap"] == before["vBucketServerMap"], (
            "adding nodes changed the map before any rebalance"
        )
        otps = otp_nodes(leader)
        assert sorted(otps) == sorted(n.hostname for n in everyone), f"the leader lists {otps}"
        run = run_rebalance(via, leader, list(otps.values()), [], load)
        after = check_after_rebalance(cluster, everyone, before, proxy, load, run)
    finally:
        load.stop()

    figure(f"scale out 2 -> 4: {load.ops()} operations in all, {len(load.errors)} errors, "
           f"{len(load.wrong)} wrong gets")  # fmt: skip
    check_load(load)
    check_data(proxy, everyone, after, load)
    wait_moved_copies_dropped(everyone, 2 * KEYS)


def test_scale_in_under_load(harness):
    cluster = harness.cluster(4, prefix="in")
    leader = cluster.leader()
    victim, via = cluster.followers()[:2]  # not the Raft leader
    remaining = [n for n in cluster.nodes if n is not victim]
    # The proxy is told about the ejected node first: it must move on to
    # the others when that node leaves.
    before, proxy = create_bucket_and_proxy(harness, cluster, "in", [victim] + remaining)
    values = load_keys(proxy, "in")

    load = MixedLoad(proxy.addr, values, seed=13).start()
    try:
        otps = otp_nodes(leader)
        assert sorted(otps) == sorted(n.hostname for n in cluster.nodes), f"the leader lists {otps}"
        run = run_rebalance(via, leader, list(otps.values()), [otps[victim.hostname]], load)
        after = check_after_rebalance(cluster, remaining, before, proxy, load, run)
        for node in remaining:
            assert victim.hostname not in otp_nodes(node), f"{node.name} still lists the ejected {victim.hostname}"

        def dropped(w):
            try:
                with BinaryConn(victim.addr) as conn:
                    status = select_bucket(conn, BUCKET).status
            except OSError as e:
                w.last = f"data port: {e!r}"
                return True
            w.last = f"SELECT_BUCKET {BUCKET}: status {status:#x}"
            return status != STATUS_OK

        poll(Watch(dropped), CONVERGE_DEADLINE_S, f"the ejected {victim.name} to drop bucket {BUCKET}")
        # Nothing depends on it any more: the load goes on without it.
        victim.kill()
        wait_ops(load, OPS_AFTER, f"after the ejected {victim.name} was killed")
    finally:
        load.stop()

    figure(f"scale in 4 -> 3: {load.ops()} operations in all, {len(load.errors)} errors, "
           f"{len(load.wrong)} wrong gets")  # fmt: skip
    check_load(load)
    check_data(proxy, remaining, after, load)


def test_swap_rebalance_under_load(harness):
    """Add one node and eject another in one rebalance, under load."""
    cluster = harness.cluster(3, prefix="swap")
    leader = cluster.leader()
    victim = cluster.followers()[0]
    before, proxy = create_bucket_and_proxy(harness, cluster, "swap", list(cluster.nodes))
    values = load_keys(proxy, "swap")
    load = MixedLoad(proxy.addr, values, seed=19).start()
    try:
        added = harness.node("swap-3").start()
        add_node(cluster, leader, added)
        otps = otp_nodes(leader)
        members = [n for n in cluster.nodes if n is not victim]
        run = run_rebalance(leader, leader, list(otps.values()), [otps[victim.hostname]], load)
        cluster.nodes.remove(victim)
        after = check_after_rebalance(cluster, members, before, proxy, load, run)
    finally:
        load.stop()

    figure(f"swap rebalance (add one, eject one): {load.ops()} operations in all, {len(load.errors)} errors, "
           f"{len(load.wrong)} wrong gets")  # fmt: skip
    check_load(load)
    check_data(proxy, members, after, load)


def test_rebalance_moves_every_bucket(harness):
    """Every membase bucket is moved, one after another (the progress
    counts them), each ends balanced with every key readable through its
    proxy, and a memcached bucket spans the new nodes afterwards."""
    cluster = harness.cluster(2, prefix="multi")
    first = list(cluster.nodes)
    leader = cluster.leader()
    membase = {"default": 256, "b2": 64}
    for name, vbuckets in membase.items():
        cluster.create_bucket(leader, name, numVBuckets=vbuckets, replicaNumber=1, ramQuotaMB=32)
    cluster.create_bucket(leader, "mc", bucketType="memcached", ramQuotaMB=16)
    urls = ",".join(n.admin_url for n in first)
    proxies, written = {}, {}
    for name in membase:
        config = cluster.wait_bucket(name)
        wait_data_ready(cluster.nodes, name, config)
        proxies[name] = harness.proxy("--cluster", urls, "--bucket", name, name=f"proxy-multi-{name}").wait_healthy()
        wait_proxy_rev(proxies[name], config["rev"])
        written[name] = {f"{name}:{i}": f"{name}-value-{i}".encode() for i in range(2_000)}
        c = PyClient(proxies[name].addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)
        try:
            assert c.set_many(written[name]) == [], f"loading bucket {name}"
        finally:
            c.close()

    everyone, otps = add_two_and_start(harness, cluster, leader, "multi")
    totals = set()

    def finished(w):
        w.last = rebalance_progress(leader)
        if w.last["status"] == "running":
            totals.add(w.last["bucketsTotal"])
        return w.last if w.last["status"] == "none" else None

    final = poll(Watch(finished), REBALANCE_DEADLINE_S, "the rebalance to finish")
    assert "errorMessage" not in final, f"the rebalance failed: {final}"
    # Whatever the progress said while it ran counted both buckets (both
    # maps being balanced below is what shows both moved).
    assert totals <= {len(membase)}, f"bucketsTotal seen while running: {totals}"
    for name, vbuckets in membase.items():
        after = cluster.wait_bucket(name, everyone)
        actives, _ = check_balanced(after, everyone, vbuckets)
        wait_data_ready(everyone, name, after)
        wait_proxy_rev(proxies[name], after["rev"])
        missing, stale, foreign = read_back(proxies[name].addr, written[name])
        assert (missing, stale, foreign) == ([], [], []), (
            f"bucket {name} after the rebalance: {len(missing)} missing {missing[:5]}, {len(stale)} stale, "
            f"{len(foreign)} foreign"
        )
        figure(f"bucket {name}: {vbuckets} vbuckets balanced {actives}; all {len(written[name])} keys read back")

    def spans(w):
        w.last = sorted(n["hostname"] for n in leader.bucket("mc")["nodes"])
        return w.last == sorted(n.hostname for n in everyone)

    poll(Watch(spans), CONVERGE_DEADLINE_S, "the memcached bucket to span all four nodes")


def test_rebalance_rest_errors(harness):
    cluster = harness.cluster(2, prefix="rberr")
    leader = cluster.leader()
    (follower,) = cluster.followers()
    otps = otp_nodes(leader)
    known = list(otps.values())
    ids = {node_id_of(o) for o in known}
    unknown = "ns_%d@127.0.0.1" % next(i for i in itertools.count(1) if i not in ids)

    def idle(node):
        doc = rebalance_progress(node)
        assert doc["status"] == "none", f"{node.name}: rebalanceProgress {doc} while nothing runs"
        task = rebalance_task(node)
        assert task.get("status") == "notRunning", f"{node.name}: rebalance task {task} while nothing runs"
        return doc

    for node in (leader, follower):
        doc = idle(node)
        assert "errorMessage" not in doc, f"{node.name}: an errorMessage before any rebalance: {doc}"

    # (case, knownNodes, ejectedNodes, the parameter the error may name)
    cases = [
        ("unknown node in knownNodes", known + [unknown], [], "knownNodes"),
        ("only an unknown node in knownNodes", [unknown], [], "knownNodes"),
        ("a name that is no otpNode in knownNodes", known + ["not-a-node"], [], "knownNodes"),
        ("unknown node in ejectedNodes", known, [unknown], "ejectedNodes"),
    ]
    for node in (leader, follower):
        for case, known_nodes, ejected, param in cases:
            r = start_rebalance(node, known_nodes, ejected)
            assert r.status == 400, f"{case}, through {node.name}: want 400: {r.describe()}"
            message = error_message(r)
            bad = [n for n in known_nodes + ejected if n not in known]
            assert any(b in message for b in bad) or param in message, (
                f"{case}: the error names neither the unknown node {bad} nor {param}: {r.describe()}"
            )
            idle(node)  # refused: nothing started

    for node in (leader, follower):
        r = node.post("/controller/stopRebalance", {})
        assert r.status == 200, f"stopRebalance when idle, through {node.name}: {r.describe()}"
        idle(node)
    # Nothing about the cluster changed.
    views = cluster.wait_formed(cluster.nodes)
    assert all(sorted(n["otpNode"] for n in v["nodes"]) == sorted(known) for v in views.values()), (
        {k: summarize(v) for k, v in views.items()}
    )


def progress_where_answered(nodes):
    """rebalanceProgress from the first node of `nodes` that answers with
    one (it forwards to the leader, which may be gone or not yet elected),
    else None."""
    for node in nodes:
        try:
            r = node.get("/pools/default/rebalanceProgress")
        except OSError:
            continue
        if r.status == 200:
            return r.json()
    return None


def wait_stopped(nodes, with_error=False):
    """Waits until rebalanceProgress, from whichever of `nodes` answers,
    is `none` (and carries an errorMessage, if `with_error`); returns it."""

    def ended(w):
        w.last = progress_where_answered(nodes)
        done = w.last is not None and w.last["status"] == "none"
        return w.last if done and (not with_error or "errorMessage" in w.last) else None

    return poll(Watch(ended), REBALANCE_DEADLINE_S, "the rebalance to stop")


def wait_forward_cleared(node):
    """Waits until `node` serves the bucket without a forward map (its
    config follows its log within moments); returns its vBucketServerMap."""

    def cleared(w):
        w.last = node.bucket(BUCKET)["vBucketServerMap"]
        return w.last if w.last.get("vBucketMapForward") is None else None

    return poll(Watch(cleared), CONVERGE_DEADLINE_S, "the forward map to be cleared")


def bulk_up(proxy, prefix):
    """20,000 values of 4 KiB more (not checked by the load), so that new
    copies take a while to build and a rebalance can be caught midway."""
    bulk = PyClient(proxy.addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)
    try:
        for start in range(0, 20_000, 500):
            failed = bulk.set_many({f"{prefix}-bulk:{i}": b"x" * 4096 for i in range(start, start + 500)})
            assert failed == [], f"bulk load: {failed[:5]}"
    finally:
        bulk.close()


def test_stop_and_restart_under_load(harness):
    """stopRebalance midway: the rebalance ends with an error saying it
    was stopped, no forward map is left, the batches it finished stay
    (the added nodes already serve some vbuckets); a second rebalance
    finishes the job with the same guarantees as an uninterrupted one."""
    cluster = harness.cluster(2, prefix="stop")
    first = list(cluster.nodes)
    # Two nodes each hold every key and the bulk (active or replica).
    before, proxy = create_bucket_and_proxy(harness, cluster, "stop", first, ramQuotaMB=256)
    values = load_keys(proxy, "stop")
    bulk_up(proxy, "stop")

    load = MixedLoad(proxy.addr, values, seed=13).start()
    try:
        leader = cluster.leader()
        everyone, otps = add_two_and_start(harness, cluster, leader, "stop")
        added = everyone[-2:]

        def midway(w):
            w.last = rebalance_progress(leader)
            assert w.last["status"] == "running", f"the rebalance ended before it could be stopped midway: {w.last}"
            return w.last if w.last["vbucketsDone"] > 0 else None

        seen = poll(Watch(midway), REBALANCE_DEADLINE_S, "a first batch of moves to finish")
        r = leader.post("/controller/stopRebalance", {})
        assert r.status == 200, f"stopRebalance: {r.describe()}"

        final = wait_stopped([leader])
        assert "stopRebalance" in final.get("errorMessage", ""), f"a stopped rebalance must say so: {final}"
        halfway = wait_forward_cleared(leader)
        servers = halfway["serverList"]
        on_added = sum(1 for chain in halfway["vBucketMap"] if servers[chain[0]] in {f"{n.addr[0]}:{n.addr[1]}" for n in added})
        assert 0 < on_added < VBUCKETS // 2, (
            f"after a stop at {seen['vbucketsDone']} of {seen['vbucketsTotal']} moves the added nodes are active "
            f"for {on_added} vbuckets: the finished batches should stay, the rest not be done"
        )
        figure(f"stopped at {seen['vbucketsDone']} of {seen['vbucketsTotal']} moves; the added nodes kept "
               f"{on_added} actives")  # fmt: skip

        run = run_rebalance(leader, leader, list(otps.values()), [], load)
        after = check_after_rebalance(cluster, everyone, before, proxy, load, run)
    finally:
        load.stop()

    figure(f"stop and restart: {load.ops()} operations in all, {len(load.errors)} errors, "
           f"{len(load.wrong)} wrong gets")  # fmt: skip
    check_load(load)
    check_data(proxy, everyone, after, load)


@pytest.mark.parametrize("victim_role", ["follower", "leader"])
def test_node_failure_during_rebalance(harness, victim_role):
    """kill -9 of a node while a rebalance builds its new copies — a
    follower, or the leader that drives the rebalance: the rebalance stops
    with an error that says why (naming the node, or the leader change,
    reported by the new leader), no forward map is left and the map keeps
    every copy it had; after failing the node over, a second rebalance
    (ejecting it) balances the rest and every acknowledged key is there."""
    prefix = "rbf" if victim_role == "follower" else "rbl"
    cluster = harness.cluster(3, prefix=prefix)
    first = list(cluster.nodes)
    before, proxy = create_bucket_and_proxy(harness, cluster, prefix, first, durability="majority")
    values = load_keys(proxy, prefix)
    bulk_up(proxy, prefix)

    load = MixedLoad(proxy.addr, values, seed=17).start()
    try:
        leader = cluster.leader()
        victim = leader if victim_role == "leader" else cluster.followers()[0]
        survivors = [n for n in first if n is not victim]
        added = harness.node(f"{prefix}-3").start()
        add_node(cluster, leader, added)
        otps = otp_nodes(leader)
        r = start_rebalance(leader, list(otps.values()), [])
        assert r.status == 200, r.describe()

        def building(w):
            w.last = leader.bucket(BUCKET)["vBucketServerMap"].get("vBucketMapForward")
            return w.last is not None

        poll(Watch(building), CONVERGE_DEADLINE_S, "the rebalance to publish its forward map (building)")
        victim.kill()
        killed_at = time.monotonic()
        members = survivors + [added]

        # A new leader answers `none` from its election on, and reports the
        # interrupted rebalance once it has cleared what was left.
        final = wait_stopped(members, with_error=True)
        message = final.get("errorMessage", "")
        if victim_role == "leader":
            # Any node's answer comes from the new leader.
            assert "leader changed" in message, f"the new leader did not report the interrupted rebalance: {final}"
            leader = cluster.leader(members)
        else:
            assert victim.hostname in message or otps[victim.hostname] in message, (
                f"the rebalance did not end with an error naming the killed {victim.hostname}: {final}"
            )
        figure(f"{victim_role} killed mid-rebalance: rebalance stopped {time.monotonic() - killed_at:.1f}s later: {message!r}")
        wait_forward_cleared(leader)

        r = leader.post("/controller/failOver", {"otpNode": otps[victim.hostname]})
        assert r.status == 200, f"failover of the killed node: {r.describe()}"

        cluster.nodes.remove(victim)
        run = run_rebalance(leader, leader, list(otps.values()), [otps[victim.hostname]], load)
        after = check_after_rebalance(cluster, members, before, proxy, load, run)
    finally:
        load.stop()

    figure(f"{victim_role} failure during rebalance: {load.ops()} operations in all, {len(load.errors)} errors "
           f"{error_kinds(load.errors)} (expected while the node was down), {len(load.wrong)} wrong gets")  # fmt: skip
    problem = load.stopped()
    assert problem is None, problem
    assert load.wrong == [], f"gets answered a value other than the last acknowledged one: {load.wrong[:3]}"
    check_data(proxy, members, after, load)
