"""Durable-write load through a memcached endpoint and what it tells:
`Writers` (threads setting unique keys, recording every outcome with its
time), reading every acknowledged key back, the unavailability window of
a dead node's keys, and waiting for a clean streak of writes. Shared by
the failover, recovery and multi-host tests."""

import threading
import time
from collections import Counter, deque

import pytest
from pymemcache.client.base import Client as PyClient

from .poll import Watch, poll
from .wire import vbucket_of

# Durable writes give up after ~2.5 s; the proxy holds a request for a dead
# node ~2 s. A client timeout well past both only catches a hang.
CLIENT_TIMEOUT_S = 15.0
# Writer threads: each blocks on its own slow request, the others go on.
WRITERS = 4
# Clean writes needed after a failover or restart, and how long failover
# and a clean streak may take.
CLEAN_STREAK_S = 3.0
RECOVERY_DEADLINE_S = 40.0


def value_of(key):
    """The value a writer stores under `key`: derived from the key, so any
    copy can be checked without the writer's records."""
    return (f"{key}|" * 8).encode()[:100]


def py_client(addr):
    return PyClient(addr, default_noreply=False, connect_timeout=10, timeout=CLIENT_TIMEOUT_S)


def read_back_wrong(addr, keys, batch=200, attempts=5):
    """Reads every key through the memcached endpoint at `addr`; returns
    the keys missing or wrong. A batch that errors is retried (a read is
    safe to repeat); one that keeps erroring fails the test."""
    wrong = []
    c = py_client(addr)
    try:
        for start in range(0, len(keys), batch):
            part = keys[start : start + batch]
            for attempt in range(attempts):
                try:
                    got = c.get_many(part)
                    break
                except Exception as e:  # noqa: BLE001 — any failure of a read is retried
                    if attempt == attempts - 1:
                        pytest.fail(f"reading back {len(part)} keys through {addr} failed {attempts} times: {e!r}",
                                    pytrace=False)  # fmt: skip
                    time.sleep(0.5)
            wrong.extend(k for k in part if got.get(k) != value_of(k))
    finally:
        c.close()
    return wrong


# === writers ===


class Writers:
    """`WRITERS` threads, each setting unique keys `<prefix>:<thread>:<n>`
    (value `value_of(key)`) through `addr` with replies awaited, recording
    for every write its key, when it was sent and answered, and the
    outcome (True, or the error as text)."""

    def __init__(self, addr, prefix):
        self.addr = addr
        self.prefix = prefix
        self.stopping = threading.Event()
        self.records = [[] for _ in range(WRITERS)]
        # Kept as they happen, so polls need not walk every record.
        self.last_ack_at = [0.0] * WRITERS
        self.last_error_at = [0.0] * WRITERS
        self.recent_errors = deque(maxlen=50)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WRITERS)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT_S + 5)
            assert not t.is_alive(), "a writer thread did not stop"

    def _run(self, index):
        records = self.records[index]
        c = py_client(self.addr)
        n = 0
        try:
            while not self.stopping.is_set():
                key = f"{self.prefix}:{index}:{n}"
                n += 1
                sent = time.monotonic()
                try:
                    ok = c.set(key, value_of(key), noreply=False)
                    outcome = True if ok is True else f"set answered {ok!r}"
                except Exception as e:  # noqa: BLE001 — every failure is a recorded outcome
                    outcome = f"{type(e).__name__}: {e}"[:160]
                    c.close()  # a fresh connection for the next write
                answered = time.monotonic()
                records.append((key, sent, answered, outcome))
                if outcome is True:
                    self.last_ack_at[index] = answered
                else:
                    self.last_error_at[index] = answered
                    self.recent_errors.append(outcome)
        finally:
            c.close()

    # --- views of what happened ---

    def all(self):
        return sorted((r for rs in self.records for r in rs), key=lambda r: r[2])

    def acknowledged(self):
        return [r for r in self.all() if r[3] is True]

    def errors(self):
        return [r for r in self.all() if r[3] is not True]


def error_kinds(records, top=5):
    """The most common errors among `records` (or outcome strings), with
    counts."""
    texts = (r if isinstance(r, str) else r[3] for r in records)
    return dict(Counter(t[:80] for t in texts).most_common(top))


def unavailability(records, dead_vbs, killed_at, vbuckets):
    """For writes to keys of the dead node's vbuckets: (the first error
    after the kill to the next success, the longest time from the kill on
    without an acknowledged write, how many writes there were), in seconds,
    None when not seen."""
    mine = [r for r in records if vbucket_of(r[0], vbuckets) in dead_vbs]
    first_error = next((r[2] for r in mine if r[3] is not True and r[2] >= killed_at), None)
    first_success = None
    if first_error is not None:
        first_success = next((r[2] for r in mine if r[3] is True and r[2] > first_error), None)
    window = None if first_error is None or first_success is None else first_success - first_error
    acked = [r[2] for r in mine if r[3] is True]
    # From the last acknowledgement before the kill (the node may have
    # answered a moment after `killed_at` was taken) to the end.
    start = max((i for i, t in enumerate(acked) if t <= killed_at), default=None)
    gap = None
    if start is not None and start + 1 < len(acked):
        gap = max(b - a for a, b in zip(acked[start:], acked[start + 1 :]))
    return window, gap, len(mine)


def wait_clean_streak(writers, after, what, deadline_s=RECOVERY_DEADLINE_S):
    """Waits until no write has failed for `CLEAN_STREAK_S` (counted from
    `after` at the earliest) and some were acknowledged in that time."""

    def clean(w):
        since = max(after, *writers.last_error_at)
        acked = max(writers.last_ack_at) > since
        w.last = (f"last error {since - after:+.1f}s after {what}, a write acknowledged since: {acked}; "
                  f"recent errors {error_kinds(list(writers.recent_errors))}")  # fmt: skip
        return acked and time.monotonic() - since >= CLEAN_STREAK_S

    poll(Watch(clean), deadline_s, f"{CLEAN_STREAK_S}s of writes without an error after {what}")
