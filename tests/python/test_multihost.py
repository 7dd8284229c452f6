"""End-to-end tests of a Shoal cluster spread over hosts: each node, and
the proxy, in a Linux network namespace of its own on a private /24 (see
`harness.netns`), so a host can be cut off, slowed down or made
unreachable from one other host while the rest carry on.

- the Raft leader cut off under durable (`majority`) writes through the
  proxy: the majority elects a new leader and fails the old one over
  (auto-failover at 2 s); writes continue and no acknowledged write is
  lost. Healed, the old leader must serve no stale value — a direct GET
  of a key it used to lead, whose value changed while it was cut off,
  gets NOT_MY_VBUCKET or the new value, never the old one (cut off from
  the majority it fences its vbuckets, and stays fenced until it has
  caught up) — and stays `inactiveFailed` until delta recovery and a
  rebalance bring it back;
- the same with a follower cut off;
- the proxy cut off from one node only (a blackhole route in the proxy's
  namespace; auto-failover off): requests for that node's vbuckets get a
  temporary failure, never a wrong value, the others succeed; healed,
  everything succeeds again with the right values;
- every node's link slowed and lossy (netem 50 ms, 1 % loss) under a
  durable write load: replication catches up, a rebalance adding a fourth
  node finishes, a hard failover finishes, and nothing acknowledged is
  lost (the time each took is printed).

One node of every cluster binds 0.0.0.0 and gives the cluster its address
with `--advertise`: the cluster must know it by that address only. Nodes
and the proxy run the command lines of `deploy/`'s systemd units
(`harness.deploy`); the fourth node of the slow-links test runs the
container image's default command.

The test process itself, in the root namespace, is the client: it reaches
every host through the bridge's address (no client namespace is needed,
and the writer threads' records stay in-process). Everything the network
needs is made per test with per-run names and removed in the fixture's
teardown; a machine where it cannot be made fails the test. Figures are
printed with `[figure]`; run with `-s` to see them.
"""

import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from harness import Harness, figure
from harness.cluster import (
    Cluster,
    memberships,
    otp_nodes,
    rebalance_progress,
    start_rebalance,
    summarize,
    wait_data_ready,
    wait_proxy_rev,
)
from harness.netns import NetnsNode, NetnsProxy, Network
from harness.poll import Watch, poll
from harness.wire import OP_GET, STATUS_NOT_MY_VBUCKET, STATUS_OK, node_stats, pipelined, vbucket_of
from harness.writers import (
    CLEAN_STREAK_S,
    Writers,
    error_kinds,
    py_client,
    read_back_wrong,
    unavailability,
    value_of,
    wait_clean_streak,
)

BUCKET = "default"
VBUCKETS = 64
AUTO_FAILOVER_S = 2
# Load before a fault (not a wait for a condition).
LOAD_S = 3.0
# Hosts and the last octet of their addresses; node-3 is used by the
# rebalance of test_slow_lossy_links only.
HOSTS = {"node-0": 10, "node-1": 11, "node-2": 12, "node-3": 13, "proxy": 20}
CLUSTER = ("node-0", "node-1", "node-2")
# This one binds every address and advertises its own.
BIND_ANY = "node-1"
# Keys of the cut node's vbuckets whose value changes while it is cut off.
VERSIONED_KEYS = 100
# A failover seen everywhere after a cut, a healed node settling, a
# recovery rebalance: only a hang takes longer.
SETTLE_DEADLINE_S = 60.0
# The same on slow, lossy links (generous: a bound, not a wait).
SLOW_DEADLINE_S = 120.0
NETEM_DELAY_MS = 50
NETEM_LOSS_PERCENT = 1


@pytest.fixture
def net():
    """A `Network` of `HOSTS` (made by the test's `start_cluster`, so a
    failure to make it fails the test), with a `Harness` for the processes
    on it: they are stopped before the network is removed."""
    network = Network(HOSTS)
    try:
        with Harness() as harness:
            network.harness = harness
            yield network
    finally:
        network.close()


# === the cluster ===


class NetnsCluster(Cluster):
    """`Cluster`'s views and waits over nodes on hosts of their own: the
    first starts the cluster, the others join it."""

    def __init__(self, harness, nodes):
        self.harness = harness
        self.nodes = list(nodes)
        self.nodes[0].start("--init-cluster")
        for node in self.nodes[1:]:
            node.launch("--join", self.nodes[0].admin_url)
        for node in self.nodes[1:]:
            node.wait_listening()
        self.wait_formed(self.nodes)


def start_cluster(net, auto_failover_s=None):
    """Makes the network; three nodes on hosts of their own (`BIND_ANY`
    on 0.0.0.0 with --advertise), bucket `default` (64 vbuckets, 1
    replica, durability majority), auto-failover as asked (off by
    default), and a proxy on its own host given every node's admin URL."""
    net.create()
    harness = net.harness
    nodes = [harness.add(NetnsNode(net, host, bind_any=host == BIND_ANY)) for host in CLUSTER]
    cluster = NetnsCluster(harness, nodes)
    leader = cluster.leader()
    if auto_failover_s is not None:
        r = leader.post("/settings/autoFailover", {"enabled": "true", "timeout": str(auto_failover_s)})
        assert r.status == 200, r.describe()
    cluster.create_bucket(leader, BUCKET, bucketType="membase", ramQuotaMB=256, replicaNumber=1,
                          numVBuckets=VBUCKETS, durabilityMinLevel="majority")  # fmt: skip
    config = cluster.wait_bucket(BUCKET)
    # Every node by the address it advertises, the one bound to 0.0.0.0
    # too (its /pools/default hostname was checked by wait_formed).
    servers = config["vBucketServerMap"]["serverList"]
    assert sorted(servers) == sorted(n.addr_str for n in nodes), f"serverList {servers}"
    otps = sorted(n["otpNode"] for n in leader.pools()["nodes"])
    assert otps == sorted(n.otp_node for n in nodes), f"otpNodes {otps}"
    wait_data_ready(nodes, BUCKET, config)
    urls = ",".join(n.admin_url for n in nodes)
    proxy = harness.add(NetnsProxy(net, "proxy", "--cluster", urls, "--bucket", BUCKET)).start().wait_healthy()
    wait_proxy_rev(proxy, config["rev"])
    return SimpleNamespace(cluster=cluster, nodes=nodes, config=config, proxy=proxy, leader=leader)


def actives_of(config, node):
    """The vbuckets `config` makes `node` active for."""
    vbmap = config["vBucketServerMap"]
    index = vbmap["serverList"].index(node.addr_str)
    return {vb for vb, chain in enumerate(vbmap["vBucketMap"]) if chain[0] == index}


def named_in(config, node):
    """The vbuckets whose chain names `node`."""
    vbmap = config["vBucketServerMap"]
    if node.addr_str not in vbmap["serverList"]:
        return set()
    index = vbmap["serverList"].index(node.addr_str)
    return {vb for vb, chain in enumerate(vbmap["vBucketMap"]) if index in chain}


def keys_in(vbuckets, prefix, count):
    """`count` keys `<prefix>:<n>` of the given vbuckets."""
    keys, n = [], 0
    while len(keys) < count:
        key = f"{prefix}:{n}"
        n += 1
        if vbucket_of(key, VBUCKETS) in vbuckets:
            keys.append(key)
    return keys


def old_value(key):
    """The first version of a key whose value changes later (the second
    is `value_of(key)`)."""
    return f"{key}|old".encode()


def set_all(addr, values, what):
    """Sets every key of `values` through `addr`; a failure unless every
    write is acknowledged."""
    c = py_client(addr)
    try:
        failed = c.set_many(values, noreply=False)
    finally:
        c.close()
    assert failed == [], f"{what}: {len(failed)} of {len(values)} sets through {addr} failed: {failed[:10]}"


def node_entry(view, node):
    (entry,) = [n for n in view["nodes"] if n["hostname"] == node.hostname]
    return entry


def rebalance(via, deadline_s):
    """A rebalance over every node `via` lists, until rebalanceProgress
    says none; a failure if it ends with an error. Returns its seconds."""
    started = time.monotonic()
    r = start_rebalance(via, list(otp_nodes(via).values()))
    assert r.status == 200, r.describe()

    def finished(w):
        w.last = rebalance_progress(via)
        return w.last if w.last["status"] == "none" else None

    final = poll(Watch(finished), deadline_s, "the rebalance to finish (rebalanceProgress status none)")
    assert "errorMessage" not in final, f"the rebalance failed: {final}"
    return time.monotonic() - started


def wait_caught_up(nodes, config, deadline_s):
    """Waits until `nodes` serve one replica stream per replica `config`
    names and `replication_lag_total` is 0 on each; returns its seconds."""
    want = sum(1 for chain in config["vBucketServerMap"]["vBucketMap"] for i in chain[1:] if i >= 0)
    started = time.monotonic()

    def caught_up(w):
        seen = {}
        for node in nodes:
            try:
                s = node_stats(node.addr, "replication", BUCKET)
                seen[node.name] = (int(s["replication_streams"]), int(s["replication_lag_total"]))
            except (OSError, AssertionError, KeyError) as e:
                seen[node.name] = repr(e)[:120]
        w.last = seen
        if any(not isinstance(v, tuple) for v in seen.values()):
            return False
        return sum(v[0] for v in seen.values()) == want and all(v[1] == 0 for v in seen.values())

    poll(Watch(caught_up), deadline_s, f"{want} replica streams open and replication_lag_total 0 on {len(nodes)} nodes")
    return time.monotonic() - started


def connect_time(addr):
    started = time.monotonic()
    with socket.create_connection(addr, timeout=10):
        return time.monotonic() - started


def seconds(s):
    return "none seen" if s is None else f"{s:.2f}s"


# === a node cut off under durable writes ===


def direct_gets(node, keys):
    """A binary GET of every key, with its vbucket id, straight to `node`'s
    data port (on the bucket a connection starts on): [(key, status,
    value)], or the error as text if the node cannot be reached."""
    items = [(key, vbucket_of(key, VBUCKETS)) for key in keys]
    try:
        replies = pipelined(node.addr, OP_GET, items, None)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return [(key, r.status, r.value) for (key, _), r in zip(items, replies)]


def partition_under_load(net, prefix, pick_victim):
    """The body of the two partition tests: `pick_victim(setup)` is cut
    off under durable writes, failed over, healed, recovered."""
    setup = start_cluster(net, auto_failover_s=AUTO_FAILOVER_S)
    cluster, before, proxy = setup.cluster, setup.config, setup.proxy
    victim = pick_victim(setup)
    was_leader = victim is setup.leader
    survivors = [n for n in setup.nodes if n is not victim]
    dead_vbs = actives_of(before, victim)
    # Keys the victim leads: the old version now, the new one while it is
    # cut off.
    versioned = keys_in(dead_vbs, f"{prefix}-ver", VERSIONED_KEYS)
    set_all(proxy.addr, {k: old_value(k) for k in versioned}, "the first versions")

    writers = Writers(proxy.addr, prefix).start()
    try:
        time.sleep(LOAD_S)  # load, not a wait for a condition
        assert writers.acknowledged(), f"no write acknowledged in {LOAD_S}s: {error_kinds(writers.errors())}"
        cut_at = time.monotonic()
        net.cut(victim.name)

        def failed_over(w):
            views = cluster.views(survivors)
            configs = {}
            for node in survivors:
                try:
                    configs[node.name] = node.bucket(BUCKET)
                except OSError as e:
                    configs[node.name] = repr(e)[:100]
            w.last = {"views": {k: summarize(v) for k, v in views.items()},
                      "revs": {k: c["rev"] if isinstance(c, dict) else c for k, c in configs.items()}}  # fmt: skip
            if len(views) != len(survivors) or any(not isinstance(c, dict) for c in configs.values()):
                return None
            leaders = {v["raftLeader"] for v in views.values()}
            if len(leaders) != 1 or None in leaders or victim.id in leaders:
                return None
            if any(node_entry(v, victim)["clusterMembership"] != "inactiveFailed" for v in views.values()):
                return None
            docs = list(configs.values())
            if any(d["rev"] <= before["rev"] or d != docs[0] or named_in(d, victim) for d in docs):
                return None
            return docs[0], leaders.pop(), max(v["raftTerm"] for v in views.values())

        after, new_leader, term_before = poll(Watch(failed_over), SETTLE_DEADLINE_S,
                                 f"the survivors to elect a leader and fail {victim.name} over")  # fmt: skip
        failed_over_at = time.monotonic()
        wait_proxy_rev(proxy, after["rev"], SETTLE_DEADLINE_S)
        wait_clean_streak(writers, failed_over_at, "the failover")
        served_at = time.monotonic()
        # The new versions, while the victim still holds the old ones.
        set_all(proxy.addr, {k: value_of(k) for k in versioned}, f"the new versions, {victim.name} cut off")
    finally:
        writers.stop()

    records = writers.all()
    acked = [r for r in records if r[3] is True]
    errors = [r for r in records if r[3] is not True]
    lost = read_back_wrong(proxy.addr, [r[0] for r in acked])
    window, gap, dead_writes = unavailability(records, dead_vbs, cut_at, VBUCKETS)
    role = "the Raft leader" if was_leader else "a follower"
    figure(f"{victim.name} ({role}, active for {len(dead_vbs)} of {VBUCKETS} vbuckets) cut off: a new leader "
           f"(id {new_leader}) and the failover seen {failed_over_at - cut_at:.2f}s after the cut (auto-failover "
           f"timeout {AUTO_FAILOVER_S}s); clean streak of {CLEAN_STREAK_S}s ended {served_at - cut_at:.2f}s after it")  # fmt: skip
    figure(f"{victim.name} cut off: {len(records)} writes, {len(acked)} acknowledged, {len(lost)} lost, "
           f"{len(errors)} errors {error_kinds(errors)}")  # fmt: skip
    figure(f"{victim.name} cut off: its keys ({dead_writes} writes): unavailability window (first error after the "
           f"cut to the next success) {seconds(window)}; longest time without an acknowledged write {seconds(gap)}")  # fmt: skip
    assert lost == [], (
        f"durability majority: {len(lost)} of {len(acked)} acknowledged writes lost after {victim.name} was cut off "
        f"and failed over: {lost[:10]}"
    )

    # Healed: it may answer NOT_MY_VBUCKET or the new value, never the old
    # one (nor a miss), from the first request on until it has learned it
    # is failed over.
    net.heal(victim.name)
    healed_at = time.monotonic()
    answers = Counter()
    stale = []

    def settled(w):
        got = direct_gets(victim, versioned)
        at = time.monotonic() - healed_at
        if isinstance(got, str):
            answers["unreachable"] += 1
            w.last = got
            return False
        for key, status, value in got:
            if status == STATUS_NOT_MY_VBUCKET:
                answers["NOT_MY_VBUCKET"] += 1
            elif status == STATUS_OK and value == value_of(key):
                answers["the new value"] += 1
            else:
                kind = "the old value" if value == old_value(key) else f"status {status:#x} {value[:30]!r}"
                answers[kind] += 1
                stale.append((at, f"{at:.3f}s after the heal: {key} vb {vbucket_of(key, VBUCKETS)}: {kind}"))
        view = victim.try_pools()
        w.last = summarize(view) if view else "no /pools/default"
        if view is None:
            return False
        me = node_entry(view, victim)
        # It knows it is failed over, follows a leader, and serves nothing.
        return (me["clusterMembership"] == "inactiveFailed" and view["raftLeader"] not in (None, victim.id)
                and all(status == STATUS_NOT_MY_VBUCKET for _, status, _ in got))  # fmt: skip

    poll(Watch(settled), SETTLE_DEADLINE_S, f"the healed {victim.name} to know it is failed over and serve nothing")
    settled_at = time.monotonic()
    views = cluster.views(setup.nodes)
    leaders_after = {v["raftLeader"] for v in views.values()}
    terms_after = {v["raftTerm"] for v in views.values()}
    figure(f"{victim.name} healed: knew it was failed over {settled_at - healed_at:.2f}s later; direct GETs of "
           f"{len(versioned)} keys it led, until then: {dict(answers)}; after the heal leader {sorted(leaders_after)} "
           f"term {sorted(terms_after)} (before it leader {new_leader} term {term_before})")  # fmt: skip
    if stale:
        figure(f"{victim.name} healed: {len(stale)} wrong answers, the first {stale[0][1]}, the last {stale[-1][1]}")
    members = {name: node_entry(v, victim)["clusterMembership"] for name, v in views.items()}
    assert set(members.values()) == {"inactiveFailed"}, f"after the heal {victim.name} is listed as {members}"

    # Back through delta recovery and a rebalance.
    via = survivors[0]
    recover_at = time.monotonic()
    r = via.post("/controller/setRecoveryType", {"otpNode": victim.otp_node, "recoveryType": "delta"})
    assert r.status == 200, r.describe()
    took = rebalance(via, SETTLE_DEADLINE_S)
    cluster.wait_formed(setup.nodes)
    config = cluster.wait_bucket(BUCKET)
    assert actives_of(config, victim), f"after the recovery rebalance {victim.name} is active for no vbucket"
    wait_proxy_rev(proxy, config["rev"])
    wrong = read_back_wrong(proxy.addr, versioned + [r[0] for r in acked])
    figure(f"{victim.name}: delta recovery + rebalance took {took:.2f}s ({time.monotonic() - recover_at:.2f}s until "
           f"every node was active and the proxy had rev {config['rev']}); {len(wrong)} keys wrong after it")  # fmt: skip
    assert wrong == [], f"after {victim.name}'s recovery {len(wrong)} keys read back wrong: {wrong[:10]}"
    # Checked last, so that everything else is checked whatever it finds.
    if stale:
        pytest.fail(
            f"the healed {victim.name} answered {len(stale)} direct GETs of keys it led with something other than "
            f"NOT_MY_VBUCKET or the current value, until {stale[-1][0]:.3f}s after the heal: "
            f"{[text for _, text in stale[:5]]}",
            pytrace=False,
        )


def test_leader_partitioned_under_durable_writes(net):
    partition_under_load(net, "lcut", lambda setup: setup.leader)


def test_follower_partitioned(net):
    def follower(setup):
        # The node bound to 0.0.0.0 if it follows: its recovery goes by
        # the address it advertises.
        followers = [n for n in setup.nodes if n is not setup.leader]
        return next((n for n in followers if n.name == BIND_ANY), followers[0])

    partition_under_load(net, "fcut", follower)


# === the proxy cut off from one node ===


def proxy_call(addr, op, key, value=None):
    """One request on a fresh connection: (True, the value or the set's
    answer, seconds) or (False, the error, seconds)."""
    started = time.monotonic()
    c = py_client(addr)
    try:
        got = c.get(key) if op == "get" else c.set(key, value, noreply=False)
        return True, got, time.monotonic() - started
    except Exception as e:  # noqa: BLE001 — the error is the outcome
        return False, f"{type(e).__name__}: {e}", time.monotonic() - started
    finally:
        c.close()


def test_proxy_cut_from_one_node(net):
    setup = start_cluster(net)
    cluster, config, proxy = setup.cluster, setup.config, setup.proxy
    r = setup.leader.get("/settings/autoFailover")
    assert r.status == 200 and r.json().get("enabled") is False, f"auto-failover must be off: {r.describe()}"
    # The first of the proxy's cluster URLs: the one it follows the config
    # through, too.
    cut = setup.nodes[0]
    cut_vbs = actives_of(config, cut)
    other_vbs = set(range(VBUCKETS)) - cut_vbs
    on_cut = keys_in(cut_vbs, "pc-cut", 12)
    elsewhere = keys_in(other_vbs, "pc-ok", 36)
    # Written only while the proxy cannot reach their node.
    probes = keys_in(cut_vbs, "pc-probe", 6)
    set_all(proxy.addr, {k: old_value(k) for k in on_cut + elsewhere}, "the first versions")

    net.blackhole("proxy", cut.name)
    calls = [("get", k, None) for k in on_cut + elsewhere]
    calls += [("set", k, value_of(k)) for k in elsewhere] + [("set", k, value_of(k)) for k in probes]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        results = list(pool.map(lambda c: (c, proxy_call(proxy.addr, *c)), calls))
    problems, failure_times, ok_times = [], [], []
    for (op, key, value), (ok, got, took) in results:
        if vbucket_of(key, VBUCKETS) in cut_vbs:
            # A clear error: a read may be retried, a write's outcome may
            # be unknown — never an answer.
            clear = ("temporary failure",) if op == "get" else ("temporary failure", "outcome unknown")
            if ok or not any(text in got for text in clear):
                problems.append(f"{op} {key} (on {cut.name}, unreachable): {got!r} after {took:.2f}s")
            failure_times.append(took)
        else:
            want = old_value(key) if op == "get" else True
            if not ok or got != want:
                problems.append(f"{op} {key} (reachable): {got!r} after {took:.2f}s, want {want!r}")
            ok_times.append(took)
    failure_times.sort()
    figure(f"proxy cut from {cut.name} ({len(cut_vbs)} of {VBUCKETS} vbuckets): {len(failure_times)} requests for its "
           f"keys failed after {failure_times[0]:.2f}-{failure_times[-1]:.2f}s; {len(ok_times)} others answered in at "
           f"most {max(ok_times):.2f}s; {len(problems)} wrong")  # fmt: skip
    assert problems == [], f"{len(problems)} requests answered wrongly with the proxy cut from {cut.name}: {problems}"

    # Healed: everything answers again, with the values written.
    net.unblackhole("proxy", cut.name)
    healed_at = time.monotonic()
    wrong_answers = []

    def served(w):
        c = py_client(proxy.addr)
        pending = []
        try:
            for key in on_cut + elsewhere:
                want = old_value(key) if key in on_cut else value_of(key)
                try:
                    got = c.get(key)
                except Exception as e:  # noqa: BLE001 — an error is retried until the deadline
                    pending.append(f"{key}: {type(e).__name__}: {e}")
                    c.close()
                    continue
                if got != want:
                    wrong_answers.append(f"{key}: {got!r}, want {want!r}")
        finally:
            c.close()
        w.last = pending[:5]
        return not pending

    poll(Watch(served), SETTLE_DEADLINE_S, f"every key to be served again after the proxy reaches {cut.name} again")
    back = time.monotonic() - healed_at
    assert wrong_answers == [], f"after the heal the proxy answered wrong values: {wrong_answers[:10]}"
    everything = on_cut + elsewhere + probes
    set_all(proxy.addr, {k: value_of(k) for k in everything}, f"every key, the proxy reaching {cut.name} again")
    wrong = read_back_wrong(proxy.addr, everything)
    figure(f"proxy reaching {cut.name} again: every key served {back:.2f}s after the heal; {len(wrong)} wrong after "
           f"writing all {len(everything)} keys again")  # fmt: skip
    assert wrong == [], f"after the heal {len(wrong)} keys read back wrong: {wrong}"
    assert proxy.alive(), "the proxy exited"
    cluster.wait_formed(setup.nodes)


# === slow, lossy links ===


def test_slow_lossy_links(net):
    setup = start_cluster(net)
    cluster, config, proxy, leader = setup.cluster, setup.config, setup.proxy, setup.leader
    nodes = [host for host in HOSTS if host.startswith("node-")]
    how = net.netem(nodes, NETEM_DELAY_MS, NETEM_LOSS_PERCENT)
    slow = f"delay {NETEM_DELAY_MS}ms loss {NETEM_LOSS_PERCENT}%"
    # The links are slow: a TCP handshake with each node waits for its SYN.
    connects = {node.name: connect_time(node.addr) for node in setup.nodes}
    figure(f"netem {slow} into every node, by {how}; a TCP connect to each node took "
           f"{ {k: round(v * 1000) for k, v in connects.items()} } ms")  # fmt: skip
    assert all(t >= NETEM_DELAY_MS / 1000 * 0.9 for t in connects.values()), f"links not slowed: {connects}"

    # Replication catching up after a load.
    first = Writers(proxy.addr, "slow1").start()
    try:
        time.sleep(LOAD_S)  # load, not a wait for a condition
    finally:
        first.stop()
    caught_up = wait_caught_up(setup.nodes, config, SLOW_DEADLINE_S)
    figure(f"netem {slow} on every node: {len(first.acknowledged())} durable writes in {LOAD_S}s, "
           f"{len(first.errors())} errors {error_kinds(first.errors())}; replication caught up (lag 0) "
           f"{caught_up:.2f}s after they stopped")  # fmt: skip

    second = Writers(proxy.addr, "slow2").start()
    try:
        # A fourth node joins and a rebalance takes it in, under load.
        added = net.harness.add(NetnsNode(net, "node-3", image=True))
        joined_at = time.monotonic()
        added.start("--join", setup.nodes[0].admin_url)

        def listed(w):
            w.last = memberships(leader)
            return w.last.get(added.hostname) == "inactiveAdded"

        poll(Watch(listed), SLOW_DEADLINE_S, f"{added.name} to be listed inactiveAdded")
        listed_after = time.monotonic() - joined_at
        rebalanced = rebalance(leader, SLOW_DEADLINE_S)
        cluster.nodes.append(added)
        cluster.wait_formed(cluster.nodes, deadline_s=SLOW_DEADLINE_S)
        config = cluster.wait_bucket(BUCKET, deadline_s=SLOW_DEADLINE_S)
        assert actives_of(config, added), f"after the rebalance {added.name} is active for no vbucket"
        wait_proxy_rev(proxy, config["rev"], SLOW_DEADLINE_S)

        # A hard failover of a follower, under load.
        victim = next(n for n in setup.nodes if n is not leader)
        remaining = [n for n in cluster.nodes if n is not victim]
        failover_at = time.monotonic()
        r = leader.post("/controller/failOver", {"otpNode": victim.otp_node})
        assert r.status == 200, r.describe()
        answered = time.monotonic() - failover_at
        before = config

        def failed_over(w):
            configs = [n.bucket(BUCKET) for n in remaining]
            w.last = [c["rev"] for c in configs]
            if any(c["rev"] <= before["rev"] or c != configs[0] or named_in(c, victim) for c in configs):
                return None
            return configs[0]

        config = poll(Watch(failed_over), SLOW_DEADLINE_S, f"every node to serve a map without {victim.name}")
        wait_proxy_rev(proxy, config["rev"], SLOW_DEADLINE_S)
        mapped = time.monotonic() - failover_at
        wait_clean_streak(second, failover_at + mapped, "the failover", SLOW_DEADLINE_S)
        streak = time.monotonic() - failover_at
    finally:
        second.stop()
    caught_up_after = wait_caught_up(remaining, config, SLOW_DEADLINE_S)
    acked = [r[0] for r in first.acknowledged() + second.acknowledged()]
    errors = second.errors()
    lost = read_back_wrong(proxy.addr, acked)
    figure(f"netem {slow}: {added.name} listed inactiveAdded {listed_after:.2f}s after its start; the rebalance "
           f"taking it in took {rebalanced:.2f}s")  # fmt: skip
    figure(f"netem {slow}: hard failover of {victim.name}: REST answered in {answered:.2f}s, every node and the "
           f"proxy on the new map {mapped:.2f}s, clean streak of {CLEAN_STREAK_S}s ended {streak:.2f}s after the call; "
           f"replication caught up {caught_up_after:.2f}s after the load stopped")  # fmt: skip
    figure(f"netem {slow}: {len(acked)} acknowledged writes, {len(lost)} lost; {len(errors)} errors during the "
           f"rebalance and failover {error_kinds(errors)}")  # fmt: skip
    shaped = net.shaped()
    if shaped is not None:
        figure(f"netem {slow}: the shaper passed {shaped[0]} frames into the nodes and dropped {shaped[1]} "
               f"({100 * shaped[1] / max(1, sum(shaped)):.2f}%)")  # fmt: skip
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged writes lost on slow, lossy links: {lost[:10]}"
    membership = memberships(leader)
    assert membership.get(victim.hostname) == "inactiveFailed", f"after the failover: {membership}"
