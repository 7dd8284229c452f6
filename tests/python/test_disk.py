"""End-to-end tests of disk faults on a storage node.

- A node whose data disk fills (its data dir on a small tmpfs this test
  mounts): it says so (`ep_disk_failing`, `ep_disk_failure` in `stats`, an
  alert on its entry in `/pools/default`), refuses writes with a temporary
  failure once its disk queue passes its bound instead of acknowledging
  them into memory, and, once the filesystem grows, writes its queue out
  and takes writes again without a restart. Every acknowledged write is
  then read back, after a restart too: none was lost.
- A torn metadata file (`raft/state.json`) or a corrupt identity
  (`raft/node-id`) stops the node at start-up with a message naming the
  file and what to do; following it for `state.json` brings the node back
  into its cluster.

Mounting needs root, as CI runs; without it the test fails, it does not
skip.
"""

import os
import shutil
import subprocess
import tempfile
import time

import pytest
from pymemcache.client.base import Client

from harness import figure
from harness.poll import Watch, poll
from harness.rest import rest
from harness.wire import node_stats

BUCKET = "default"
VALUE = b"d" * 2000
# tmpfs sizes: a store with a 64 MiB RAM quota keeps 32 MiB free.
SMALL_FS = "72m"
LARGE_FS = "512m"
DEADLINE_S = 60.0


def mount_tmpfs(size):
    where = tempfile.mkdtemp(prefix="shoal-disk-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the disk-full test needs root): {done.stderr.strip()}", pytrace=False)
    return where


def umount(where):
    subprocess.run(["umount", "-l", where], capture_output=True)
    shutil.rmtree(where, ignore_errors=True)


def stats(node):
    return node_stats(node.addr, "", BUCKET)


def test_disk_full_refuses_writes_then_recovers_without_restart(harness):
    where = mount_tmpfs(SMALL_FS)
    node = None
    try:
        node = harness.node("diskfull", "--ram-quota-mb", "64", "--vbuckets", "64")
        node.data_dir = os.path.join(where, "node")
        node.start("--init-cluster")
        poll(lambda: rest(node.admin, "GET", "/pools/default").status == 200, DEADLINE_S, "the cluster to be formed")
        r = node.post("/pools/default/buckets", {"name": BUCKET, "ramQuotaMB": "64", "replicaNumber": "0",
                                                 "numVBuckets": "64"})  # fmt: skip
        assert r.status == 202, r.describe()
        poll(lambda: node.bucket(BUCKET) is not None, DEADLINE_S, "bucket default to be served")
        node.wait_warm()

        acked, refused, other = [], 0, {}
        c = Client(node.addr, default_noreply=False, timeout=15)
        for i in range(60_000):
            key = f"full:{i}"
            try:
                if c.set(key, VALUE, noreply=False):
                    acked.append(key)
            except Exception as e:  # noqa: BLE001 — every outcome is counted
                text = str(e)
                if "temporary failure" in text:
                    refused += 1
                    if refused >= 200:
                        break
                else:
                    other[text[:60]] = other.get(text[:60], 0) + 1
                    c.close()
        full = stats(node)
        figure(f"disk full: {len(acked)} writes acknowledged, then {refused} refused (temporary failure); "
               f"other errors {other}; ep_diskqueue_items {full.get('ep_diskqueue_items')}; "
               f"ep_disk_failure {full.get('ep_disk_failure')!r}")  # fmt: skip
        assert refused >= 200, f"the node never refused a write on a full disk ({len(acked)} acknowledged)"
        assert other == {}, f"errors other than a temporary failure: {other}"
        assert full["ep_disk_failing"] == "1" and "disk full" in full.get("ep_disk_failure", ""), full
        assert int(full["ep_disk_queue_refusals"]) >= refused, full
        # Bounded: the queue holds at most the bound (plus a flusher batch).
        assert int(full["ep_diskqueue_items"]) <= 10_000 + 10_000, full
        view = rest(node.admin, "GET", "/pools/default").json()
        (entry,) = view["nodes"]
        assert any("disk writes failing" in a and "disk full" in a for a in entry["alerts"]), entry

        grown_at = time.monotonic()
        subprocess.run(["mount", "-o", f"remount,size={LARGE_FS}", where], check=True)

        def drained(w):
            w.last = {k: stats(node).get(k) for k in ("ep_disk_failing", "ep_diskqueue_items")}
            return w.last == {"ep_disk_failing": "0", "ep_diskqueue_items": "0"}

        poll(Watch(drained), DEADLINE_S, "the node to write its queue out once the disk has room")
        figure(f"disk full: queue written out {time.monotonic() - grown_at:.1f}s after the filesystem grew")
        assert c.set("full:after", VALUE, noreply=False) is True
        view = rest(node.admin, "GET", "/pools/default").json()
        assert view["nodes"][0]["alerts"] == [], view["nodes"][0]
        c.close()

        # Nothing acknowledged was lost, before or after a restart.
        for phase in ("before a restart", "after a restart"):
            if phase == "after a restart":
                node.stop()
                node.start()
                node.wait_warm()
            c = Client(node.addr, default_noreply=False, timeout=15)
            got = {}
            for start in range(0, len(acked), 500):
                got.update(c.get_many(acked[start : start + 500]))
            c.close()
            lost = [k for k in acked if got.get(k) != VALUE]
            assert lost == [], f"{phase}: {len(lost)} of {len(acked)} acknowledged writes lost: {lost[:5]}"
    finally:
        if node is not None:
            node.kill()
        umount(where)


def test_a_torn_metadata_file_is_named_with_what_to_do(harness):
    cluster = harness.cluster(3, prefix="meta")
    victim = cluster.followers()[0]
    state = os.path.join(victim.data_dir, "raft", "state.json")
    victim.stop()
    with open(state, "rb") as f:
        whole = f.read()
    with open(state, "wb") as f:
        f.write(whole[: len(whole) // 2])  # torn mid-write
    victim.launch()
    victim.proc.wait(timeout=30)
    said = victim.stderr_text()[victim._stderr_at_spawn :]
    assert victim.proc.returncode != 0, "the node started with a torn state.json"
    assert state in said and "move it aside" in said, said[-1500:]

    os.rename(state, state + ".torn")
    victim.start()
    cluster.wait_formed(cluster.nodes)

    node_id = os.path.join(victim.data_dir, "raft", "node-id")
    victim.stop()
    with open(node_id, "w") as f:
        f.write("not a number")
    victim.launch()
    victim.proc.wait(timeout=30)
    said = victim.stderr_text()[victim._stderr_at_spawn :]
    assert victim.proc.returncode != 0, "the node started with a corrupt node-id"
    assert node_id in said and "restore it from a backup" in said, said[-1500:]
