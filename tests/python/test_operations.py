"""End-to-end tests of running a cluster as an operator does: `shoal up`
surviving the death of a node, failed-over nodes coming back by delta or
full recovery, graceful failover, and the cluster memory quota.

- kill -9 of a node of `shoal up` under a durable write load through its
  proxy: the cluster fails it over by itself and keeps serving, `up`
  restarts the node, failed over, and `shoal ctl recover` + `shoal ctl
  rebalance` bring it back: balanced, every acknowledged key on its active
  and its replica, none lost;
- delta recovery streams only what the node missed, full recovery
  everything it holds again (both amounts printed);
- graceful failover under load: no client error, nothing lost;
- the memory quota: a quota over 80 % of a node's RAM, a node with too
  little RAM for the quota, a bucket beyond what is left, a quota below
  what the buckets take — each refused with a message naming the numbers.

Figures are printed with `[figure]`; run with `-s` to see them.
"""

import os
import subprocess
import time

from harness import figure
from harness.credentials import child_env
from harness.poll import Watch, poll
from harness.process import shoal_binary
from harness.rest import error_message, rest
from harness.wire import (
    OP_GET,
    OP_GET_REPLICA,
    STATUS_OK,
    addr_of,
    node_stats,
    pipelined,
    vbucket_of,
)
from harness.writers import (
    CLEAN_STREAK_S,
    RECOVERY_DEADLINE_S,
    Writers,
    error_kinds,
    read_back_wrong,
    unavailability,
    value_of,
    wait_clean_streak,
)

BUCKET = "default"
VBUCKETS = 256
# Load before a kill or a failover.
LOAD_S = 3.0
# A rebalance, or replicas catching up.
SETTLE_DEADLINE_S = 60.0
# `shoal ctl` waits for its rebalance; only a hang takes longer.
CTL_TIMEOUT_S = 120.0


# === shoal up and its nodes ===


def ctl(up, *args):
    """`shoal ctl` against `up`'s first node, as its admin; fails the test
    on a non-zero exit. Returns stdout."""
    cmd = [str(shoal_binary()), "ctl", "--cluster", "http://%s:%d" % up.node_admin(0), *args]
    done = subprocess.run(cmd, env=child_env(up.credentials), capture_output=True, text=True, timeout=CTL_TIMEOUT_S)
    assert done.returncode == 0, f"shoal ctl {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def pool(up, i=0):
    r = rest(up.node_admin(i), "GET", "/pools/default", auth=up.credentials)
    assert r.status == 200, r.describe()
    return r.json()


def node_entry(up, i, via=0):
    """Node `i`'s entry in `/pools/default` as node `via` lists it."""
    hostname = "%s:%d" % up.node_admin(i)
    (entry,) = [n for n in pool(up, via)["nodes"] if n["hostname"] == hostname]
    return entry


def config_of(up, via=0):
    r = rest(up.node_admin(via), "GET", f"/pools/default/buckets/{BUCKET}", auth=up.credentials)
    assert r.status == 200, r.describe()
    return r.json()


def wait_stderr(up, text, deadline_s):
    poll(Watch(lambda w: text in up.stderr_text()), deadline_s, f"`shoal up` to say {text!r}")


def replica_items_received(up, i):
    return int(node_stats(up.node_data(i), "", BUCKET)["replica_items_received"])


def follower(up):
    """A node of `up` that is not the Raft leader."""
    for i in range(up.nodes):
        if node_entry(up, i)["raftRole"] != "leader":
            return i
    raise AssertionError("every node is the leader")


def set_durability(up, level):
    r = rest(up.node_admin(0), "POST", f"/pools/default/buckets/{BUCKET}", {"durabilityMinLevel": level},
             auth=up.credentials)  # fmt: skip
    assert r.status == 200, r.describe()

    def applied(w):
        w.last = [config_of(up, i)["durabilityMinLevel"] for i in range(up.nodes)]
        return all(level == d for d in w.last)

    poll(Watch(applied), SETTLE_DEADLINE_S, f"every node to serve durability {level}")


def wait_balanced(up):
    """Waits until every node is active, the cluster says it is balanced
    and no rebalance runs; returns the bucket config."""

    def balanced(w):
        view = pool(up)
        w.last = [(n["hostname"], n["clusterMembership"], n["recoveryType"]) for n in view["nodes"]]
        return view["balanced"] and all(n["clusterMembership"] == "active" for n in view["nodes"])

    poll(Watch(balanced), SETTLE_DEADLINE_S, "every node active and the cluster balanced")
    return config_of(up)


def missing_copies(config, keys):
    """Keys whose active (GET) or first replica (GET_REPLICA) does not hold
    `value_of(key)`, with where."""
    vbmap = config["vBucketServerMap"]
    servers = [addr_of(s) for s in vbmap["serverList"]]
    asks = {}
    for key in keys:
        vb = vbucket_of(key, len(vbmap["vBucketMap"]))
        chain = vbmap["vBucketMap"][vb]
        for position, opcode in ((0, OP_GET), (1, OP_GET_REPLICA)):
            asks.setdefault((servers[chain[position]], opcode), []).append((key, vb))
    wrong = []
    for (addr, opcode), items in asks.items():
        for (key, vb), r in zip(items, pipelined(addr, opcode, items, BUCKET)):
            if (r.status, r.value) != (STATUS_OK, value_of(key)):
                wrong.append(f"{key} vb {vb} op {opcode:#x} on {addr[1]}: status {r.status:#x}")
    return wrong


def wait_every_copy(config, keys):
    """Waits until every key is on its active and its replica (replicas of
    the last moves may still be catching up)."""

    def complete(w):
        w.last = missing_copies(config, keys)
        return not w.last

    poll(Watch(complete), SETTLE_DEADLINE_S, f"{len(keys)} keys on their active and replica")


def balance_of(config):
    """Active and replica vbuckets per server."""
    vbmap = config["vBucketServerMap"]
    counts = {s: [0, 0] for s in vbmap["serverList"]}
    for chain in vbmap["vBucketMap"]:
        for position, server in enumerate(chain[:2]):
            if server >= 0:
                counts[vbmap["serverList"][server]][min(position, 1)] += 1
    return counts


# === tests ===


def test_up_keeps_serving_when_a_node_dies_and_the_node_comes_back(harness):
    up = harness.up(vbuckets=VBUCKETS).start()
    set_durability(up, "majority")
    victim = follower(up)
    otp = node_entry(up, victim)["otpNode"]
    vbmap = config_of(up)["vBucketServerMap"]
    victim_idx = vbmap["serverList"].index("%s:%d" % up.node_data(victim))
    dead_vbs = {vb for vb, chain in enumerate(vbmap["vBucketMap"]) if chain[0] == victim_idx}

    writers = Writers(up.proxy, "upkill").start()
    try:
        time.sleep(LOAD_S)  # load, not a wait for a condition
        assert writers.acknowledged(), f"no write acknowledged in {LOAD_S}s: {error_kinds(writers.errors())}"
        killed_at = time.monotonic()
        os.kill(up.node_pid(victim), 9)
        wait_stderr(up, f"node-{victim} restarted; it is failed over", RECOVERY_DEADLINE_S)
        restarted_at = time.monotonic()
        assert node_entry(up, victim)["clusterMembership"] == "inactiveFailed"
        wait_clean_streak(writers, restarted_at, "the failover")
        served_at = time.monotonic()
        # Back by delta recovery, under the same load.
        before = replica_items_received(up, victim)
        out = ctl(up, "recover", otp, "--delta")
        assert "delta recovery" in out, out
        assert node_entry(up, victim)["recoveryType"] == "delta"
        out = ctl(up, "rebalance")
        assert "rebalance done" in out, out
        streamed = replica_items_received(up, victim) - before
    finally:
        writers.stop()
    assert up.alive(), f"`shoal up` exited: {up.stderr_text()[-2000:]}"
    records = writers.all()
    acked = [r[0] for r in records if r[3] is True]
    errors = [r for r in records if r[3] is not True]
    window, gap, dead_writes = unavailability(records, dead_vbs, killed_at, VBUCKETS)
    config = wait_balanced(up)
    balance = balance_of(config)
    lost = read_back_wrong(up.proxy, acked)
    wait_every_copy(config, acked)
    fmt = lambda s: "none seen" if s is None else f"{s:.2f}s"  # noqa: E731
    figure(f"shoal up, kill -9 of node-{victim} under durability majority: {len(records)} writes, {len(acked)} "
           f"acknowledged, {len(lost)} lost, {len(errors)} errors {error_kinds(errors)}")  # fmt: skip
    figure(f"shoal up: restarted failed over {restarted_at - killed_at:.2f}s after the kill; clean streak of "
           f"{CLEAN_STREAK_S}s ended {served_at - killed_at:.2f}s after it; the dead node's keys ({dead_writes} "
           f"writes): window of errors {fmt(window)}, longest gap between acknowledgements {fmt(gap)}")  # fmt: skip
    figure(f"shoal up: delta recovery + rebalance streamed {streamed} items to node-{victim}; balance {balance}")
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged writes lost: {lost[:10]}"
    actives = [a for a, _ in balance.values()]
    assert len(balance) == up.nodes and max(actives) - min(actives) <= 1, f"not balanced: {balance}"


def test_delta_recovery_streams_less_than_full(harness):
    up = harness.up(vbuckets=VBUCKETS).start()
    victim = follower(up)
    otp = node_entry(up, victim)["otpNode"]
    keys = [f"dr:{i}" for i in range(20_000)]
    _write(up, keys)
    wait_every_copy(config_of(up), keys)
    os.kill(up.node_pid(victim), 9)
    wait_stderr(up, f"node-{victim} restarted; it is failed over", RECOVERY_DEADLINE_S)
    missed = [f"dr-missed:{i}" for i in range(2_000)]
    _write(up, missed)

    before = replica_items_received(up, victim)
    ctl(up, "recover", otp, "--delta")
    ctl(up, "rebalance")
    delta = replica_items_received(up, victim) - before
    config = wait_balanced(up)
    wait_every_copy(config, keys + missed)

    # Out again (a hard failover of a live node keeps its data too), then
    # back by full recovery: it is emptied and streams everything again.
    ctl(up, "failover", otp)
    assert node_entry(up, victim)["clusterMembership"] == "inactiveFailed"
    ctl(up, "recover", otp, "--full")
    before = replica_items_received(up, victim)
    ctl(up, "rebalance")
    full = replica_items_received(up, victim) - before
    config = wait_balanced(up)
    wait_every_copy(config, keys + missed)
    held = int(node_stats(up.node_data(victim), "", BUCKET)["curr_items"])
    figure(f"recovery of node-{victim} ({len(keys) + len(missed)} keys in the bucket, {len(missed)} written while it "
           f"was out): delta streamed {delta} items, full streamed {full}; it holds {held} items after")  # fmt: skip
    assert delta < full, f"delta recovery streamed {delta} items, full {full}"
    assert full >= held * 0.9, f"full recovery streamed {full} items for {held} held: was the node emptied?"


def _write(up, keys):
    from pymemcache.client.base import Client

    c = Client(up.proxy, default_noreply=False, timeout=15)
    try:
        for start in range(0, len(keys), 500):
            failed = c.set_many({k: value_of(k) for k in keys[start : start + 500]}, noreply=False)
            assert failed == [], f"{len(failed)} sets failed: {failed[:5]}"
    finally:
        c.close()


def test_graceful_failover_under_load_loses_nothing_and_errs_nowhere(harness):
    up = harness.up(vbuckets=VBUCKETS).start()
    victim = follower(up)
    otp = node_entry(up, victim)["otpNode"]
    writers = Writers(up.proxy, "graceful").start()
    try:
        time.sleep(LOAD_S)  # load, not a wait for a condition
        started = time.monotonic()
        out = ctl(up, "failover", "--graceful", otp)
        took = time.monotonic() - started
        assert "gracefully" in out, out
        time.sleep(LOAD_S)  # load after it, too
    finally:
        writers.stop()
    entry = node_entry(up, victim)
    config = config_of(up)
    victim_addr = "%s:%d" % up.node_data(victim)
    named = [vb for vb, chain in enumerate(config["vBucketServerMap"]["vBucketMap"])
             if victim_addr in [config["vBucketServerMap"]["serverList"][s] for s in chain if s >= 0]]  # fmt: skip
    records = writers.all()
    acked = [r[0] for r in records if r[3] is True]
    errors = [r for r in records if r[3] is not True]
    lost = read_back_wrong(up.proxy, acked)
    figure(f"graceful failover of node-{victim} under load: {took:.2f}s; {len(records)} writes, {len(acked)} "
           f"acknowledged, {len(errors)} errors {error_kinds(errors)}, {len(lost)} lost")  # fmt: skip
    assert entry["clusterMembership"] == "inactiveFailed", entry
    assert named == [], f"the map still names the failed-over node for vbuckets {named[:10]}"
    assert errors == [], f"{len(errors)} client errors during a graceful failover: {error_kinds(errors)}"
    assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    # And back: delta recovery, rebalance.
    ctl(up, "recover", otp, "--delta")
    ctl(up, "rebalance")
    wait_every_copy(wait_balanced(up), acked[-2000:])


def test_memory_quota_refusals_name_the_numbers(harness):
    # A node that says it may use 4000 MB: at most 3200 MB of quota.
    first = harness.node("quota-0", "--memory-limit-mb", "4000")
    too_big = first.launch("--init-cluster", "--memory-quota-mb", "3500")
    too_big.proc.wait(timeout=30)
    said = too_big.stderr_text()
    assert too_big.proc.returncode != 0, "a node started with a quota over 80% of its RAM"
    assert "3500" in said and "4000 MB" in said and "3200 MB" in said, said[-1000:]

    first = harness.node("quota-1", "--memory-limit-mb", "4000").start("--init-cluster", "--memory-quota-mb", "1024")

    def quota_set(w):
        r = rest(first.admin, "GET", "/pools/default")
        w.last = r.describe()
        return r.status == 200 and r.json().get("memoryQuota") == 1024

    poll(Watch(quota_set), SETTLE_DEADLINE_S, "the cluster to report memoryQuota 1024")
    refused = rest(first.admin, "POST", "/pools/default", {"memoryQuota": "3300"})
    assert refused.status == 400, refused.describe()
    assert "3300 MB" in error_message(refused) and "3200 MB" in error_message(refused), refused.describe()

    created = rest(first.admin, "POST", "/pools/default/buckets",
                   {"name": "big", "ramQuotaMB": "800", "replicaNumber": "0"})  # fmt: skip
    assert created.status == 202, created.describe()
    refused = rest(first.admin, "POST", "/pools/default/buckets",
                   {"name": "more", "ramQuotaMB": "300", "replicaNumber": "0"})  # fmt: skip
    assert refused.status == 400, refused.describe()
    text = error_message(refused)
    assert "300 MB" in text and "1024 MB" in text and "224 MB free" in text, refused.describe()
    refused = rest(first.admin, "POST", "/pools/default", {"memoryQuota": "700"})
    assert refused.status == 400 and "800 MB" in error_message(refused), refused.describe()

    ram = rest(first.admin, "GET", "/pools/default").json()["storageTotals"]["ram"]
    assert ram["quotaTotalPerNode"] == 1024 * 2**20 and ram["quotaUsedPerNode"] == 800 * 2**20, ram

    # A node that may use 1000 MB (800 MB of quota at most) cannot join.
    small = harness.node("quota-2", "--memory-limit-mb", "1000").start()
    refused = rest(first.admin, "POST", "/controller/addNode", {"hostname": small.hostname})
    assert refused.status == 400, refused.describe()
    text = error_message(refused)
    assert "1024 MB" in text and "1000 MB" in text and "800 MB" in text, refused.describe()
    # One with enough joins and inherits the quota.
    enough = harness.node("quota-3", "--memory-limit-mb", "2000").start()
    added = rest(first.admin, "POST", "/controller/addNode", {"hostname": enough.hostname})
    assert added.status == 200, added.describe()

    def inherited(w):
        r = rest(enough.admin, "GET", "/pools/default")
        w.last = r.describe()
        return r.status == 200 and r.json().get("memoryQuota") == 1024

    poll(Watch(inherited), SETTLE_DEADLINE_S, "the joined node to report the cluster's memoryQuota")
