"""End-to-end tests of replication, durability and failover under load:
real `shoal node` processes formed into a cluster on loopback, a
`shoal proxy` in front, pymemcache writing through it.

- replica streams: every key written reaches the replica the map names
  (binary GET_REPLICA, 0x83, with the vbucket id, on `chain[1]`), once
  `stats replication` says the lag is 0 with every stream open; GET_REPLICA
  on a node that is not the replica of the vbucket is NOT_MY_VBUCKET;
- kill -9 of a node under load, auto-failover at 2 s: with durability
  `majority` no acknowledged write is lost; with `none` the loss is bounded
  by what was acknowledged just before the kill, and only on the dead
  node's vbuckets; the unavailability window of the dead node's keys is
  measured;
- kill -9 and restart of a node (no failover), durability
  `majorityAndPersistActive`: it warms up, every stream catches up (lag 0
  on every node), nothing acknowledged is lost, every replica holds every
  acknowledged value.

Writers record every acknowledged key and every error with its time; a
write that failed may or may not have been applied (its outcome is
unknown), so only acknowledged keys are held to "never lost". Figures are
printed with `[figure]`; run with `-s` to see them.
"""

import time
from collections import Counter
from types import SimpleNamespace

import pytest
from pymemcache.client.base import Client as PyClient

from harness import figure
from harness.cluster import active_addr, wait_data_ready, wait_proxy_rev
from harness.poll import Watch, poll
from harness.writers import (
    CLEAN_STREAK_S,
    RECOVERY_DEADLINE_S,
    Writers,
    error_kinds,
    py_client,
    read_back_wrong,
    unavailability,
    value_of,
    wait_clean_streak,
)
from harness.process import START_DEADLINE_S
from harness.wire import (
    OP_GET,
    OP_GET_REPLICA,
    STATUS_NOT_MY_VBUCKET,
    STATUS_OK,
    BinaryConn,
    addr_of,
    vbucket_of,
)
from harness.wire import node_stats as bucket_stats
from harness.wire import pipelined as bucket_pipelined

# Small maps keep bucket creation and stream set-up cheap.
VBUCKETS = 64
BUCKET = "default"  # a fresh data-port connection starts on it: `stats replication` needs no selection


# Load before the kill.
LOAD_BEFORE_KILL_S = 3.0
# Auto-failover timeout.
AUTO_FAILOVER_S = 2
# Replication catching up once writes stop.
LAG_DEADLINE_S = 10.0
CATCH_UP_DEADLINE_S = 30.0
# Restart of the killed node (test_restart_without_failover).
DOWN_FOR_S = 1.0


# === the data port ===


def node_stats(addr, group, bucket=BUCKET):
    """A `stats <group>` of `bucket` (default `default`) on a node's data
    port: {name: value} as strings."""
    return bucket_stats(addr, group, bucket)


def replication_stats(addr):
    stats = node_stats(addr, "replication")
    for name in ("replication_lag_total", "replication_lag_max", "replication_streams"):
        assert name in stats, f"`stats replication` on {addr} has no {name}: {sorted(stats)[:20]}"
    return stats


def pipelined(addr, opcode, items, batch=500):
    """`bucket_pipelined` on bucket `default`."""
    return bucket_pipelined(addr, opcode, items, BUCKET, batch)


def replica_addr(config, vb):
    """Data (host, port) of the first replica of `vb` per `config`."""
    vbmap = config["vBucketServerMap"]
    chain = vbmap["vBucketMap"][vb]
    assert len(chain) >= 2 and chain[1] >= 0, f"vbucket {vb} has no replica in rev {config['rev']}: {chain}"
    return addr_of(vbmap["serverList"][chain[1]])


def wrong_on_replicas(config, keys):
    """GET_REPLICA of every key on its vbucket's `chain[1]`: the keys whose
    replica does not hold `value_of(key)`, with what it answered."""
    by_node = {}
    for key in keys:
        vb = vbucket_of(key, len(config["vBucketServerMap"]["vBucketMap"]))
        by_node.setdefault(replica_addr(config, vb), []).append((key, vb))
    wrong = []
    for addr, items in by_node.items():
        for (key, vb), r in zip(items, pipelined(addr, OP_GET_REPLICA, items)):
            if (r.status, r.value) != (STATUS_OK, value_of(key)):
                wrong.append(f"{key} vb {vb} on {addr[1]}: status {r.status:#x} {r.value[:40]!r}")
    return wrong


def wait_replicated(cluster, config, nodes=None, deadline_s=LAG_DEADLINE_S):
    """Waits until every stream the map calls for is open (the nodes'
    `replication_streams` add up to one per vbucket per replica) and
    `replication_lag_total` is 0 on every node; returns the seconds it took
    and the last stats."""
    nodes = nodes or cluster.nodes
    want_streams = len(config["vBucketServerMap"]["vBucketMap"]) * config["vBucketServerMap"]["numReplicas"]
    started = time.monotonic()

    def caught_up(w):
        stats = {}
        for node in nodes:
            try:
                stats[node.name] = replication_stats(node.addr)
            except OSError as e:
                stats[node.name] = {"unreachable": repr(e)}
        w.last = {k: {n: v.get(n) for n in ("replication_streams", "replication_lag_total", "unreachable")}
                  for k, v in stats.items()}  # fmt: skip
        if any("unreachable" in s for s in stats.values()):
            return None
        streams = sum(int(s["replication_streams"]) for s in stats.values())
        lag = sum(int(s["replication_lag_total"]) for s in stats.values())
        return stats if streams == want_streams and lag == 0 else None

    stats = poll(Watch(caught_up), deadline_s,
                 f"{want_streams} replica streams open and replication_lag_total 0 on every node")  # fmt: skip
    return time.monotonic() - started, stats


# === clusters ===


def start_cluster(harness, prefix, durability, auto_failover_s=None):
    """Three nodes, bucket `default` (64 vbuckets, 1 replica, the given
    durability), auto-failover as asked, and a proxy given every node's
    admin URL (so it follows the config through any survivor)."""
    cluster = harness.cluster(3, prefix=prefix)
    leader = cluster.leader()
    if auto_failover_s is not None:
        r = leader.post("/settings/autoFailover", {"enabled": "true", "timeout": str(auto_failover_s)})
        assert r.status == 200, r.describe()
    cluster.create_bucket(leader, BUCKET, numVBuckets=VBUCKETS, replicaNumber=1, durabilityMinLevel=durability)
    config = cluster.wait_bucket(BUCKET)
    assert config["durabilityMinLevel"] == durability, f"bucket durability {config['durabilityMinLevel']!r}"
    wait_data_ready(cluster.nodes, BUCKET, config)
    urls = ",".join(n.admin_url for n in cluster.nodes)
    proxy = harness.proxy("--cluster", urls, "--bucket", BUCKET, name=f"proxy-{prefix}").wait_healthy()
    wait_proxy_rev(proxy, config["rev"])
    return SimpleNamespace(cluster=cluster, config=config, proxy=proxy)


# === tests ===


@pytest.fixture(scope="module")
def replicated(module_harness):
    """Three nodes, bucket `default` (64 vbuckets, 1 replica, durability
    none), a proxy, and 2,000 keys written through it."""
    harness = module_harness
    setup = start_cluster(harness, "repl", "none")
    keys = [f"repl:{i}" for i in range(2000)]
    c = py_client(setup.proxy.addr)
    try:
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            failed = c.set_many({k: value_of(k) for k in part})
            assert failed == [], f"set_many through the proxy failed for {failed[:10]}"
    finally:
        c.close()
    setup.keys = keys
    setup.harness = harness
    return setup


def test_replica_receives_writes(replicated):
    cluster, config = replicated.cluster, replicated.config
    took, stats = wait_replicated(cluster, config)
    figure(f"2,000 keys through the proxy: every stream open and lag 0 {took:.2f}s after the last write")

    # Each node reports one stream per vbucket it is active for, acked up to
    # its high seqno, naming the map's replica.
    vbmap = config["vBucketServerMap"]
    for node in cluster.nodes:
        index = vbmap["serverList"].index(node.addr_str)
        s = stats[node.name]
        actives = [vb for vb, chain in enumerate(vbmap["vBucketMap"]) if chain[0] == index]
        assert int(s["replication_streams"]) == len(actives), (
            f"{node.name} serves {s['replication_streams']} streams, active for {len(actives)} vbuckets"
        )
        assert int(s["replication_lag_max"]) == 0, f"{node.name}: lag_max {s['replication_lag_max']} with lag_total 0"
        for vb in actives:
            replica = vbmap["serverList"][vbmap["vBucketMap"][vb][1]]
            (holder,) = [n for n in cluster.nodes if n.addr_str == replica]
            acked = [k for k in s if k.startswith(f"vb_{vb}:") and k.endswith(":acked")]
            assert len(acked) == 1, f"{node.name}: vb {vb} has {len(acked)} `vb_{vb}:<replica>:acked` stats: {acked}"
            named = acked[0][len(f"vb_{vb}:") : -len(":acked")]
            assert named in (holder.addr_str, holder.hostname), (
                f"{node.name}: {acked[0]} names {named!r}, the map's replica is {replica} (admin {holder.hostname})"
            )
            lag = s.get(f"vb_{vb}:{named}:lag")
            assert lag == "0", f"{node.name}: vb_{vb}:{named}:lag is {lag!r} with lag_total 0"

    # The same group over ASCII, as a memcached client asks for it (the
    # connection starts on bucket `default`).
    for node in cluster.nodes:
        c = PyClient(node.addr, connect_timeout=10, timeout=10)
        try:
            ascii_stats = c.stats("replication")
        finally:
            c.close()
        for name in (b"replication_lag_total", b"replication_lag_max", b"replication_streams"):
            assert name in ascii_stats, f"ASCII `stats replication` on {node.name} has no {name!r}: {list(ascii_stats)[:10]}"
        assert int(ascii_stats[b"replication_lag_total"]) == 0, f"{node.name}: ASCII lag_total {ascii_stats}"

    wrong = wrong_on_replicas(config, replicated.keys)
    assert wrong == [], f"{len(wrong)} of {len(replicated.keys)} keys wrong on their replica (chain[1]): {wrong[:10]}"


def test_get_replica_not_my_vbucket(replicated):
    """GET_REPLICA is answered only by the vbucket's replica: the node
    outside its chain and its active answer NOT_MY_VBUCKET (0x07)."""
    cluster, config = replicated.cluster, replicated.config
    wait_replicated(cluster, config)
    vbmap = config["vBucketServerMap"]
    checked = Counter()
    for key in replicated.keys[:200]:
        vb, active = active_addr(config, key)
        chain = vbmap["vBucketMap"][vb]
        outsider = [n for i, n in enumerate(vbmap["serverList"]) if i not in chain]
        assert len(outsider) == 1, f"vbucket {vb}: chain {chain} over {len(vbmap['serverList'])} servers"
        for addr, want, role in (
            (addr_of(outsider[0]), STATUS_NOT_MY_VBUCKET, "outside the chain"),
            (active, STATUS_NOT_MY_VBUCKET, "the active"),
            (replica_addr(config, vb), STATUS_OK, "the replica"),
        ):
            with BinaryConn(addr) as conn:
                r = conn.call(OP_GET_REPLICA, key=key, vbucket=vb)
            assert r.status == want, (
                f"GET_REPLICA {key} vb {vb} (chain {chain}) on {role} {addr}: status {r.status:#x} "
                f"{r.value[:60]!r}, want {want:#x}"
            )
            if want == STATUS_OK:
                assert r.value == value_of(key), f"GET_REPLICA {key} on {addr}: {r.value[:60]!r}"
            checked[role] += 1
    # A plain GET with the same vbucket id on the replica is NOT_MY_VBUCKET
    # too: the replica's copy is for GET_REPLICA and failover only.
    key = replicated.keys[0]
    vb = vbucket_of(key, VBUCKETS)
    with BinaryConn(replica_addr(config, vb)) as conn:
        r = conn.call(OP_GET, key=key, vbucket=vb)
    assert r.status == STATUS_NOT_MY_VBUCKET, f"GET {key} vb {vb} on its replica: status {r.status:#x}"
    figure(f"GET_REPLICA checked on 200 keys: {dict(checked)}")


def kill_under_load(harness, prefix, durability):
    """The shared body of the two kill -9 tests. Returns what happened."""
    setup = start_cluster(harness, prefix, durability, auto_failover_s=AUTO_FAILOVER_S)
    cluster, before = setup.cluster, setup.config
    victim = cluster.followers()[0]  # not the Raft leader: failover need not wait for an election
    survivors = [n for n in cluster.nodes if n is not victim]
    vbmap = before["vBucketServerMap"]
    victim_idx = vbmap["serverList"].index(victim.addr_str)
    dead_vbs = {vb for vb, chain in enumerate(vbmap["vBucketMap"]) if chain[0] == victim_idx}

    writers = Writers(setup.proxy.addr, prefix).start()
    try:
        time.sleep(LOAD_BEFORE_KILL_S)  # load, not a wait for a condition
        acked_before = len(writers.acknowledged())
        assert acked_before > 0, f"no write acknowledged in {LOAD_BEFORE_KILL_S}s: {error_kinds(writers.errors())}"
        killed_at = time.monotonic()
        victim.kill()

        def failed_over(w):
            configs = [n.bucket(BUCKET) for n in survivors]
            w.last = [c and c["rev"] for c in configs]
            ok = all(c and c["rev"] > before["rev"] for c in configs) and configs[0] == configs[1]
            return configs[0] if ok else None

        after = poll(Watch(failed_over), RECOVERY_DEADLINE_S, f"{victim.name} to be failed over automatically")
        failed_over_at = time.monotonic()
        chains = after["vBucketServerMap"]["vBucketMap"]
        new_list = after["vBucketServerMap"]["serverList"]
        assert all(c[0] >= 0 for c in chains), "a vbucket lost its active in the failover"
        assert all(victim.addr_str not in [new_list[i] for i in c if i >= 0] for c in chains), (
            "the failed node is still in a chain"
        )
        wait_proxy_rev(setup.proxy, after["rev"])
        wait_clean_streak(writers, failed_over_at, "the failover")
        recovered_at = time.monotonic()
    finally:
        writers.stop()

    records = writers.all()
    acked = [r for r in records if r[3] is True]
    errors = [r for r in records if r[3] is not True]
    lost = read_back_wrong(setup.proxy.addr, [r[0] for r in acked])
    window, gap, dead_writes = unavailability(records, dead_vbs, killed_at, VBUCKETS)
    fmt = lambda s: "none seen" if s is None else f"{s:.2f}s"  # noqa: E731
    figure(f"{durability}: kill -9 of {victim.name} (active for {len(dead_vbs)} of {VBUCKETS} vbuckets); "
           f"failover seen {failed_over_at - killed_at:.2f}s after the kill (auto-failover timeout "
           f"{AUTO_FAILOVER_S}s); clean streak of {CLEAN_STREAK_S}s ended {recovered_at - killed_at:.2f}s after it")  # fmt: skip
    figure(f"{durability}: {len(records)} writes, {len(acked)} acknowledged, {len(lost)} lost, "
           f"{len(errors)} errors {error_kinds(errors)}")  # fmt: skip
    figure(f"{durability}: dead node's keys ({dead_writes} writes): unavailability window (first error after the "
           f"kill to the next success) {fmt(window)}; longest time without an acknowledged write "
           f"from the kill on {fmt(gap)}")  # fmt: skip
    return SimpleNamespace(records=records, acked=acked, errors=errors, lost=lost, killed_at=killed_at,
                           dead_vbs=dead_vbs, victim=victim)  # fmt: skip


def test_kill_under_load_majority(harness):
    run = kill_under_load(harness, "kmaj", "majority")
    assert run.lost == [], (
        f"durability majority: {len(run.lost)} of {len(run.acked)} acknowledged writes lost after the failover "
        f"of {run.victim.name}: {run.lost[:10]}"
    )


def test_kill_under_load_none(harness):
    run = kill_under_load(harness, "knone", "none")
    # A write acknowledged by the active before it replicated dies with it:
    # only the last moments before the kill (and writes in flight at it,
    # answered just after `killed_at` was taken) may be lost.
    recent = [r for r in run.acked if run.killed_at - 1.0 <= r[2] <= run.killed_at + 0.2]
    acked_at = {r[0]: r[2] for r in run.acked}
    ages = sorted(run.killed_at - acked_at[k] for k in run.lost)
    if run.lost:
        figure(f"none: {len(run.lost)} acknowledged writes lost, acknowledged {ages[-1]:.3f}s to {ages[0]:.3f}s "
               f"before the kill; {len(recent)} acknowledged in the last second before it (or in flight at it)")  # fmt: skip
    else:
        figure(f"none: 0 acknowledged writes lost; {len(recent)} acknowledged in the last second before the kill")
    elsewhere = [k for k in run.lost if vbucket_of(k, VBUCKETS) not in run.dead_vbs]
    assert elsewhere == [], (
        f"durability none: {len(elsewhere)} lost writes were on vbuckets the killed node was not active for "
        f"(only its own unreplicated writes may be lost): {elsewhere[:10]}"
    )
    assert len(run.lost) <= len(recent), (
        f"durability none: {len(run.lost)} acknowledged writes lost, more than the {len(recent)} acknowledged in "
        f"the last second before the kill: {run.lost[:10]}"
    )
    # At this write rate the count alone would pass with no replication at
    # all; the ages say the replica lagged by under a second.
    old = [k for k in run.lost if run.killed_at - acked_at[k] > 1.0]
    assert old == [], (
        f"durability none: {len(old)} of the {len(run.lost)} lost writes were acknowledged more than 1 s before "
        f"the kill (the oldest {ages[-1]:.2f}s): the replica had not received them: {old[:10]}"
    )


def test_restart_without_failover(harness):
    """kill -9 and restart (same data dir, same command line) within ~2 s,
    auto-failover off: the node warms up and serves again, every stream
    catches up, no acknowledged write is lost, and every replica holds every
    acknowledged value."""
    durability = "majorityAndPersistActive"
    setup = start_cluster(harness, "rst", durability)
    cluster, config = setup.cluster, setup.config
    victim = cluster.followers()[0]
    flags = ("--init-cluster",) if victim is cluster.nodes[0] else ("--join", cluster.nodes[0].admin_url)
    r = victim.get("/settings/autoFailover")
    assert r.status == 200 and r.json().get("enabled") is False, f"auto-failover must be off by default: {r.describe()}"

    writers = Writers(setup.proxy.addr, "rst").start()
    try:
        time.sleep(LOAD_BEFORE_KILL_S)  # load, not a wait for a condition
        assert writers.acknowledged(), f"no write acknowledged in {LOAD_BEFORE_KILL_S}s: {error_kinds(writers.errors())}"
        killed_at = time.monotonic()
        victim.kill()
        time.sleep(DOWN_FOR_S)  # down for a while under load: the point of the test
        victim.start(*flags)
        restarted_at = time.monotonic()

        def warmed_up(w):
            try:
                stats = node_stats(victim.addr, "warmup")
            except (OSError, AssertionError) as e:
                w.last = repr(e)[:200]
                return False
            w.last = stats
            return stats.get("ep_warmup_thread") == "complete"

        poll(Watch(warmed_up), START_DEADLINE_S, f"{victim.name} to warm up after its restart")
        warmed_at = time.monotonic()
        wait_data_ready(cluster.nodes, BUCKET, config)
        wait_clean_streak(writers, warmed_at, "the restart")
    finally:
        writers.stop()
    stopped_at = time.monotonic()

    figure(f"{durability}: {victim.name} killed, restarted {restarted_at - killed_at:.2f}s later, warmed up "
           f"{warmed_at - restarted_at:.2f}s after that; writes stopped {stopped_at - killed_at:.1f}s after the kill")  # fmt: skip
    now = cluster.wait_bucket(BUCKET)
    assert now["vBucketServerMap"] == config["vBucketServerMap"], "the map changed: the node was failed over"
    took, _ = wait_replicated(cluster, config, deadline_s=CATCH_UP_DEADLINE_S)
    figure(f"{durability}: replication_lag_total 0 on every node, every stream open, {took:.2f}s after writes stopped")

    records = writers.all()
    acked = [r for r in records if r[3] is True]
    errors = [r for r in records if r[3] is not True]
    lost = read_back_wrong(setup.proxy.addr, [r[0] for r in acked])
    not_replicated = wrong_on_replicas(config, [r[0] for r in acked])
    # Writes that failed may or may not have been applied; either way the
    # active and its replica must agree on them once caught up.
    diverged = diverged_keys(config, [r[0] for r in errors])
    figure(f"{durability}: {len(records)} writes, {len(acked)} acknowledged, {len(lost)} lost, "
           f"{len(not_replicated)} missing on their replica, {len(errors)} errors {error_kinds(errors)}; "
           f"failed writes on which active and replica disagree: {len(diverged)} {diverged[:3]}")  # fmt: skip
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged writes lost across the restart: {lost[:10]}"
    assert not_replicated == [], (
        f"{len(not_replicated)} of {len(acked)} acknowledged writes not on their replica (chain[1]) after catch-up: "
        f"{not_replicated[:10]}"
    )


def diverged_keys(config, keys):
    """Keys whose active (GET) and replica (GET_REPLICA) answer differently
    (status or value)."""
    vbmap = config["vBucketServerMap"]
    on_active, on_replica = {}, {}
    for key in keys:
        vb, active = active_addr(config, key)
        on_active.setdefault(active, []).append((key, vb))
        on_replica.setdefault(replica_addr(config, vb), []).append((key, vb))
    seen = {}
    for table, opcode in ((on_active, OP_GET), (on_replica, OP_GET_REPLICA)):
        for addr, items in table.items():
            for (key, _), r in zip(items, pipelined(addr, opcode, items)):
                seen.setdefault(key, []).append((r.status, r.value))
    assert len(vbmap["vBucketMap"]) == VBUCKETS
    return [k for k, answers in seen.items() if len(answers) == 2 and answers[0] != answers[1]]
